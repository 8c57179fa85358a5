//! Service mode: `dataref daemon` accepts jobs over a Unix socket and runs each one as
//! a `dataref run` child process — one supervisor per job, so a job's signals, mounts and
//! subreaper duties stay its own, and a job that crashes cannot take the daemon down.
//!
//! The daemon keeps one record per job under `<state-dir>/jobs/<id>/` (with the manifest, the
//! job's `result.json` and `job.log`), written atomically so that it survives restarts. At start
//! it marks jobs that were running as `interrupted`, kills their surviving processes, removes
//! dead mounts, then reports READY and finishes their uploads in the background.

pub mod access;
pub mod api;
pub mod client;
pub mod health;
pub mod metrics;
pub mod notify;
pub mod peer;
mod reaper;
pub mod record;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::sync::Notify;

use crate::job::result::Phase;
use notify::Notifier;
use peer::Peer;
use record::{JobRecord, JobState, ProcessId, Recovery};

pub const DEFAULT_SOCKET: &str = "/run/dataref/dataref.sock";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/dataref";

#[derive(Debug, Clone)]
pub struct Config {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub max_jobs: usize,
    /// Non-root peers in this group may use the API; the socket belongs to it (mode 0660).
    pub allow_group: Option<u32>,
    pub config_dir: PathBuf,
    /// The `dataref` binary each job runs (`dataref run`).
    pub executable: PathBuf,
    /// `--metrics-listen`: where `/metrics`, `/healthz` and `/readyz` are served over TCP too.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `--cache-root`: where jobs' mount caches go (`dataref run --cache-root`).
    pub cache_root: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another daemon is already listening on {0}")]
    SocketInUse(PathBuf),
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DaemonError {
    let path = path.to_path_buf();
    move |source| DaemonError::Io { what, path, source }
}

/// The daemon's shared state.
pub struct Daemon {
    pub config: Config,
    jobs: Mutex<BTreeMap<String, JobRecord>>,
    queue: Mutex<VecDeque<String>>,
    /// Jobs the daemon itself stopped (shutdown): they end `interrupted`, not `failed`.
    stopped_by_daemon: Mutex<HashSet<String>>,
    draining: AtomicBool,
    /// Wakes the scheduler (a job was queued or a slot freed).
    wake: Notify,
    /// Signalled whenever a job reaches a final state.
    finished: Notify,
    notifier: Notifier,
    /// The runners it spawned, and the reaper of the orphans it adopts.
    children: Arc<reaper::Children>,
    /// Start-up progress and the heartbeat, for `/healthz` and `/readyz`.
    pub health: Arc<health::Health>,
}

impl Daemon {
    pub fn new(config: Config, notifier: Notifier) -> Arc<Self> {
        Arc::new(Self {
            config,
            jobs: Mutex::new(BTreeMap::new()),
            queue: Mutex::new(VecDeque::new()),
            stopped_by_daemon: Mutex::new(HashSet::new()),
            draining: AtomicBool::new(false),
            wake: Notify::new(),
            finished: Notify::new(),
            notifier,
            children: Arc::default(),
            health: Arc::default(),
        })
    }

    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.config.state_dir.join("jobs").join(id)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// A job's record with its live state (`staging_out` is known only to its `dataref run`).
    pub fn view(&self, id: &str) -> Option<JobRecord> {
        let mut record = self.jobs.lock().unwrap().get(id)?.clone();
        if record.state == JobState::Running && self.phase(id) == Some(Phase::StagingOut) {
            record.state = JobState::StagingOut;
        }
        Some(record)
    }

    pub fn ids(&self) -> Vec<String> {
        self.jobs.lock().unwrap().keys().cloned().collect()
    }

    fn phase(&self, id: &str) -> Option<Phase> {
        let bytes = std::fs::read(self.job_dir(id).join("result.json")).ok()?;
        let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        serde_json::from_value(value.get("phase")?.clone()).ok()
    }

    fn counts(&self) -> (usize, usize) {
        let jobs = self.jobs.lock().unwrap();
        let running = jobs
            .values()
            .filter(|r| matches!(r.state, JobState::Running | JobState::StagingOut))
            .count();
        let queued = jobs
            .values()
            .filter(|r| r.state == JobState::Queued)
            .count();
        (running, queued)
    }

    fn report_status(&self) {
        let (running, queued) = self.counts();
        let draining = if self.is_draining() { ", draining" } else { "" };
        self.notifier.notify(&format!(
            "STATUS={running} running, {queued} queued{draining}"
        ));
    }

