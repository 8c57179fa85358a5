//! Reads of one open file: ranged GETs with a sequential read-ahead window.
//!
//! Policy (after mountpoint-s3's prefetcher, in our own words): a read at the offset where the
//! previous one ended is sequential. Sequential reads are served from a buffer filled ahead of
//! them; each time a new read-ahead starts, the window doubles, from 1 MiB up to 64 MiB. A read
//! elsewhere (a seek) drops the read-ahead, resets the window and fetches only what was asked
//! (at least 256 KiB), so random small reads do not pull whole windows.
//!
//! Every byte a reader holds is the job's budget's: a demand fetch waits for its bytes (asking
//! for only what the kernel asked when a whole window is not free), read-ahead happens only
//! when its window is free, and no window is larger than a quarter of the budget. Between reads
//! an open file's buffer and read-ahead sit in a slot of the mount's `IdleFiles`, so that a
//! request waiting for memory can take back what files nobody is reading hold.
//!
//! With a disk cache (`fs::cache`), every fetch goes through `Source::fetch`: cached blocks are
//! read from disk, the rest is fetched from storage in one GET per run of missing blocks and
//! queued for the cache. Fetches then end on block boundaries, so that consecutive windows start
//! on one and no block is fetched twice.

use std::ops::Range;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::task::JoinHandle;

use super::buffers::BufferPool;
use super::cache::{DiskCache, ObjectId};
use super::whole_check::WholeCheck;
use crate::model::MemoryBudget;
use crate::model::ObjectPath;
use crate::model::RetryPolicy;
use crate::model::budget::{BudgetPermit, Reclaim};
use crate::store::{RangeError, Store, StoreError, read_range};

const FIRST_WINDOW: u64 = 1024 * 1024;
const MAX_WINDOW: u64 = 64 * 1024 * 1024;
const MIN_RANDOM_FETCH: u64 = 256 * 1024;

struct Buffer {
    start: u64,
    data: Bytes,
    permit: BudgetPermit,
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
    /// The version opened: a blob replaced while open gives EIO, never a mix of versions.
    version: Option<Arc<str>>,
    /// With a stored CRC64: the file read whole is checked against it.
    whole: Option<Arc<WholeCheck>>,
    size: u64,
    cache: Option<(Arc<DiskCache>, ObjectId)>,
    outage: Arc<Outage>,
    /// The retry policy of its fetches (counting into the mount's figures).
    retry: RetryPolicy,
    pool: Arc<BufferPool>,
}

impl Source {
    /// Fetches end on a multiple of this (or at the end of the object).
    fn alignment(&self) -> u64 {
        self.cache.as_ref().map_or(1, |(c, _)| c.block_size())
    }

    fn policies(&self) -> (&Outage, &RetryPolicy) {
        (&self.outage, &self.retry)
    }

    /// What a fetch reads: the object, at the version opened.
    fn object(&self) -> (Arc<dyn Store>, ObjectPath, Option<Arc<str>>) {
        (self.store.clone(), self.path.clone(), self.version.clone())
    }

    /// Exactly the bytes `range` (within the object), checked as part of the whole file when
    /// the object has a CRC64.
    async fn fetch(&self, range: Range<u64>) -> Result<Bytes, StoreError> {
        if let Some(whole) = &self.whole {
            whole.refuse(&self.path)?;
        }
        let start = range.start;
        let data = self.fetch_unchecked(range).await?;
        if let Some(whole) = &self.whole {
            whole.add(&self.path, start, &data)?;
        }
        Ok(data)
    }

