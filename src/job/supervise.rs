//! Running the training command as a supervised child.
//!
//! - The child leads its own process group and gets `PR_SET_PDEATHSIG(SIGKILL)`, so it dies
//!   with dataref even if dataref is SIGKILLed.
//! - dataref is a subreaper: orphaned descendants (daemonised helpers, `setsid` escapes) are
//!   reparented to it, reaped while the job runs, and killed when the child exits.
//! - SIGTERM/SIGINT/SIGHUP are forwarded to the child's group; the first one starts the grace
//!   period, after which the group is SIGKILLed.
//! - With a terminal on stdin, the child's group is made the foreground group, and dataref takes
//!   the terminal back afterwards.
//!
//! The child is spawned from the thread that runs `Runtime::block_on` (the main thread, which
//! outlives it): PDEATHSIG fires when the *spawning thread* exits, not the process.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::{Pid, getpgrp, getpid};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{SignalKind, signal};

use super::log::JobLog;

/// The termination signals dataref forwards, installed before anything else happens so that a
/// signal during downloads is seen, not fatal.
pub struct JobSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl JobSignals {
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The next termination signal.
    pub async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::SIGTERM,
            _ = self.int.recv() => Signal::SIGINT,
            _ = self.hup.recv() => Signal::SIGHUP,
        }
    }
}

/// Drives `work` to its end while termination signals are only logged and collected: once the
/// script has ended, uploading its outputs is all a preempted job still needs, so a SIGTERM then
/// must not cut it short. The scheduler's SIGKILL bounds the time; the upload journal resumes
/// what that cuts.
pub async fn finish_despite_signals<T>(
    work: impl std::future::Future<Output = T>,
    signals: &mut JobSignals,
    log: &JobLog,
    phase: &str,
) -> (T, Vec<Signal>) {
    let mut received = Vec::new();
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            output = &mut work => return (output, received),
            sig = signals.recv() => {
                log.line(&format!("received {sig} during {phase}; finishing it first"));
                received.push(sig);
            }
        }
    }
}

