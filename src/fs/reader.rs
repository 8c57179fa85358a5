//! Reads of one open file: ranged GETs with a sequential read-ahead window.
//!
//! Policy (after mountpoint-s3's prefetcher, in our own words): a read at the offset where the
//! previous one ended is sequential. Sequential reads are served from a buffer filled ahead of
//! them; each time a new read-ahead starts, the window doubles, from 1 MiB up to 64 MiB. A read
//! elsewhere (a seek) drops the read-ahead, resets the window and fetches only what was asked
//! (at least 256 KiB), so random small reads do not pull whole windows. Read-ahead memory is
//! taken from the mount's byte budget and skipped when the budget is exhausted: the read still
//! works, only without read-ahead.
//!
//! With a disk cache (`fs::cache`), every fetch goes through `Source::fetch`: cached blocks are
//! read from disk, the rest is fetched from storage in one GET per run of missing blocks and
//! queued for the cache. Fetches then end on block boundaries, so that consecutive windows start
//! on one and no block is fetched twice.

use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::task::JoinHandle;

use super::cache::{DiskCache, ObjectId};
use crate::model::MemoryBudget;
use crate::model::ObjectPath;
use crate::model::RetryPolicy;
use crate::model::budget::BudgetPermit;
use crate::store::{RangeError, Store, StoreError, read_range};

const FIRST_WINDOW: u64 = 1024 * 1024;
const MAX_WINDOW: u64 = 64 * 1024 * 1024;
const MIN_RANDOM_FETCH: u64 = 256 * 1024;

struct Buffer {
    start: u64,
    data: Bytes,
    _permit: Option<BudgetPermit>,
}

impl Buffer {
    fn covers(&self, offset: u64) -> bool {
        offset >= self.start && offset < self.start + self.data.len() as u64
    }
}

/// The mount's record of a storage outage (`store::Breaker`, one per mount): once a fetch gave
/// up under the retry policy, fetches make one attempt each until one succeeds, so that the
/// kernel's second try of a failed read, and every other file's reads, fail at once instead of
/// each waiting out the policy again.
pub use crate::store::Breaker as Outage;

/// A fetch that delivers nothing for this long counts as a broken connection and is resumed.
const STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Where an open file's bytes come from: storage, through the disk cache when there is one.
#[derive(Clone)]
struct Source {
    store: Arc<dyn Store>,
    path: ObjectPath,
    size: u64,
    cache: Option<(Arc<DiskCache>, ObjectId)>,
    outage: Arc<Outage>,
}

impl Source {
    /// Fetches end on a multiple of this (or at the end of the object).
    fn alignment(&self) -> u64 {
        self.cache.as_ref().map_or(1, |(c, _)| c.block_size())
    }

    /// Exactly the bytes `range` (within the object).
    async fn fetch(&self, range: Range<u64>) -> Result<Bytes, StoreError> {
        let Some((cache, id)) = &self.cache else {
            return fetch(self.store.clone(), self.path.clone(), range, &self.outage).await;
        };
        let block = cache.block_size();
        let blocks = range.start / block..range.end.div_ceil(block);
        let aligned_start = blocks.start * block;
        let present = cache.present(*id, blocks.clone());
        let mut parts = Vec::new();
        let mut first = blocks.start;
        while first < blocks.end {
            let hit = present[(first - blocks.start) as usize];
            let mut end = first + 1;
            while end < blocks.end && present[(end - blocks.start) as usize] == hit {
                end += 1;
            }
            let run = first * block..(end * block).min(self.size);
            let cached = match hit {
                true => cache.read(*id, first..end, run.end - run.start).await,
                false => None,
            };
            let data = match cached {
                Some(data) => data,
                None => {
                    let data =
                        fetch(self.store.clone(), self.path.clone(), run, &self.outage).await?;
                    cache.record_misses(end - first);
                    cache.insert(*id, first, data.clone());
                    data
                }
            };
            parts.push(data);
            first = end;
        }
        let whole = match parts.len() {
            1 => parts.pop().expect("one part"),
            _ => concat(parts),
        };
        let from = (range.start - aligned_start) as usize;
        Ok(whole.slice(from..from + (range.end - range.start) as usize))
    }
}

/// `end` rounded up to a multiple of `align`, within `size`.
fn align_end(end: u64, align: u64, size: u64) -> u64 {
    end.div_ceil(align).saturating_mul(align).min(size)
}

struct ReadAhead {
    start: u64,
    task: JoinHandle<Result<Bytes, StoreError>>,
    permit: BudgetPermit,
}