    async fn fetch_unchecked(&self, range: Range<u64>) -> Result<Bytes, StoreError> {
        let Some((cache, id)) = &self.cache else {
            return fetch(self.object(), range, self.policies(), &self.pool).await;
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
                    let data = fetch(self.object(), run, self.policies(), &self.pool).await?;
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
    task: AbortOnDrop<Result<Bytes, StoreError>>,
    permit: BudgetPermit,
}

/// A task stopped when its handle goes: a read-ahead dropped (a seek, a closed file, memory
/// taken back) must not go on fetching bytes nobody pays for.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What an open file holds between reads.
#[derive(Default)]
struct Held {
    buffer: Option<Buffer>,
    read_ahead: Option<ReadAhead>,
}

impl Held {
    fn bytes(&self) -> u64 {
        self.buffer.as_ref().map_or(0, |b| b.permit.bytes())
            + self.read_ahead.as_ref().map_or(0, |r| r.permit.bytes())
    }
}

/// An open file's place in `IdleFiles`: what it holds while no read runs, and since when.
struct Slot {
    held: Mutex<(Held, Instant)>,
}

/// The open files of one mount: a request waiting for memory takes back what idle ones hold.
#[derive(Default)]
pub struct IdleFiles {
    slots: Mutex<Vec<Weak<Slot>>>,
}

impl IdleFiles {
    /// A registry whose idle files give memory back to `budget`'s waiters.
    pub fn new(budget: &MemoryBudget) -> Arc<Self> {
        let idle = Arc::new(Self::default());
        budget.add_reclaimer(Arc::downgrade(&idle) as Weak<dyn Reclaim>);
        idle
    }

    fn add(&self, slot: &Arc<Slot>) {
        let mut slots = self.slots.lock().unwrap();
        slots.retain(|s| s.strong_count() > 0);
        slots.push(Arc::downgrade(slot));
    }
}

impl Reclaim for IdleFiles {
    fn reclaim(&self, idle_for: Duration) -> u64 {
        let slots: Vec<Arc<Slot>> = {
            let mut slots = self.slots.lock().unwrap();
            slots.retain(|s| s.strong_count() > 0);
            slots.iter().filter_map(Weak::upgrade).collect()
        };
        let mut freed = 0;
        for slot in slots {
            let mut held = slot.held.lock().unwrap();
            if held.1.elapsed() >= idle_for {
                freed += held.0.bytes();
                // Dropping them frees the bytes and aborts a read-ahead in flight.
                held.0 = Held::default();
            }
        }
        freed
    }
}

struct State {
    /// Where a sequential read would start.
    next_sequential: u64,
    window: u64,
}

pub struct FileReader {
    source: Source,
    size: u64,
    budget: MemoryBudget,
    /// No window larger than this: one file never holds the whole budget.
    max_window: u64,
    slot: Arc<Slot>,
    /// Serialises this file's reads (the kernel may send several at once).
    state: tokio::sync::Mutex<State>,
}

/// Fetches a whole range into memory through the store's resumable read: transient failures
/// are retried (one attempt each while storage is known to be down) and a broken, truncated or
/// stalled body is resumed from its first missing byte; never wrong bytes.
async fn fetch(
    (store, path, version): (Arc<dyn Store>, ObjectPath, Option<Arc<str>>),
    range: Range<u64>,
    (outage, retry): (&Outage, &RetryPolicy),
    pool: &Arc<BufferPool>,
) -> Result<Bytes, StoreError> {
    let policy = outage.policy(retry);
    let mut out = pool.take((range.end - range.start) as usize);
    let result = read_range(
        store.as_ref(),
        &path,
        version.as_deref(),
        range,
        &policy,
        STALL_TIMEOUT,
        &mut out,
    )
    .await
    .map(|_| pool.freeze(out))
    .map_err(|e| match e {
        RangeError::Store(e) => e,
        RangeError::Sink(e) => StoreError::io(&path, e),
    });
    outage.record(&path, &result);
    if let Err(StoreError::Changed { .. }) = &result {
        tracing::error!(object = %path, "replaced in storage while open through the mount; \
            reads of the open file fail (EIO) until it is opened again");
    }
    result
}

impl FileReader {
    /// A reader of `path` (`size` bytes) whose buffers are paid for from `budget` and recycled
    /// through `pool`.
    pub fn new(
        store: Arc<dyn Store>,
        path: ObjectPath,
        size: u64,
        budget: MemoryBudget,
        pool: Arc<BufferPool>,
    ) -> Self {
        let max_window = (budget.bytes() / 4).clamp(FIRST_WINDOW, MAX_WINDOW);
        Self {
            source: Source {
                store,
                path,
                size,
                version: None,
                whole: None,
                cache: None,
                outage: Arc::default(),
                retry: RetryPolicy::default(),
                pool,
            },
            size,
            budget,
            max_window,
            slot: Arc::new(Slot {
                held: Mutex::new((Held::default(), Instant::now())),
            }),
            state: tokio::sync::Mutex::new(State {
                next_sequential: 0,
                window: FIRST_WINDOW,
            }),
        }
    }

    /// Checks the file, once read from start to end, against the CRC64 stored with it.
    pub fn with_expected_crc64(mut self, crc64: Option<u64>) -> Self {
        self.source.whole = crc64.map(|crc| Arc::new(WholeCheck::new(crc, self.size)));
        self
    }

    /// Pins every fetch to `version` of the object.
    pub fn with_version(mut self, version: Option<Arc<str>>) -> Self {
        self.source.version = version;
        self
    }

    /// Shares the mount's record of a storage outage.
    pub fn with_outage(mut self, outage: Arc<Outage>) -> Self {
        self.source.outage = outage;
        self
    }

    /// Fetches retry under `retry` (while storage is not known to be gone).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.source.retry = retry;
        self
    }

    /// Reads through `cache`; `id` names this version of the object.
    pub fn with_cache(mut self, cache: Arc<DiskCache>, id: ObjectId) -> Self {
        self.source.cache = Some((cache, id));
        self
    }

    /// Lets the mount's waiters for memory take back what this file holds while it is idle.
    pub fn with_idle_files(self, idle: &IdleFiles) -> Self {
        idle.add(&self.slot);
        self
    }

    /// Bytes `offset..offset+len`, fewer only at the end of the file.
    pub async fn read(&self, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        if offset >= self.size || len == 0 {
            return Ok(Bytes::new());
        }
        let end = (offset + len).min(self.size);
        let mut state = self.state.lock().await;
        // Out of the slot while this read runs, so that nobody takes it back from under it. A
        // read cut short (the kernel gave up) drops it, which only costs the buffered bytes.
        let mut held = std::mem::take(&mut self.slot.held.lock().unwrap().0);
        let result = self.read_held(&mut state, &mut held, offset, end).await;
        *self.slot.held.lock().unwrap() = (held, Instant::now());
        result
    }

    #[cfg(test)]
    fn holds_read_ahead(&self) -> bool {
        self.slot.held.lock().unwrap().0.read_ahead.is_some()
    }

    async fn read_held(
        &self,
        state: &mut State,
        held: &mut Held,
        offset: u64,
        end: u64,
    ) -> Result<Bytes, StoreError> {
        let sequential = offset == state.next_sequential && offset != 0
            || held.buffer.as_ref().is_some_and(|b| b.covers(offset));
        if !sequential {
            held.read_ahead = None;
            state.window = FIRST_WINDOW;
        }
        let align = self.source.alignment();

        // Slices of the buffers, copied into one only when a read spans two of them: most
        // reads lie inside one buffer and go to the kernel without a copy.
        let mut parts: Vec<Bytes> = Vec::with_capacity(1);
        let mut pos = offset;
        while pos < end {
            if let Some(buffer) = held.buffer.as_ref().filter(|b| b.covers(pos)) {
                let from = (pos - buffer.start) as usize;
                let to = ((end - buffer.start) as usize).min(buffer.data.len());
                parts.push(buffer.data.slice(from..to));
                pos = buffer.start + to as u64;
                continue;
            }
            // The buffer is done with. What this reply took from it is copied first, so that
            // its memory really goes back to the budget with its permit.
            if let Some(done) = held.buffer.take() {
                if !parts.is_empty() {
                    parts = vec![concat(std::mem::take(&mut parts))];
                }
                drop(done);
            }
            if let Some(mut read_ahead) = held.read_ahead.take() {
                if read_ahead.start == pos {
                    match (&mut read_ahead.task.0).await {
                        Ok(Ok(data)) => {
                            held.buffer = Some(Buffer {
                                start: pos,
                                data,
                                permit: read_ahead.permit,
                            });
                            continue;
                        }
                        // A failed read-ahead is fetched again below, directly.
                        Ok(Err(e)) => tracing::debug!(error = %e, "read-ahead failed"),
                        Err(_) => {}
                    }
                }
            }
            let want = if sequential {
                (end - pos).max(state.window)
            } else {
                (end - pos).max(MIN_RANDOM_FETCH)
            };
            let mut range = pos..align_end(pos + want, align, self.size);
            // Fetches start on a block boundary below `pos` when there is a disk cache.
            let fetched = |range: &Range<u64>| range.end - range.start / align * align;
            // The whole window when it is free; otherwise only what was asked, waiting for it.
            let permit = match self.budget.try_acquire(fetched(&range)) {
                Some(permit) => permit,
                None => {
                    range.end = align_end(end, align, self.size);
                    self.budget.acquire(fetched(&range)).await
                }
            };
            let data = self.source.fetch(range).await?;
            held.buffer = Some(Buffer {
                start: pos,
                data,
                permit,
            });
        }
        state.next_sequential = end;

        // Keep one window ahead of a sequential reader, when the budget has it to spare.
        if sequential && held.read_ahead.is_none() {
            let ahead = held
                .buffer
                .as_ref()
                .map(|b| b.start + b.data.len() as u64)
                .unwrap_or(end);
            if ahead < self.size {
                state.window = (state.window * 2).min(self.max_window);
                let until = align_end(ahead + state.window, align, self.size);
                if let Some(permit) = self.budget.try_acquire(until - ahead / align * align) {
                    let source = self.source.clone();
                    let task = tokio::spawn(async move { source.fetch(ahead..until).await });
                    held.read_ahead = Some(ReadAhead {
                        start: ahead,
                        task: AbortOnDrop(task),
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
        let budget = MemoryBudget::new(256 * 1024 * 1024);
        let pool = BufferPool::new(budget.clone(), 128 * 1024 * 1024);
        let reader = FileReader::new(Arc::new(store), path, len as u64, budget, pool);
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
                assert!(reader.holds_read_ahead(), "no read-ahead");
            }
        }
        assert!(got == bytes);
        assert!(
            reader.read(offset, 10).await.unwrap().is_empty(),
            "EOF reads are empty"
        );
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
            BufferPool::new(MemoryBudget::new(64 * 1024), 0),
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

    async fn stored(len: usize) -> (Arc<MemoryStore>, ObjectPath, Vec<u8>) {
        let store = Arc::new(MemoryStore::new());
        let bytes = data(len);
        let path = ObjectPath::parse("f").unwrap();
        store
            .put(&path, bytes.clone().into(), &PutOptions::default())
            .await
            .unwrap();
        (store, path, bytes)
    }

    async fn read_all(reader: &FileReader, len: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < len {
            let chunk = reader.read(got.len() as u64, 128 * 1024).await.unwrap();
            assert!(!chunk.is_empty());
            got.extend_from_slice(&chunk);
        }
        got
    }

    #[tokio::test]
    async fn read_ahead_is_skipped_without_budget() {
        let (store, path, bytes) = stored(4 * 1024 * 1024).await;
        let budget = MemoryBudget::new(1024 * 1024);
        // Someone else holds all but 256 KiB: enough for what the kernel asks, not a window.
        let _others = budget.try_acquire(768 * 1024).unwrap();
        let pool = BufferPool::new(budget.clone(), 0);
        let reader = FileReader::new(store, path, bytes.len() as u64, budget.clone(), pool);
        let mut offset = 0;
        while offset < bytes.len() as u64 {
            let chunk = reader.read(offset, 128 * 1024).await.unwrap();
            assert!(chunk[..] == bytes[offset as usize..offset as usize + chunk.len()]);
            offset += chunk.len() as u64;
            assert!(!reader.holds_read_ahead());
            assert!(budget.held_bytes() <= budget.bytes());
        }
        assert_eq!(budget.peak_bytes(), budget.bytes());
    }

    #[tokio::test]
    async fn a_read_waits_for_its_bytes_and_takes_back_what_idle_files_hold() {
        let (store, path, bytes) = stored(8 * 1024 * 1024).await;
        let budget = MemoryBudget::new(16 * 1024 * 1024);
        let pool = BufferPool::new(budget.clone(), 0);
        let idle = IdleFiles::new(&budget);
        let open = |n: u64| {
            FileReader::new(store.clone(), path.clone(), n, budget.clone(), pool.clone())
                .with_idle_files(&idle)
        };
        // An open file read half-way holds a window and a read-ahead, then goes idle.
        let first = open(bytes.len() as u64);
        let half = 4 * 1024 * 1024;
        let mut offset = 0;
        while offset < half {
            offset += first.read(offset, 128 * 1024).await.unwrap().len() as u64;
        }
        assert!(budget.held_bytes() > 0, "the idle file holds its buffers");
        // Someone active takes most of the rest and keeps it.
        let free = budget.bytes() - budget.held_bytes();
        let _active = budget.acquire(free.saturating_sub(64 * 1024)).await;
        // A second file must wait for its bytes: it gets them from the idle one.
        let second = open(bytes.len() as u64);
        let got = tokio::time::timeout(Duration::from_secs(60), read_all(&second, bytes.len()))
            .await
            .expect("the idle file's memory was taken back");
        assert!(got == bytes);
        assert!(budget.peak_bytes() <= budget.bytes());
        // The first file still reads correctly after losing its buffers.
        let rest = first.read(half, 1024).await.unwrap();
        assert!(rest[..] == bytes[half as usize..half as usize + 1024]);
    }
}
