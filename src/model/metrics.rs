//! What the data path costs a job, counted where it happens: per reference, the bytes and files
//! moved, the storage requests by operation and outcome with their latency, the retries, and
//! the time a reader spent blocked on a FUSE request (from its arrival to its reply) by kind.
//!
//! [`ReferenceMetrics`] is a set of atomics the job builds once per reference and hands to the
//! store wrapper (`store::metered`), the transfer engine's retry policy and the mount; a
//! [`ReferenceFigures`] is its serialisable snapshot, written into `result.json`, the job's
//! live figures (`live.json`) and, by the daemon, into the Prometheus exposition. Histograms
//! keep fixed buckets ([`LATENCY_BUCKETS`]), so snapshots of many processes can be exposed
//! as they are.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Upper bounds (seconds) of the latency buckets: 100 µs to 30 s; one more bucket is +Inf.
pub const LATENCY_BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// A latency histogram with [`LATENCY_BUCKETS`].
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket, not cumulative; the last is +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let index = LATENCY_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramFigures {
        HistogramFigures {
            count: self.count.load(Ordering::Relaxed),
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

/// A histogram's snapshot: `buckets[i]` counts observations in bucket `i` (not cumulative;
/// the last is +Inf).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistogramFigures {
    pub count: u64,
    pub sum_seconds: f64,
    pub buckets: Vec<u64>,
}

impl HistogramFigures {
    /// Cumulative counts paired with their upper bounds, +Inf last (Prometheus' form).
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        LATENCY_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.buckets.iter().chain(std::iter::repeat(&0)))
            .map(|(bound, &n)| {
                total += n;
                (bound, total)
            })
            .collect()
    }
}

/// The FUSE requests timed, by the operation the kernel asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FuseOp {
    Lookup,
    Getattr,
    Open,
    Readdir,
    Read,
}

impl FuseOp {
    pub const ALL: [FuseOp; 5] = [
        FuseOp::Lookup,
        FuseOp::Getattr,
        FuseOp::Open,
        FuseOp::Readdir,
        FuseOp::Read,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FuseOp::Lookup => "lookup",
            FuseOp::Getattr => "getattr",
            FuseOp::Open => "open",
            FuseOp::Readdir => "readdir",
            FuseOp::Read => "read",
        }
    }

    /// The kind of wait it is reported under: `lookup` (names and attributes), `readdir`,
    /// `read`.
    pub fn wait_kind(self) -> &'static str {
        match self {
            FuseOp::Lookup | FuseOp::Getattr | FuseOp::Open => "lookup",
            FuseOp::Readdir => "readdir",
            FuseOp::Read => "read",
        }
    }
}

/// Storage requests, by the `Store` operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    List,
    Head,
    Get,
    Put,
    PutPart,
    Commit,
    Delete,
}

impl StoreOp {
    pub const ALL: [StoreOp; 7] = [
        StoreOp::List,
        StoreOp::Head,
        StoreOp::Get,
        StoreOp::Put,
        StoreOp::PutPart,
        StoreOp::Commit,
        StoreOp::Delete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StoreOp::List => "list",
            StoreOp::Head => "head",
            StoreOp::Get => "get",
            StoreOp::Put => "put",
            StoreOp::PutPart => "put_part",
            StoreOp::Commit => "commit",
            StoreOp::Delete => "delete",
        }
    }
}

/// How a storage request ended: a name that does not exist is an answer, not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    NotFound,
    Error,
}

#[derive(Debug, Default)]
struct OpCounters {
    ok: AtomicU64,
    not_found: AtomicU64,
    errors: AtomicU64,
    latency: Histogram,
}

/// One reference's live counters. Cloning an `Arc` of it shares them.
#[derive(Debug, Default)]
pub struct ReferenceMetrics {
    fuse: [Histogram; FuseOp::ALL.len()],
    store: [OpCounters; StoreOp::ALL.len()],
    /// Bytes the job received or sent through this reference.
    bytes: AtomicU64,
    /// Files transferred, or opened through the mount.
    files: AtomicU64,
    /// Retries decided by the retry policy (every layer that retries).
    retries: Arc<AtomicU64>,
    /// Time spent on staging (downloads, before the script) or stage-out (uploads, after it).
    transfer_wait_nanos: AtomicU64,
}

