//! An in-memory store with Blob semantics (flat names, no real directories). Used by tests of
//! the engine and the filesystem core, and as the reference the conformance suite is checked
//! against.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use super::support::{ListedItem, check_part, paginate, reject_root};
use super::{
    ByteStream, Checksums, ListPage, ListRequest, ObjectMeta, ObjectPath, PartUpload, PutOptions,
    Result, Store, StoreError,
};

#[derive(Debug, Clone)]
struct Entry {
    data: Bytes,
    modified: SystemTime,
    checksums: Checksums,
    /// Bumped by every write, like an ETag.
    version: u64,
}

impl Entry {
    fn new(data: Bytes, checksums: Checksums) -> Self {
        static VERSIONS: AtomicU64 = AtomicU64::new(1);
        Self {
            data,
            modified: SystemTime::now(),
            checksums,
            version: VERSIONS.fetch_add(1, Ordering::Relaxed),
        }
    }
}

type Objects = Arc<Mutex<BTreeMap<ObjectPath, Entry>>>;

#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    objects: Objects,
    page_size: Option<usize>,
    max_part_size: Option<u64>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Limits listing pages so that pagination is exercised by small test sets.
    pub fn with_page_size(mut self, page_size: usize) -> Self {
        self.page_size = Some(page_size.max(1));
        self
    }

    pub fn with_max_part_size(mut self, max: u64) -> Self {
        self.max_part_size = Some(max);
        self
    }

    fn meta(path: &ObjectPath, entry: &Entry) -> ObjectMeta {
        ObjectMeta {
            path: path.clone(),
            size: entry.data.len() as u64,
            last_modified: Some(entry.modified),
            content_md5: entry.checksums.md5,
            crc64: entry.checksums.crc64,
            version: Some(format!("\"{}\"", entry.version)),
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn describe(&self) -> String {
        "memory".to_owned()
    }

    fn max_part_size(&self) -> u64 {
        self.max_part_size.unwrap_or(64 * 1024 * 1024)
    }

    async fn list(&self, request: &ListRequest) -> Result<ListPage> {
        let objects = self.objects.lock().unwrap();
        let mut entries = Vec::new();
        let mut directories = BTreeSet::new();
        for (path, entry) in objects.iter() {
            let Some(relative) = path.strip_prefix(&request.dir) else {
                continue;
            };
            if relative.is_root() {
                continue; // the directory's own name as a blob is not inside it
            }
            if request.delimited {
                let first = relative.segments().next().expect("non-root has a segment");
                if relative.segments().nth(1).is_some() {
                    directories.insert(request.dir.child(first).expect("valid segment"));
                    continue;
                }
            }
            entries.push((
                path.as_str().to_owned(),
                false,
                ListedItem::Object(Self::meta(path, entry)),
            ));
        }
        for dir in directories {
            entries.push((dir.as_str().to_owned(), true, ListedItem::Directory(dir)));
        }
        Ok(paginate(
            entries,
            request.continuation.as_deref(),
            self.page_size,
        ))
    }

    async fn head(&self, path: &ObjectPath) -> Result<ObjectMeta> {
        let objects = self.objects.lock().unwrap();
        match objects.get(path) {
            Some(entry) if !path.is_root() => Ok(Self::meta(path, entry)),
            _ => Err(StoreError::NotFound {
                path: path.to_string(),
            }),
        }
    }

    async fn get_range(
        &self,
        path: &ObjectPath,
        range: Range<u64>,
        version: Option<&str>,
    ) -> Result<ByteStream> {
        let data = {
            let objects = self.objects.lock().unwrap();
            let entry = objects.get(path).ok_or_else(|| StoreError::NotFound {
                path: path.to_string(),
            })?;
            if version.is_some_and(|v| Some(v) != Self::meta(path, entry).version.as_deref()) {
                return Err(StoreError::Changed {
                    path: path.to_string(),
                });
            }
            let len = entry.data.len() as u64;
            let start = range.start.min(len) as usize;
            let end = range.end.min(len).max(start as u64) as usize;
            entry.data.slice(start..end)
        };
        Ok(Box::pin(futures::stream::iter(
            (!data.is_empty()).then_some(Ok(data)),
        )))
    }

    async fn put(&self, path: &ObjectPath, data: Bytes, options: &PutOptions) -> Result<()> {
        reject_root(path)?;
        self.objects
            .lock()
            .unwrap()
            .insert(path.clone(), Entry::new(data, options.checksums));
        Ok(())
    }

    async fn start_upload(
        &self,
        path: &ObjectPath,
        total_size: u64,
    ) -> Result<Box<dyn PartUpload>> {
        reject_root(path)?;
        Ok(Box::new(MemoryUpload {
            objects: self.objects.clone(),
            path: path.clone(),
            total_size,
            max_part_size: self.max_part_size(),
            parts: Mutex::new(BTreeMap::new()),
        }))
    }

    async fn delete(&self, path: &ObjectPath) -> Result<()> {
        match self.objects.lock().unwrap().remove(path) {
            Some(_) => Ok(()),
            None => Err(StoreError::NotFound {
                path: path.to_string(),
            }),
        }
    }
}

struct MemoryUpload {
    objects: Objects,
    path: ObjectPath,
    total_size: u64,
    max_part_size: u64,
    parts: Mutex<BTreeMap<u64, Bytes>>,
}

#[async_trait]
impl PartUpload for MemoryUpload {
    async fn put_part(&self, _index: u64, offset: u64, data: Bytes) -> Result<()> {
        check_part(
            &self.path,
            self.total_size,
            self.max_part_size,
            offset,
            &data,
        )?;
        self.parts.lock().unwrap().insert(offset, data);
        Ok(())
    }

    async fn complete(self: Box<Self>, checksums: Checksums) -> Result<()> {
        let parts = self.parts.into_inner().unwrap();
        let mut data = Vec::with_capacity(self.total_size as usize);
        for (offset, part) in parts {
            if offset != data.len() as u64 {
                return Err(StoreError::InvalidInput {
                    path: self.path.to_string(),
                    reason: format!("missing bytes at offset {}", data.len()),
                });
            }
            data.extend_from_slice(&part);
        }
        if data.len() as u64 != self.total_size {
            return Err(StoreError::InvalidInput {
                path: self.path.to_string(),
                reason: format!("{} bytes written of {}", data.len(), self.total_size),
            });
        }
        self.objects
            .lock()
            .unwrap()
            .insert(self.path, Entry::new(data.into(), checksums));
        Ok(())
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}
