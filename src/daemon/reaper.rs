//! The daemon is a subreaper: when a job's `dataref run` dies before the processes it adopted
//! (a script's double-forked helpers, say), they are reparented to the daemon, and their exit
//! must be collected here or they stay zombies for the daemon's lifetime.
//!
//! The runners are the daemon's own children, whose exit status tokio collects; a
//! `waitpid(-1)` would steal it. So the reaper finds exited children through `/proc` and reaps
//! only those that are not runners, and a runner is spawned under the same lock the reaper
//! holds, so it is known before it can exit.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

use crate::model::process::ProcStat;

/// The runners the daemon spawned and has not yet seen exit.
#[derive(Debug, Default)]
pub struct Children {
    runners: Mutex<HashSet<i32>>,
}

impl Children {
    /// Spawns a runner; its exit status stays tokio's.
    pub fn spawn(
        &self,
        command: &mut tokio::process::Command,
    ) -> std::io::Result<tokio::process::Child> {
        let mut runners = self.runners.lock().unwrap();
        let child = command.spawn()?;
        if let Some(pid) = child.id() {
            runners.insert(pid as i32);
        }
        Ok(child)
    }

    /// Waits for a runner to exit (tokio reaps it) and forgets it.
    pub async fn wait(
        &self,
        child: &mut tokio::process::Child,
    ) -> std::io::Result<std::process::ExitStatus> {
        let pid = child.id();
        let status = child.wait().await;
        if let Some(pid) = pid {
            self.runners.lock().unwrap().remove(&(pid as i32));
        }
        status
    }

    /// Reaps every exited child that is not a runner: orphans adopted as a subreaper.
    pub fn reap_orphans(&self) -> usize {
        let me = std::process::id() as i32;
        let runners = self.runners.lock().unwrap();
        ProcStat::all()
            .into_iter()
            .filter(|p| p.ppid == me && p.has_exited() && !runners.contains(&p.pid))
            .filter(|p| waitpid(Pid::from_raw(p.pid), Some(WaitPidFlag::WNOHANG)).is_ok())
            .count()
    }

    /// Reaps orphans whenever a child exits, and every few seconds in case signals were
    /// merged while a scan ran.
    pub async fn reap_forever(self: std::sync::Arc<Self>) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut sigchld = signal(SignalKind::child()).ok();
        loop {
            match &mut sigchld {
                Some(sigchld) => {
                    let _ = tokio::time::timeout(Duration::from_secs(5), sigchld.recv()).await;
                }
                None => tokio::time::sleep(Duration::from_secs(1)).await,
            }
            let children = self.clone();
            let reaped = tokio::task::spawn_blocking(move || children.reap_orphans())
                .await
                .unwrap_or(0);
            if reaped > 0 {
                tracing::debug!(reaped, "reaped adopted orphans");
            }
        }
    }
}