impl ReferenceMetrics {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Times one FUSE request from now until the returned guard is dropped (after the reply).
    pub fn fuse_request(self: &Arc<Self>, op: FuseOp) -> FuseTimer {
        FuseTimer {
            metrics: self.clone(),
            op,
            started: Instant::now(),
        }
    }

    pub fn observe_fuse(&self, op: FuseOp, elapsed: Duration) {
        self.fuse[op as usize].observe(elapsed);
    }

    pub fn observe_store(&self, op: StoreOp, outcome: Outcome, elapsed: Duration) {
        let counters = &self.store[op as usize];
        match outcome {
            Outcome::Ok => counters.ok.fetch_add(1, Ordering::Relaxed),
            Outcome::NotFound => counters.not_found.fetch_add(1, Ordering::Relaxed),
            Outcome::Error => counters.errors.fetch_add(1, Ordering::Relaxed),
        };
        counters.latency.observe(elapsed);
    }

    pub fn add_bytes(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn add_files(&self, files: u64) {
        self.files.fetch_add(files, Ordering::Relaxed);
    }

    /// Sets the transfer figures from a finished transfer's report.
    pub fn set_transferred(&self, files: u64, bytes: u64) {
        self.files.store(files, Ordering::Relaxed);
        self.bytes.store(bytes, Ordering::Relaxed);
    }

    pub fn add_transfer_wait(&self, elapsed: Duration) {
        self.transfer_wait_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    /// The counter the retry policy adds each retry to.
    pub fn retry_counter(&self) -> Arc<AtomicU64> {
        self.retries.clone()
    }

    /// A snapshot; `cache` is the disk cache's (hits, misses) when the reference has one.
    pub fn snapshot(&self, cache: Option<(u64, u64)>) -> ReferenceFigures {
        let fuse: BTreeMap<String, HistogramFigures> = FuseOp::ALL
            .iter()
            .map(|&op| (op.as_str().to_owned(), self.fuse[op as usize].snapshot()))
            .filter(|(_, h)| h.count > 0)
            .collect();
        let storage: BTreeMap<String, OpFigures> = StoreOp::ALL
            .iter()
            .map(|&op| {
                let c = &self.store[op as usize];
                let figures = OpFigures {
                    ok: c.ok.load(Ordering::Relaxed),
                    not_found: c.not_found.load(Ordering::Relaxed),
                    errors: c.errors.load(Ordering::Relaxed),
                    latency: c.latency.snapshot(),
                };
                (op.as_str().to_owned(), figures)
            })
            .filter(|(_, f)| f.requests() > 0)
            .collect();
        let mut wait_by_kind = BTreeMap::new();
        for op in FuseOp::ALL {
            if let Some(h) = fuse.get(op.as_str()) {
                *wait_by_kind.entry(op.wait_kind().to_owned()).or_insert(0.0) += h.sum_seconds;
            }
        }
        let transfer_wait = self.transfer_wait_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let fuse_wait: f64 = wait_by_kind.values().sum();
        ReferenceFigures {
            bytes: self.bytes.load(Ordering::Relaxed),
            files: self.files.load(Ordering::Relaxed),
            requests: storage.values().map(OpFigures::requests).sum(),
            retries: self.retries.load(Ordering::Relaxed),
            errors: storage.values().map(|f| f.errors).sum(),
            cache_hits: cache.map(|c| c.0),
            cache_misses: cache.map(|c| c.1),
            wait_seconds: round(transfer_wait + fuse_wait),
            wait_by_kind: wait_by_kind
                .into_iter()
                .map(|(k, v)| (k, round(v)))
                .collect(),
            fuse,
            storage,
        }
    }
}

fn round(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

/// Records a FUSE request's time when dropped.
#[derive(Debug)]
pub struct FuseTimer {
    metrics: Arc<ReferenceMetrics>,
    op: FuseOp,
    started: Instant,
}

impl Drop for FuseTimer {
    fn drop(&mut self) {
        self.metrics.observe_fuse(self.op, self.started.elapsed());
    }
}

/// One storage operation's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OpFigures {
    pub ok: u64,
    /// Answered "no such name" (a lookup of a name that is not there).
    #[serde(default)]
    pub not_found: u64,
    pub errors: u64,
    pub latency: HistogramFigures,
}

impl OpFigures {
    pub fn requests(&self) -> u64 {
        self.ok + self.not_found + self.errors
    }
}

/// What one reference cost, as `result.json` (`io`), `live.json` and the metrics show it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReferenceFigures {
    /// Bytes received (mount: served to readers; download) or sent (upload).
    pub bytes: u64,
    /// Files transferred, or opened through the mount.
    pub files: u64,
    /// Storage requests (every attempt), and how many of them failed (a name that does not
    /// exist is not a failure).
    pub requests: u64,
    pub retries: u64,
    pub errors: u64,
    /// Mounts with a disk cache: 1 MiB blocks found in it and fetched for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_hits: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_misses: Option<u64>,
    /// The time the script waited on dataref for this reference: a mount's FUSE requests
    /// (summed over requests), a download's staging, an upload's stage-out.
    pub wait_seconds: f64,
    /// A mount's wait by kind: `lookup` (lookups, attributes, opens), `readdir`, `read`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub wait_by_kind: BTreeMap<String, f64>,
    /// FUSE request latency by operation.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fuse: BTreeMap<String, HistogramFigures>,
    /// Storage requests by operation.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub storage: BTreeMap<String, OpFigures>,
}

/// A job's live figures (`<job-dir>/live.json`), rewritten every second while it runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LiveFigures {
    /// Seconds since the epoch when written.
    pub updated_at: f64,
    pub budget_bytes: u64,
    pub budget_in_use_bytes: u64,
    pub references: BTreeMap<String, ReferenceFigures>,
    /// Outputs uploaded while the script runs (`sync: continuous`): what is durable.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, super::durable::SyncLive>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_bucket_and_sum_observations() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(100));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert!(
            (s.sum_seconds - 100.00305).abs() < 1e-6,
            "{}",
            s.sum_seconds
        );
        let cumulative = s.cumulative();
        assert_eq!(cumulative[0], (0.0001, 1));
        assert_eq!(cumulative[5], (0.005, 2));
        assert_eq!(cumulative.last().unwrap(), &(f64::INFINITY, 3));
    }

    #[test]
    fn fuse_waits_are_summed_by_kind() {
        let m = ReferenceMetrics::new();
        m.observe_fuse(FuseOp::Read, Duration::from_millis(1500));
        m.observe_fuse(FuseOp::Read, Duration::from_millis(500));
        m.observe_fuse(FuseOp::Lookup, Duration::from_millis(100));
        m.observe_fuse(FuseOp::Getattr, Duration::from_millis(100));
        drop(m.fuse_request(FuseOp::Readdir));
        m.observe_store(StoreOp::Get, Outcome::Ok, Duration::from_millis(1));
        m.observe_store(StoreOp::Get, Outcome::Error, Duration::from_millis(1));
        m.observe_store(StoreOp::Head, Outcome::NotFound, Duration::from_millis(1));
        m.retry_counter().fetch_add(2, Ordering::Relaxed);
        let f = m.snapshot(Some((3, 4)));
        assert_eq!(f.wait_by_kind["read"], 2.0);
        assert_eq!(f.wait_by_kind["lookup"], 0.2);
        assert!(f.wait_by_kind.contains_key("readdir"));
        assert!((f.wait_seconds - 2.2).abs() < 0.01, "{}", f.wait_seconds);
        assert_eq!((f.requests, f.errors, f.retries), (3, 1, 2));
        assert_eq!((f.cache_hits, f.cache_misses), (Some(3), Some(4)));
        assert_eq!(f.fuse["read"].count, 2);
    }
}
