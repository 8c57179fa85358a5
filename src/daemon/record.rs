//! The daemon's job records: `<state-dir>/jobs/<id>/record.json`, written atomically (temporary
//! file + fsync + rename) so that a crash leaves the old record or the new one, never half.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::peer::Peer;

pub const RECORD_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    StagingOut,
    Succeeded,
    Failed,
    Cancelled,
    Interrupted,
}

impl JobState {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled | JobState::Interrupted
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::StagingOut => "staging_out",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Interrupted => "interrupted",
        }
    }
}

/// A process, identified so that a recycled pid is never mistaken for it: the pid and the start
/// time the kernel reports in `/proc/<pid>/stat` (clock ticks since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    pub pid: i32,
    pub start_time: u64,
}

impl ProcessId {
    pub fn of(pid: i32) -> Option<Self> {
        start_time(pid).map(|start_time| Self { pid, start_time })
    }

    /// Whether that very process still exists.
    pub fn is_alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }
}

/// When `pid` started (field 22 of its stat line), or `None` once it is gone.
pub fn start_time(pid: i32) -> Option<u64> {
    crate::model::process::ProcStat::read(pid).map(|stat| stat.start_time)
}

/// Uploads the daemon finishes for an interrupted job after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recovery {
    Uploading,
    Done,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub version: u32,
    pub id: String,
    pub state: JobState,
    pub submitted_by: Peer,
    /// Relative paths in the manifest resolve against this directory (the client's).
    pub base_dir: PathBuf,
    pub submitted_at: f64,
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
    /// The job's exit code (`dataref run`'s: the script's, or one of dataref's own).
    pub exit_code: Option<i32>,
    /// The `dataref run` process of the job while it runs.
    pub runner: Option<ProcessId>,
    pub cancel_requested: bool,
    pub message: Option<String>,
    pub recovery: Option<Recovery>,
    /// When the job ended: how long it waited on data (`result.json`'s `data_wait`) and each
    /// reference's share (`references`: name → seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_wait: Option<serde_json::Value>,
}

pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| (d.as_secs_f64() * 1000.0).round() / 1000.0)
        .unwrap_or(0.0)
}

impl JobRecord {
    pub fn new(id: String, peer: Peer, base_dir: PathBuf) -> Self {
        Self {
            version: RECORD_VERSION,
            id,
            state: JobState::Queued,
            submitted_by: peer,
            base_dir,
            submitted_at: now(),
            started_at: None,
            finished_at: None,
            exit_code: None,
            runner: None,
            cancel_requested: false,
            message: None,
            recovery: None,
            data_wait: None,
        }
    }

    pub fn finish(&mut self, state: JobState, exit_code: Option<i32>, message: Option<String>) {
        self.state = state;
        self.exit_code = exit_code;
        self.message = message;
        self.runner = None;
        self.finished_at = Some(now());
    }

    /// Takes the job's data-wait from its `result.json` (absent when it never ran).
    pub fn note_data_wait(&mut self, job_dir: &Path) {
        let Some(result) = std::fs::read(job_dir.join("result.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        else {
            return;
        };
        let mut wait = result["data_wait"].clone();
        if !wait.is_object() {
            return;
        }
        let references: serde_json::Map<String, serde_json::Value> = result["references"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(name, outcome)| (name.clone(), outcome["io"]["wait_seconds"].clone()))
            .collect();
        wait["references"] = serde_json::Value::Object(references);
        self.data_wait = Some(wait);
    }

    pub fn save(&self, job_dir: &Path) -> std::io::Result<()> {
        write_atomically(&job_dir.join("record.json"), |file| {
            serde_json::to_writer_pretty(&mut *file, self)?;
            file.write_all(b"\n")
        })
    }

    pub fn load(job_dir: &Path) -> std::io::Result<Self> {
        let bytes = std::fs::read(job_dir.join("record.json"))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}

/// Writes `path` through a temporary file in the same directory, fsynced, then renamed.
pub fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = path.with_file_name(format!(".{name}.tmp"));
    let mut file = std::fs::File::create(&temp)?;
    write(&mut file)?;
    file.sync_all()?;
    std::fs::rename(&temp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_replace_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let peer = Peer {
            pid: Some(1),
            uid: 1000,
            gid: 1000,
            groups: vec![27],
        };
        let mut record = JobRecord::new("j1".into(), peer.clone(), "/base".into());
        record.save(dir.path()).unwrap();
        record.finish(JobState::Failed, Some(3), Some("boom".into()));
        record.save(dir.path()).unwrap();
        let loaded = JobRecord::load(dir.path()).unwrap();
        assert_eq!(loaded.state, JobState::Failed);
        assert_eq!(loaded.exit_code, Some(3));
        assert_eq!(loaded.submitted_by, peer);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("record.json")]);
    }

    #[test]
    fn a_process_is_known_by_pid_and_start_time() {
        let me = ProcessId::of(std::process::id() as i32).unwrap();
        assert!(me.is_alive());
        let recycled = ProcessId {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!recycled.is_alive(), "same pid, other start time: not ours");
    }
}
