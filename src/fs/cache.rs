//! The mount's on-disk block cache: object bytes already fetched are kept in fixed-size block
//! files on a local disk, so a second read (another epoch, another process) does not go back to
//! storage.
//!
//! - **Blocks**: `block_size` (1 MiB, as mountpoint-s3's cache and the kernel's largest FUSE
//!   read), aligned to the object's start; the last block of an object may be short. A block is
//!   keyed by the object's identity (path, size, last-modified, MD5 when known) and its index,
//!   so a changed object never serves the old bytes.
//! - **One data file**: blocks live in fixed-size slots of a single sparse file
//!   (`blocks.dat`); an evicted block's slot is freed with a punched hole and reused. Creating
//!   and deleting a file per block cost more CPU than the reads it saved: ext4 scans recently
//!   deleted inodes on each new one (`recently_deleted`, half of the mount's CPU with 2,000
//!   small files). A CRC64 of each block is kept in the in-memory index and checked on every
//!   read, and a slot is trusted only while the index still maps the block to it, so corrupt or
//!   zeroed bytes are a miss (re-fetched), never wrong bytes.
//! - **Limits**: the total never exceeds `max_bytes` (least recently used blocks are evicted),
//!   and an insert never leaves less than `reserved_free_bytes` free on the cache's filesystem
//!   (checked with statvfs before each insert: evict, else skip). When others take the disk
//!   below that floor, the cache evicts its own blocks on the next read or insert until the
//!   floor is back (or the cache is empty). Writes wait for nothing: when
//!   more than `PENDING_WRITE_BYTES` are already queued for the disk, or the job's memory
//!   budget has no room for the queued bytes, the block is not cached.
//! - **Lifetime**: the directory belongs to one mount (an exclusive `flock` on a lock file in it)
//!   and is deleted when the mount ends. A directory left by a dataref that was killed is wiped
//!   when it is opened again; a non-empty directory without the lock file is never touched.
//!
//! Every failure here is logged and swallowed: the cache can make reads faster, never fail them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::model::{MemoryBudget, ObjectPath};
use crate::store::checksum::crc64;

/// Default block size: the largest read the kernel sends a FUSE filesystem (256 pages).
pub const DEFAULT_BLOCK_SIZE: u64 = 1024 * 1024;
/// Bytes fetched but not yet on disk; beyond this, blocks are not cached (bounded memory).
const PENDING_WRITE_BYTES: u64 = 64 * 1024 * 1024;
/// Marks a directory as a dataref cache and tells whether its owner is alive.
pub const LOCK_FILE: &str = ".dataref-cache.lock";
/// The slots holding the blocks.
pub const DATA_FILE: &str = "blocks.dat";

/// Where and how much a mount caches.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// This mount's own directory (created; deleted when the mount ends).
    pub dir: PathBuf,
    /// Cap on the cached bytes; `None` = bounded only by `reserved_free_bytes`.
    pub max_bytes: Option<u64>,
    /// Free space on the cache's filesystem that the cache never eats into.
    pub reserved_free_bytes: u64,
    pub block_size: u64,
}

