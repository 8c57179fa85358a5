//! `result.json`: what happened to each reference, the script's exit, and why the job ended.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::log::JobLog;
use super::supervise::{ChildExit, Supervised};
use crate::manifest::{JobPlan, Mode};
use crate::model::SyncMode;
use crate::model::durable::SyncState;
use crate::model::metrics::ReferenceFigures;
use crate::transfer::{FileFailure, Skipped, TransferReport, Verified};

pub const RESULT_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReferenceStatus {
    Pending,
    Done,
    Failed,
    NotRun,
    SkippedByPolicy,
    SourceMissing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    Running,
    Succeeded,
    ScriptFailed,
    /// A termination signal was forwarded to the script.
    Preempted,
    SignalBeforeStart,
    InputFailed,
    StageOutFailed,
    /// The agent was stopped before the job ended (daemon restart); `--stage-out-only`
    /// uploaded what the script had left.
    Interrupted,
}

/// Where the job is now; saved at every change so that a supervisor (the daemon) can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Preparing,
    Running,
    StagingOut,
    Finished,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReferenceOutcome {
    pub mode: Mode,
    pub datastore: String,
    pub path_on_datastore: String,
    pub local: PathBuf,
    pub status: ReferenceStatus,
    pub files: u64,
    pub bytes: u64,
    pub skipped: Vec<Skipped>,
    pub errors: Vec<FileFailure>,
    pub warnings: Vec<String>,
    /// Downloads: how the files received were checked (CRC64, MD5, not at all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified: Option<Verified>,
    pub duration_seconds: f64,
    /// What the data path cost for this reference: bytes, files, requests, retries, errors,
    /// cache hits/misses (mounts) and the time the script waited on it.
    pub io: ReferenceFigures,
    /// `sync: continuous` uploads: each durable file (size, when) and each checkpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncReport>,
}

/// A continuous upload in `result.json`.
#[derive(Debug, Clone, Serialize)]
pub struct SyncReport {
    pub mode: SyncMode,
    #[serde(flatten)]
    pub state: SyncState,
}

impl ReferenceOutcome {
    /// Records a transfer's report: done, or failed when any file failed. Returns whether it
    /// failed.
    pub fn record(&mut self, report: TransferReport) -> bool {
        let failed = !report.errors.is_empty();
        self.status = match failed {
            true => ReferenceStatus::Failed,
            false => ReferenceStatus::Done,
        };
        self.files = report.files;
        self.bytes = report.bytes;
        self.skipped = report.skipped;
        self.errors = report.errors;
        self.verified = (!report.verified.is_empty()).then_some(report.verified);
        self.duration_seconds = round(report.duration);
        failed
    }

