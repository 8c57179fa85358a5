//! "Storage is gone": the one breaker the download engine, the upload engine and the mount's
//! reader share.
//!
//! Once a request gave up under the retry policy (`StoreError::is_outage`), waiting out the
//! policy again for every further file or read would multiply its bound: a transfer of
//! thousands of files, or a mount whose kernel retries a failed read, would take hours to fail.
//! So the breaker trips, and until some work succeeds again (which resets it) transfers start
//! no new file (`refusal`) and reads make one attempt each (`policy`).

use std::sync::Mutex;

use crate::model::RetryPolicy;

use super::StoreError;

#[derive(Debug, Default)]
pub struct Breaker {
    /// What gave up last, while storage is gone.
    gave_up_on: Mutex<Option<String>>,
}

impl Breaker {
    /// Storage gave up on `what` (an object's name).
    pub fn trip(&self, what: impl std::fmt::Display) {
        *self.gave_up_on.lock().unwrap() = Some(what.to_string());
    }

    /// Some work succeeded: storage is back.
    pub fn reset(&self) {
        *self.gave_up_on.lock().unwrap() = None;
    }

    /// Notes how a request on `what` ended: an outage trips the breaker, a success resets it,
    /// any other error (a missing object, a refused name) says nothing about storage.
    pub fn record<T>(&self, what: impl std::fmt::Display, result: &Result<T, StoreError>) {
        match result {
            Ok(_) => self.reset(),
            Err(e) if e.is_outage() => self.trip(what),
            Err(_) => {}
        }
    }

    pub fn is_tripped(&self) -> bool {
        self.gave_up_on.lock().unwrap().is_some()
    }

    /// The policy for the next request: `normal`, or a single attempt while storage is gone.
    pub fn policy(&self, normal: &RetryPolicy) -> RetryPolicy {
        match self.is_tripped() {
            true => RetryPolicy::none(),
            false => normal.clone(),
        }
    }

    /// Why new work must not start, while storage is gone.
    pub fn refusal(&self) -> Option<String> {
        let gave_up_on = self.gave_up_on.lock().unwrap();
        let what = gave_up_on.as_ref()?;
        Some(format!(
            "not started: storage is unavailable (gave up on {what})"
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::Retryable;

    fn busy() -> StoreError {
        StoreError::Http {
            status: 503,
            message: "busy".into(),
            retry_after: None,
        }
    }

    #[test]
    fn an_outage_trips_it_and_a_success_resets_it() {
        let breaker = Breaker::default();
        let normal = RetryPolicy::default();
        assert!(breaker.refusal().is_none());
        assert_eq!(breaker.policy(&normal).max_attempts, normal.max_attempts);

        let gave_up = busy().gave_up(10, Duration::from_secs(40));
        breaker.record("data/a.bin", &Err::<(), _>(gave_up));
        assert_eq!(
            breaker.refusal().as_deref(),
            Some("not started: storage is unavailable (gave up on data/a.bin)")
        );
        assert_eq!(breaker.policy(&normal).max_attempts, 1, "one attempt each");

        breaker.record("data/b.bin", &Ok(()));
        assert!(!breaker.is_tripped());
        assert_eq!(breaker.policy(&normal).max_attempts, normal.max_attempts);
    }

    #[test]
    fn only_an_outage_trips_it() {
        let breaker = Breaker::default();
        let missing = StoreError::NotFound { path: "x".into() };
        breaker.record("x", &Err::<(), _>(missing));
        assert!(
            !breaker.is_tripped(),
            "a missing object says nothing of storage"
        );
        // A transient error that reached the caller: the policy (one attempt) gave up on it.
        breaker.record("y", &Err::<(), _>(busy()));
        assert!(breaker.is_tripped());
        // Another error while tripped keeps it tripped.
        breaker.record(
            "x",
            &Err::<(), _>(StoreError::NotFound { path: "x".into() }),
        );
        assert!(breaker.is_tripped());
    }
}
