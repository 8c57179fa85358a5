//! What one job's (or one command's) storage work shares, built once at the edge and passed
//! in: the one memory budget, the one retry policy and the one HTTP client (a shared connection
//! pool). The transfer engine, every mount and every Azure backend of a job take them from
//! here, so that a job holds one bound on memory and one on retries however many references it
//! has.

use std::sync::Arc;
use std::time::Duration;

use crate::model::{MemoryBudget, RetryPolicy};

#[derive(Debug, Clone)]
pub struct Resources {
    pub budget: MemoryBudget,
    pub retry: RetryPolicy,
    http: Arc<reqwest::Client>,
}

impl Resources {
    pub fn new(memory_budget_bytes: u64) -> Self {
        Self {
            budget: MemoryBudget::new(memory_budget_bytes),
            retry: RetryPolicy::default(),
            http: Arc::new(http_client()),
        }
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The HTTP client every Azure pipeline of this job sends through.
    pub(crate) fn http(&self) -> Arc<reqwest::Client> {
        self.http.clone()
    }
}

/// Our timeouts, and no transparent decompression (it would break ranged reads).
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        // Per read: a stalled body fails here and the range is resumed.
        .read_timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .gzip(false)
        .deflate(false)
        .pool_max_idle_per_host(64)
        .build()
        .expect("the HTTP client builds")
}