/// Makes dataref the reaper of its orphaned descendants.
pub fn become_subreaper() {
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    pub argv: Vec<String>,
    pub cwd: PathBuf,
    pub env: BTreeMap<OsString, OsString>,
    pub grace: Duration,
    /// Run the script as this user instead of dataref's own (the daemon's jobs).
    pub identity: Option<super::identity::Identity>,
    /// dataref's own children that outlive the script (the user-side process, which the
    /// stage-out still needs), by pid and start time: never killed as the script's leftovers.
    pub spare: Vec<(u32, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildExit {
    Code(i32),
    Signal(i32),
}

impl ChildExit {
    /// The shell convention: the code, or 128+N for signal N.
    pub fn shell_code(self) -> i32 {
        match self {
            ChildExit::Code(code) => code,
            ChildExit::Signal(signal) => 128 + signal,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Supervised {
    pub pid: u32,
    pub exit: ChildExit,
    /// The first signal dataref received and forwarded, if any (preemption, cancel).
    pub forwarded: Option<Signal>,
    /// Whether the grace period ran out and the group was SIGKILLed.
    pub killed_after_grace: bool,
}

/// Spawns the child and supervises it until it and every descendant are gone.
pub async fn run_child(
    spec: &ChildSpec,
    signals: &mut JobSignals,
    log: &JobLog,
    on_start: impl FnOnce(u32),
) -> std::io::Result<Supervised> {
    let (program, args) = spec
        .argv
        .split_first()
        .expect("validated: command is not empty");
    let terminal = ForegroundTerminal::detect();
    let hand_over_terminal = terminal.is_some();
    let parent = getpid();

    let mut command = std::process::Command::new(program);
    // The working directory is entered after the switch to the script's user (below), so that
    // the kernel checks their right to it and a link of theirs is followed with their rights.
    let cwd = std::ffi::CString::new(spec.cwd.as_os_str().as_encoded_bytes())
        .map_err(std::io::Error::other)?;
    command
        .args(args)
        .env_clear()
        .envs(&spec.env)
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let identity = spec.identity.clone().map(|id| (id.uid, id.gid, id.groups));
    // SAFETY: only async-signal-safe calls (setgroups, setgid, setuid, chdir, prctl, getppid,
    // signal, tcsetpgrp, getpid) run between fork and exec.
    unsafe {
        command.pre_exec(move || {
            // Before PDEATHSIG: changing the effective uid clears it.
            if let Some((uid, gid, groups)) = &identity {
                super::identity::Identity::switch_in_child(*uid, *gid, groups)?;
            }
            if libc::chdir(cwd.as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // dataref died between fork and prctl: PDEATHSIG would never fire.
            if libc::getppid() != parent.as_raw() {
                libc::_exit(137);
            }
            if hand_over_terminal {
                libc::signal(libc::SIGTTOU, libc::SIG_IGN);
                libc::tcsetpgrp(0, libc::getpid());
                libc::signal(libc::SIGTTOU, libc::SIG_DFL);
            }
            Ok(())
        });
    }
    let mut child = tokio::process::Command::from(command).spawn()?;
    let pid = child.id().expect("a just-spawned child has a pid");
    let group = Pid::from_raw(pid as i32);
    if let Some(terminal) = &terminal {
        terminal.give_to(group);
    }
    log.line(&format!("started {} (pid {pid})", spec.argv.join(" ")));
    on_start(pid);

    let stdout = child
        .stdout
        .take()
        .map(|out| tokio::spawn(tee(out, log.clone(), false)));
    let stderr = child
        .stderr
        .take()
        .map(|err| tokio::spawn(tee(err, log.clone(), true)));

    let mut sigchld = signal(SignalKind::child())?;
    let mut forwarded = None;
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut killed_after_grace = false;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            sig = signals.recv() => {
                log.line(&format!("received {sig}; forwarding it to the script's process group"));
                let _ = killpg(group, sig);
                if forwarded.is_none() {
                    forwarded = Some(sig);
                    deadline = Some(tokio::time::Instant::now() + spec.grace);
                }
            }
            _ = sleep_until(deadline), if deadline.is_some() => {
                log.line(&format!(
                    "the script did not exit within the {} s grace period; sending SIGKILL",
                    spec.grace.as_secs()
                ));
                let _ = killpg(group, Signal::SIGKILL);
                killed_after_grace = true;
                deadline = None;
            }
            _ = sigchld.recv() => reap_orphans(pid),
        }
    };
    if let Some(terminal) = &terminal {
        terminal.take_back();
    }
    use std::os::unix::process::ExitStatusExt;
    let exit = match (status.code(), status.signal()) {
        (Some(code), _) => ChildExit::Code(code),
        (None, Some(signal)) => ChildExit::Signal(signal),
        _ => ChildExit::Code(255),
    };
    // A scheduler may signal every process of the job at once (Slurm's scancel does): the
    // script can die of that SIGTERM a moment before dataref's own copy is delivered. A script
    // ended by a termination signal that dataref then receives too was preempted, not failed.
    if forwarded.is_none() && ended_by_termination_signal(exit) {
        if let Ok(sig) = tokio::time::timeout(Duration::from_millis(500), signals.recv()).await {
            log.line(&format!(
                "received {sig} as the script ended; treating it as preempted"
            ));
            forwarded = Some(sig);
        }
    }

    // The script is gone: nothing it started may outlive the job.
    let _ = killpg(group, Signal::SIGKILL);
    let spare = spec.spare.clone();
    let killed = tokio::task::spawn_blocking(move || kill_all_descendants(&spare))
        .await
        .unwrap_or(0);
    if killed > 0 {
        log.line(&format!(
            "killed {killed} leftover process(es) of the script"
        ));
    }
    for handle in [stdout, stderr].into_iter().flatten() {
        // Every writer is dead, so the pipes are at EOF; the timeout guards against a pipe
        // handed to a process outside our tree.
        let _ = tokio::time::timeout(Duration::from_secs(5), handle).await;
    }
    Ok(Supervised {
        pid,
        exit,
        forwarded,
        killed_after_grace,
    })
}

/// Exit by SIGTERM, SIGINT or SIGHUP, directly or as a shell's 128+N.
fn ended_by_termination_signal(exit: ChildExit) -> bool {
    let terminating = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];
    match exit {
        ChildExit::Signal(signal) => terminating.contains(&signal),
        ChildExit::Code(code) => terminating.iter().any(|s| code == 128 + s),
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Copies the child's output to ours and to the job log.
async fn tee(mut from: impl AsyncRead + Unpin, log: JobLog, is_stderr: bool) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        // A closed terminal must not stop the log.
        if is_stderr {
            let _ = stderr.write_all(chunk).await;
        } else {
            let _ = stdout.write_all(chunk).await;
            let _ = stdout.flush().await;
        }
        log.raw(chunk);
    }
}

/// Reaps exited orphans without touching the direct child, whose status belongs to tokio.
fn reap_orphans(child: u32) {
    loop {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::All, flags) {
            Ok(status) => match status.pid() {
                Some(pid) if pid.as_raw() as u32 != child => {
                    let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
                }
                // Nothing ready, or the ready one is the direct child: leave it to tokio.
                _ => return,
            },
            Err(_) => return,
        }
    }
}

/// Kills every descendant of this process but `spare` (found through /proc, so `setsid` does
/// not hide one) and reaps them. Returns how many were killed.
pub fn kill_all_descendants(spare: &[(u32, u64)]) -> usize {
    let me = std::process::id() as i32;
    let mut killed = HashSet::new();
    // A spared pid counts only while it is still that process (same start time).
    let spared = |pid: &i32| {
        crate::model::process::ProcStat::read(*pid)
            .is_some_and(|p| spare.contains(&(*pid as u32, p.start_time)))
    };
    for _ in 0..50 {
        let mut descendants = crate::model::process::descendants_of(me);
        descendants.retain(|pid| !spared(pid));
        if descendants.is_empty() {
            break;
        }
        for pid in descendants {
            if nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                killed.insert(pid);
            }
        }
        reap_all_exited();
        std::thread::sleep(Duration::from_millis(20));
    }
    reap_all_exited();
    killed.len()
}

/// Reaps every exited child (only once the direct child's status has been collected).
pub fn reap_all_exited() {
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if matches!(status, WaitStatus::StillAlive) {
            break;
        }
    }
}

