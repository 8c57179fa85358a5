//! The one resumable ranged read, used by the download engine and the mount's reader.
//!
//! `Store::get_range` is one attempt; `read_range` retries it under a `RetryPolicy` and, when a
//! body breaks mid-way (reset, timeout, 5xx), ends early without an error (truncated) or
//! delivers nothing for `stall_timeout`, asks for the rest only: the next request starts at the
//! first byte not yet received, so no byte is sent twice and the sink sees every byte once, in
//! order. A body longer than asked for is an error, and its excess never reaches the sink.
//!
//! The policy bounds failures in a row: an attempt that delivered bytes starts it afresh, so a
//! long range rides out any number of separate outages, each within the policy's bound.

use std::future::Future;
use std::ops::Range;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::TryStreamExt;

use super::{Store, StoreError};
use crate::model::{ObjectPath, RetryPolicy, Retryable};

/// Where a ranged read's bytes go, in order, each byte once.
pub trait RangeSink: Send {
    fn write(&mut self, chunk: Bytes) -> impl Future<Output = std::io::Result<()>> + Send;

    /// The whole-object CRC64 an answer carried (`Store::get_range_with_crc64`), told before
    /// any of its bytes.
    fn stored_crc64(&mut self, _crc: u64) {}
}

/// A range read into memory.
impl RangeSink for Vec<u8> {
    async fn write(&mut self, chunk: Bytes) -> std::io::Result<()> {
        self.extend_from_slice(&chunk);
        Ok(())
    }
}

/// Why a ranged read failed.
#[derive(Debug, thiserror::Error)]
pub enum RangeError {
    /// The store failed (after the policy gave up, if the failure was transient), or sent more
    /// than asked for.
    #[error(transparent)]
    Store(StoreError),
    /// The sink could not take the bytes (a local write).
    #[error(transparent)]
    Sink(std::io::Error),
}

