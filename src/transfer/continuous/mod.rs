//! Continuous upload (`sync: continuous`): the script writes an ordinary local folder at disk
//! speed, and each file is uploaded after it is closed for writing or renamed into place, in
//! the order `queue` decides (commit markers after their data), while the script runs. When
//! the script ends, what is not durable yet is uploaded in the same order.
//!
//! - Nothing is visible in storage under a final name before it is complete: each upload
//!   commits at its end, and a file that changed while it was read is not committed.
//! - At start, files already in the folder that storage lacks (or holds at another size) are
//!   queued: a resumed job finishes what its previous run left, through the journal.
//! - Uploads draw on the job's one budget, at most half of it, so inputs keep theirs.
//! - Deletions are not mirrored: this is a copy, not a sync.

pub mod queue;
pub mod watch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use futures::stream::FuturesUnordered;

use super::journal::ReferenceJournal;
use super::{Engine, FileFailure, TransferError, TransferReport, upload_one};
use crate::localfs::LocalFs;
use crate::model::ObjectPath;
use crate::model::durable::{CheckpointRecord, DurableFile, SharedSyncState};
use crate::store::Store;
use queue::{Finished, Queue, Ready, RelPath, Rules, is_under};
use watch::{Change, Watcher};

/// How long a closed file must stay quiet before its upload starts: a write-then-rename
/// (`.metadata.tmp` → `.metadata`) is then seen as the rename.
pub const SETTLE: Duration = Duration::from_millis(300);
/// Files uploaded at once per reference (each in parallel parts).
const FILES_AT_ONCE: usize = 4;

/// What to sync.
#[derive(Debug, Clone)]
pub struct SyncSpec {
    pub reference: String,
    /// The folder the script writes.
    pub root: PathBuf,
    pub prefix: ObjectPath,
    pub commit_files: Vec<String>,
    /// Never uploaded (the job directory, when it is inside the folder).
    pub exclude: Vec<PathBuf>,
}

/// What the job is told as it happens (job-log lines).
pub type Notes = Arc<dyn Fn(String) + Send + Sync>;

/// One reference's continuous upload, watching from `start` on.
pub struct ContinuousUpload {
    spec: SyncSpec,
    store: Arc<dyn Store>,
    engine: Engine,
    watcher: Option<Watcher>,
    queue: Queue,
    state: SharedSyncState,
    /// The stamp of each file when its durable upload started: the final scan skips files
    /// unchanged since.
    uploaded: HashMap<RelPath, Stamp>,
    notes: Notes,
    report: TransferReport,
    /// How many of the watcher's unwatched folders were told in the job log.
    unwatched_told: usize,
}

/// Size and modification time: what says a file was written again.
type Stamp = (u64, SystemTime);

fn stamp_of(fs: &LocalFs, path: &Path) -> Option<Stamp> {
    let meta = fs.symlink_metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// How the job's stage-out ends a sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Upload what is not durable yet (the script ended; policy says upload).
    Drain,
    /// Upload nothing more (upload_policy on_success after a failure); running uploads finish.
    Stop,
}

impl ContinuousUpload {
    /// Starts watching `spec.root` (which must be a folder) and queues the files in it that
    /// storage does not hold at their size. Call after restore, before the script starts.
    pub async fn start(
        spec: SyncSpec,
        store: Arc<dyn Store>,
        engine: &Engine,
        state: SharedSyncState,
        notes: Notes,
        journal: Option<ReferenceJournal<'_>>,
    ) -> Result<Self, TransferError> {
        let rules = Rules::new(&spec.commit_files, SETTLE)
            .map_err(|e| TransferError::local(&spec.root, std::io::Error::other(e)))?;
        let mut engine = engine.clone();
        // At most half the budget: inputs (mount read-ahead, downloads) keep the rest.
        let half_budget_parts = engine.budget.bytes() / 2 / engine.part_size.max(1);
        let per_file = (half_budget_parts as usize / FILES_AT_ONCE).max(1);
        engine.part_concurrency = engine.part_concurrency.min(per_file);
        let watcher = Watcher::new(&engine.local, &spec.root, spec.exclude.clone())
            .map_err(|e| TransferError::local(&spec.root, e))?;
        let mut this = Self {
            spec,
            store,
            engine,
            watcher: Some(watcher),
            queue: Queue::new(rules),
            state,
            uploaded: HashMap::new(),
            notes,
            report: TransferReport::default(),
            unwatched_told: 0,
        };
        this.tell_unwatched();
        this.queue_what_storage_lacks(journal).await?;
        Ok(this)
    }

