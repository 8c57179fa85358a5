//! Retries with exponential backoff, jittered to 50–100 % of each step, honouring `Retry-After`
//! — in one place.
//!
//! Backends wrap each request in `RetryPolicy::run`, except ranged reads: `Store::get_range` is
//! one attempt, and the store's one resumable read (`store::read_range`) retries it under this
//! policy, resuming a body that broke mid-way. One retry layer per request keeps one bound: an
//! error that outlasted the policy comes back as the error's "gave up" form
//! (`Retryable::gave_up`), which is permanent, so no caller retries it again.
//!
//! The bound (docs/RELIABILITY.md): 10 attempts with a backoff of 0.2 s doubling up to 15 s,
//! jittered to 50–100 % — 27.7 to 55.4 s of waiting when every attempt fails at once
//! (connection refused) — and no new attempt once 120 s have passed (storage that accepts
//! connections and then hangs: each attempt ends at the HTTP read timeout or the engine's stall
//! timeout, 30 s, so at most 165 s).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// An error the policy can judge: whether it is worth another attempt, how long the server
/// asked us to wait, and how it reads once the policy gave up on it.
pub trait Retryable: Sized {
    fn is_transient(&self) -> bool;
    fn retry_after(&self) -> Option<Duration>;
    /// The permanent error reported after `attempts` tries over `elapsed`.
    fn gave_up(self, attempts: u32, elapsed: Duration) -> Self;
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Stop retrying once this much time has passed since the first attempt.
    pub give_up_after: Duration,
    /// Where each retry is counted (a reference's figures), if anywhere.
    pub retries: Option<Arc<AtomicU64>>,
}

impl Default for RetryPolicy {
    /// Ten attempts over at most two minutes: rides out a storage account's throttling and a
    /// front-end restart, and still fails a job in bounded time.
    fn default() -> Self {
        Self {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(15),
            give_up_after: Duration::from_secs(120),
            retries: None,
        }
    }
}

impl RetryPolicy {
    /// No retries (tests of single failures).
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The same policy, counting its retries in `counter`.
    pub fn counting(mut self, counter: Arc<AtomicU64>) -> Self {
        self.retries = Some(counter);
        self
    }

    /// Counts one retry (every layer that retries calls this when it decides to).
    pub fn note_retry(&self) {
        if let Some(counter) = &self.retries {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The delay before attempt `attempt + 1`: 50–100 % of an exponential ceiling, or the
    /// server's `Retry-After` when it gave one (capped at `max_backoff`).
    pub fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(after) = retry_after {
            return after.min(self.max_backoff);
        }
        let ceiling = self
            .initial_backoff
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max_backoff);
        ceiling.mul_f64(jitter())
    }

    /// Whether another attempt is allowed after `attempts` tries that started at `started`.
    pub fn allows(&self, attempts: u32, started: Instant, error: &impl Retryable) -> bool {
        error.is_transient()
            && attempts < self.max_attempts
            && started.elapsed() < self.give_up_after
    }

    /// The error to report once no further attempt is allowed: a transient error that was
    /// retried becomes `GaveUp`, saying how long and how often it was tried.
    pub fn give_up<E: Retryable>(&self, attempts: u32, started: Instant, error: E) -> E {
        if error.is_transient() && self.max_attempts > 1 {
            error.gave_up(attempts, started.elapsed())
        } else {
            error
        }
    }

    /// Runs `op` until it succeeds, fails permanently, or the policy gives up.
    pub async fn run<T, E, F, Fut>(&self, mut op: F) -> Result<T, E>
    where
        E: Retryable + std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let started = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            match op().await {
                Ok(value) => return Ok(value),
                Err(e) if self.allows(attempts, started, &e) => {
                    let delay = self.backoff(attempts - 1, e.retry_after());
                    tracing::debug!(attempt = attempts, ?delay, error = %e, "retrying");
                    self.note_retry();
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(self.give_up(attempts, started, e)),
            }
        }
    }
}

/// A factor in [0.5, 1.0): enough spread to de-synchronise thousands of nodes retrying at once,
/// without the near-zero delays of full jitter.
fn jitter() -> f64 {
    0.5 + (super::random::random_u64() % 1_000_000) as f64 / 2_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug, PartialEq)]
    enum TestError {
        Busy,
        Missing,
        GaveUp(u32),
    }

    impl std::fmt::Display for TestError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{self:?}")
        }
    }

    impl Retryable for TestError {
        fn is_transient(&self) -> bool {
            *self == TestError::Busy
        }
        fn retry_after(&self) -> Option<Duration> {
            None
        }
        fn gave_up(self, attempts: u32, _: Duration) -> Self {
            TestError::GaveUp(attempts)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_until_success() {
        let calls = AtomicU32::new(0);
        let result = RetryPolicy::default()
            .run(|| async {
                if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                    Err(TestError::Busy)
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(result.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried_and_attempts_are_bounded() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = RetryPolicy::default()
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(TestError::Missing)
            })
            .await;
        assert_eq!(result.unwrap_err(), TestError::Missing);
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let calls = AtomicU32::new(0);
        let policy = RetryPolicy::default();
        let result: Result<(), _> = policy
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(TestError::Busy)
            })
            .await;
        // Exhausted: the permanent form, so that no caller retries it once more.
        assert_eq!(result.unwrap_err(), TestError::GaveUp(policy.max_attempts));
        assert_eq!(calls.load(Ordering::SeqCst), policy.max_attempts);
    }

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let policy = RetryPolicy::default();
        for attempt in 0..20 {
            let delay = policy.backoff(attempt, None);
            assert!(delay <= policy.max_backoff, "{attempt}: {delay:?}");
            let ceiling = policy.initial_backoff * (1u32 << attempt.min(16));
            assert!(
                delay >= ceiling.min(policy.max_backoff) / 2,
                "{attempt}: {delay:?}"
            );
        }
        assert_eq!(
            policy.backoff(0, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(
            policy.backoff(0, Some(Duration::from_secs(3600))),
            policy.max_backoff
        );
    }
}