#[derive(Default)]
struct State {
    buffer: Option<Buffer>,
    read_ahead: Option<ReadAhead>,
    /// Where a sequential read would start.
    next_sequential: u64,
    window: u64,
}

pub struct FileReader {
    source: Source,
    size: u64,
    budget: MemoryBudget,
    state: tokio::sync::Mutex<State>,
}

impl Drop for FileReader {
    fn drop(&mut self) {
        if let Some(read_ahead) = &self.state.get_mut().read_ahead {
            read_ahead.task.abort();
        }
    }
}

/// Fetches a whole range into memory through the store's resumable read: transient failures
/// are retried (one attempt each while storage is known to be down) and a broken, truncated or
/// stalled body is resumed from its first missing byte; never wrong bytes.
async fn fetch(
    store: Arc<dyn Store>,
    path: ObjectPath,
    range: Range<u64>,
    outage: &Outage,
) -> Result<Bytes, StoreError> {
    let policy = outage.policy(&RetryPolicy::default());
    let mut out = pool::WINDOWS.take((range.end - range.start) as usize);
    let result = read_range(
        store.as_ref(),
        &path,
        range,
        &policy,
        STALL_TIMEOUT,
        &mut out,
    )
    .await
    .map(|_| pool::WINDOWS.freeze(out))
    .map_err(|e| match e {
        RangeError::Store(e) => e,
        RangeError::Sink(e) => StoreError::io(&path, e),
    });
    outage.record(&path, &result);
    result
}

/// Read-ahead buffers are recycled. A fresh allocation of several MiB is a fresh mmap whose
/// pages the kernel faults in and zeroes one by one: a fifth of the mount's CPU on a 1 GiB
/// sequential read. Freed buffers wait here (at most `KEEP_BYTES` in all) for the next window of
/// a similar size.
mod pool {
    use bytes::Bytes;
    use std::sync::Mutex;

    /// Smaller buffers come from the allocator's own free lists.
    const MIN_LEN: usize = 1024 * 1024;

    pub struct Pool {
        free: Mutex<Vec<Vec<u8>>>,
        keep_bytes: usize,
    }

    /// The read-ahead windows of every mount in the process.
    pub static WINDOWS: Pool = Pool::new(128 * 1024 * 1024);

    impl Pool {
        pub const fn new(keep_bytes: usize) -> Self {
            Self {
                free: Mutex::new(Vec::new()),
                keep_bytes,
            }
        }

        /// An empty buffer with room for `len` bytes (and not much more: a 64 MiB buffer is
        /// not spent on a 1 MiB read).
        pub fn take(&self, len: usize) -> Vec<u8> {
            if len >= MIN_LEN {
                let mut free = self.free.lock().unwrap();
                let fits = free
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| b.capacity() >= len && b.capacity() <= 2 * len)
                    .min_by_key(|(_, b)| b.capacity())
                    .map(|(i, _)| i);
                if let Some(i) = fits {
                    return free.swap_remove(i);
                }
            }
            Vec::with_capacity(len)
        }

        /// `buffer`'s bytes, shared; the buffer comes back when the last slice is dropped.
        pub fn freeze(&'static self, buffer: Vec<u8>) -> Bytes {
            if buffer.capacity() < MIN_LEN {
                return Bytes::from(buffer);
            }
            Bytes::from_owner(Recycled { buffer, pool: self })
        }

        fn give_back(&self, mut buffer: Vec<u8>) {
            buffer.clear();
            let mut free = self.free.lock().unwrap();
            let kept: usize = free.iter().map(Vec::capacity).sum();
            if kept + buffer.capacity() <= self.keep_bytes {
                free.push(buffer);
            }
        }

        #[cfg(test)]
        pub fn kept(&self) -> usize {
            self.free.lock().unwrap().iter().map(Vec::capacity).sum()
        }
    }

    struct Recycled {
        buffer: Vec<u8>,
        pool: &'static Pool,
    }

    impl AsRef<[u8]> for Recycled {
        fn as_ref(&self) -> &[u8] {
            &self.buffer
        }
    }

    impl Drop for Recycled {
        fn drop(&mut self) {
            self.pool.give_back(std::mem::take(&mut self.buffer));
        }
    }
}

impl FileReader {
    pub fn new(store: Arc<dyn Store>, path: ObjectPath, size: u64, budget: MemoryBudget) -> Self {
        Self {
            source: Source {
                store,
                path,
                size,
                cache: None,
                outage: Arc::default(),
            },
            size,
            budget,
            state: tokio::sync::Mutex::new(State {
                window: FIRST_WINDOW,
                ..Default::default()
            }),
        }
    }

