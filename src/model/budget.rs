//! The one memory budget of a job: every byte a job holds in flight — transfer parts,
//! read-ahead windows, demand fetches, recycled buffers, cache writes — is covered by a
//! [`BudgetPermit`] taken from it, so a job with many mounts and transfers stays within one
//! bound. It counts what is held and the peak, so the bound can be checked, not assumed.
//!
//! Some holders keep memory only to go faster: an idle open file's buffer, a pool of recycled
//! allocations. They register as [`Reclaim`]ers, and a request that must wait first asks them to
//! give back what they hold (what has been idle for a while first, then, if the wait goes on,
//! anything idle): so a reader that waits for memory held by a file nobody is reading, or a
//! transfer that waits behind a mount's idle windows, is never stuck.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Semaphore;

/// Something that holds budget only to go faster and can give it back on request.
pub trait Reclaim: Send + Sync {
    /// Drops what has been idle for at least `idle_for`; returns the bytes given back.
    fn reclaim(&self, idle_for: Duration) -> u64;
}

/// How long an idle holder keeps its memory while someone waits, before a waiter takes it.
const PATIENT_IDLE: Duration = Duration::from_millis(500);
/// How often a waiter looks again for memory gone idle meanwhile.
const RECHECK: Duration = Duration::from_millis(20);

/// Bytes in flight across a job when the manifest does not say.
pub const DEFAULT_MEMORY_BUDGET: u64 = 256 * 1024 * 1024;
/// Below this, one part and one read-ahead window no longer fit.
pub const MIN_MEMORY_BUDGET: u64 = 16 * 1024 * 1024;

/// A byte budget shared by everything that holds a job's data in memory. Cloning shares it.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    inner: Arc<Inner>,
}

struct Inner {
    /// One permit per KiB.
    permits: Semaphore,
    total_kib: u32,
    held_kib: AtomicU64,
    peak_kib: AtomicU64,
    reclaimers: Mutex<Vec<Weak<dyn Reclaim>>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBudget")
            .field("total_kib", &self.total_kib)
            .field("held_kib", &self.held_kib)
            .finish()
    }
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
                reclaimers: Mutex::new(Vec::new()),
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
    /// permit is dropped. While it waits, idle holders are asked to give memory back: first
    /// what was idle for a while, then, once the wait itself has gone on that long, anything
    /// idle.
    pub async fn acquire(&self, bytes: u64) -> BudgetPermit {
        let kib = self.kib(bytes);
        let mut waited = Duration::ZERO;
        loop {
            if let Ok(permit) = self.inner.permits.try_acquire_many(kib) {
                permit.forget();
                return self.granted(kib);
            }
            if self.reclaim(PATIENT_IDLE.saturating_sub(waited)) > 0 {
                continue;
            }
            let permits = &self.inner.permits;
            tokio::select! {
                permit = permits.acquire_many(kib) => {
                    permit.expect("the budget semaphore is never closed").forget();
                    return self.granted(kib);
                }
                _ = tokio::time::sleep(RECHECK) => waited += RECHECK,
            }
        }
    }

    /// Registers a holder of optional memory (forgotten once it is dropped).
    pub fn add_reclaimer(&self, reclaimer: Weak<dyn Reclaim>) {
        let mut reclaimers = self.inner.reclaimers.lock().unwrap();
        reclaimers.retain(|r| r.strong_count() > 0);
        reclaimers.push(reclaimer);
    }

    /// Asks every live reclaimer to drop what has been idle for `idle_for`.
    fn reclaim(&self, idle_for: Duration) -> u64 {
        let live: Vec<Arc<dyn Reclaim>> = {
            let mut reclaimers = self.inner.reclaimers.lock().unwrap();
            reclaimers.retain(|r| r.strong_count() > 0);
            reclaimers.iter().filter_map(Weak::upgrade).collect()
        };
        live.iter().map(|r| r.reclaim(idle_for)).sum()
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

    /// A holder that keeps one permit until asked, idle since it was made.
    struct IdleHolder {
        permit: Mutex<Option<BudgetPermit>>,
        idle_since: std::time::Instant,
    }

    impl Reclaim for IdleHolder {
        fn reclaim(&self, idle_for: Duration) -> u64 {
            if self.idle_since.elapsed() < idle_for {
                return 0;
            }
            self.permit.lock().unwrap().take().map_or(0, |p| p.bytes())
        }
    }

    fn idle_holder(permit: BudgetPermit) -> Arc<IdleHolder> {
        Arc::new(IdleHolder {
            permit: Mutex::new(Some(permit)),
            idle_since: std::time::Instant::now(),
        })
    }

    #[tokio::test]
    async fn a_waiter_takes_back_memory_an_idle_holder_keeps() {
        let budget = MemoryBudget::new(64 * 1024);
        let holder = idle_holder(budget.acquire(64 * 1024).await);
        budget.add_reclaimer(Arc::downgrade(&holder) as Weak<dyn Reclaim>);
        // Nobody would release it on their own: without reclaiming, this waits forever.
        let permit = tokio::time::timeout(Duration::from_secs(30), budget.acquire(16 * 1024))
            .await
            .expect("the idle holder's memory was taken back");
        assert!(holder.permit.lock().unwrap().is_none());
        assert_eq!(budget.held_bytes(), 16 * 1024);
        assert!(budget.peak_bytes() <= budget.bytes());
        drop(permit);

        // An optional request never takes memory from others.
        let other = idle_holder(budget.acquire(64 * 1024).await);
        budget.add_reclaimer(Arc::downgrade(&other) as Weak<dyn Reclaim>);
        assert!(budget.try_acquire(1024).is_none());
        assert!(other.permit.lock().unwrap().is_some());
    }
}