    /// Stores a new job (its directory, manifest and record) and queues it.
    pub fn enqueue(
        &self,
        peer: Peer,
        base_dir: PathBuf,
        manifest: &[u8],
    ) -> std::io::Result<String> {
        let id = new_job_id();
        let dir = self.job_dir(&id);
        std::fs::create_dir_all(&dir)?;
        record::write_atomically(&dir.join("manifest.json"), |file| {
            use std::io::Write;
            file.write_all(manifest)
        })?;
        let record = JobRecord::new(id.clone(), peer, base_dir);
        record.save(&dir)?;
        self.jobs.lock().unwrap().insert(id.clone(), record);
        self.queue.lock().unwrap().push_back(id.clone());
        self.wake.notify_one();
        self.report_status();
        Ok(id)
    }

    /// Cancels a job: a queued one at once, a running one through SIGTERM to its `dataref run`
    /// (which forwards it to the script, waits its grace period and stages out).
    pub fn cancel(&self, id: &str) -> Result<JobState, CancelError> {
        let mut jobs = self.jobs.lock().unwrap();
        let record = jobs.get_mut(id).ok_or(CancelError::Unknown)?;
        match record.state {
            JobState::Queued => {
                record.finish(
                    JobState::Cancelled,
                    None,
                    Some("cancelled before it started".into()),
                );
                let _ = record.save(&self.job_dir(id));
                self.queue.lock().unwrap().retain(|q| q != id);
                self.finished.notify_waiters();
                Ok(JobState::Cancelled)
            }
            JobState::Running | JobState::StagingOut => {
                record.cancel_requested = true;
                let _ = record.save(&self.job_dir(id));
                if let Some(runner) = record.runner {
                    let _ = kill(Pid::from_raw(runner.pid), Signal::SIGTERM);
                }
                Ok(record.state)
            }
            state => Err(CancelError::AlreadyFinished(state)),
        }
    }

    /// Waits until `id` reaches a final state.
    pub async fn wait_final(&self, id: &str) {
        loop {
            let finished = self.finished.notified();
            match self.jobs.lock().unwrap().get(id) {
                Some(record) if !record.state.is_final() => {}
                _ => return,
            }
            finished.await;
        }
    }

    /// Starts queued jobs while slots are free; runs until the daemon drains.
    async fn schedule(self: Arc<Self>) {
        loop {
            while !self.is_draining() {
                let (running, _) = self.counts();
                if running >= self.config.max_jobs {
                    break;
                }
                let Some(id) = self.queue.lock().unwrap().pop_front() else {
                    break;
                };
                self.clone().start(&id);
            }
            self.wake.notified().await;
        }
    }

    fn runner_command(&self, record: &JobRecord, stage_out_only: bool) -> tokio::process::Command {
        let dir = self.job_dir(&record.id);
        let mut command = tokio::process::Command::new(&self.config.executable);
        command
            .arg("--config-dir")
            .arg(&self.config.config_dir)
            .arg("run")
            .arg("--job-dir")
            .arg(&dir)
            .arg("--no-progress")
            .arg("--clean-env")
            .arg("--base-dir")
            .arg(&record.base_dir);
        if let Some(root) = &self.config.cache_root {
            command.arg("--cache-root").arg(root);
        }
        let identity = record.submitted_by.identity();
        if identity.is_other_than_self() {
            command.arg("--run-as").arg(identity.to_arg());
        }
        if stage_out_only {
            command.arg("--stage-out-only");
        }
        command.arg(dir.join("manifest.json"));
        // The runner keeps the daemon's environment (a root job's `{"env": ...}` secrets come
        // from the unit's Environment=) minus systemd's channels; the script's own environment
        // is clean (`--clean-env`).
        command
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("DATAREF_JOB_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Its own group: a Ctrl-C meant for a foreground daemon reaches jobs through the
            // daemon's orderly shutdown, not all at once.
            .process_group(0);
        let runner_log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("runner.log"));
        if let Ok(file) = runner_log {
            command.stderr(file);
        } else {
            command.stderr(Stdio::null());
        }
        command
    }

