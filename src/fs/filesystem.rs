//! The filesystem core: a read-only namespace and reads over any `Store`, with no kernel in
//! sight. The FUSE adapter (`fs::fuse`) only translates calls and errno; everything here is
//! async, returns `Result`, and is driven directly by tests.
//!
//! - **Namespace**: directories are listed lazily, one level at a time (delimiter listings,
//!   every page), and cached for the attribute TTL. Inode numbers are stable for the life of
//!   the mount: one per path, never reused.
//! - **Names**: when a file and a directory share a name, the directory wins (as for
//!   downloads). Names that are not valid local names were already refused by the store.
//! - **Single blob**: `FsCore::of_object` is that object alone (mounted on a file);
//!   `FsCore::single_file` shows only one object of the mounted directory (`dataref mount`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
// Tokio's clock, so that tests with paused time can age listings past the TTL.
use tokio::time::Instant;

use super::buffers::BufferPool;
use super::cache::{CacheOptions, DiskCache, ObjectId};
use super::reader::{FileReader, IdleFiles, Outage};
use crate::model::MemoryBudget;
use crate::model::ObjectPath;
use crate::model::metrics::ReferenceMetrics;
use crate::store::{ObjectMeta, Store, StoreError, list_all};

pub const ROOT_INO: u64 = 1;

/// What the core can fail with; the adapter (`fs::fuse::errno`) maps each to one errno.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotADirectory,
    #[error("is a directory")]
    IsADirectory,
    #[error("bad file handle")]
    BadHandle,
    /// A write of any kind: the mount is read-only.
    #[error("read-only filesystem")]
    ReadOnly,
    /// An operation this filesystem never supports (extended attributes).
    #[error("not supported")]
    Unsupported,
    #[error("{0}")]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Directory,
    File,
}

/// Attributes the adapter turns into a kernel `stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
}

/// One child of a directory, with its attributes: `readdirplus` hands them to the kernel so that
/// `ls -l` needs no lookup per entry.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: u64,
    pub name: String,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
}

impl DirEntry {
    pub fn attr(&self) -> Attr {
        Attr {
            ino: self.ino,
            kind: self.kind,
            size: self.size,
            mtime: self.mtime,
        }
    }
}

/// A directory's children as listed at one moment, shared (never copied) by every reader:
/// the kernel reads a 10,000-entry folder in hundreds of small requests.
#[derive(Debug, Clone)]
pub struct Listing {
    pub at: Instant,
    pub entries: Arc<Vec<DirEntry>>,
}

impl Listing {
    pub fn same_as(&self, other: &Listing) -> bool {
        Arc::ptr_eq(&self.entries, &other.entries)
    }
}

/// What the core has been asked, for tests that check which requests reach it.
#[derive(Debug, Default)]
pub struct Counters {
    /// Lookups of a name (the kernel had no valid entry for it).
    pub lookups: AtomicU64,
    /// Directory reads (the kernel had no valid cached copy of the directory).
    pub directory_reads: AtomicU64,
    /// Listings fetched from the store.
    pub listings: AtomicU64,
}

#[derive(Debug, Clone)]
struct Node {
    /// The object path in the store.
    path: ObjectPath,
    kind: Kind,
    size: u64,
    mtime: SystemTime,
    /// Files: which version of the object this is.
    content: Option<Content>,
    /// Directories: the children, when listed, and when.
    listing: Option<Listing>,
    /// Directories: the listing the kernel last read from its start (and may have cached).
    served: Option<Listing>,
}

/// A file's version as listed.
#[derive(Debug, Clone)]
struct Content {
    /// Names this version of a file's content (for the disk cache).
    id: ObjectId,
    /// The store's version (its ETag): every read of an open file is pinned to it.
    version: Option<Arc<str>>,
    /// The CRC64 stored with it: a file read whole is checked against it.
    crc64: Option<u64>,
}

impl Content {
    fn of(object: &ObjectMeta) -> Self {
        Self {
            id: ObjectId::new(
                &object.path,
                object.size,
                object.last_modified,
                object.content_md5,
                object.version.as_deref(),
            ),
            version: object.version.as_deref().map(Arc::from),
            crc64: object.crc64,
        }
    }
}