    /// Shares the mount's record of a storage outage.
    pub fn with_outage(mut self, outage: Arc<Outage>) -> Self {
        self.source.outage = outage;
        self
    }

    /// Reads through `cache`; `id` names this version of the object.
    pub fn with_cache(mut self, cache: Arc<DiskCache>, id: ObjectId) -> Self {
        self.source.cache = Some((cache, id));
        self
    }

    /// Bytes `offset..offset+len`, fewer only at the end of the file.
    pub async fn read(&self, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        if offset >= self.size || len == 0 {
            return Ok(Bytes::new());
        }
        let end = (offset + len).min(self.size);
        let mut state = self.state.lock().await;
        let sequential = offset == state.next_sequential && offset != 0
            || state.buffer.as_ref().is_some_and(|b| b.covers(offset));
        if !sequential {
            if let Some(read_ahead) = state.read_ahead.take() {
                read_ahead.task.abort();
            }
            state.window = FIRST_WINDOW;
        }

        // Slices of the buffers, copied into one only when a read spans two of them: most
        // reads lie inside one buffer and go to the kernel without a copy.
        let mut parts: Vec<Bytes> = Vec::with_capacity(1);
        let mut pos = offset;
        while pos < end {
            if let Some(buffer) = state.buffer.as_ref().filter(|b| b.covers(pos)) {
                let from = (pos - buffer.start) as usize;
                let to = ((end - buffer.start) as usize).min(buffer.data.len());
                parts.push(buffer.data.slice(from..to));
                pos = buffer.start + to as u64;
                continue;
            }
            if let Some(read_ahead) = state.read_ahead.take() {
                if read_ahead.start == pos {
                    match read_ahead.task.await {
                        Ok(Ok(data)) => {
                            state.buffer = Some(Buffer {
                                start: pos,
                                data,
                                _permit: Some(read_ahead.permit),
                            });
                            continue;
                        }
                        // A failed read-ahead is fetched again below, directly.
                        Ok(Err(e)) => tracing::debug!(error = %e, "read-ahead failed"),
                        Err(_) => {}
                    }
                } else {
                    read_ahead.task.abort();
                }
            }
            let want = if sequential {
                (end - pos).max(state.window)
            } else {
                (end - pos).max(MIN_RANDOM_FETCH)
            };
            let range = pos..align_end(pos + want, self.source.alignment(), self.size);
            let data = self.source.fetch(range).await?;
            state.buffer = Some(Buffer {
                start: pos,
                data,
                _permit: None,
            });
        }
        state.next_sequential = end;

        // Keep one window ahead of a sequential reader.
        if sequential && state.read_ahead.is_none() {
            let ahead = state
                .buffer
                .as_ref()
                .map(|b| b.start + b.data.len() as u64)
                .unwrap_or(end);
            if ahead < self.size {
                state.window = (state.window * 2).min(MAX_WINDOW);
                let until = align_end(ahead + state.window, self.source.alignment(), self.size);
                if let Some(permit) = self.budget.try_acquire(until - ahead) {
                    let source = self.source.clone();
                    let task = tokio::spawn(async move { source.fetch(ahead..until).await });
                    state.read_ahead = Some(ReadAhead {
                        start: ahead,
                        task,
                        permit,
                    });
                }
            }
        }
        Ok(match parts.len() {
            1 => parts.pop().expect("one part"),
            _ => concat(parts),
        })
    }
}

