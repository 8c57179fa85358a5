//! `GET /healthz` and `GET /readyz`, on the socket and on `--metrics-listen`.
//!
//! - healthz: the daemon's runtime still turns — a heartbeat task stamps the time every
//!   second; older than [`STALE`] is unhealthy (503).
//! - readyz: the socket is bound, the job records were loaded, the state directory keeps its
//!   free-space floor, and every datastore of the registry answers a one-entry listing within
//!   [`PROBE_TIMEOUT`] (one attempt, no retries). 503 otherwise, with a JSON body naming each
//!   problem (a datastore's name and the error; never a secret).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use super::Daemon;
use crate::model::settings::DEFAULT_RESERVED_FREE_DISK;
use crate::model::{ObjectPath, RetryPolicy};
use crate::store::{ListRequest, Resources};

/// A heartbeat older than this means the daemon's loop is stuck.
pub const STALE: Duration = Duration::from_secs(10);
/// How long a datastore may take to answer the readiness probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The state directory must keep this much free (the default disk floor of jobs).
pub const STATE_DIR_FLOOR: u64 = DEFAULT_RESERVED_FREE_DISK;

/// What the daemon's start-up has reached, and its heartbeat.
#[derive(Debug, Default)]
pub struct Health {
    socket_bound: AtomicBool,
    state_loaded: AtomicBool,
    /// Milliseconds since the epoch of the last heartbeat.
    beat_ms: AtomicU64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Health {
    pub fn set_socket_bound(&self) {
        self.socket_bound.store(true, Ordering::SeqCst);
    }

    pub fn set_state_loaded(&self) {
        self.state_loaded.store(true, Ordering::SeqCst);
    }

    pub fn beat(&self) {
        self.beat_ms.store(now_ms(), Ordering::SeqCst);
    }

    /// Stamps the heartbeat every second, for ever.
    pub async fn beat_forever(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        loop {
            ticks.tick().await;
            self.beat();
        }
    }
}

/// healthz: `(healthy, body)`.
pub fn healthz(daemon: &Daemon) -> (bool, Value) {
    let age_ms = now_ms().saturating_sub(daemon.health.beat_ms.load(Ordering::SeqCst));
    let healthy = Duration::from_millis(age_ms) < STALE;
    let mut body = json!({"status": if healthy { "ok" } else { "unhealthy" },
                          "heartbeat_age_seconds": age_ms as f64 / 1000.0});
    if !healthy {
        body["problems"] = json!([format!(
            "the daemon's loop has not run for {:.1} s",
            age_ms as f64 / 1000.0
        )]);
    }
    (healthy, body)
}

/// readyz: `(ready, body)`; the body lists every problem and each datastore's state.
pub async fn readyz(daemon: &Daemon) -> (bool, Value) {
    let mut problems = Vec::new();
    let health = &daemon.health;
    if !health.socket_bound.load(Ordering::SeqCst) || !daemon.config.socket.exists() {
        problems.push(format!(
            "the socket {} is not bound",
            daemon.config.socket.display()
        ));
    }
    if !health.state_loaded.load(Ordering::SeqCst) {
        problems.push("the job records are not loaded yet".to_owned());
    }
    match free_bytes(&daemon.config.state_dir) {
        Ok(free) if free < STATE_DIR_FLOOR => problems.push(format!(
            "{} has {free} bytes free, below the floor of {STATE_DIR_FLOOR}",
            daemon.config.state_dir.display()
        )),
        Ok(_) => {}
        Err(e) => problems.push(format!(
            "cannot read the free space of {}: {e}",
            daemon.config.state_dir.display()
        )),
    }
    let datastores = probe_datastores(&daemon.config.config_dir).await;
    let mut states = serde_json::Map::new();
    for (name, outcome) in datastores {
        match outcome {
            Ok(()) => {
                states.insert(name, json!("reachable"));
            }
            Err(e) => {
                problems.push(format!("datastore {name:?} is unreachable: {e}"));
                states.insert(name, json!(format!("unreachable: {e}")));
            }
        }
    }
    let ready = problems.is_empty();
    let body = json!({
        "status": if ready { "ready" } else { "unready" },
        "problems": problems,
        "datastores": states,
    });
    (ready, body)
}

fn free_bytes(dir: &Path) -> nix::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(dir)?;
    Ok(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

/// Lists one page of the root of every registry datastore at once, one attempt each within
/// [`PROBE_TIMEOUT`].
async fn probe_datastores(config_dir: &Path) -> Vec<(String, Result<(), String>)> {
    let registry = match crate::registry::Registry::load(config_dir) {
        Ok(registry) => registry,
        Err(e) => return vec![("(registry)".to_owned(), Err(e.to_string()))],
    };
    let resources =
        Resources::new(crate::model::budget::MIN_MEMORY_BUDGET).with_retry(RetryPolicy::none());
    let probes = registry.datastores.into_iter().map(|(name, spec)| {
        let resources = resources.clone();
        async move {
            let outcome = async {
                let store = crate::store::open(&spec, &resources).map_err(|e| e.to_string())?;
                let request = ListRequest {
                    dir: ObjectPath::root(),
                    delimited: true,
                    continuation: None,
                };
                match tokio::time::timeout(PROBE_TIMEOUT, store.list(&request)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!(
                        "no answer within {} s",
                        PROBE_TIMEOUT.as_secs_f64()
                    )),
                }
            }
            .await;
            (name, outcome)
        }
    });
    futures::future::join_all(probes).await
}
