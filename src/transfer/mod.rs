//! The transfer engine: parallel, streamed, memory-bounded downloads and uploads over any
//! `Store`. Shared by `dataref run`, `dataref download` and `dataref upload`.
//!
//! - Files are transferred many at a time; large files in parts (ranged reads into the local
//!   file at their offsets, or parts of a multi-part upload), never whole in memory.
//! - The job's one byte budget (`MemoryBudget`, from `store::Resources`) bounds the data in
//!   flight across every file and part, and across the job's mounts.
//! - Nothing appears under its final name until it is complete and verified: downloads go to a
//!   hidden temporary name and are renamed; uploads commit at the end.
//! - Every skipped name is reported with a reason; per-file failures are collected so one bad
//!   file does not hide the state of the others.

pub mod continuous;
mod download;
pub mod journal;
pub mod progress;
pub mod rate;
mod upload;

use std::path::PathBuf;
use std::time::Duration;

pub use download::download;
pub use journal::{JournalError, ReferenceJournal, UploadJournal};
pub use progress::ProgressMode;
pub use upload::{OneFile, UploadSource, upload, upload_journaled, upload_one};

use crate::localfs::LocalFs;
use crate::model::{MemoryBudget, MountSettings, RetryPolicy, Verify};
use crate::store::{Resources, StoreError};

/// Default part size for ranged reads and multi-part writes.
pub const DEFAULT_PART_SIZE: u64 = 8 * 1024 * 1024;

/// How a transfer runs.
#[derive(Debug, Clone)]
pub struct Engine {
    pub budget: MemoryBudget,
    pub part_size: u64,
    /// Files transferred at once.
    pub file_concurrency: usize,
    /// Parts of one file transferred at once.
    pub part_concurrency: usize,
    /// For a download whose MD5 is verified: how many parts may be fetched ahead of the part
    /// being hashed. Parts are requested lowest offset first, so hashing (sequential, one core)
    /// follows the network closely instead of waiting for the slowest of many parts.
    pub hash_window: usize,
    pub progress: ProgressMode,
    /// Downloads refuse to eat into this much free disk space.
    pub reserved_free_disk_bytes: u64,
    /// How broken ranges are resumed.
    pub retry: RetryPolicy,
    /// A read that delivers nothing for this long counts as a broken connection (and is
    /// resumed): a stalled server must not hang a job.
    pub stall_timeout: Duration,
    /// How downloads check what they received.
    pub verify: Verify,
    /// Uploads send no faster than this (a reference's `max_bytes_per_second`).
    pub rate: Option<std::sync::Arc<rate::RateLimit>>,
    /// Whose rights the local files are read and written with (the job's user's).
    pub local: LocalFs,
}

impl Engine {
    /// An engine drawing on the job's shared budget and retry policy.
    pub fn new(resources: &Resources) -> Self {
        let budget = resources.budget.clone();
        // Enough parts in flight to keep the network busy, within the budget.
        let parts_in_budget = (budget.bytes() / DEFAULT_PART_SIZE).max(1) as usize;
        Self {
            budget,
            part_size: DEFAULT_PART_SIZE,
            file_concurrency: 32,
            part_concurrency: parts_in_budget.clamp(1, 16),
            hash_window: 4,
            progress: ProgressMode::Off,
            reserved_free_disk_bytes: MountSettings::default().reserved_free_disk_bytes,
            retry: resources.retry.clone(),
            stall_timeout: Duration::from_secs(30),
            verify: Verify::default(),
            rate: None,
            local: LocalFs::direct(),
        }
    }

    pub fn with_progress(mut self, progress: ProgressMode) -> Self {
        self.progress = progress;
        self
    }

    pub fn with_verify(mut self, verify: Verify) -> Self {
        self.verify = verify;
        self
    }
}

/// Why a name was not transferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// The destination exists and `overwrite` is off.
    Exists,
    /// A file and a directory claim the same name; the directory wins.
    NameConflict,
    /// The name could escape the target or is not representable locally.
    RefusedName,
    /// Symbolic links in upload sources are not followed.
    Symlink,
    /// Not a regular file (device, socket, FIFO).
    NotAFile,
    /// Continuous upload: a temporary name (`tmp-*`, `*.tmp`, …) never renamed into place.
    Temporary,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    pub path: String,
    pub reason: SkipReason,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FileFailure {
    pub path: String,
    pub error: String,
    /// The failure was local I/O on this machine (disk, permissions), not the store's.
    #[serde(skip)]
    pub local: bool,
}