fn concat(parts: Vec<Bytes>) -> Bytes {
    let mut out = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
    for part in parts {
        out.extend_from_slice(&part);
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::PutOptions;
    use crate::store::memory::MemoryStore;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    async fn reader(len: usize) -> (FileReader, Vec<u8>) {
        let store = MemoryStore::new();
        let bytes = data(len);
        let path = ObjectPath::parse("f").unwrap();
        store
            .put(&path, bytes.clone().into(), &PutOptions::default())
            .await
            .unwrap();
        let reader = FileReader::new(
            Arc::new(store),
            path,
            len as u64,
            MemoryBudget::new(256 * 1024 * 1024),
        );
        (reader, bytes)
    }

    #[tokio::test]
    async fn sequential_reads_are_exact_and_read_ahead() {
        let (reader, bytes) = reader(5 * 1024 * 1024 + 333).await;
        let mut got = Vec::new();
        let mut offset = 0;
        while offset < bytes.len() as u64 {
            let chunk = reader.read(offset, 128 * 1024).await.unwrap();
            assert!(!chunk.is_empty());
            offset += chunk.len() as u64;
            got.extend_from_slice(&chunk);
            if offset == 256 * 1024 {
                assert!(
                    reader.state.lock().await.read_ahead.is_some(),
                    "no read-ahead"
                );
            }
        }
        assert!(got == bytes);
        assert!(
            reader.read(offset, 10).await.unwrap().is_empty(),
            "EOF reads are empty"
        );
    }

    #[test]
    fn window_buffers_are_reused_and_the_pool_is_bounded() {
        let mib = 1024 * 1024;
        let pool: &'static pool::Pool = Box::leak(Box::new(pool::Pool::new(128 * mib)));
        let mut first = pool.take(8 * mib);
        first.extend_from_slice(&vec![1u8; 8 * mib]);
        let address = first.as_ptr();
        let shared = pool.freeze(first);
        let slice = shared.slice(10..20);
        drop(shared);
        assert_eq!(&slice[..], &[1u8; 10], "a slice keeps its bytes");
        assert_eq!(pool.kept(), 0, "recycled while a slice was alive");
        drop(slice);
        // The same memory serves the next window of a similar size, empty.
        let again = pool.take(6 * mib);
        assert_eq!(again.as_ptr(), address);
        assert!(again.is_empty());
        // Never much larger than asked for: a 1 MiB read does not hold 8 MiB.
        drop(pool.freeze(again));
        let small = pool.take(mib);
        assert_ne!(small.as_ptr(), address);
        // Bounded: freeing far more than the limit keeps at most the limit.
        let many: Vec<Bytes> = (0..40).map(|_| pool.freeze(pool.take(8 * mib))).collect();
        drop(many);
        assert_eq!(pool.kept(), 128 * mib);
    }

    #[tokio::test]
    async fn random_reads_at_odd_offsets() {
        let (reader, bytes) = reader(3 * 1024 * 1024).await;
        for (offset, len) in [
            (1_000_003u64, 4096u64),
            (7, 1),
            (3 * 1024 * 1024 - 5, 100),
            (2_222_222, 300_000),
            (0, 1),
        ] {
            let got = reader.read(offset, len).await.unwrap();
            let end = ((offset + len) as usize).min(bytes.len());
            assert!(got[..] == bytes[offset as usize..end], "{offset}+{len}");
        }
        // A seek drops the read-ahead and resets the window.
        let state = reader.state.lock().await;
        assert_eq!(state.window, FIRST_WINDOW);
    }

    /// A fetch whose body breaks mid-way asks for the rest only: the next ranged GET starts at
    /// the first byte not received (it once fetched the whole range again).
    #[tokio::test(start_paused = true)]
    async fn a_broken_fetch_resumes_from_the_first_missing_byte() {
        use crate::store::faulty::{Fault, FaultyStore};
        let bytes = data(4 * 1024 * 1024);
        let (store, path) =
            FaultyStore::with_object("f", bytes.clone(), vec![Fault::BreakAfter(100_000)]).await;
        let store = Arc::new(store);
        let reader = FileReader::new(
            store.clone(),
            path,
            bytes.len() as u64,
            MemoryBudget::new(64 * 1024),
        );
        let got = reader.read(0, 128 * 1024).await.unwrap();
        assert!(got[..] == bytes[..128 * 1024]);
        // A first read is not sequential: it fetches `MIN_RANDOM_FETCH`.
        let fetched = MIN_RANDOM_FETCH;
        assert_eq!(
            store.requested(),
            [0..fetched, 100_000..fetched],
            "resumed at the first missing byte"
        );
        let got = reader.read(90_000, 150_000).await.unwrap();
        assert!(
            got[..] == bytes[90_000..240_000],
            "the resumed fetch is exact"
        );
    }

    #[tokio::test]
    async fn read_ahead_is_skipped_without_budget() {
        let store = MemoryStore::new();
        let bytes = data(4 * 1024 * 1024);
        let path = ObjectPath::parse("f").unwrap();
        store
            .put(&path, bytes.clone().into(), &PutOptions::default())
            .await
            .unwrap();
        let budget = MemoryBudget::new(64 * 1024);
        let _all = budget.try_acquire(64 * 1024).unwrap();
        let reader = FileReader::new(Arc::new(store), path, bytes.len() as u64, budget);
        let mut offset = 0;
        while offset < bytes.len() as u64 {
            let chunk = reader.read(offset, 128 * 1024).await.unwrap();
            assert!(chunk[..] == bytes[offset as usize..offset as usize + chunk.len()]);
            offset += chunk.len() as u64;
            assert!(reader.state.lock().await.read_ahead.is_none());
        }
    }
}