/// The controlling terminal when dataref is in its foreground group.
struct ForegroundTerminal {
    our_group: Pid,
}

impl ForegroundTerminal {
    fn detect() -> Option<Self> {
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            return None;
        }
        let our_group = getpgrp();
        let foreground = nix::unistd::tcgetpgrp(std::io::stdin()).ok()?;
        (foreground == our_group).then_some(Self { our_group })
    }

    fn give_to(&self, group: Pid) {
        with_sigttou_ignored(|| {
            let _ = nix::unistd::tcsetpgrp(std::io::stdin(), group);
        });
    }

    fn take_back(&self) {
        with_sigttou_ignored(|| {
            let _ = nix::unistd::tcsetpgrp(std::io::stdin(), self.our_group);
        });
    }
}

/// A background process calling tcsetpgrp gets SIGTTOU; ignore it for the call.
fn with_sigttou_ignored(f: impl FnOnce()) {
    use nix::sys::signal::{SigHandler, signal as set_handler};
    // SAFETY: swapping between the default and ignore dispositions installs no handler code.
    unsafe {
        let previous = set_handler(Signal::SIGTTOU, SigHandler::SigIgn).ok();
        f();
        if let Some(previous) = previous {
            let _ = set_handler(Signal::SIGTTOU, previous);
        }
    }
}
