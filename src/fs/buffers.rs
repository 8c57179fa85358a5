//! Recycled read buffers, counted in the job's budget.
//!
//! A fresh allocation of several MiB is a fresh mmap whose pages the kernel faults in and
//! zeroes one by one: a fifth of a mount's CPU on a 1 GiB sequential read. Freed buffers wait
//! here for the next window of a similar size. A kept buffer is memory the job holds, so it
//! holds a permit of the job's budget; when the budget has none to spare the buffer is freed
//! instead, and a request that waits for memory takes the kept ones back (`Reclaim`).

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;

use crate::model::MemoryBudget;
use crate::model::budget::{BudgetPermit, Reclaim};

/// Smaller buffers come from the allocator's own free lists.
const MIN_LEN: usize = 1024 * 1024;

pub struct BufferPool {
    free: Mutex<Vec<Kept>>,
    keep_bytes: usize,
    budget: MemoryBudget,
}

struct Kept {
    buffer: Vec<u8>,
    _permit: BudgetPermit,
}

impl BufferPool {
    /// A pool keeping at most `keep_bytes`, each kept buffer paid for from `budget`.
    pub fn new(budget: MemoryBudget, keep_bytes: usize) -> Arc<Self> {
        let pool = Arc::new(Self {
            free: Mutex::new(Vec::new()),
            keep_bytes,
            budget: budget.clone(),
        });
        budget.add_reclaimer(Arc::downgrade(&pool) as Weak<dyn Reclaim>);
        pool
    }

    /// An empty buffer with room for `len` bytes (and not much more: a 64 MiB buffer is not
    /// spent on a 1 MiB read).
    pub fn take(&self, len: usize) -> Vec<u8> {
        if len >= MIN_LEN {
            let mut free = self.free.lock().unwrap();
            let fits = free
                .iter()
                .enumerate()
                .filter(|(_, k)| k.buffer.capacity() >= len && k.buffer.capacity() <= 2 * len)
                .min_by_key(|(_, k)| k.buffer.capacity())
                .map(|(i, _)| i);
            if let Some(i) = fits {
                // Its permit goes with it: the caller pays for the bytes it reads into it.
                return free.swap_remove(i).buffer;
            }
        }
        Vec::with_capacity(len)
    }

    /// `buffer`'s bytes, shared; the buffer comes back when the last slice is dropped.
    pub fn freeze(self: &Arc<Self>, buffer: Vec<u8>) -> Bytes {
        if buffer.capacity() < MIN_LEN {
            return Bytes::from(buffer);
        }
        Bytes::from_owner(Recycled {
            buffer,
            pool: Arc::downgrade(self),
        })
    }

    fn give_back(&self, mut buffer: Vec<u8>) {
        buffer.clear();
        let mut free = self.free.lock().unwrap();
        let kept: usize = free.iter().map(|k| k.buffer.capacity()).sum();
        if kept + buffer.capacity() > self.keep_bytes {
            return;
        }
        if let Some(permit) = self.budget.try_acquire(buffer.capacity() as u64) {
            free.push(Kept {
                buffer,
                _permit: permit,
            });
        }
    }

    pub fn kept(&self) -> usize {
        let free = self.free.lock().unwrap();
        free.iter().map(|k| k.buffer.capacity()).sum()
    }
}

impl Reclaim for BufferPool {
    /// Kept buffers are idle by definition: all of them go.
    fn reclaim(&self, _idle_for: Duration) -> u64 {
        let drained: Vec<Kept> = std::mem::take(&mut *self.free.lock().unwrap());
        drained.iter().map(|k| k._permit.bytes()).sum()
    }
}

struct Recycled {
    buffer: Vec<u8>,
    pool: Weak<BufferPool>,
}

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.buffer
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.give_back(std::mem::take(&mut self.buffer));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    #[test]
    fn buffers_are_reused_bounded_and_paid_for() {
        let budget = MemoryBudget::new(512 * MIB as u64);
        let pool = BufferPool::new(budget.clone(), 128 * MIB);
        let mut first = pool.take(8 * MIB);
        first.extend_from_slice(&vec![1u8; 8 * MIB]);
        let address = first.as_ptr();
        let shared = pool.freeze(first);
        let slice = shared.slice(10..20);
        drop(shared);
        assert_eq!(&slice[..], &[1u8; 10], "a slice keeps its bytes");
        assert_eq!(pool.kept(), 0, "recycled while a slice was alive");
        drop(slice);
        assert_eq!(
            budget.held_bytes(),
            8 * MIB as u64,
            "a kept buffer holds budget"
        );
        // The same memory serves the next window of a similar size, empty.
        let again = pool.take(6 * MIB);
        assert_eq!(again.as_ptr(), address);
        assert!(again.is_empty());
        assert_eq!(budget.held_bytes(), 0, "its permit went with it");
        // Never much larger than asked for: a 1 MiB read does not hold 8 MiB.
        drop(pool.freeze(again));
        let small = pool.take(MIB);
        assert_ne!(small.as_ptr(), address);
        // Bounded: freeing far more than the limit keeps at most the limit.
        let many: Vec<Bytes> = (0..40).map(|_| pool.freeze(pool.take(8 * MIB))).collect();
        drop(many);
        assert_eq!(pool.kept(), 128 * MIB);
        assert_eq!(budget.held_bytes(), 128 * MIB as u64);
    }

    #[tokio::test]
    async fn kept_buffers_go_when_the_budget_is_short() {
        let budget = MemoryBudget::new(16 * MIB as u64);
        let pool = BufferPool::new(budget.clone(), 128 * MIB);
        let (large, small) = (pool.take(8 * MIB), pool.take(4 * MIB));
        drop(pool.freeze(large));
        drop(pool.freeze(small));
        assert_eq!(pool.kept(), 12 * MIB);
        // Only 4 MiB are free; the waiter gets 10 by taking the pool's back.
        let permit = budget.acquire(10 * MIB as u64).await;
        assert_eq!(pool.kept(), 0);
        // With no budget to spare, a freed buffer is not kept.
        let _rest = budget.acquire(6 * MIB as u64).await;
        drop(pool.freeze(pool.take(2 * MIB)));
        assert_eq!(pool.kept(), 0);
        drop(permit);
    }
}
