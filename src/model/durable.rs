//! What a continuously synced output has made durable: written by its uploader, read by the
//! live figures (`live.json`, `dataref status`) and by `result.json`.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// One file in storage under its final name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DurableFile {
    /// The object's name in the datastore.
    pub path: String,
    pub size: u64,
    /// Seconds since the epoch when its upload was committed.
    pub durable_at: f64,
}

/// A commit marker in storage, and the checkpoint it completes (the marker's folder).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    pub checkpoint: String,
    pub marker: String,
    /// Files of the checkpoint's folder (and below) durable when the marker was.
    pub files: u64,
    pub bytes: u64,
    pub durable_at: f64,
}

/// A synced output's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncState {
    /// Every durable file, latest upload of each name, in the order they became durable.
    pub files: Vec<DurableFile>,
    /// Every checkpoint completed, in order.
    pub checkpoints: Vec<CheckpointRecord>,
    /// Files waiting for their turn (settle delay, temporary name, a marker's data).
    pub pending: u64,
    pub uploading: u64,
    /// Bumped at each file made durable: whether the state changed since it was last written.
    #[serde(skip)]
    pub revision: u64,
}

/// The live part of [`SyncState`] (`live.json` is rewritten every second: no file list).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncLive {
    pub durable_files: u64,
    pub durable_bytes: u64,
    pub pending: u64,
    pub uploading: u64,
    pub checkpoints: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<CheckpointRecord>,
}

impl SyncState {
    pub fn live(&self) -> SyncLive {
        SyncLive {
            durable_files: self.files.len() as u64,
            durable_bytes: self.files.iter().map(|f| f.size).sum(),
            pending: self.pending,
            uploading: self.uploading,
            checkpoints: self.checkpoints.len() as u64,
            last_checkpoint: self.checkpoints.last().cloned(),
        }
    }

    /// Records `file` as durable (replacing an earlier upload of the same name).
    pub fn add(&mut self, file: DurableFile) {
        self.files.retain(|f| f.path != file.path);
        self.files.push(file);
        self.revision += 1;
    }
}

/// One output's state, shared between its uploader and the job's figures.
pub type SharedSyncState = Arc<Mutex<SyncState>>;