/// The outcome of one download or upload.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TransferReport {
    pub files: u64,
    pub bytes: u64,
    pub skipped: Vec<Skipped>,
    pub errors: Vec<FileFailure>,
    /// Parts an interrupted earlier run had already staged, not sent again.
    pub parts_resumed: u64,
    /// Downloads: how each file received was checked.
    #[serde(skip_serializing_if = "Verified::is_empty")]
    pub verified: Verified,
    #[serde(serialize_with = "as_seconds")]
    pub duration: Duration,
}

/// How many downloaded files each check covered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Verified {
    /// Against the stored CRC64, range by range.
    pub crc64: u64,
    /// Against the stored Content-MD5.
    pub md5: u64,
    /// Not checked: nothing stored, or `verify: off`.
    pub unverified: u64,
}

impl Verified {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    pub(crate) fn count(&mut self, check: Check) {
        match check {
            Check::Crc64(_) => self.crc64 += 1,
            Check::Md5(_) => self.md5 += 1,
            Check::Nothing => self.unverified += 1,
        }
    }
}

/// The check one downloaded file gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    Crc64(u64),
    Md5([u8; 16]),
    Nothing,
}

fn as_seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

impl TransferReport {
    /// `12 files, 34.5 MiB in 1.2 s (28.7 MiB/s), 1 skipped`.
    pub fn summary(&self) -> String {
        let secs = self.duration.as_secs_f64().max(0.001);
        let mut line = format!(
            "{} file{}, {} in {:.1} s ({}/s)",
            self.files,
            if self.files == 1 { "" } else { "s" },
            progress::human_bytes(self.bytes),
            secs,
            progress::human_bytes((self.bytes as f64 / secs) as u64)
        );
        if self.parts_resumed > 0 {
            line.push_str(&format!(
                ", resumed ({} part{} already staged)",
                self.parts_resumed,
                if self.parts_resumed == 1 { "" } else { "s" }
            ));
        }
        if !self.verified.is_empty() {
            let Verified {
                crc64,
                md5,
                unverified,
            } = self.verified;
            line.push_str(&format!(
                ", checked: {crc64} by CRC64, {md5} by MD5, {unverified} unchecked"
            ));
        }
        if !self.skipped.is_empty() {
            line.push_str(&format!(", {} skipped", self.skipped.len()));
        }
        if !self.errors.is_empty() {
            line.push_str(&format!(", {} failed", self.errors.len()));
        }
        line
    }
}

/// A failure of a whole transfer (per-file failures are in the report).
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("nothing matches {remote} in {store}")]
    NothingMatched { store: String, remote: String },
    #[error("listing {remote} in {store}: {source}")]
    List {
        store: String,
        remote: String,
        #[source]
        source: StoreError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "not enough disk space for {}: needs {} ({needed} bytes) plus {} kept free \
         (reserved_free_disk_bytes), {} free on {}; nothing was written",
        path.display(),
        progress::human_bytes(*needed),
        progress::human_bytes(*reserved),
        progress::human_bytes(*available),
        filesystem.display()
    )]
    DiskFull {
        path: PathBuf,
        needed: u64,
        reserved: u64,
        available: u64,
        /// The mount point of the filesystem the files would land on.
        filesystem: PathBuf,
    },
    #[error("{path}: not found")]
    SourceMissing { path: PathBuf },
}

impl TransferError {
    pub fn local(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Local {
            path: path.into(),
            source,
        }
    }
}

/// Splits `size` bytes into `(index, offset, len)` parts of `part_size`.
pub(crate) fn parts(size: u64, part_size: u64) -> Vec<(u64, u64, u64)> {
    let part_size = part_size.max(1);
    (0..size.div_ceil(part_size))
        .map(|i| {
            let offset = i * part_size;
            (i, offset, part_size.min(size - offset))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_the_file_exactly() {
        assert!(parts(0, 8).is_empty());
        assert_eq!(parts(8, 8), vec![(0, 0, 8)]);
        assert_eq!(parts(20, 8), vec![(0, 0, 8), (1, 8, 8), (2, 16, 4)]);
    }
}
