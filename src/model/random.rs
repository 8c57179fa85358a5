//! Random numbers for names and delays (block-id tags, temporary names, retry jitter): the
//! standard library's OS-seeded hasher keys, with a counter and the clock so that calls within
//! one process differ. Not for secrets.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A random 64-bit number.
pub fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let now = SystemTime::now().duration_since(UNIX_EPOCH);
    hasher.write_u128(now.map(|d| d.as_nanos()).unwrap_or(0));
    hasher.finish()
}

#[cfg(test)]
mod tests {
    #[test]
    fn calls_differ() {
        let drawn: std::collections::HashSet<u64> =
            (0..1000).map(|_| super::random_u64()).collect();
        assert_eq!(drawn.len(), 1000);
    }
}
