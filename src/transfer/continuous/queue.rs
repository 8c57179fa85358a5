//! The order in which a continuously synced folder's files are uploaded: no kernel, no store,
//! no clock of its own (the caller passes `now`), so every rule is tested here.
//!
//! Rules:
//! - files are uploaded in the order they were closed (or renamed into place), each once it has
//!   been quiet for the settle delay, so a write-then-rename is seen as the rename;
//! - a file under a temporary name (`tmp-checkpoint-3/…`, `.metadata.tmp`) waits for its rename
//!   and is never uploaded under that name;
//! - a commit marker (`.metadata`, `trainer_state.json`, `commit_files`) is uploaded only after
//!   every file closed before it in its folder (and the folders below) is durable — the latest
//!   version of it, when it was closed again since — so storage never holds a marker whose data
//!   is missing; a failed upload before it holds it back;
//! - one upload per name at a time: a file closed again while uploading is uploaded again after.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use globset::{Glob, GlobSet, GlobSetBuilder};

/// A path under the synced folder, `/`-separated, never empty.
pub type RelPath = String;

/// Names that mark a checkpoint complete whatever the job says: PyTorch DCP's `.metadata`
/// (written last, by rename) and the Hugging Face `Trainer`'s `trainer_state.json`.
const BUILT_IN_MARKERS: [&str; 2] = [".metadata", "trainer_state.json"];

/// Which names are commit markers and how long a closed file must stay quiet.
#[derive(Debug, Clone)]
pub struct Rules {
    markers: GlobSet,
    pub settle: Duration,
}

impl Rules {
    /// `commit_files` are globs matched against a file's name and its path under the folder.
    pub fn new(commit_files: &[String], settle: Duration) -> Result<Self, globset::Error> {
        let mut builder = GlobSetBuilder::new();
        for glob in BUILT_IN_MARKERS.iter().copied().map(str::to_owned) {
            builder.add(Glob::new(&globset::escape(&glob))?);
        }
        for glob in commit_files {
            builder.add(Glob::new(glob)?);
        }
        Ok(Self {
            markers: builder.build()?,
            settle,
        })
    }

    pub fn is_marker(&self, path: &str) -> bool {
        self.markers.is_match(file_name(path)) || self.markers.is_match(path)
    }
}

/// Whether any part of `path` is a temporary name: what trainers write and then rename
/// (`tmp-checkpoint-N/`, `.metadata.tmp`, tempfile's `.tmpXXXXXX`, `*.partial`, editors' `~`).
pub fn is_temporary(path: &str) -> bool {
    path.split('/').any(|part| {
        part.starts_with("tmp-")
            || part.starts_with(".tmp")
            || part.ends_with(".tmp")
            || part.ends_with(".temp")
            || part.ends_with(".partial")
            || part.ends_with('~')
    })
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// `path` is `dir` or below it (`""` is the whole folder).
pub fn is_under(path: &str, dir: &str) -> bool {
    dir.is_empty()
        || path == dir
        || (path.starts_with(dir) && path.as_bytes().get(dir.len()) == Some(&b'/'))
}

fn parent(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

#[derive(Debug, Clone)]
struct Entry {
    path: RelPath,
    /// Not before this moment (close + settle, or a retry's backoff).
    not_before: Instant,
    marker: bool,
    /// The earliest close of this name not in storage yet: a marker closed after it waits for
    /// this entry even when the file was closed again since (rewritten in place).
    since: u64,
}

/// An upload the queue handed out: report it back with [`Queue::finished`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    pub seq: u64,
    pub path: RelPath,
    pub marker: bool,
    since: u64,
}

/// How an upload ended, as the queue needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    Durable,
    /// The file was gone, is not a regular file, or is open for writing again (its next close
    /// queues it): nothing to upload now, nothing to wait for.
    Gone,
    /// Changed while being read: uploaded again (its close event may already be queued).
    Changed,
    Failed(String),
}