impl CacheOptions {
    /// The cache of mount `name` per the job's `mount` settings: under `cache_dir`, else under
    /// `default_root`; `None` when `cache_size_bytes` is 0 (caching off).
    pub fn from_settings(
        settings: &crate::model::MountSettings,
        default_root: &Path,
        name: &str,
    ) -> Option<Self> {
        if settings.cache_size_bytes == Some(0) {
            return None;
        }
        let root = settings.cache_dir.as_deref().unwrap_or(default_root);
        Some(Self {
            dir: root.join(name),
            max_bytes: settings.cache_size_bytes,
            reserved_free_bytes: settings.reserved_free_disk_bytes,
            block_size: DEFAULT_BLOCK_SIZE,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache directory {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cache directory {} is in use by another dataref process", path.display())]
    InUse { path: PathBuf },
    #[error(
        "cache directory {} holds files dataref did not write; not using (or deleting) it",
        path.display()
    )]
    NotOurs { path: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One version of one object: blocks of a changed object get other keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ObjectId([u8; 16]);

impl ObjectId {
    pub fn new(
        path: &ObjectPath,
        size: u64,
        modified: Option<SystemTime>,
        content_md5: Option<[u8; 16]>,
        version: Option<&str>,
    ) -> Self {
        let mut hash = Sha256::new();
        hash.update(path.as_str().as_bytes());
        hash.update([0]);
        hash.update(size.to_le_bytes());
        match modified.map(|t| t.duration_since(UNIX_EPOCH).unwrap_or_default()) {
            Some(at) => {
                hash.update([1]);
                hash.update(at.as_nanos().to_le_bytes());
            }
            None => hash.update([0]),
        }
        match content_md5 {
            Some(md5) => {
                hash.update([1]);
                hash.update(md5);
            }
            None => hash.update([0]),
        }
        // The ETag: a blob rewritten within the same second with the same size is another
        // version.
        match version {
            Some(version) => {
                hash.update([1]);
                hash.update(version.as_bytes());
            }
            None => hash.update([0]),
        }
        let digest = hash.finalize();
        let mut id = [0; 16];
        id.copy_from_slice(&digest[..16]);
        Self(id)
    }
}

type Key = (ObjectId, u64);

struct Entry {
    len: u64,
    crc: u64,
    tick: u64,
    slot: u64,
}

/// A block taken out of the index; its slot is freed once its bytes are punched out.
struct Victim {
    len: u64,
    slot: u64,
}

#[derive(Default)]
struct Index {
    entries: HashMap<Key, Entry>,
    /// Least recently used first.
    lru: BTreeMap<u64, Key>,
    /// Blocks being written (deduplicates concurrent misses of the same block).
    pending: HashSet<Key>,
    tick: u64,
    /// Bytes of the entries.
    bytes: u64,
    /// Bytes being written, counted against the limits before they land.
    reserved: u64,
    /// Slots of the data file free for reuse (their bytes already punched out).
    free_slots: Vec<u64>,
    /// Slots ever used: the next new one.
    slots: u64,
}

impl Index {
    fn touch(&mut self, key: &Key) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(entry) = self.entries.get_mut(key) {
            self.lru.remove(&entry.tick);
            entry.tick = tick;
            self.lru.insert(tick, *key);
        }
    }

    fn remove(&mut self, key: &Key) -> Option<Victim> {
        let entry = self.entries.remove(key)?;
        self.lru.remove(&entry.tick);
        self.bytes -= entry.len;
        Some(Victim {
            len: entry.len,
            slot: entry.slot,
        })
    }

    fn pop_lru(&mut self) -> Option<Victim> {
        let (_, key) = self.lru.pop_first()?;
        self.remove(&key)
    }

    fn take_slot(&mut self) -> u64 {
        self.free_slots.pop().unwrap_or_else(|| {
            self.slots += 1;
            self.slots - 1
        })
    }
}

/// Counters, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Blocks served from disk.
    pub hits: u64,
    /// Blocks that had to be fetched from storage.
    pub misses: u64,
    pub inserted: u64,
    pub evicted: u64,
    /// Blocks not cached: over the cap, below the free-space floor, writes backed up, or I/O.
    pub skipped: u64,
    /// Cached blocks that failed their check (treated as misses).
    pub corrupt: u64,
    /// What is cached now.
    pub blocks: u64,
    pub bytes: u64,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    inserted: AtomicU64,
    evicted: AtomicU64,
    skipped: AtomicU64,
    corrupt: AtomicU64,
}

pub struct DiskCache {
    options: CacheOptions,
    index: Mutex<Index>,
    /// One permit per KiB of blocks waiting to be written.
    writes: Arc<Semaphore>,
    write_permits: u32,
    /// Queued blocks are memory the job holds: each write holds their bytes from the budget.
    budget: MemoryBudget,
    closed: AtomicBool,
    counters: Counters,
    lock: Mutex<Option<Flock<File>>>,
    data: File,
}

impl std::fmt::Debug for DiskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DiskCache({})", self.options.dir.display())
    }
}

