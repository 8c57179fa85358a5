//! The job's data-path figures: one [`ReferenceMetrics`] per reference, built when the job
//! starts and handed to each reference's store, retry policy, transfers and mount; written
//! every second to `<job-dir>/live.json` (what `dataref status` and the daemon's metrics read
//! while the job runs), and into `result.json` with the job log's one-line summary at the end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::result::{DataWait, JobResult};
use crate::fs::cache::DiskCache;
use crate::manifest::JobPlan;
use crate::model::MemoryBudget;
use crate::model::durable::{SharedSyncState, SyncState};
use crate::model::metrics::{LiveFigures, ReferenceMetrics};

/// The live figures' file in the job directory.
pub const LIVE_FILE: &str = "live.json";
/// Continuous outputs' durable files and checkpoints (`<job-dir>/durable.json`), rewritten with
/// `live.json` when they changed: the daemon's job record shows them while the job runs.
pub const DURABLE_FILE: &str = "durable.json";
/// How often `live.json` is rewritten while the job runs.
const LIVE_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct JobFigures {
    inner: Arc<Inner>,
}

struct Inner {
    references: BTreeMap<String, Arc<ReferenceMetrics>>,
    /// Mounts' disk caches, added as they are made (their hits and misses).
    caches: Mutex<BTreeMap<String, Arc<DiskCache>>>,
    /// Outputs uploaded while the script runs, added as they start.
    syncs: Mutex<BTreeMap<String, SharedSyncState>>,
    /// The syncs' revisions when `durable.json` was last written.
    durable_written: Mutex<u64>,
    budget: MemoryBudget,
    started: Instant,
}

impl JobFigures {
    pub fn new(plan: &JobPlan, budget: &MemoryBudget) -> Self {
        let references = plan
            .references
            .iter()
            .map(|r| (r.name.clone(), ReferenceMetrics::new()))
            .collect();
        Self {
            inner: Arc::new(Inner {
                references,
                caches: Mutex::default(),
                syncs: Mutex::default(),
                durable_written: Mutex::default(),
                budget: budget.clone(),
                started: Instant::now(),
            }),
        }
    }

    /// The figures of reference `name` (one of the plan's).
    pub fn of(&self, name: &str) -> Arc<ReferenceMetrics> {
        self.inner.references[name].clone()
    }

    pub fn add_cache(&self, name: &str, cache: Arc<DiskCache>) {
        self.inner
            .caches
            .lock()
            .unwrap()
            .insert(name.to_owned(), cache);
    }

    pub fn add_sync(&self, name: &str, state: SharedSyncState) {
        self.inner
            .syncs
            .lock()
            .unwrap()
            .insert(name.to_owned(), state);
    }

    pub fn snapshot(&self) -> LiveFigures {
        let caches = self.inner.caches.lock().unwrap();
        let references = self
            .inner
            .references
            .iter()
            .map(|(name, metrics)| {
                let cache = caches.get(name).map(|c| {
                    let stats = c.stats();
                    (stats.hits, stats.misses)
                });
                (name.clone(), metrics.snapshot(cache))
            })
            .collect();
        LiveFigures {
            updated_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            budget_bytes: self.inner.budget.bytes(),
            budget_in_use_bytes: self.inner.budget.held_bytes(),
            references,
            outputs: self
                .inner
                .syncs
                .lock()
                .unwrap()
                .iter()
                .map(|(name, state)| (name.clone(), state.lock().unwrap().live()))
                .collect(),
        }
    }

    /// Writes `live.json` atomically; a failure is only logged (figures are not the job).
    pub fn write_live(&self, job_dir: &Path) {
        let path = job_dir.join(LIVE_FILE);
        let temp = job_dir.join(".live.json.tmp");
        let written = serde_json::to_vec(&self.snapshot())
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&temp, bytes))
            .and_then(|()| std::fs::rename(&temp, &path));
        if let Err(e) = written {
            tracing::debug!("cannot write {}: {e}", path.display());
        }
        self.write_durable(job_dir);
    }

    /// `durable.json`, when a continuous output made a file durable since it was last written.
    fn write_durable(&self, job_dir: &Path) {
        let states: BTreeMap<String, SyncState> = self
            .inner
            .syncs
            .lock()
            .unwrap()
            .iter()
            .map(|(name, state)| (name.clone(), state.lock().unwrap().clone()))
            .collect();
        let revision = states.values().map(|s| s.revision).sum::<u64>();
        let mut written = self.inner.durable_written.lock().unwrap();
        if states.is_empty() || revision == *written {
            return;
        }
        let path = job_dir.join(DURABLE_FILE);
        let temp = job_dir.join(".durable.json.tmp");
        let done = serde_json::to_vec(&states)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&temp, bytes))
            .and_then(|()| std::fs::rename(&temp, &path));
        match done {
            Ok(()) => *written = revision,
            Err(e) => tracing::debug!("cannot write {}: {e}", path.display()),
        }
    }

    /// Rewrites `live.json` every second until the returned guard is dropped.
    pub fn keep_live(&self, job_dir: PathBuf) -> LiveWriter {
        let figures = self.clone();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(LIVE_EVERY);
            loop {
                ticks.tick().await;
                let (figures, dir) = (figures.clone(), job_dir.clone());
                let _ = tokio::task::spawn_blocking(move || figures.write_live(&dir)).await;
            }
        });
        LiveWriter(task)
    }

    /// Copies the figures into `result` and returns the job log's summary line.
    pub fn record(&self, result: &mut JobResult) -> String {
        let snapshot = self.snapshot();
        let mut waited = 0.0;
        for (name, figures) in snapshot.references {
            waited += figures.wait_seconds;
            if let Some(outcome) = result.references.get_mut(&name) {
                outcome.io = figures;
            }
        }
        let of = self.inner.started.elapsed().as_secs_f64();
        let wait = DataWait::new(waited, of);
        let line = wait.summary();
        result.data_wait = Some(wait);
        line
    }
}

/// Stops the `live.json` writer when dropped.
pub struct LiveWriter(tokio::task::JoinHandle<()>);

impl Drop for LiveWriter {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `12.4 s`, `3,600 s`: seconds with one decimal below 100, grouped thousands above.
pub fn seconds(value: f64) -> String {
    if value < 100.0 {
        return format!("{value:.1} s");
    }
    let whole = value.round() as u64;
    let digits = whole.to_string();
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("{grouped} s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_reads_like_the_issue() {
        assert_eq!(seconds(12.4), "12.4 s");
        assert_eq!(seconds(3600.0), "3,600 s");
        assert_eq!(seconds(1234567.4), "1,234,567 s");
        let wait = DataWait::new(12.4, 3600.0);
        assert_eq!(wait.summary(), "waited on data 12.4 s of 3,600 s (0.3 %)");
    }
}