    /// Queues the files in the folder that storage does not hold at their size, or whose
    /// upload the journal says an earlier run left unfinished (temporary names aside).
    async fn queue_what_storage_lacks(
        &mut self,
        journal: Option<ReferenceJournal<'_>>,
    ) -> Result<(), TransferError> {
        let stored = crate::store::list_all(self.store.as_ref(), &self.spec.prefix, false)
            .await
            .map_err(|source| TransferError::List {
                store: self.spec.reference.clone(),
                remote: self.spec.prefix.to_string(),
                source,
            })?;
        let sizes: HashMap<&str, u64> = stored
            .objects
            .iter()
            .map(|o| (o.path.as_str(), o.size))
            .collect();
        let local = match &self.watcher {
            Some(watcher) => watcher
                .scan()
                .map_err(|e| TransferError::local(&self.spec.root, e))?,
            None => Vec::new(),
        };
        let mut missing = Vec::new();
        for rel in local {
            let Ok(dest) = self.dest_of(&rel) else {
                continue;
            };
            let Some(stamp) = stamp_of(&self.engine.local, &self.spec.root.join(&rel)) else {
                continue;
            };
            if queue::is_temporary(&rel) {
                continue;
            }
            let unfinished = journal.is_some_and(|j| j.has_unfinished(&dest));
            match sizes.get(dest.as_str()) == Some(&stamp.0) && !unfinished {
                // Already there (restored, or sent by the run before): not sent again.
                true => {
                    self.uploaded.insert(rel, stamp);
                }
                false => missing.push(rel),
            }
        }
        if !missing.is_empty() {
            (self.notes)(format!(
                "{}: {} file(s) in the folder are not in storage yet; uploading them",
                self.spec.reference,
                missing.len()
            ));
        }
        self.queue.appeared(missing, Instant::now());
        Ok(())
    }

    fn dest_of(&self, rel: &str) -> Result<ObjectPath, crate::model::PathError> {
        ObjectPath::parse(rel).map(|rel| self.spec.prefix.join(&rel))
    }

    /// Uploads while the script runs, until `ended` says how it ended; then uploads the rest
    /// (or stops). Returns what this reference moved and what failed.
    pub async fn run(
        mut self,
        journal: Option<ReferenceJournal<'_>>,
        ended: impl std::future::Future<Output = End>,
    ) -> TransferReport {
        let started = Instant::now();
        let mut ended = std::pin::pin!(ended);
        let mut end: Option<End> = None;
        let mut uploads = FuturesUnordered::new();
        loop {
            let now = Instant::now();
            if end != Some(End::Stop) {
                while uploads.len() < FILES_AT_ONCE {
                    let Some(ready) = self.queue.next_ready(now) else {
                        break;
                    };
                    // While the script runs, a file open for writing again is left to its
                    // next close; at the end, what is there is what there is.
                    uploads.push(self.upload(ready, journal, end.is_none()));
                }
            }
            self.publish(uploads.len());
            let wakeup = self
                .queue
                .next_wakeup(now)
                .filter(|_| end != Some(End::Stop));
            match end {
                // Nothing runs and nothing will start by itself: what is left is held back.
                Some(End::Drain) if uploads.is_empty() && wakeup.is_none() => break,
                Some(End::Stop) if uploads.is_empty() => break,
                _ => {}
            }
            let watching = end.is_none() && self.watcher.is_some();
            tokio::select! {
                changes = async { self.watcher.as_mut().expect("watching").next().await }, if watching => {
                    match changes {
                        Ok(changes) => self.apply(changes),
                        Err(e) => {
                            (self.notes)(format!(
                                "{}: warning: watching stopped ({e}); the rest is uploaded when \
                                 the script ends",
                                self.spec.reference
                            ));
                            self.watcher = None;
                        }
                    }
                }
                Some(done) = uploads.next(), if !uploads.is_empty() => {
                    if done.finished == Finished::Durable {
                        self.report.files += 1;
                        self.report.bytes += done.size;
                        if let Some(stamp) = done.stamp {
                            self.uploaded.insert(done.ready.path.clone(), stamp);
                        }
                    }
                    self.queue.finished(&done.ready, done.finished, Instant::now());
                }
                _ = tokio::time::sleep_until(wakeup.unwrap_or(now).into()), if wakeup.is_some() => {}
                how = &mut ended, if end.is_none() => {
                    end = Some(how);
                    if how == End::Drain {
                        self.final_scan();
                    }
                }
            }
        }
        if end == Some(End::Drain) {
            let held = self.queue.take_held();
            for (path, error) in held.failures {
                self.report.errors.push(FileFailure {
                    path: self.dest_of(&path).map_or(path, |d| d.to_string()),
                    error,
                    local: false,
                });
            }
            for path in held.temporaries {
                self.report.skipped.push(super::Skipped {
                    path: self.spec.root.join(&path).display().to_string(),
                    reason: super::SkipReason::Temporary,
                    detail: None,
                });
            }
            if let Some(journal) = journal.filter(|_| self.report.errors.is_empty()) {
                journal.done().await;
            }
        }
        self.publish(0);
        self.report.duration = started.elapsed();
        self.report
    }

