//! The user-side process as root sees it: started with the user's ids, asked one thing at a
//! time over a socket pair, and never trusted. Every answer is bounded in time and size; a
//! process that breaks the protocol, stops answering (the user may `kill -STOP` it) or dies is
//! cut off — its socket closed, the process killed — so the job's file operations fail instead
//! of hanging the agent. It is known by a pidfd, so nothing is ever signalled or waited for
//! under a pid the kernel gave to another process since.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::broker::Done;
use super::wire::{self, Reply, Request};
use crate::model::UserIds;

/// How long one answer (or one page of a listing) may take: generous for a slow NFS.
#[cfg(not(test))]
const ANSWER_WITHIN: Duration = Duration::from_secs(120);
/// Unit tests play a silent process; they need not wait two minutes for it.
#[cfg(test)]
const ANSWER_WITHIN: Duration = Duration::from_secs(2);
/// The most entries a listing may bring (a bound on root's memory, not on any real folder).
#[cfg(not(test))]
const MAX_ENTRIES: usize = 4_000_000;
#[cfg(test)]
const MAX_ENTRIES: usize = 100_000;

pub(super) struct UserSide {
    pub(super) uid: u32,
    /// Pid and start time, for the supervisor (which must not kill it as a leftover).
    process: Option<(u32, u64)>,
    pidfd: Option<OwnedFd>,
    /// One request at a time; `None` once closed or cut off.
    pub(super) socket: Mutex<Option<OwnedFd>>,
}

/// A broken exchange: the process is cut off.
struct Fault(io::Error);

impl UserSide {
    pub(super) fn start(user: &UserIds) -> io::Result<Self> {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
        use std::os::unix::process::CommandExt;
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let mut command = std::process::Command::new("/proc/self/exe");
        command
            .arg(super::USER_SIDE_ARG)
            .env_clear()
            .current_dir("/")
            .stdin(std::process::Stdio::from(theirs))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // SAFETY: only async-signal-safe system calls between fork and exec.
        unsafe {
            command.pre_exec(|| {
                // Nothing of root's but the socket (now standard input) reaches it.
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                // The job's stop signals are for the agent, which still has outputs to
                // upload; this process ends when the agent closes its socket.
                for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                    libc::signal(signal, libc::SIG_IGN);
                }
                Ok(())
            });
        }
        user.run_command_as(&mut command);
        let child = command.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot start a process as uid {}: {e}", user.uid),
            )
        })?;
        let pid = child.id();
        // Not reaped before this: only this process waits for its own children by pid.
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let pidfd = match unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } {
            -1 => None,
            // SAFETY: the kernel just returned this descriptor to us.
            fd => Some(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        };
        let start_time = crate::model::process::ProcStat::read(pid as i32).map(|p| p.start_time);
        Ok(Self {
            uid: user.uid,
            process: start_time.map(|start| (pid, start)),
            pidfd,
            socket: Mutex::new(Some(ours)),
        })
    }

    pub(super) fn process(&self) -> Option<(u32, u64)> {
        self.process
    }

    /// Test builds: a "process" that is a thread of the tests, over the real protocol.
    #[cfg(test)]
    pub(super) fn over(socket: OwnedFd) -> Self {
        Self {
            uid: 0,
            process: None,
            pidfd: None,
            socket: Mutex::new(Some(socket)),
        }
    }

    pub(super) fn exchange(&self, request: &Request) -> io::Result<Done> {
        let body = serde_json::to_vec(request).map_err(io::Error::other)?;
        if body.len() > wire::MAX_MESSAGE {
            return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
        }
        let mut socket = self.socket.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(open) = socket.as_ref() else {
            return Err(io::Error::other("the user-side process has ended"));
        };
        match talk(open.as_fd(), &body, request) {
            Ok(answer) => answer,
            Err(Fault(e)) => {
                // Out of step, silent or gone: no later answer can be trusted to match.
                *socket = None;
                self.kill();
                Err(e)
            }
        }
    }

    fn kill(&self) {
        if let Some(pidfd) = &self.pidfd {
            // SAFETY: pidfd_send_signal on our own pidfd, no siginfo.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pidfd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0u32,
                )
            };
        }
    }
}

/// One request and its answer; `Err(Fault)` when the exchange itself broke.
fn talk(socket: BorrowedFd, body: &[u8], request: &Request) -> Result<io::Result<Done>, Fault> {
    let fault = |e: io::Error| Fault(io::Error::other(format!("the user-side process: {e}")));
    wire::send(socket, body, None).map_err(fault)?;
    let mut buf = Vec::new();
    let mut entries = Vec::new();
    loop {
        wait_readable(socket).map_err(fault)?;
        let fd = wire::recv(socket, &mut buf)
            .map_err(fault)?
            .ok_or_else(|| Fault(io::Error::other("the user-side process has ended")))?;
        let reply: Reply = serde_json::from_slice(&buf).map_err(|e| fault(io::Error::other(e)))?;
        if reply.errno != 0 {
            return Ok(Err(match reply.message {
                Some(message) => io::Error::other(message),
                None => io::Error::from_raw_os_error(reply.errno),
            }));
        }
        if let Some(fd) = fd {
            return Ok(Ok(Done::Fd(fd)));
        }
        if let Some(link) = reply.link {
            return Ok(Ok(Done::Link(link)));
        }
        if !matches!(request, Request::ReadDir(_)) {
            return Ok(Ok(Done::Nothing));
        }
        entries.extend(reply.entries);
        if entries.len() > MAX_ENTRIES {
            return Err(fault(io::Error::other(format!(
                "a listing of more than {MAX_ENTRIES} entries"
            ))));
        }
        if !reply.more {
            return Ok(Ok(Done::Entries(entries)));
        }
    }
}

/// Waits until an answer can be read, at most `ANSWER_WITHIN`.
fn wait_readable(socket: BorrowedFd) -> io::Result<()> {
    let deadline = std::time::Instant::now() + ANSWER_WITHIN;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut poll = libc::pollfd {
            fd: socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        match unsafe { libc::poll(&mut poll, 1, left.as_millis().min(i32::MAX as u128) as i32) } {
            -1 if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => continue,
            -1 => return Err(io::Error::last_os_error()),
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {} s", ANSWER_WITHIN.as_secs()),
                ));
            }
            _ => return Ok(()),
        }
    }
}

impl Drop for UserSide {
    fn drop(&mut self) {
        // Closing the socket ends a well-behaved process; a stopped or taken-over one is
        // killed. Then it is reaped, by its pidfd (ECHILD if the supervisor reaped it already).
        drop(
            self.socket
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        self.kill();
        if let Some(pidfd) = &self.pidfd {
            // SAFETY: waitid on our own pidfd with a zeroed siginfo to fill.
            unsafe {
                let mut info: libc::siginfo_t = std::mem::zeroed();
                libc::waitid(
                    libc::P_PIDFD,
                    pidfd.as_raw_fd() as libc::id_t,
                    &mut info,
                    libc::WEXITED,
                );
            }
        }
    }
}