/// Reads bytes `range` of `path` into `sink`, retrying under `retry` and resuming a broken,
/// truncated or stalled body from its first missing byte. Returns the bytes delivered: all of
/// the range (a body that ends early is resumed, never accepted). With `version`, every
/// attempt is pinned to it, so a resumed body never continues with another version's bytes.
#[allow(clippy::too_many_arguments)]
pub async fn read_range<S: RangeSink>(
    store: &dyn Store,
    path: &ObjectPath,
    version: Option<&str>,
    range: Range<u64>,
    retry: &RetryPolicy,
    stall_timeout: Duration,
    sink: &mut S,
) -> Result<u64, RangeError> {
    let len = range.end.saturating_sub(range.start);
    let mut received = 0u64;
    let mut started = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let before = received;
        let rest = range.start + received..range.end;
        match attempt(
            store,
            path,
            version,
            rest,
            stall_timeout,
            sink,
            &mut received,
        )
        .await
        {
            Ok(()) => return Ok(received),
            // Every byte arrived before the connection failed: nothing is missing.
            Err(RangeError::Store(e))
                if e.is_transient() && received == len && received > before =>
            {
                return Ok(received);
            }
            Err(RangeError::Store(e)) => {
                if received > before {
                    attempts = 1;
                    started = Instant::now();
                }
                if !retry.allows(attempts, started, &e) {
                    return Err(RangeError::Store(retry.give_up(attempts, started, e)));
                }
                let delay = retry.backoff(attempts - 1, e.retry_after());
                retry.note_retry();
                tracing::info!(path = %path, offset = range.start + received, error = %e,
                    "range broke; resuming after {delay:?}");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// One request for `range`, adding to `received` as bytes reach the sink.
async fn attempt<S: RangeSink>(
    store: &dyn Store,
    path: &ObjectPath,
    version: Option<&str>,
    range: Range<u64>,
    stall_timeout: Duration,
    sink: &mut S,
    received: &mut u64,
) -> Result<(), RangeError> {
    let wanted = range.end.saturating_sub(range.start);
    let stalled = |what: &str| {
        RangeError::Store(StoreError::Network {
            message: format!("{path}: no data for {} s {what}", stall_timeout.as_secs()),
        })
    };
    let read = store.get_range_with_crc64(path, range, version);
    let (mut stream, crc) = tokio::time::timeout(stall_timeout, read)
        .await
        .map_err(|_| stalled("waiting for the response"))?
        .map_err(RangeError::Store)?;
    if let Some(crc) = crc {
        sink.stored_crc64(crc);
    }
    let mut got = 0u64;
    loop {
        let next = tokio::time::timeout(stall_timeout, stream.try_next())
            .await
            .map_err(|_| stalled("in the body"))?;
        let Some(chunk) = next.map_err(RangeError::Store)? else {
            break;
        };
        let n = chunk.len() as u64;
        if got + n > wanted {
            return Err(RangeError::Store(StoreError::Service {
                context: path.to_string(),
                message: "the store sent more bytes than requested".into(),
            }));
        }
        sink.write(chunk).await.map_err(RangeError::Sink)?;
        got += n;
        *received += n;
    }
    if got < wanted {
        // A body that ends early without an error is a truncated response: resume it.
        return Err(RangeError::Store(StoreError::Network {
            message: format!("{path}: body ended after {got} of {wanted} bytes"),
        }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::faulty::{Fault, FaultyStore};

    const STALL: Duration = Duration::from_secs(30);

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    async fn faulty(len: usize, faults: Vec<Fault>) -> (FaultyStore, ObjectPath, Vec<u8>) {
        let (store, path) = FaultyStore::with_object("f", data(len), faults).await;
        (store, path, data(len))
    }

    #[tokio::test(start_paused = true)]
    async fn broken_and_truncated_bodies_resume_from_the_first_missing_byte() {
        let (store, path, bytes) =
            faulty(100, vec![Fault::BreakAfter(30), Fault::EndAfter(20)]).await;
        let mut got = Vec::new();
        let n = read_range(
            &store,
            &path,
            None,
            10..100,
            &RetryPolicy::default(),
            STALL,
            &mut got,
        )
        .await
        .unwrap();
        assert_eq!(n, 90);
        assert!(got == bytes[10..100], "every byte once, in order");
        assert_eq!(
            store.requested(),
            vec![10..100, 40..100, 60..100],
            "each resumption asks only for what is missing"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pinned_read_never_resumes_into_another_version() {
        let (store, path, bytes) = faulty(100, vec![Fault::BreakAfter(30), Fault::Replace]).await;
        let version = store.head(&path).await.unwrap().version;
        assert!(version.is_some());
        let mut got = Vec::new();
        let error = read_range(
            &store,
            &path,
            version.as_deref(),
            0..100,
            &RetryPolicy::default(),
            STALL,
            &mut got,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(error, RangeError::Store(StoreError::Changed { .. })),
            "{error}"
        );
        assert!(got == bytes[..30], "only bytes of the version asked for");
        assert_eq!(store.requested(), vec![0..100, 30..100], "not retried");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_is_resumed_after_the_stall_timeout() {
        let (store, path, bytes) = faulty(64, vec![Fault::StallAfter(16)]).await;
        let mut got = Vec::new();
        let started = tokio::time::Instant::now();
        read_range(
            &store,
            &path,
            None,
            0..64,
            &RetryPolicy::default(),
            STALL,
            &mut got,
        )
        .await
        .unwrap();
        assert!(got == bytes);
        assert_eq!(store.requested(), vec![0..64, 16..64]);
        assert!(started.elapsed() >= STALL);
    }

    #[tokio::test(start_paused = true)]
    async fn an_over_long_body_is_an_error_and_its_excess_never_delivered() {
        let (store, path, bytes) = faulty(50, vec![Fault::Extra]).await;
        let mut got = Vec::new();
        let error = read_range(
            &store,
            &path,
            None,
            0..50,
            &RetryPolicy::default(),
            STALL,
            &mut got,
        )
        .await
        .unwrap_err();
        assert!(
            error.to_string().contains("more bytes than requested"),
            "{error}"
        );
        assert!(got == bytes, "only the requested bytes reached the sink");
        assert_eq!(store.requested().len(), 1, "not retried");
    }

    #[tokio::test(start_paused = true)]
    async fn the_policy_bounds_failures_in_a_row_not_in_all() {
        let policy = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        // Two failures, then one that delivered bytes (it counts as the first of a new run),
        // then one more: four failures, never three in a row.
        let faults = vec![
            Fault::Refuse,
            Fault::Refuse,
            Fault::BreakAfter(10),
            Fault::Refuse,
        ];
        let (store, path, bytes) = faulty(40, faults).await;
        let mut got = Vec::new();
        read_range(&store, &path, None, 0..40, &policy, STALL, &mut got)
            .await
            .unwrap();
        assert!(got == bytes);
        assert_eq!(store.requested().len(), 5);

        // Three in a row: the permanent "gave up" form.
        let (store, path, _) = faulty(40, vec![Fault::Refuse; 3]).await;
        let error = read_range(&store, &path, None, 0..40, &policy, STALL, &mut Vec::new())
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                RangeError::Store(StoreError::GaveUp { attempts: 3, .. })
            ),
            "{error}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_after_the_last_byte_is_not_a_missing_byte() {
        let (store, path, bytes) = faulty(20, vec![Fault::BreakAfter(20)]).await;
        let mut got = Vec::new();
        read_range(
            &store,
            &path,
            None,
            0..20,
            &RetryPolicy::none(),
            STALL,
            &mut got,
        )
        .await
        .unwrap();
        assert!(got == bytes);
        assert_eq!(store.requested(), vec![0..20]);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried() {
        let (store, _, _) = faulty(10, Vec::new()).await;
        let missing = ObjectPath::parse("missing").unwrap();
        let error = read_range(
            &store,
            &missing,
            None,
            0..10,
            &RetryPolicy::default(),
            STALL,
            &mut Vec::new(),
        )
        .await
        .unwrap_err();
        assert!(matches!(
            error,
            RangeError::Store(StoreError::NotFound { .. })
        ));
        assert_eq!(store.requested().len(), 1);
    }
}
