//! The local filesystem with one user's rights: what a root agent does on the files of a job
//! that runs as another user (its downloads, upload sources, continuous outputs, an inline local
//! datastore, its mount points) goes through here.
//!
//! Checking a path and then acting on it as root is racy by nature (the user swaps a folder
//! for a link between the two), so for such a job no path of the user's is resolved by root at
//! all: a process started with the user's uid, gid and groups ([`broker`]) opens, creates,
//! lists, renames and removes, and passes what it opened back as a file descriptor. The kernel
//! checks the user's rights on every path; root reads and writes only descriptors, each checked
//! to be the kind of file asked for. (OpenSSH's privilege separation, turned around: the
//! unprivileged side touches the user's files, the privileged side the network and the mounts.)
//!
//! A job that runs as dataref's own user needs none of it: [`LocalFs::direct`] performs the same
//! operations in-process.

mod broker;
mod wire;

use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

pub use wire::{Kind, Open};

use crate::model::UserIds;
use broker::Done;
use wire::{Reply, Request};

/// The hidden first argument that makes `dataref` the user-side process.
pub const USER_SIDE_ARG: &str = "__user-side-files";

/// The user-side process's `main`: serves requests on standard input (root's socket) until
/// root closes it. Returns the process exit code.
pub fn user_side_main() -> i32 {
    match broker::serve(io::stdin().as_fd()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("dataref: user-side process: {e}");
            1
        }
    }
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: std::ffi::OsString,
    pub kind: Kind,
}

/// The local filesystem as one user sees it. Cheap to clone; the user-side process ends when
/// the last clone is dropped.
#[derive(Clone)]
pub struct LocalFs {
    inner: Arc<Inner>,
}

enum Inner {
    Direct,
    AsUser(UserSide),
}

impl std::fmt::Debug for LocalFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.inner {
            Inner::Direct => f.write_str("LocalFs::Direct"),
            Inner::AsUser(side) => write!(f, "LocalFs::AsUser({})", side.uid),
        }
    }
}

impl Default for LocalFs {
    fn default() -> Self {
        Self::direct()
    }
}

impl LocalFs {
    /// This process's own rights.
    pub fn direct() -> Self {
        Self {
            inner: Arc::new(Inner::Direct),
        }
    }

    /// `user`'s rights, through a user-side process started now (see the module's comment).
    pub fn as_user(user: &UserIds) -> io::Result<Self> {
        Ok(Self {
            inner: Arc::new(Inner::AsUser(UserSide::start(user)?)),
        })
    }

    /// `user`'s rights when it is someone else than this process, else the process's own.
    pub fn for_user(user: Option<&UserIds>) -> io::Result<Self> {
        match user {
            Some(user) if user.uid != nix::unistd::geteuid().as_raw() => Self::as_user(user),
            _ => Ok(Self::direct()),
        }
    }

    /// The uid whose rights are used, when it is not this process's own.
    pub fn user(&self) -> Option<u32> {
        match &*self.inner {
            Inner::Direct => None,
            Inner::AsUser(side) => Some(side.uid),
        }
    }

    /// The user-side process's pid, when there is one.
    pub fn process_id(&self) -> Option<u32> {
        match &*self.inner {
            Inner::Direct => None,
            Inner::AsUser(side) => side.pid,
        }
    }

    fn call(&self, request: Request) -> io::Result<Done> {
        match &*self.inner {
            Inner::Direct => broker::perform(request),
            Inner::AsUser(side) => side.exchange(&request),
        }
    }

    pub fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.call(Request::CreateDirAll(self.wire_path(path)?))
            .map(drop)
    }

    pub fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.call(Request::CreateDir(self.wire_path(path)?))
            .map(drop)
    }

    /// Opens `path` as `how` says, checked to be what was asked for: a regular file (for
    /// reading or a new file), a directory; never a FIFO or device a read would hang on.
    pub fn open(&self, path: &Path, how: Open) -> io::Result<File> {
        let fd = match &*self.inner {
            Inner::Direct => broker::open(path, how)?,
            Inner::AsUser(_) => match self.call(Request::Open(self.wire_path(path)?, how))? {
                Done::Fd(fd) => fd,
                _ => return Err(unexpected("a file")),
            },
        };
        checked(File::from(fd), how)
    }

    /// The metadata of `path` itself (a link is not followed).
    pub fn symlink_metadata(&self, path: &Path) -> io::Result<Metadata> {
        match &*self.inner {
            Inner::Direct => std::fs::symlink_metadata(path),
            Inner::AsUser(_) => self.open(path, Open::Path { follow: false })?.metadata(),
        }
    }

    /// The metadata of what `path` leads to.
    pub fn metadata(&self, path: &Path) -> io::Result<Metadata> {
        match &*self.inner {
            Inner::Direct => std::fs::metadata(path),
            Inner::AsUser(_) => self.open(path, Open::Path { follow: true })?.metadata(),
        }
    }

    /// The filesystem statistics of where `path` lies.
    pub fn statvfs(&self, path: &Path) -> io::Result<nix::sys::statvfs::Statvfs> {
        let handle = self.open(path, Open::Path { follow: true })?;
        Ok(nix::sys::statvfs::fstatvfs(&handle)?)
    }

    /// The entries of a directory (not `.` and `..`), unsorted.
    pub fn read_dir(&self, path: &Path) -> io::Result<Vec<Entry>> {
        match self.call(Request::ReadDir(self.wire_path(path)?))? {
            Done::Entries(entries) => Ok(entries
                .into_iter()
                .map(|(name, kind)| Entry {
                    name: wire::bytes_path(name).into_os_string(),
                    kind,
                })
                .collect()),
            _ => Err(unexpected("a listing")),
        }
    }

    pub fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        match self.call(Request::ReadLink(self.wire_path(path)?))? {
            Done::Link(target) => Ok(wire::bytes_path(target)),
            _ => Err(unexpected("a link's target")),
        }
    }

    pub fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.call(Request::Rename(self.wire_path(from)?, self.wire_path(to)?))
            .map(drop)
    }

    pub fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.call(Request::RemoveFile(self.wire_path(path)?))
            .map(drop)
    }

    pub fn remove_dir(&self, path: &Path) -> io::Result<()> {
        self.call(Request::RemoveDir(self.wire_path(path)?))
            .map(drop)
    }

    /// A path as the user-side process must get it: absolute (its working directory is `/`).
    fn wire_path(&self, path: &Path) -> io::Result<Vec<u8>> {
        match path.is_absolute() {
            true => Ok(wire::path_bytes(path)),
            false => Ok(wire::path_bytes(&std::path::absolute(path)?)),
        }
    }
}

