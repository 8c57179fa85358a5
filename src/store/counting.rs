//! A wrapper store that counts ranged reads and list requests: how tests prove that a cache
//! saved a request.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    ByteStream, ListPage, ListRequest, ObjectMeta, ObjectPath, PartUpload, PutOptions, Result,
    ResumedUpload, Store,
};

#[derive(Debug)]
pub struct CountingStore {
    inner: Arc<dyn Store>,
    gets: AtomicU64,
    bytes: AtomicU64,
    lists: AtomicU64,
}

impl CountingStore {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            gets: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            lists: AtomicU64::new(0),
        }
    }

    /// `get_range` calls so far.
    pub fn gets(&self) -> u64 {
        self.gets.load(Ordering::SeqCst)
    }

    /// Bytes asked for by those calls.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }

    /// `list` calls so far (one per page).
    pub fn lists(&self) -> u64 {
        self.lists.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Store for CountingStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn max_part_size(&self) -> u64 {
        self.inner.max_part_size()
    }

    async fn list(&self, request: &ListRequest) -> Result<ListPage> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        self.inner.list(request).await
    }

    async fn head(&self, path: &ObjectPath) -> Result<ObjectMeta> {
        self.inner.head(path).await
    }

    async fn get_range(&self, path: &ObjectPath, range: Range<u64>) -> Result<ByteStream> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.bytes
            .fetch_add(range.end.saturating_sub(range.start), Ordering::SeqCst);
        self.inner.get_range(path, range).await
    }

    async fn put(&self, path: &ObjectPath, data: Bytes, options: &PutOptions) -> Result<()> {
        self.inner.put(path, data, options).await
    }

    async fn start_upload(
        &self,
        path: &ObjectPath,
        total_size: u64,
    ) -> Result<Box<dyn PartUpload>> {
        self.inner.start_upload(path, total_size).await
    }

    async fn resume_upload(
        &self,
        path: &ObjectPath,
        total_size: u64,
        part_size: u64,
    ) -> Result<ResumedUpload> {
        self.inner.resume_upload(path, total_size, part_size).await
    }

    async fn delete(&self, path: &ObjectPath) -> Result<()> {
        self.inner.delete(path).await
    }
}