#[derive(Debug, Default)]
struct Inodes {
    nodes: HashMap<u64, Node>,
    by_path: HashMap<(ObjectPath, bool), u64>,
    next: u64,
}

impl Inodes {
    /// The inode for a path of a kind, created on first sight; attributes refreshed.
    fn upsert(
        &mut self,
        path: ObjectPath,
        kind: Kind,
        size: u64,
        mtime: SystemTime,
        content: Option<Content>,
    ) -> u64 {
        let key = (path.clone(), kind == Kind::Directory);
        if let Some(&ino) = self.by_path.get(&key) {
            let node = self.nodes.get_mut(&ino).expect("indexed nodes exist");
            node.size = size;
            node.mtime = mtime;
            node.content = content;
            return ino;
        }
        self.next += 1;
        let ino = self.next;
        self.by_path.insert(key, ino);
        self.nodes.insert(
            ino,
            Node {
                path,
                kind,
                size,
                mtime,
                content,
                listing: None,
                served: None,
            },
        );
        ino
    }
}

#[derive(Debug, Clone)]
pub struct FsOptions {
    /// How long listings and attributes are trusted.
    pub attribute_ttl: Duration,
    /// The job's one memory budget: every buffer of every open file takes its bytes from it.
    pub budget: MemoryBudget,
    /// The on-disk block cache; `None` = reads are served from storage (and memory) only.
    pub cache: Option<CacheOptions>,
    /// Where the mount's requests are timed and counted (the job's figures for the reference);
    /// its retry counter counts the reads' retries.
    pub metrics: Arc<ReferenceMetrics>,
}

impl FsOptions {
    /// Attributes trusted for 60 s, no disk cache, memory from `budget`.
    pub fn new(budget: MemoryBudget) -> Self {
        Self {
            attribute_ttl: Duration::from_secs(60),
            budget,
            cache: None,
            metrics: ReferenceMetrics::new(),
        }
    }
}

/// Freed windows kept for reuse: at most 128 MiB, and never more than a quarter of the budget.
fn pool_bytes(budget: &MemoryBudget) -> usize {
    (budget.bytes() / 4).min(128 * 1024 * 1024) as usize
}

/// The filesystem over `store`, rooted at `root` (a directory of the store, or one object).
pub struct FsCore {
    store: Arc<dyn Store>,
    root: ObjectPath,
    only: Option<String>,
    options: FsOptions,
    inodes: Mutex<Inodes>,
    handles: Mutex<HashMap<u64, Arc<FileReader>>>,
    next_handle: AtomicU64,
    budget: MemoryBudget,
    /// Recycled windows of this mount's files.
    pool: Arc<BufferPool>,
    /// What this mount's idle open files hold, for the budget's waiters to take back.
    idle: Arc<IdleFiles>,
    cache: Option<Arc<DiskCache>>,
    /// Shared by every open file: storage that gave up for one gives up for all.
    outage: Arc<Outage>,
    mounted_at: SystemTime,
    counters: Counters,
}

impl std::fmt::Debug for FsCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FsCore({} at {})", self.store.describe(), self.root)
    }
}

impl FsCore {
    pub fn new(store: Arc<dyn Store>, root: ObjectPath, options: FsOptions) -> Self {
        let now = SystemTime::now();
        let node = Node {
            path: root,
            kind: Kind::Directory,
            size: 0,
            mtime: now,
            content: None,
            listing: None,
            served: None,
        };
        Self::rooted_at(store, node, now, options)
    }

    /// A filesystem whose root is the one object `meta` (mounted on a file, so that the
    /// folder it appears in keeps its other entries).
    pub fn of_object(store: Arc<dyn Store>, meta: ObjectMeta, options: FsOptions) -> Self {
        let now = SystemTime::now();
        let node = Node {
            content: Some(Content::of(&meta)),
            mtime: meta.last_modified.unwrap_or(now),
            path: meta.path,
            kind: Kind::File,
            size: meta.size,
            listing: None,
            served: None,
        };
        Self::rooted_at(store, node, now, options)
    }

