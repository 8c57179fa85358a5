//! Stores that misbehave on purpose: [`Hooked`] delegates everything to a real store except
//! ranged reads, which go through a [`RangeHook`] (break a body, slow it, hold it back).

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use dataref::model::ObjectPath;
use dataref::store::{
    ByteStream, ListPage, ListRequest, ObjectMeta, PartUpload, PutOptions, Result, Store,
};

/// What a [`Hooked`] store does for a ranged read, with the real store at hand.
#[async_trait::async_trait]
pub trait RangeHook: std::fmt::Debug + Send + Sync {
    async fn get_range(
        &self,
        inner: &dyn Store,
        path: &ObjectPath,
        range: Range<u64>,
    ) -> Result<ByteStream>;
}

/// `inner` with its ranged reads through `hook`; the test inspects `hook` afterwards.
#[derive(Debug)]
pub struct Hooked<H> {
    pub inner: Arc<dyn Store>,
    pub hook: H,
}

impl<H> Hooked<H> {
    pub fn new(inner: impl Store + 'static, hook: H) -> Arc<Self> {
        Arc::new(Self {
            inner: Arc::new(inner),
            hook,
        })
    }
}

#[async_trait::async_trait]
impl<H: RangeHook + 'static> Store for Hooked<H> {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn max_part_size(&self) -> u64 {
        self.inner.max_part_size()
    }
    async fn list(&self, request: &ListRequest) -> Result<ListPage> {
        self.inner.list(request).await
    }
    async fn head(&self, path: &ObjectPath) -> Result<ObjectMeta> {
        self.inner.head(path).await
    }
    async fn get_range(&self, path: &ObjectPath, range: Range<u64>) -> Result<ByteStream> {
        self.hook.get_range(self.inner.as_ref(), path, range).await
    }
    async fn put(&self, path: &ObjectPath, data: Bytes, options: &PutOptions) -> Result<()> {
        self.inner.put(path, data, options).await
    }
    async fn start_upload(&self, path: &ObjectPath, size: u64) -> Result<Box<dyn PartUpload>> {
        self.inner.start_upload(path, size).await
    }
    async fn delete(&self, path: &ObjectPath) -> Result<()> {
        self.inner.delete(path).await
    }
}
