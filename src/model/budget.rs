//! The one memory budget of a job: every byte a job holds in flight — transfer parts,
//! read-ahead windows, demand fetches, recycled buffers, cache writes — is covered by a
//! [`BudgetPermit`] taken from it, so a job with many mounts and transfers stays within one
//! bound. It counts what is held and the peak, so the bound can be checked, not assumed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Semaphore;

/// Bytes in flight across a job when the manifest does not say.
pub const DEFAULT_MEMORY_BUDGET: u64 = 256 * 1024 * 1024;
/// Below this, one part and one read-ahead window no longer fit.
pub const MIN_MEMORY_BUDGET: u64 = 16 * 1024 * 1024;

/// A byte budget shared by everything that holds a job's data in memory. Cloning shares it.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// One permit per KiB.
    permits: Semaphore,
    total_kib: u32,
    held_kib: AtomicU64,
    peak_kib: AtomicU64,
}

impl MemoryBudget {
    pub fn new(bytes: u64) -> Self {
        let total_kib = (bytes / 1024).clamp(1, u32::MAX as u64 >> 3) as u32;
        Self {
            inner: Arc::new(Inner {
                permits: Semaphore::new(total_kib as usize),
                total_kib,
                held_kib: AtomicU64::new(0),
                peak_kib: AtomicU64::new(0),
            }),
        }
    }

    pub fn bytes(&self) -> u64 {
        self.inner.total_kib as u64 * 1024
    }

    /// Bytes held by permits right now.
    pub fn held_bytes(&self) -> u64 {
        self.inner.held_kib.load(Ordering::Relaxed) * 1024
    }

    /// The most ever held at once.
    pub fn peak_bytes(&self) -> u64 {
        self.inner.peak_kib.load(Ordering::Relaxed) * 1024
    }

    /// A request in KiB, capped at the whole budget so that it can always be granted.
    fn kib(&self, bytes: u64) -> u32 {
        bytes.div_ceil(1024).clamp(1, self.inner.total_kib as u64) as u32
    }

    fn granted(&self, kib: u32) -> BudgetPermit {
        let held = self.inner.held_kib.fetch_add(kib as u64, Ordering::Relaxed) + kib as u64;
        self.inner.peak_kib.fetch_max(held, Ordering::Relaxed);
        BudgetPermit {
            inner: self.inner.clone(),
            kib,
        }
    }

    /// Takes `bytes` now if they are free (for optional work such as read-ahead).
    pub fn try_acquire(&self, bytes: u64) -> Option<BudgetPermit> {
        let kib = self.kib(bytes);
        let permit = self.inner.permits.try_acquire_many(kib).ok()?;
        permit.forget();
        Some(self.granted(kib))
    }

    /// Waits until `bytes` are free (capped at the whole budget) and holds them until the
    /// permit is dropped.
    pub async fn acquire(&self, bytes: u64) -> BudgetPermit {
        let kib = self.kib(bytes);
        self.inner
            .permits
            .acquire_many(kib)
            .await
            .expect("the budget semaphore is never closed")
            .forget();
        self.granted(kib)
    }
}

/// Bytes held from a [`MemoryBudget`]; given back when dropped.
#[derive(Debug)]
#[must_use = "the bytes are given back as soon as the permit is dropped"]
pub struct BudgetPermit {
    inner: Arc<Inner>,
    kib: u32,
}

impl BudgetPermit {
    pub fn bytes(&self) -> u64 {
        self.kib as u64 * 1024
    }
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        self.inner
            .held_kib
            .fetch_sub(self.kib as u64, Ordering::Relaxed);
        self.inner.permits.add_permits(self.kib as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn blocks_until_released_and_counts_what_is_held() {
        let budget = MemoryBudget::new(10 * 1024);
        let first = budget.acquire(8 * 1024).await;
        assert_eq!(budget.held_bytes(), 8 * 1024);
        // Only 2 KiB left: a 4 KiB request must wait, and cannot be taken without waiting.
        let waiting = tokio::time::timeout(Duration::from_millis(50), budget.acquire(4096)).await;
        assert!(waiting.is_err());
        assert!(budget.try_acquire(4096).is_none());
        let small = budget.try_acquire(2048).expect("2 KiB are free");
        assert_eq!(budget.held_bytes(), 10 * 1024);
        drop(first);
        drop(small);
        assert_eq!(budget.held_bytes(), 0);
        assert_eq!(budget.peak_bytes(), 10 * 1024);
        let granted = budget.acquire(4096).await;
        drop(granted);
        // Requests above the whole budget are capped, not deadlocked.
        let all = budget.acquire(1 << 40).await;
        assert_eq!(all.bytes(), budget.bytes());
    }
}