    fn apply(&mut self, changes: Vec<Change>) {
        let now = Instant::now();
        for change in changes {
            match change {
                Change::Closed(path) => self.queue.closed(path, now),
                Change::Removed(path) => self.queue.removed(&path),
                Change::Appeared(paths) => self.queue.appeared(paths, now),
                Change::Overflow => {
                    // Watches for the folders made meanwhile, then whatever changed.
                    if let Some(Err(e)) = self.watcher.as_mut().map(Watcher::rewatch) {
                        self.tell(format!("warning: rescanning after lost events: {e}"));
                    }
                    let changed = self.changed_since_upload();
                    self.queue.appeared(changed, now);
                }
                Change::RootGone => self.tell(format!(
                    "warning: {} was removed; what is written there from now on is uploaded \
                     when the script ends",
                    self.spec.root.display()
                )),
            }
        }
        self.tell_unwatched();
    }

    fn tell(&self, line: String) {
        (self.notes)(format!("{}: {line}", self.spec.reference));
    }

    /// Folders the kernel would not watch (the inotify watch limit), once each.
    fn tell_unwatched(&mut self) {
        let Some(watcher) = &self.watcher else { return };
        for (folder, error) in &watcher.unwatched[self.unwatched_told..] {
            self.tell(format!(
                "warning: cannot watch {folder} ({error}); its files are uploaded when the \
                 script ends"
            ));
        }
        self.unwatched_told = watcher.unwatched.len();
    }

    /// The script ended: the events still queued, then every file not uploaded as it is now
    /// (files never closed for writing, folders that could not be watched).
    fn final_scan(&mut self) {
        if let Some(watcher) = self.watcher.as_mut()
            && let Ok(changes) = watcher.ready_now()
        {
            self.apply(changes);
        }
        let changed = self.changed_since_upload();
        self.queue.appeared(changed, Instant::now());
        self.queue.drain(Instant::now());
    }

    /// Files not waiting, not uploading, and not in storage as they are now.
    fn changed_since_upload(&mut self) -> Vec<RelPath> {
        let scan = match &self.watcher {
            Some(watcher) => watcher.scan(),
            None => Watcher::new(
                &self.engine.local,
                &self.spec.root,
                self.spec.exclude.clone(),
            )
            .and_then(|w| w.scan()),
        };
        let files = match scan {
            Ok(files) => files,
            Err(e) => {
                self.report.errors.push(FileFailure {
                    path: self.spec.root.display().to_string(),
                    error: format!("cannot list the folder: {e}"),
                    local: true,
                });
                return Vec::new();
            }
        };
        files
            .into_iter()
            .filter(|rel| {
                let now = stamp_of(&self.engine.local, &self.spec.root.join(rel));
                now.is_some() && !self.queue.holds(rel) && self.uploaded.get(rel) != now.as_ref()
            })
            .collect()
    }