impl DiskCache {
    /// Creates (or takes over a dead dataref's) cache directory. Blocking: call it off the
    /// async workers.
    pub fn open(options: CacheOptions, budget: MemoryBudget) -> Result<Arc<Self>, CacheError> {
        let dir = &options.dir;
        let existed = dir.exists();
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock_path = dir.join(LOCK_FILE);
        if existed
            && !lock_path.exists()
            && std::fs::read_dir(dir)
                .map_err(io_err(dir))?
                .next()
                .is_some()
        {
            return Err(CacheError::NotOurs { path: dir.clone() });
        }
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|_| CacheError::InUse { path: dir.clone() })?;
        // Blocks left by a dataref that died: their index died with it.
        for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            if entry.file_name() != LOCK_FILE {
                let path = entry.path();
                let removed = if entry.file_type().map_err(io_err(&path))?.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                removed.map_err(io_err(&path))?;
            }
        }
        let data_path = dir.join(DATA_FILE);
        let data = File::options()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&data_path)
            .map_err(io_err(&data_path))?;
        let write_permits = (PENDING_WRITE_BYTES / 1024) as u32;
        Ok(Arc::new(Self {
            options: CacheOptions {
                block_size: options.block_size.max(4096),
                ..options
            },
            index: Mutex::new(Index::default()),
            writes: Arc::new(Semaphore::new(write_permits as usize)),
            write_permits,
            budget,
            closed: AtomicBool::new(false),
            counters: Counters::default(),
            lock: Mutex::new(Some(lock)),
            data,
        }))
    }

    /// The file holding the cached blocks.
    pub fn data_path(&self) -> PathBuf {
        self.options.dir.join(DATA_FILE)
    }

    /// Where block `slot` starts in the data file.
    pub fn slot_offset(&self, slot: u64) -> u64 {
        slot * self.options.block_size
    }

    /// The slot of a cached block (for tests that damage it).
    pub fn slot_of(&self, id: ObjectId, block: u64) -> Option<u64> {
        let index = self.index.lock().unwrap();
        index.entries.get(&(id, block)).map(|e| e.slot)
    }

    pub fn dir(&self) -> &Path {
        &self.options.dir
    }

    pub fn block_size(&self) -> u64 {
        self.options.block_size
    }

    pub fn max_bytes(&self) -> Option<u64> {
        self.options.max_bytes
    }

    pub fn reserved_free_bytes(&self) -> u64 {
        self.options.reserved_free_bytes
    }

    pub fn stats(&self) -> CacheStats {
        let index = self.index.lock().unwrap();
        let c = &self.counters;
        CacheStats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            inserted: c.inserted.load(Ordering::Relaxed),
            evicted: c.evicted.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
            corrupt: c.corrupt.load(Ordering::Relaxed),
            blocks: index.entries.len() as u64,
            bytes: index.bytes,
        }
    }

    /// Which of `blocks` of `id` are cached (no recency update: that happens on a read).
    pub fn present(&self, id: ObjectId, blocks: Range<u64>) -> Vec<bool> {
        let index = self.index.lock().unwrap();
        blocks
            .map(|i| index.entries.contains_key(&(id, i)))
            .collect()
    }

    pub fn record_misses(&self, blocks: u64) {
        self.counters.misses.fetch_add(blocks, Ordering::Relaxed);
    }

    /// Blocks `blocks` of `id`, concatenated (`len` bytes in all), or `None` when any of them is
    /// missing or fails its check (those are dropped from the index).
    pub async fn read(
        self: &Arc<Self>,
        id: ObjectId,
        blocks: Range<u64>,
        len: u64,
    ) -> Option<Bytes> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.read_blocking(id, blocks, len))
            .await
            .ok()
            .flatten()
    }

    fn read_blocking(&self, id: ObjectId, blocks: Range<u64>, len: u64) -> Option<Bytes> {
        use std::os::unix::fs::FileExt;
        let expected: Vec<(Key, u64, u64, u64)> = {
            let index = self.index.lock().unwrap();
            blocks
                .clone()
                .map(|i| {
                    let key = (id, i);
                    index.entries.get(&key).map(|e| (key, e.len, e.crc, e.slot))
                })
                .collect::<Option<_>>()?
        };
        if expected.iter().map(|(_, l, _, _)| l).sum::<u64>() != len {
            return None;
        }
        let mut out = BytesMut::zeroed(len as usize);
        let mut at = 0usize;
        let mut all_good = true;
        // Every block is checked, also after a bad one: the run is fetched again and only
        // blocks dropped from the index are cached anew.
        for (key, block_len, crc, slot) in &expected {
            let bytes = &mut out[at..at + *block_len as usize];
            let ok = self
                .data
                .read_exact_at(bytes, self.slot_offset(*slot))
                .is_ok()
                && crc64(bytes) == *crc
                // Evicted while we read (the slot may hold another block by now)?
                && self.index.lock().unwrap().entries.get(key).is_some_and(|e| e.slot == *slot);
            if !ok {
                tracing::warn!(dir = %self.options.dir.display(), block = key.1, "cache block unreadable or corrupt: fetching it again");
                self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
                self.drop_entry(key, *crc);
                all_good = false;
            }
            at += *block_len as usize;
        }
        if !all_good {
            return None;
        }
        {
            let mut index = self.index.lock().unwrap();
            for (key, _, _, _) in &expected {
                index.touch(key);
            }
        }
        self.counters
            .hits
            .fetch_add(expected.len() as u64, Ordering::Relaxed);
        // A cache that is only read never inserts, so the floor is checked here too.
        self.give_back();
        Some(out.freeze())
    }

    /// Evicts least recently used blocks while the disk has less free space than the floor:
    /// when something else (the job's own checkpoints) fills the disk, the cache hands its
    /// space back instead of holding it.
    fn give_back(&self) {
        let floor = self.options.reserved_free_bytes;
        let Some(available) = available_bytes(&self.options.dir) else {
            return;
        };
        if available >= floor {
            return;
        }
        let mut victims = Vec::new();
        {
            let mut index = self.index.lock().unwrap();
            let mut freed = 0;
            while available.saturating_add(freed) < floor {
                let Some(victim) = index.pop_lru() else { break };
                freed += victim.len;
                victims.push(victim);
            }
        }
        if !victims.is_empty() {
            tracing::info!(dir = %self.options.dir.display(), blocks = victims.len(),
                "free space below the floor: cache blocks evicted");
        }
        self.evict(victims);
    }

    /// Removes a bad entry (unless it was replaced meanwhile) and frees its slot.
    fn drop_entry(&self, key: &Key, crc: u64) {
        let mut index = self.index.lock().unwrap();
        if index.entries.get(key).is_some_and(|e| e.crc == crc) {
            let victim = index.remove(key).expect("present");
            drop(index);
            self.free(vec![victim]);
        }
    }

    /// Caches `data`, the consecutive blocks of `id` from block `first` on (each `block_size`
    /// long but the object's last), in the background. Never waits: when writes are backed up
    /// the blocks are skipped.
    pub fn insert(self: &Arc<Self>, id: ObjectId, first: u64, data: Bytes) {
        if self.closed.load(Ordering::Relaxed) || data.is_empty() {
            return;
        }
        let block = self.options.block_size as usize;
        let blocks = data.len().div_ceil(block) as u64;
        let kib = (data.len() as u64)
            .div_ceil(1024)
            .min(self.write_permits as u64) as u32;
        let Ok(permit) = self.writes.clone().try_acquire_many_owned(kib) else {
            self.counters.skipped.fetch_add(blocks, Ordering::Relaxed);
            return;
        };
        let Some(held) = self.budget.try_acquire(data.len() as u64) else {
            self.counters.skipped.fetch_add(blocks, Ordering::Relaxed);
            return;
        };
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permits = (permit, held);
            for (n, chunk) in data.chunks(block).enumerate() {
                this.insert_block((id, first + n as u64), chunk);
            }
        });
    }

    fn insert_block(&self, key: Key, data: &[u8]) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let len = data.len() as u64;
        use std::os::unix::fs::FileExt;
        let (victims, slot) = match self.make_room(&key, len) {
            Room::Cached => return,
            Room::None(victims) => {
                self.evict(victims);
                self.counters.skipped.fetch_add(1, Ordering::Relaxed);
                self.give_back();
                return;
            }
            Room::Made(victims, slot) => (victims, slot),
        };
        self.evict(victims);
        let written = self.data.write_all_at(data, self.slot_offset(slot));
        let mut index = self.index.lock().unwrap();
        index.pending.remove(&key);
        index.reserved -= len;
        match written {
            Ok(()) => {
                index.tick += 1;
                let tick = index.tick;
                index.entries.insert(
                    key,
                    Entry {
                        len,
                        crc: crc64(data),
                        tick,
                        slot,
                    },
                );
                index.lru.insert(tick, key);
                index.bytes += len;
                self.counters.inserted.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                drop(index);
                self.free(vec![Victim { len, slot }]);
                if !self.closed.load(Ordering::Relaxed) {
                    tracing::warn!(dir = %self.options.dir.display(), error = %e, "cannot write a cache block; not cached");
                }
                self.counters.skipped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Evicts least recently used blocks until `len` more bytes fit under the cap and above the
    /// free-space floor, and reserves them and a slot.
    fn make_room(&self, key: &Key, len: u64) -> Room {
        let mut index = self.index.lock().unwrap();
        if index.entries.contains_key(key) || index.pending.contains(key) {
            return Room::Cached;
        }
        let mut victims = Vec::new();
        if let Some(cap) = self.options.max_bytes {
            if len > cap {
                return Room::None(victims);
            }
            while index.bytes + index.reserved + len > cap {
                match index.pop_lru() {
                    Some(victim) => victims.push(victim),
                    None => return Room::None(victims), // the rest is being written
                }
            }
        }
        let Some(available) = available_bytes(&self.options.dir) else {
            return Room::None(victims);
        };
        let needed = self
            .options
            .reserved_free_bytes
            .saturating_add(len)
            .saturating_add(index.reserved);
        // Without any hope of fitting, keep what is cached.
        let freed_now: u64 = victims.iter().map(|v| v.len).sum();
        if available
            .saturating_add(freed_now)
            .saturating_add(index.bytes)
            < needed
        {
            return Room::None(victims);
        }
        let mut freed = freed_now;
        while available.saturating_add(freed) < needed {
            let victim = index.pop_lru().expect("enough bytes are indexed");
            freed += victim.len;
            victims.push(victim);
        }
        index.pending.insert(*key);
        index.reserved += len;
        let slot = index.take_slot();
        Room::Made(victims, slot)
    }

    fn evict(&self, victims: Vec<Victim>) {
        self.counters
            .evicted
            .fetch_add(victims.len() as u64, Ordering::Relaxed);
        self.free(victims);
    }

    /// Gives the slots' disk space back (a punched hole) and then the slots for reuse: never
    /// the other way round, or the hole could land in a block written meanwhile.
    fn free(&self, victims: Vec<Victim>) {
        use nix::fcntl::{FallocateFlags, fallocate};
        if victims.is_empty() {
            return;
        }
        let punch = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        for victim in &victims {
            let offset = self.slot_offset(victim.slot) as i64;
            let len = self.options.block_size as i64;
            if let Err(e) = fallocate(&self.data, punch, offset, len) {
                // The slot is still reused; only its space is not returned early.
                tracing::debug!(error = %e, "cannot punch a hole in the cache file");
            }
        }
        let mut index = self.index.lock().unwrap();
        index.free_slots.extend(victims.iter().map(|v| v.slot));
    }

    /// Waits until every queued block is written (or skipped).
    pub async fn wait_idle(&self) {
        let _all = self.writes.acquire_many(self.write_permits).await;
    }

    /// Stops caching, waits for queued writes and deletes the directory. Blocking.
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        futures::executor::block_on(self.wait_idle());
        let dir = &self.options.dir;
        if let Err(e) = std::fs::remove_dir_all(dir) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the mount cache");
            }
        }
        *self.index.lock().unwrap() = Index::default();
        self.lock.lock().unwrap().take();
    }
}

impl Drop for DiskCache {
    fn drop(&mut self) {
        self.close();
    }
}

enum Room {
    /// Already cached or being cached.
    Cached,
    /// Does not fit; these were evicted trying.
    None(Vec<Victim>),
    /// Reserved, in this slot; these were evicted for it.
    Made(Vec<Victim>, u64),
}

/// Bytes an unprivileged writer can still use on the filesystem of `dir`.
fn available_bytes(dir: &Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