    pub fn fail(&mut self, error: String, elapsed: Duration) {
        self.status = ReferenceStatus::Failed;
        self.errors.push(FileFailure {
            path: self.path_on_datastore.clone(),
            error,
            local: false,
        });
        self.duration_seconds = round(elapsed);
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ChildResult {
    pub pid: u32,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub forwarded_signal: Option<String>,
    pub killed_after_grace: bool,
}

impl From<&Supervised> for ChildResult {
    fn from(s: &Supervised) -> Self {
        let (exit_code, signal) = match s.exit {
            ChildExit::Code(code) => (Some(code), None),
            ChildExit::Signal(signal) => (None, Some(signal)),
        };
        Self {
            pid: s.pid,
            exit_code,
            signal,
            forwarded_signal: s.forwarded.map(|sig| sig.as_str().to_owned()),
            killed_after_grace: s.killed_after_grace,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct JobResult {
    pub version: u32,
    pub manifest: PathBuf,
    pub working_dir: PathBuf,
    pub job_dir: PathBuf,
    pub started_at: f64,
    pub finished_at: Option<f64>,
    pub phase: Phase,
    pub end_reason: EndReason,
    pub exit_code: Option<i32>,
    /// The script's pid (its process group) while it runs, for a supervisor's recovery.
    pub script_pid: Option<u32>,
    pub child: Option<ChildResult>,
    /// Termination signals that arrived after the script ended: logged, and stage-out finished.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub signals_during_stage_out: Vec<String>,
    pub references: BTreeMap<String, ReferenceOutcome>,
    /// What the job held in memory, recorded when it ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryUse>,
    /// How long the job waited on dataref in all, recorded when it ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_wait: Option<DataWait>,
}

/// The job's time spent waiting on data (every reference's `io.wait_seconds`) against its
/// whole time (staging, script and stage-out).
#[derive(Debug, Clone, Serialize)]
pub struct DataWait {
    pub seconds: f64,
    pub of_seconds: f64,
    pub percent: f64,
}

impl DataWait {
    pub fn new(seconds: f64, of_seconds: f64) -> Self {
        let percent = match of_seconds > 0.0 {
            true => seconds / of_seconds * 100.0,
            false => 0.0,
        };
        Self {
            seconds: round_f(seconds),
            of_seconds: round_f(of_seconds),
            percent: (percent * 100.0).round() / 100.0,
        }
    }

    /// `waited on data 12.4 s of 3,600 s (0.3 %)`.
    pub fn summary(&self) -> String {
        format!(
            "waited on data {} of {} ({:.1} %)",
            super::figures::seconds(self.seconds),
            super::figures::seconds(self.of_seconds),
            self.percent
        )
    }
}

fn round_f(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

/// The job's memory: its budget, the most it held from it at once, and the agent's peak RSS
/// (which adds the fixed overhead of the runtime, the FUSE threads and replies in flight).
#[derive(Debug, Clone, Serialize)]
pub struct MemoryUse {
    pub budget_bytes: u64,
    pub peak_held_bytes: u64,
    pub peak_rss_bytes: Option<u64>,
}

impl MemoryUse {
    pub fn of(budget: &crate::model::MemoryBudget) -> Self {
        Self {
            budget_bytes: budget.bytes(),
            peak_held_bytes: budget.peak_bytes(),
            peak_rss_bytes: peak_rss_bytes(),
        }
    }
}

/// `VmHWM` of this process: the most resident memory it ever had.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(round)
        .unwrap_or(0.0)
}

fn round(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

impl JobResult {
    pub fn new(plan: &JobPlan, job_dir: &Path) -> Self {
        let references = plan
            .references
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    ReferenceOutcome {
                        mode: r.mode,
                        datastore: r.datastore_name.clone(),
                        path_on_datastore: r.path_on_datastore.as_str().to_owned(),
                        local: r.local.clone(),
                        status: ReferenceStatus::Pending,
                        files: 0,
                        bytes: 0,
                        skipped: Vec::new(),
                        errors: Vec::new(),
                        warnings: Vec::new(),
                        verified: None,
                        duration_seconds: 0.0,
                        io: ReferenceFigures::default(),
                        sync: None,
                    },
                )
            })
            .collect();
        Self {
            version: RESULT_VERSION,
            manifest: plan.manifest_path.clone(),
            working_dir: plan.working_dir.clone(),
            job_dir: job_dir.to_path_buf(),
            started_at: now(),
            finished_at: None,
            phase: Phase::Preparing,
            end_reason: EndReason::Running,
            exit_code: None,
            script_pid: None,
            child: None,
            signals_during_stage_out: Vec::new(),
            references,
            memory: None,
            data_wait: None,
        }
    }

    pub fn end(&mut self, reason: EndReason, code: i32) {
        self.phase = Phase::Finished;
        self.end_reason = reason;
        self.exit_code = Some(code);
        self.finished_at = Some(now());
    }

    /// Writes `result.json` atomically (temporary file + rename); failures are logged, not
    /// fatal: the job's own outcome matters more than its report.
    pub fn save(&self, job_dir: &Path, log: &JobLog) {
        let path = job_dir.join("result.json");
        let temp = job_dir.join(".result.json.tmp");
        let written = (|| {
            let mut file = std::fs::File::create(&temp)?;
            serde_json::to_writer_pretty(&mut file, self)?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            std::fs::rename(&temp, &path)
        })();
        if let Err(e) = written {
            log.line(&format!("warning: cannot write {}: {e}", path.display()));
        }
    }
}