    fn rooted_at(store: Arc<dyn Store>, root: Node, now: SystemTime, options: FsOptions) -> Self {
        let mut inodes = Inodes {
            next: ROOT_INO,
            ..Default::default()
        };
        let root_path = root.path.clone();
        inodes
            .by_path
            .insert((root_path.clone(), root.kind == Kind::Directory), ROOT_INO);
        inodes.nodes.insert(ROOT_INO, root);
        Self {
            budget: options.budget.clone(),
            pool: BufferPool::new(options.budget.clone(), pool_bytes(&options.budget)),
            idle: IdleFiles::new(&options.budget),
            store,
            root: root_path,
            only: None,
            options,
            inodes: Mutex::new(inodes),
            handles: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            cache: None,
            outage: Arc::default(),
            mounted_at: now,
            counters: Counters::default(),
        }
    }

    /// Shows only the object `name` of the mounted directory (a reference naming one blob).
    pub fn single_file(mut self, name: &str) -> Self {
        self.only = Some(name.to_owned());
        self
    }

    /// Serves reads through `cache`.
    pub fn with_cache(mut self, cache: Arc<DiskCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    pub fn cache(&self) -> Option<&Arc<DiskCache>> {
        self.cache.as_ref()
    }

    pub fn attribute_ttl(&self) -> Duration {
        self.options.attribute_ttl
    }

    pub fn root(&self) -> &ObjectPath {
        &self.root
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The figures this mount's requests are counted in.
    pub fn metrics(&self) -> &Arc<ReferenceMetrics> {
        &self.options.metrics
    }

    fn node(&self, ino: u64) -> Result<Node, FsError> {
        self.inodes
            .lock()
            .unwrap()
            .nodes
            .get(&ino)
            .cloned()
            .ok_or(FsError::NotFound)
    }

    pub async fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        let node = self.node(ino)?;
        Ok(Attr {
            ino,
            kind: node.kind,
            size: node.size,
            // A root folder has no time of its own in the store.
            mtime: if ino == ROOT_INO && node.kind == Kind::Directory {
                self.mounted_at
            } else {
                node.mtime
            },
        })
    }

    /// The children of a directory, listed if the cached listing is missing or stale.
    pub async fn readdir(&self, ino: u64) -> Result<Listing, FsError> {
        let node = self.node(ino)?;
        if node.kind != Kind::Directory {
            return Err(FsError::NotADirectory);
        }
        if let Some(listing) = node.listing.filter(|l| self.fresh(l)) {
            return Ok(listing);
        }
        self.counters.listings.fetch_add(1, Ordering::Relaxed);
        let listed = list_all(self.store.as_ref(), &node.path, true).await?;
        for refused in &listed.refused {
            tracing::warn!(name = %refused.name, reason = %refused.reason, "name not shown in the mount");
        }
        let mut inodes = self.inodes.lock().unwrap();
        let mut entries: Vec<DirEntry> = Vec::new();
        let mut dir_names = std::collections::HashSet::new();
        for dir in listed.directories {
            let Some(name) = dir.file_name().map(str::to_owned) else {
                continue;
            };
            if self.hidden(ino, &name) || !dir_names.insert(name.clone()) {
                continue;
            }
            let child = inodes.upsert(dir, Kind::Directory, 0, self.mounted_at, None);
            entries.push(DirEntry {
                ino: child,
                name,
                kind: Kind::Directory,
                size: 0,
                mtime: self.mounted_at,
            });
        }
        for object in listed.objects {
            let Some(name) = object.path.file_name().map(str::to_owned) else {
                continue;
            };
            // A directory of the same name wins.
            if self.hidden(ino, &name) || dir_names.contains(&name) {
                continue;
            }
            let mtime = object.last_modified.unwrap_or(self.mounted_at);
            let content = Some(Content::of(&object));
            let size = object.size;
            let child = inodes.upsert(object.path, Kind::File, size, mtime, content);
            entries.push(DirEntry {
                ino: child,
                name,
                kind: Kind::File,
                size,
                mtime,
            });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let listing = Listing {
            at: Instant::now(),
            entries: Arc::new(entries),
        };
        if let Some(node) = inodes.nodes.get_mut(&ino) {
            node.listing = Some(listing.clone());
        }
        Ok(listing)
    }

    fn fresh(&self, listing: &Listing) -> bool {
        listing.at.elapsed() < self.options.attribute_ttl
    }

    /// Opening a directory: may the kernel keep the listing it cached from an earlier read?
    /// Only while that listing is the current one and younger than the TTL; otherwise the
    /// kernel drops its copy and reads the directory again (and a stale listing is refreshed).
    pub fn opendir(&self, ino: u64) -> Result<bool, FsError> {
        let inodes = self.inodes.lock().unwrap();
        let node = inodes.nodes.get(&ino).ok_or(FsError::NotFound)?;
        if node.kind != Kind::Directory {
            return Err(FsError::NotADirectory);
        }
        Ok(match (&node.listing, &node.served) {
            (Some(listing), Some(served)) => self.fresh(listing) && listing.same_as(served),
            _ => false,
        })
    }

    /// The listing for a kernel directory read at `offset`. A read from the start is what the
    /// kernel caches, so it is remembered for `opendir`.
    pub async fn read_listing(&self, ino: u64, offset: u64) -> Result<Listing, FsError> {
        self.counters
            .directory_reads
            .fetch_add(1, Ordering::Relaxed);
        let listing = self.readdir(ino).await?;
        if offset == 0 {
            if let Some(node) = self.inodes.lock().unwrap().nodes.get_mut(&ino) {
                node.served = Some(listing.clone());
            }
        }
        Ok(listing)
    }

    fn hidden(&self, parent: u64, name: &str) -> bool {
        parent == ROOT_INO && self.only.as_deref().is_some_and(|only| only != name)
    }

    pub async fn lookup(&self, parent: u64, name: &str) -> Result<Attr, FsError> {
        self.counters.lookups.fetch_add(1, Ordering::Relaxed);
        // A fresh listing is searched in place (sorted by name): `ls -l` of a wide folder
        // does one lookup per entry, and copying the listing each time made that quadratic.
        let ino = match self.cached_child(parent, name) {
            Some(found) => found,
            None => {
                let entries = self.readdir(parent).await?.entries;
                entries
                    .binary_search_by(|e| e.name.as_str().cmp(name))
                    .ok()
                    .map(|i| entries[i].ino)
            }
        };
        self.getattr(ino.ok_or(FsError::NotFound)?).await
    }

    /// `Some(child)` when `parent` has a listing younger than the TTL; `None` otherwise.
    fn cached_child(&self, parent: u64, name: &str) -> Option<Option<u64>> {
        let inodes = self.inodes.lock().unwrap();
        let listing = inodes.nodes.get(&parent)?.listing.as_ref()?;
        if !self.fresh(listing) {
            return None;
        }
        Some(
            listing
                .entries
                .binary_search_by(|e| e.name.as_str().cmp(name))
                .ok()
                .map(|i| listing.entries[i].ino),
        )
    }

    pub async fn open(&self, ino: u64) -> Result<u64, FsError> {
        let node = self.node(ino)?;
        if node.kind == Kind::Directory {
            return Err(FsError::IsADirectory);
        }
        let mut reader = FileReader::new(
            self.store.clone(),
            node.path,
            node.size,
            self.budget.clone(),
            self.pool.clone(),
        )
        .with_outage(self.outage.clone())
        .with_retry(
            crate::model::RetryPolicy::default().counting(self.options.metrics.retry_counter()),
        )
        .with_version(node.content.as_ref().and_then(|c| c.version.clone()))
        .with_expected_crc64(node.content.as_ref().and_then(|c| c.crc64))
        .with_idle_files(&self.idle);
        if let (Some(cache), Some(content)) = (&self.cache, &node.content) {
            let id = content.id;
            reader = reader.with_cache(cache.clone(), id);
        }
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.handles
            .lock()
            .unwrap()
            .insert(handle, Arc::new(reader));
        Ok(handle)
    }

    pub async fn read(&self, handle: u64, offset: u64, size: u32) -> Result<Bytes, FsError> {
        let reader = self
            .handles
            .lock()
            .unwrap()
            .get(&handle)
            .cloned()
            .ok_or(FsError::BadHandle)?;
        Ok(reader.read(offset, size as u64).await?)
    }

    pub fn release(&self, handle: u64) {
        self.handles.lock().unwrap().remove(&handle);
    }

    /// Open file handles (for tests of handle accounting).
    pub fn open_handles(&self) -> usize {
        self.handles.lock().unwrap().len()
    }
}

#[cfg(test)]
#[path = "filesystem_tests.rs"]
mod tests;