    fn start(self: Arc<Self>, id: &str) {
        let Some(record) = self.jobs.lock().unwrap().get(id).cloned() else {
            return;
        };
        if record.state != JobState::Queued {
            return;
        }
        let spawned = self
            .children
            .spawn(&mut self.runner_command(&record, false));
        let mut jobs = self.jobs.lock().unwrap();
        let record = jobs.get_mut(id).expect("the record exists");
        let dir = self.job_dir(id);
        match spawned {
            Ok(child) => {
                record.state = JobState::Running;
                record.started_at = Some(record::now());
                record.runner = child.id().and_then(|pid| ProcessId::of(pid as i32));
                let _ = record.save(&dir);
                tracing::info!(job = id, "started");
                tokio::spawn(self.clone().supervise(id.to_owned(), child));
            }
            Err(e) => {
                record.finish(
                    JobState::Failed,
                    None,
                    Some(format!("cannot start dataref run: {e}")),
                );
                let _ = record.save(&dir);
                self.finished.notify_waiters();
            }
        }
        drop(jobs);
        self.report_status();
    }

    async fn supervise(self: Arc<Self>, id: String, mut child: tokio::process::Child) {
        use std::os::unix::process::ExitStatusExt;
        let status = self.children.wait(&mut child).await;
        let code = match &status {
            Ok(status) => status
                .code()
                .or_else(|| status.signal().map(|signal| 128 + signal)),
            Err(_) => None,
        };
        let stopped_by_daemon = self.stopped_by_daemon.lock().unwrap().remove(&id);
        {
            let mut jobs = self.jobs.lock().unwrap();
            let record = jobs.get_mut(&id).expect("the record exists");
            let (state, message) = if record.cancel_requested {
                (JobState::Cancelled, Some("cancelled".to_owned()))
            } else if stopped_by_daemon {
                (
                    JobState::Interrupted,
                    Some(
                        "the daemon stopped; the script was signalled and outputs staged out"
                            .into(),
                    ),
                )
            } else if code == Some(0) {
                (JobState::Succeeded, None)
            } else {
                (JobState::Failed, None)
            };
            record.finish(state, code, message);
            record.note_data_wait(&self.job_dir(&id));
            let _ = record.save(&self.job_dir(&id));
            tracing::info!(job = id, state = state.as_str(), ?code, "finished");
        }
        self.finished.notify_waiters();
        self.wake.notify_one();
        self.report_status();
    }

    /// Reads every record; jobs that were running when the previous daemon died are marked
    /// `interrupted` and their surviving processes killed. Returns the jobs whose outputs are to
    /// be uploaded: those, and those whose recovery upload the previous daemon did not finish.
    fn recover_records(&self) -> Vec<String> {
        let jobs_dir = self.config.state_dir.join("jobs");
        let mut records: Vec<JobRecord> = std::fs::read_dir(&jobs_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| match JobRecord::load(&entry.path()) {
                Ok(record) => Some(record),
                Err(e) => {
                    tracing::warn!("skipping {}: {e}", entry.path().display());
                    None
                }
            })
            .collect();
        records.sort_by(|a, b| a.submitted_at.total_cmp(&b.submitted_at));
        let mut interrupted = Vec::new();
        for mut record in records {
            match record.state {
                JobState::Queued => self.queue.lock().unwrap().push_back(record.id.clone()),
                JobState::Running | JobState::StagingOut => {
                    self.kill_survivors(&record);
                    record.finish(
                        JobState::Interrupted,
                        None,
                        Some(
                            "the daemon stopped while the job ran; its processes were killed"
                                .into(),
                        ),
                    );
                    record.recovery = Some(Recovery::Uploading);
                    let _ = record.save(&self.job_dir(&record.id));
                    interrupted.push(record.id.clone());
                }
                // The previous daemon died during this job's recovery: its `--stage-out-only`
                // runner may still be uploading; it is killed and the recovery run again (it
                // resumes from the job's upload journal).
                JobState::Interrupted if record.recovery == Some(Recovery::Uploading) => {
                    self.kill_survivors(&record);
                    record.runner = None;
                    let _ = record.save(&self.job_dir(&record.id));
                    interrupted.push(record.id.clone());
                }
                _ => {}
            }
            self.jobs.lock().unwrap().insert(record.id.clone(), record);
        }
        interrupted
    }