    /// One file's upload; its outcome is recorded here, its place in the order by the caller.
    fn upload<'a>(
        &self,
        ready: Ready,
        journal: Option<ReferenceJournal<'a>>,
        unless_open_for_writing: bool,
    ) -> impl std::future::Future<Output = Done> + 'a {
        let engine = self.engine.clone();
        let store = self.store.clone();
        let source = self.spec.root.join(&ready.path);
        let dest = self.dest_of(&ready.path);
        let state = self.state.clone();
        let notes = self.notes.clone();
        let reference = self.spec.reference.clone();
        let prefix = self.spec.prefix.clone();
        async move {
            let Ok(dest) = dest else {
                notes(format!(
                    "{reference}: {} is not a valid object name; not uploaded",
                    ready.path
                ));
                return Done::new(ready, Finished::Gone);
            };
            let before = stamp_of(&engine.local, &source);
            let uploading = upload_one(
                &engine,
                store.as_ref(),
                &source,
                &dest,
                journal,
                unless_open_for_writing,
            );
            let finished = match uploading.await {
                Ok(super::OneFile::Uploaded { size }) => {
                    durable(
                        &state,
                        &prefix,
                        &dest,
                        size,
                        ready.marker,
                        &notes,
                        &reference,
                    );
                    return Done {
                        ready,
                        finished: Finished::Durable,
                        stamp: before,
                        size,
                    };
                }
                Ok(super::OneFile::Gone | super::OneFile::OpenForWriting) => Finished::Gone,
                Ok(super::OneFile::Changed) => Finished::Changed,
                // A file that shrank or vanished under the read is a change, not a failure.
                Err(_) if stamp_of(&engine.local, &source) != before => Finished::Changed,
                Err(error) => {
                    notes(format!("{reference}: {}: {error}", ready.path));
                    Finished::Failed(error)
                }
            };
            Done::new(ready, finished)
        }
    }

    fn publish(&self, uploading: usize) {
        let mut state = self.state.lock().unwrap();
        state.pending = self.queue.pending() as u64;
        state.uploading = uploading as u64;
    }
}

/// A finished upload, as the loop needs it.
struct Done {
    ready: Ready,
    finished: Finished,
    /// The file's stamp before a durable upload read it.
    stamp: Option<Stamp>,
    size: u64,
}

impl Done {
    fn new(ready: Ready, finished: Finished) -> Self {
        Self {
            ready,
            finished,
            stamp: None,
            size: 0,
        }
    }
}

/// Records a committed upload, and the checkpoint it completes when it is a marker.
fn durable(
    state: &SharedSyncState,
    prefix: &ObjectPath,
    dest: &ObjectPath,
    size: u64,
    marker: bool,
    notes: &Notes,
    reference: &str,
) {
    let at = now_seconds();
    let mut state = state.lock().unwrap();
    state.add(DurableFile {
        path: dest.to_string(),
        size,
        durable_at: at,
    });
    if !marker {
        return;
    }
    let folder = dest.parent().unwrap_or_else(ObjectPath::root);
    let (files, bytes) = state
        .files
        .iter()
        .filter(|f| is_under(&f.path, folder.as_str()))
        .fold((0, 0), |(n, b), f| (n + 1, b + f.size));
    let checkpoint = folder
        .strip_prefix(prefix)
        .map(|p| p.to_string())
        .unwrap_or_default();
    notes(format!(
        "{reference}: checkpoint {} durable ({} files, {} bytes; marker {})",
        match checkpoint.as_str() {
            "" => ".",
            name => name,
        },
        files,
        bytes,
        dest
    ));
    state.checkpoints.push(CheckpointRecord {
        checkpoint,
        marker: dest.to_string(),
        files,
        bytes,
        durable_at: at,
    });
}