/// A descriptor from an open, refused unless it is the kind of file asked for. The user-side
/// process is the user's to take over, so what it sends is checked here, by `fstat`.
fn checked(file: File, how: Open) -> io::Result<File> {
    let kind = file.metadata()?.file_type();
    let fine = match how {
        Open::Read | Open::ReadNoFollow | Open::CreateNew => kind.is_file(),
        Open::Directory => kind.is_dir(),
        Open::Path { .. } => true,
    };
    match fine {
        true => Ok(file),
        false if how == Open::Directory => Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
        false => Err(io::Error::other("not a regular file")),
    }
}

fn unexpected(what: &str) -> io::Error {
    io::Error::other(format!("the user-side process answered without {what}"))
}

/// The running user-side process and root's end of its socket.
struct UserSide {
    uid: u32,
    pid: Option<u32>,
    /// One request at a time; `None` once closed.
    socket: Mutex<Option<OwnedFd>>,
    child: Mutex<Option<std::process::Child>>,
}

impl UserSide {
    fn start(user: &UserIds) -> io::Result<Self> {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
        use std::os::unix::process::CommandExt;
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let groups: Vec<nix::unistd::Gid> = user
            .groups
            .iter()
            .map(|g| nix::unistd::Gid::from_raw(*g))
            .collect();
        let (uid, gid) = (
            nix::unistd::Uid::from_raw(user.uid),
            nix::unistd::Gid::from_raw(user.gid),
        );
        let mut command = std::process::Command::new("/proc/self/exe");
        command
            .arg(USER_SIDE_ARG)
            .env_clear()
            .current_dir("/")
            .stdin(std::process::Stdio::from(theirs))
            .stdout(std::process::Stdio::null());
        // SAFETY: only async-signal-safe system calls between fork and exec.
        unsafe {
            command.pre_exec(move || {
                // The job's stop signals are for the agent (which still has outputs to
                // upload); this process ends when the agent closes its socket.
                for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                    libc::signal(signal, libc::SIG_IGN);
                }
                // Groups and gid first: after setuid nothing can be changed back.
                nix::unistd::setgroups(&groups)?;
                nix::unistd::setgid(gid)?;
                nix::unistd::setuid(uid)?;
                Ok(())
            });
        }
        let child = command.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot start a process as uid {}: {e}", user.uid),
            )
        })?;
        Ok(Self {
            uid: user.uid,
            pid: Some(child.id()),
            socket: Mutex::new(Some(ours)),
            child: Mutex::new(Some(child)),
        })
    }

    fn exchange(&self, request: &Request) -> io::Result<Done> {
        let body = serde_json::to_vec(request).map_err(io::Error::other)?;
        if body.len() > wire::MAX_MESSAGE {
            return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
        }
        let gone = || io::Error::other("the user-side process has ended");
        let guard = self.socket.lock().unwrap_or_else(PoisonError::into_inner);
        let socket = guard.as_ref().ok_or_else(gone)?.as_fd();
        wire::send(socket, &body, None)?;
        let mut buf = Vec::new();
        let mut entries = Vec::new();
        loop {
            let fd = wire::recv(socket, &mut buf)?.ok_or_else(gone)?;
            let reply: Reply = serde_json::from_slice(&buf).map_err(io::Error::other)?;
            if reply.errno != 0 {
                return Err(match reply.message {
                    Some(message) => io::Error::other(message),
                    None => io::Error::from_raw_os_error(reply.errno),
                });
            }
            if let Some(fd) = fd {
                return Ok(Done::Fd(fd));
            }
            if let Some(link) = reply.link {
                return Ok(Done::Link(link));
            }
            if !matches!(request, Request::ReadDir(_)) {
                return Ok(Done::Nothing);
            }
            entries.extend(reply.entries);
            if !reply.more {
                return Ok(Done::Entries(entries));
            }
        }
    }
}

impl Drop for UserSide {
    fn drop(&mut self) {
        // Closing the socket ends the process; then it is reaped.
        drop(
            self.socket
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        if let Some(mut child) = self
            .child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests;