/// What was left when the queue stopped.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// Files not uploaded, with why: failures, and the markers they held back.
    pub failures: Vec<(RelPath, String)>,
    /// Files under temporary names, never renamed into place: not uploaded.
    pub temporaries: Vec<RelPath>,
}

/// The pending uploads of one folder.
#[derive(Debug)]
pub struct Queue {
    rules: Rules,
    next_seq: u64,
    /// By close order.
    pending: BTreeMap<u64, Entry>,
    by_path: HashMap<RelPath, u64>,
    /// Being uploaded, by close order: path and `since`.
    in_flight: BTreeMap<u64, (RelPath, u64)>,
    /// Uploads that failed for good (after the script ended), by close order: they hold back
    /// the markers closed after them.
    failed: BTreeMap<u64, (RelPath, String, u64)>,
    /// The script ended: settle delays and retry backoffs no longer hold anything back.
    draining: bool,
    /// How long a failed upload waits before it is tried again while the script runs.
    pub retry_after: Duration,
}

impl Queue {
    pub fn new(rules: Rules) -> Self {
        Self {
            rules,
            next_seq: 0,
            pending: BTreeMap::new(),
            by_path: HashMap::new(),
            in_flight: BTreeMap::new(),
            failed: BTreeMap::new(),
            draining: false,
            retry_after: Duration::from_secs(5),
        }
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// `path` was closed after writing, or renamed into place: it goes to the end of the order.
    pub fn closed(&mut self, path: RelPath, now: Instant) {
        let outstanding = self
            .by_path
            .get(&path)
            .map(|seq| self.pending[seq].since)
            .into_iter()
            .chain(
                self.in_flight
                    .values()
                    .filter(|(p, _)| *p == path)
                    .map(|(_, since)| *since),
            )
            .min();
        self.forget_pending(&path);
        let marker = self.rules.is_marker(&path);
        let seq = self.next_seq;
        self.next_seq += 1;
        let since = outstanding.unwrap_or(seq);
        self.insert(seq, path, now + self.rules.settle, marker, since);
    }

    /// Files found at once (a folder renamed into place, a rescan): the markers among them go
    /// after the rest, so a renamed checkpoint folder's marker waits for all its files.
    pub fn appeared(&mut self, mut paths: Vec<RelPath>, now: Instant) {
        paths.sort_by_key(|p| self.rules.is_marker(p));
        for path in paths {
            self.closed(path, now);
        }
    }

    /// `path` (a file, or a folder and everything below it) was removed or moved away before
    /// its upload started: it is not uploaded under that name.
    pub fn removed(&mut self, path: &str) {
        let gone: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, e)| is_under(&e.path, path))
            .map(|(seq, _)| *seq)
            .collect();
        for seq in gone {
            let entry = self.pending.remove(&seq).expect("listed above");
            self.by_path.remove(&entry.path);
        }
        self.failed.retain(|_, (p, _, _)| !is_under(p, path));
    }

    /// The script ended: every file is uploaded under the name it has now, without delay
    /// (temporary names still are not).
    pub fn drain(&mut self, now: Instant) {
        self.draining = true;
        for entry in self.pending.values_mut() {
            entry.not_before = entry.not_before.min(now);
        }
    }

    /// Whether `path` is waiting or being uploaded.
    pub fn holds(&self, path: &str) -> bool {
        self.by_path.contains_key(path) || self.in_flight.values().any(|(p, _)| p == path)
    }

    /// The next upload that may start now, marked in flight.
    pub fn next_ready(&mut self, now: Instant) -> Option<Ready> {
        let seq = self
            .pending
            .iter()
            .find(|(seq, entry)| self.may_start(**seq, entry, now))
            .map(|(seq, _)| *seq)?;
        let entry = self.pending.remove(&seq).expect("found above");
        self.by_path.remove(&entry.path);
        self.in_flight
            .insert(seq, (entry.path.clone(), entry.since));
        Some(Ready {
            seq,
            path: entry.path,
            marker: entry.marker,
            since: entry.since,
        })
    }

    fn may_start(&self, seq: u64, entry: &Entry, now: Instant) -> bool {
        if entry.not_before > now
            || is_temporary(&entry.path)
            || self.in_flight.values().any(|(p, _)| *p == entry.path)
        {
            return false;
        }
        !entry.marker || self.blocker_of(seq, &entry.path).is_none()
    }

    /// A file closed before marker `seq` in its folder (or below) that is not durable yet.
    fn blocker_of(&self, seq: u64, marker: &str) -> Option<&str> {
        let dir = parent(marker);
        let blocks = |path: &str, since: u64| {
            since < seq && path != marker && is_under(path, dir) && !is_temporary(path)
        };
        let in_flight = self.in_flight.values().map(|(p, s)| (p.as_str(), *s));
        let failed = self.failed.values().map(|(p, _, s)| (p.as_str(), *s));
        let pending = self.pending.values().map(|e| (e.path.as_str(), e.since));
        in_flight
            .chain(failed)
            .chain(pending)
            .find(|(path, since)| blocks(path, *since))
            .map(|(path, _)| path)
    }

    /// Reports how the upload of `ready` ended.
    pub fn finished(&mut self, ready: &Ready, how: Finished, now: Instant) {
        self.in_flight.remove(&ready.seq);
        let again = match how {
            Finished::Durable | Finished::Gone => return,
            Finished::Changed => None,
            Finished::Failed(error) => Some(error),
        };
        // Closed again meanwhile: that entry is the one to upload, and it inherits this
        // upload's place for the markers after it.
        if let Some(seq) = self.by_path.get(&ready.path) {
            let entry = self.pending.get_mut(seq).expect("indexed");
            entry.since = entry.since.min(ready.since);
            return;
        }
        match (again, self.draining) {
            (None, _) => self.insert(
                ready.seq,
                ready.path.clone(),
                now + self.rules.settle,
                ready.marker,
                ready.since,
            ),
            (Some(error), true) => {
                self.failed
                    .insert(ready.seq, (ready.path.clone(), error, ready.since));
            }
            // Kept in its place, so the markers after it keep waiting for it.
            (Some(_), false) => self.insert(
                ready.seq,
                ready.path.clone(),
                now + self.retry_after,
                ready.marker,
                ready.since,
            ),
        }
    }

    /// Nothing pending and nothing in flight (failures aside).
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_empty() && self.pending.is_empty()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// When the earliest file that waits only for time (a settle delay, a retry's backoff)
    /// may start; files waiting for something else are woken by events and finished uploads.
    pub fn next_wakeup(&self, now: Instant) -> Option<Instant> {
        self.pending
            .values()
            .filter(|e| e.not_before > now && !is_temporary(&e.path))
            .map(|e| e.not_before)
            .min()
    }

    /// After a drain, what could not be uploaded.
    pub fn take_held(&mut self) -> Held {
        let mut held = Held::default();
        let pending: Vec<(u64, Entry)> = std::mem::take(&mut self.pending).into_iter().collect();
        self.by_path.clear();
        for (seq, entry) in &pending {
            if is_temporary(&entry.path) {
                held.temporaries.push(entry.path.clone());
                continue;
            }
            let why = match self.blocker_of(*seq, &entry.path) {
                Some(blocker) => format!(
                    "commit marker not uploaded: {blocker}, closed before it, is not in storage"
                ),
                None => "not uploaded".to_owned(),
            };
            held.failures.push((entry.path.clone(), why));
        }
        let failed = std::mem::take(&mut self.failed);
        held.failures
            .extend(failed.into_values().map(|(path, error, _)| (path, error)));
        held
    }

    fn insert(&mut self, seq: u64, path: RelPath, not_before: Instant, marker: bool, since: u64) {
        self.by_path.insert(path.clone(), seq);
        self.pending.insert(
            seq,
            Entry {
                path,
                not_before,
                marker,
                since,
            },
        );
    }

    fn forget_pending(&mut self, path: &str) {
        if let Some(seq) = self.by_path.remove(path) {
            self.pending.remove(&seq);
        }
    }
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
