//! The filesystem core: a read-only namespace and reads over any `Store`, with no kernel in
//! sight. The FUSE adapter (`fs::fuse`) only translates calls and errno; everything here is
//! async, returns `Result`, and is driven directly by tests.
//!
//! - **Namespace**: directories are listed lazily, one level at a time (delimiter listings,
//!   every page), and cached for the attribute TTL. Inode numbers are stable for the life of
//!   the mount: one per path, never reused.
//! - **Names**: when a file and a directory share a name, the directory wins (as for
//!   downloads). Names that are not valid local names were already refused by the store.
//! - **Single blob**: `FsCore::single_file` shows only one object of the mounted directory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use super::cache::{CacheOptions, DiskCache, ObjectId};
use super::reader::{FileReader, Outage};
use crate::store::{ObjectPath, Store, StoreError, list_all};
use crate::transfer::MemoryBudget;

pub const ROOT_INO: u64 = 1;

/// What the core can fail with; the adapter maps each to one errno.
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
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl FsError {
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NotADirectory => libc::ENOTDIR,
            FsError::IsADirectory => libc::EISDIR,
            FsError::BadHandle => libc::EBADF,
            FsError::Store(StoreError::NotFound { .. }) => libc::ENOENT,
            FsError::Store(StoreError::PermissionDenied { .. }) => libc::EACCES,
            FsError::Store(_) => libc::EIO,
        }
    }
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

#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: u64,
    pub name: String,
    pub kind: Kind,
}

#[derive(Debug, Clone)]
struct Node {
    /// The object path in the store.
    path: ObjectPath,
    kind: Kind,
    size: u64,
    mtime: SystemTime,
    /// Names this version of a file's content (for the disk cache).
    id: Option<ObjectId>,
    /// Directories: the children, when listed, and when.
    listing: Option<(Instant, Vec<DirEntry>)>,
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
        id: Option<ObjectId>,
    ) -> u64 {
        let key = (path.clone(), kind == Kind::Directory);
        if let Some(&ino) = self.by_path.get(&key) {
            let node = self.nodes.get_mut(&ino).expect("indexed nodes exist");
            node.size = size;
            node.mtime = mtime;
            node.id = id;
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
                id,
                listing: None,
            },
        );
        ino
    }
}

#[derive(Debug, Clone)]
pub struct FsOptions {
    /// How long listings and attributes are trusted.
    pub attribute_ttl: Duration,
    /// Bytes of read-ahead memory across all open files.
    pub memory_budget_bytes: u64,
    /// The on-disk block cache; `None` = reads are served from storage (and memory) only.
    pub cache: Option<CacheOptions>,
}

impl Default for FsOptions {
    fn default() -> Self {
        Self {
            attribute_ttl: Duration::from_secs(60),
            memory_budget_bytes: 256 * 1024 * 1024,
            cache: None,
        }
    }
}

/// The filesystem over `store`, rooted at `root` (a directory of the store).
pub struct FsCore {
    store: Arc<dyn Store>,
    root: ObjectPath,
    only: Option<String>,
    options: FsOptions,
    inodes: Mutex<Inodes>,
    handles: Mutex<HashMap<u64, Arc<FileReader>>>,
    next_handle: AtomicU64,
    budget: MemoryBudget,
    cache: Option<Arc<DiskCache>>,
    /// Shared by every open file: storage that gave up for one gives up for all.
    outage: Arc<Outage>,
    mounted_at: SystemTime,
}

impl std::fmt::Debug for FsCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FsCore({} at {})", self.store.describe(), self.root)
    }
}

impl FsCore {
    pub fn new(store: Arc<dyn Store>, root: ObjectPath, options: FsOptions) -> Self {
        let mut inodes = Inodes {
            next: ROOT_INO,
            ..Default::default()
        };
        let now = SystemTime::now();
        inodes.nodes.insert(
            ROOT_INO,
            Node {
                path: root.clone(),
                kind: Kind::Directory,
                size: 0,
                mtime: now,
                id: None,
                listing: None,
            },
        );
        inodes.by_path.insert((root.clone(), true), ROOT_INO);
        Self {
            budget: MemoryBudget::new(options.memory_budget_bytes),
            store,
            root,
            only: None,
            options,
            inodes: Mutex::new(inodes),
            handles: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            cache: None,
            outage: Arc::default(),
            mounted_at: now,
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
            mtime: if ino == ROOT_INO {
                self.mounted_at
            } else {
                node.mtime
            },
        })
    }

    /// The children of a directory, listed if the cached listing is missing or stale.
    pub async fn readdir(&self, ino: u64) -> Result<Vec<DirEntry>, FsError> {
        let node = self.node(ino)?;
        if node.kind != Kind::Directory {
            return Err(FsError::NotADirectory);
        }
        if let Some((at, entries)) = &node.listing {
            if at.elapsed() < self.options.attribute_ttl {
                return Ok(entries.clone());
            }
        }
        let listing = list_all(self.store.as_ref(), &node.path, true).await?;
        for refused in &listing.refused {
            tracing::warn!(name = %refused.name, reason = %refused.reason, "name not shown in the mount");
        }
        let mut inodes = self.inodes.lock().unwrap();
        let mut entries: Vec<DirEntry> = Vec::new();
        let mut dir_names = std::collections::HashSet::new();
        for dir in listing.directories {
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
            });
        }
        for object in listing.objects {
            let Some(name) = object.path.file_name().map(str::to_owned) else {
                continue;
            };
            // A directory of the same name wins.
            if self.hidden(ino, &name) || dir_names.contains(&name) {
                continue;
            }
            let mtime = object.last_modified.unwrap_or(self.mounted_at);
            let id = ObjectId::new(
                &object.path,
                object.size,
                object.last_modified,
                object.content_md5,
            );
            let child = inodes.upsert(object.path, Kind::File, object.size, mtime, Some(id));
            entries.push(DirEntry {
                ino: child,
                name,
                kind: Kind::File,
            });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(node) = inodes.nodes.get_mut(&ino) {
            node.listing = Some((Instant::now(), entries.clone()));
        }
        Ok(entries)
    }

    fn hidden(&self, parent: u64, name: &str) -> bool {
        parent == ROOT_INO && self.only.as_deref().is_some_and(|only| only != name)
    }

    pub async fn lookup(&self, parent: u64, name: &str) -> Result<Attr, FsError> {
        // A fresh listing is searched in place (sorted by name): `ls -l` of a wide folder
        // does one lookup per entry, and copying the listing each time made that quadratic.
        let ino = match self.cached_child(parent, name) {
            Some(found) => found,
            None => {
                let entries = self.readdir(parent).await?;
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
        let (at, entries) = inodes.nodes.get(&parent)?.listing.as_ref()?;
        if at.elapsed() >= self.options.attribute_ttl {
            return None;
        }
        Some(
            entries
                .binary_search_by(|e| e.name.as_str().cmp(name))
                .ok()
                .map(|i| entries[i].ino),
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
        )
        .with_outage(self.outage.clone());
        if let (Some(cache), Some(id)) = (&self.cache, node.id) {
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
