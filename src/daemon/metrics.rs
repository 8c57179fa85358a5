//! `GET /metrics`: the daemon's Prometheus exposition (OpenMetrics text, by the
//! `prometheus-client` crate), on the socket and on `--metrics-listen`.
//!
//! The figures of a job live in its `dataref run` process; it rewrites `<job-dir>/live.json`
//! every second (and a last time when it ends), and a scrape encodes what those files say —
//! one registry built at start with one collector, no second copy of any counter. Every series
//! is labelled by job id and reference name only: never a blob name, a path or a secret.
//! A job's series stay for [`ENDED_KEPT`] after it ended, so a scrape after a short job still
//! sees its final figures.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::Daemon;
use super::record::JobState;
use crate::job::figures::LIVE_FILE;
use crate::model::metrics::{HistogramFigures, LiveFigures};

/// How long a job's series are exposed after it ended.
pub const ENDED_KEPT: Duration = Duration::from_secs(600);

/// The Content-Type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

const STATES: [JobState; 7] = [
    JobState::Queued,
    JobState::Running,
    JobState::StagingOut,
    JobState::Succeeded,
    JobState::Failed,
    JobState::Cancelled,
    JobState::Interrupted,
];

/// The registry of the daemon's metrics, built once at start.
pub fn registry(daemon: Arc<Daemon>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(JobsCollector { daemon }));
    registry
}

/// The exposition of `registry`, now.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)
        .expect("writing to a String cannot fail");
    text
}

struct JobsCollector {
    daemon: Arc<Daemon>,
}

impl std::fmt::Debug for JobsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobsCollector")
    }
}

/// One job's figures, as its runner last wrote them.
struct Exposed {
    id: String,
    live: LiveFigures,
}

impl JobsCollector {
    /// Jobs that run, or ended less than [`ENDED_KEPT`] ago, with their live figures.
    fn exposed(&self) -> Vec<Exposed> {
        let now = super::record::now();
        self.daemon
            .ids()
            .into_iter()
            .filter_map(|id| {
                let record = self.daemon.view(&id)?;
                let recent = match record.finished_at {
                    None => record.started_at.is_some(),
                    Some(at) => now - at < ENDED_KEPT.as_secs_f64(),
                };
                if !recent {
                    return None;
                }
                let bytes = std::fs::read(self.daemon.job_dir(&id).join(LIVE_FILE)).ok()?;
                let live = serde_json::from_slice(&bytes).ok()?;
                Some(Exposed { id, live })
            })
            .collect()
    }
}

fn counter(encoder: &mut MetricEncoder, value: u64) -> Result<(), std::fmt::Error> {
    encoder.encode_counter::<NoLabelSet, u64, u64>(&value, None)
}

fn histogram(encoder: &mut MetricEncoder, h: &HistogramFigures) -> Result<(), std::fmt::Error> {
    encoder.encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &h.cumulative(), None)
}