    /// Kills a previous daemon's `dataref run` of this job and its script's process group, if
    /// they are still the same processes (pid and start time).
    fn kill_survivors(&self, record: &JobRecord) {
        let Some(runner) = record.runner else { return };
        let script = self.script_pid(&record.id);
        if runner.is_alive() {
            let _ = kill(Pid::from_raw(runner.pid), Signal::SIGKILL);
        }
        // The script has PDEATHSIG from its runner, but its group may hold more processes.
        if let Some(script) = script.filter(|s| s.start_time >= runner.start_time && s.is_alive()) {
            let _ = killpg(Pid::from_raw(script.pid), Signal::SIGKILL);
        }
        for _ in 0..100 {
            if !runner.is_alive() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn script_pid(&self, id: &str) -> Option<ProcessId> {
        let bytes = std::fs::read(self.job_dir(id).join("result.json")).ok()?;
        let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        let pid = value.get("script_pid")?.as_u64()? as i32;
        ProcessId::of(pid)
    }

    /// Uploads the outputs interrupted jobs left, one job at a time, in the background.
    async fn finish_interrupted_uploads(self: Arc<Self>, ids: Vec<String>) {
        for id in ids {
            let Some(record) = self.jobs.lock().unwrap().get(&id).cloned() else {
                continue;
            };
            let mut command = self.runner_command(&record, true);
            let outcome = match self.children.spawn(&mut command) {
                Ok(mut child) => {
                    // Recorded so that the next daemon kills it if this one dies meanwhile.
                    self.set_runner(&id, child.id().and_then(|pid| ProcessId::of(pid as i32)));
                    let status = self.children.wait(&mut child).await;
                    status.map(|s| s.success()).unwrap_or(false)
                }
                Err(_) => false,
            };
            let mut jobs = self.jobs.lock().unwrap();
            if let Some(record) = jobs.get_mut(&id) {
                record.runner = None;
                record.recovery = Some(if outcome {
                    Recovery::Done
                } else {
                    Recovery::Failed
                });
                let _ = record.save(&self.job_dir(&id));
            }
        }
    }

    fn set_runner(&self, id: &str, runner: Option<ProcessId>) {
        if let Some(record) = self.jobs.lock().unwrap().get_mut(id) {
            record.runner = runner;
            let _ = record.save(&self.job_dir(id));
        }
    }

    /// SIGTERM: stop intake, SIGTERM every running job (each forwards it to its script, waits
    /// the grace period and stages out), and wait for them. Queued jobs stay queued for the
    /// next start.
    pub async fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.notifier.notify("STOPPING=1");
        self.report_status();
        let running: Vec<(String, ProcessId)> = self
            .jobs
            .lock()
            .unwrap()
            .values()
            // A recovery upload (an `interrupted` job's runner) is not a job to stop: it goes
            // on, and is run again at the next start if it was cut short.
            .filter(|r| !r.state.is_final())
            .filter_map(|r| Some((r.id.clone(), r.runner?)))
            .collect();
        for (id, runner) in &running {
            self.stopped_by_daemon.lock().unwrap().insert(id.clone());
            let _ = kill(Pid::from_raw(runner.pid), Signal::SIGTERM);
        }
        loop {
            let finished = self.finished.notified();
            if self.counts().0 == 0 {
                return;
            }
            finished.await;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("no such job")]
    Unknown,
    #[error("the job has already ended ({})", .0.as_str())]
    AlreadyFinished(JobState),
}

/// A sortable, unique job id: UTC time of submission plus random bits.
fn new_job_id() -> String {
    use std::io::Read;
    let mut random = [0u8; 4];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut random));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}-{:06}-{}",
        now.as_secs(),
        now.subsec_micros(),
        random
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// Runs the daemon until SIGTERM/SIGINT, then drains. Returns when every job has stopped.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    let notifier = Notifier::from_env();
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(
            io_error("cannot install a handler for", Path::new("SIGTERM")),
        )?;
    let mut int =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).map_err(
            io_error("cannot install a handler for", Path::new("SIGINT")),
        )?;
    crate::job::supervise::become_subreaper();

    // The jobs' folders hold users' logs, manifests and results: root's only, whatever mode
    // the state directory itself was made with (systemd's `StateDirectory=` makes it 0755).
    let jobs = config.state_dir.join("jobs");
    std::fs::create_dir_all(&jobs)
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&jobs, std::fs::Permissions::from_mode(0o700))
        })
        .map_err(io_error(
            "cannot create the state directory",
            &config.state_dir,
        ))?;
    let daemon = Daemon::new(config, notifier.clone());
    daemon.health.beat();
    tokio::spawn(daemon.health.clone().beat_forever());

    // Watchdog pings start first and continue through recovery and draining.
    if let Some(interval) = notifier.watchdog_interval() {
        let notifier = notifier.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            loop {
                ticks.tick().await;
                notifier.notify("WATCHDOG=1");
            }
        });
    }

    let interrupted = {
        let daemon = daemon.clone();
        tokio::task::spawn_blocking(move || daemon.recover_records())
            .await
            .unwrap_or_default()
    };
    daemon.health.set_state_loaded();
    if nix::unistd::geteuid().is_root() {
        let report = tokio::task::spawn_blocking(crate::fs::cleanup::cleanup_dead_mounts)
            .await
            .unwrap_or_default();
        for mount in &report.removed {
            tracing::warn!("removed a dead mount at {}", mount.mountpoint.display());
        }
    }
    let listener = api::bind(&daemon.config)?;
    daemon.health.set_socket_bound();
    let registry = Arc::new(metrics::registry(daemon.clone()));
    if let Some(address) = daemon.config.metrics_listen {
        let tcp = tokio::net::TcpListener::bind(address)
            .await
            .map_err(io_error(
                "cannot listen for metrics on",
                Path::new(&address.to_string()),
            ))?;
        tracing::info!("metrics on http://{address}/metrics");
        tokio::spawn(api::serve_metrics(daemon.clone(), registry.clone(), tcp));
    }
    notifier.notify("READY=1");
    daemon.report_status();
    tracing::info!("listening on {}", daemon.config.socket.display());

    tokio::spawn(daemon.children.clone().reap_forever());
    tokio::spawn(daemon.clone().finish_interrupted_uploads(interrupted));
    tokio::spawn(daemon.clone().schedule());
    let server = tokio::spawn(api::serve(daemon.clone(), registry, listener));

    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("draining: no new jobs; stopping running jobs");
    daemon.drain().await;
    server.abort();
    let _ = std::fs::remove_file(&daemon.config.socket);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn daemon(state_dir: &Path) -> Arc<Daemon> {
        Daemon::new(
            Config {
                socket: state_dir.join("sock"),
                state_dir: state_dir.to_path_buf(),
                max_jobs: 1,
                allow_group: None,
                config_dir: state_dir.join("config"),
                executable: PathBuf::from("/bin/false"),
                metrics_listen: None,
                cache_root: None,
            },
            Notifier::default(),
        )
    }

    fn root_peer() -> Peer {
        Peer {
            pid: None,
            uid: 0,
            gid: 0,
            groups: Vec::new(),
        }
    }

    #[test]
    fn a_running_job_shows_staging_out_while_its_runner_uploads() {
        let dir = tempfile::tempdir().unwrap();
        let daemon = daemon(dir.path());
        let id = daemon.enqueue(root_peer(), "/".into(), b"{}").unwrap();
        daemon.jobs.lock().unwrap().get_mut(&id).unwrap().state = JobState::Running;
        assert_eq!(daemon.view(&id).unwrap().state, JobState::Running);
        let result = daemon.job_dir(&id).join("result.json");
        std::fs::write(&result, r#"{"phase": "staging_out"}"#).unwrap();
        assert_eq!(daemon.view(&id).unwrap().state, JobState::StagingOut);
        std::fs::write(&result, r#"{"phase": "running"}"#).unwrap();
        assert_eq!(daemon.view(&id).unwrap().state, JobState::Running);
    }

    #[test]
    fn records_of_a_previous_daemon_are_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let first = daemon(dir.path());
        let queued = first.enqueue(root_peer(), "/".into(), b"{}").unwrap();
        let running = first.enqueue(root_peer(), "/".into(), b"{}").unwrap();
        let mut record = first.view(&running).unwrap();
        record.state = JobState::Running;
        record.runner = Some(ProcessId {
            pid: i32::MAX,
            start_time: 1,
        });
        record.save(&first.job_dir(&running)).unwrap();
        // Two jobs of a daemon killed during an earlier recovery: one still uploading, one
        // whose recovery ended.
        let mut recovering = Vec::new();
        for recovery in [Recovery::Uploading, Recovery::Done] {
            let id = first.enqueue(root_peer(), "/".into(), b"{}").unwrap();
            let mut record = first.view(&id).unwrap();
            record.finish(JobState::Interrupted, None, None);
            record.recovery = Some(recovery);
            record.save(&first.job_dir(&id)).unwrap();
            recovering.push(id);
        }

        let second = daemon(dir.path());
        let interrupted = second.recover_records();
        assert_eq!(interrupted, vec![running.clone(), recovering[0].clone()]);
        let record = second.view(&running).unwrap();
        assert_eq!(record.state, JobState::Interrupted);
        assert_eq!(record.recovery, Some(Recovery::Uploading));
        assert_eq!(
            JobRecord::load(&second.job_dir(&running)).unwrap().state,
            JobState::Interrupted
        );
        assert_eq!(second.view(&queued).unwrap().state, JobState::Queued);
        assert_eq!(
            second.queue.lock().unwrap().iter().collect::<Vec<_>>(),
            vec![&queued]
        );
    }
}