impl Collector for JobsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut by_state = [0u64; STATES.len()];
        for id in self.daemon.ids() {
            if let Some(record) = self.daemon.view(&id) {
                by_state[STATES.iter().position(|s| *s == record.state).unwrap_or(0)] += 1;
            }
        }
        let mut jobs = encoder.encode_descriptor(
            "dataref_jobs",
            "Jobs the daemon knows, by state.",
            None,
            MetricType::Gauge,
        )?;
        for (state, n) in STATES.iter().zip(by_state) {
            let labels = [("state", state.as_str())];
            jobs.encode_family(&labels)?.encode_gauge(&n)?;
        }

        let exposed = self.exposed();
        let refs = || {
            exposed.iter().flat_map(|job| {
                job.live
                    .references
                    .iter()
                    .map(move |(name, figures)| (job.id.as_str(), name.as_str(), figures))
            })
        };
        type Figure = fn(&crate::model::metrics::ReferenceFigures) -> u64;
        let counters: [(&str, &str, Figure); 4] = [
            (
                "dataref_job_bytes",
                "Bytes a job's reference moved (mount: served to readers).",
                |f| f.bytes,
            ),
            (
                "dataref_job_files",
                "Files a job's reference moved, or opened through its mount.",
                |f| f.files,
            ),
            (
                "dataref_job_retries",
                "Storage requests retried for a job's reference.",
                |f| f.retries,
            ),
            (
                "dataref_job_cache_hits",
                "Disk-cache blocks a job's mount found cached.",
                |f| f.cache_hits.unwrap_or(0),
            ),
        ];
        for (name, help, value) in counters {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (job, reference, figures) in refs() {
                let labels = [("job_id", job), ("reference", reference)];
                counter(&mut metric.encode_family(&labels)?, value(figures))?;
            }
        }
        let mut misses = encoder.encode_descriptor(
            "dataref_job_cache_misses",
            "Disk-cache blocks a job's mount had to fetch.",
            None,
            MetricType::Counter,
        )?;
        for (job, reference, figures) in refs() {
            let labels = [("job_id", job), ("reference", reference)];
            counter(
                &mut misses.encode_family(&labels)?,
                figures.cache_misses.unwrap_or(0),
            )?;
        }

        let mut wait = encoder.encode_descriptor(
            "dataref_job_data_wait_seconds",
            "Time a job's script waited on dataref for a reference (mount: FUSE requests, \
             download: staging, upload: stage-out).",
            None,
            MetricType::Counter,
        )?;
        for (job, reference, figures) in refs() {
            let labels = [("job_id", job), ("reference", reference)];
            wait.encode_family(&labels)?
                .encode_counter::<NoLabelSet, f64, u64>(&figures.wait_seconds, None)?;
        }

        let mut requests = encoder.encode_descriptor(
            "dataref_storage_requests",
            "Storage requests of a job's reference, by operation and status.",
            None,
            MetricType::Counter,
        )?;
        for (job, reference, figures) in refs() {
            for (op, f) in &figures.storage {
                for (status, n) in [
                    ("ok", f.ok),
                    ("not_found", f.not_found),
                    ("error", f.errors),
                ] {
                    let labels = [
                        ("job_id", job),
                        ("reference", reference),
                        ("operation", op.as_str()),
                        ("status", status),
                    ];
                    counter(&mut requests.encode_family(&labels)?, n)?;
                }
            }
        }
        let mut latency = encoder.encode_descriptor(
            "dataref_storage_request_duration_seconds",
            "Storage request latency (to the first byte of the answer), by operation.",
            None,
            MetricType::Histogram,
        )?;
        for (job, reference, figures) in refs() {
            for (op, f) in &figures.storage {
                let labels = [("job_id", job), ("reference", reference), ("operation", op)];
                histogram(&mut latency.encode_family(&labels)?, &f.latency)?;
            }
        }
        let mut fuse = encoder.encode_descriptor(
            "dataref_fuse_request_duration_seconds",
            "FUSE request latency, from the kernel's request to the reply, by operation.",
            None,
            MetricType::Histogram,
        )?;
        for (job, reference, figures) in refs() {
            for (op, h) in &figures.fuse {
                let labels = [("job_id", job), ("reference", reference), ("operation", op)];
                histogram(&mut fuse.encode_family(&labels)?, h)?;
            }
        }

        type JobFigure = fn(&LiveFigures) -> u64;
        let gauges: [(&str, &str, JobFigure); 2] = [
            (
                "dataref_job_memory_budget_bytes",
                "A job's memory budget.",
                |l| l.budget_bytes,
            ),
            (
                "dataref_job_memory_budget_in_use_bytes",
                "Bytes of a job's memory budget held now.",
                |l| l.budget_in_use_bytes,
            ),
        ];
        for (name, help, value) in gauges {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for job in &exposed {
                let labels = [("job_id", job.id.as_str())];
                metric
                    .encode_family(&labels)?
                    .encode_gauge(&value(&job.live))?;
            }
        }
        Ok(())
    }
}
