//! The one pass-through store for tests: [`Hooked`] delegates every operation to a real store
//! except listings and ranged reads, which go through a [`Hook`] that may count them, break
//! them, slow them or hold them back. The counting and faulty stores are hooks; so are the
//! integration tests' flaky, slow and gating stores.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    ByteStream, ListPage, ListRequest, ObjectMeta, ObjectPath, PartUpload, PutOptions, Result,
    ResumedUpload, Store,
};

/// What a [`Hooked`] store does for a listing or a ranged read, with the real store at hand;
/// a method left out passes the call through.
#[async_trait]
pub trait Hook: std::fmt::Debug + Send + Sync + 'static {
    async fn list(&self, inner: &dyn Store, request: &ListRequest) -> Result<ListPage> {
        inner.list(request).await
    }

    async fn get_range(
        &self,
        inner: &dyn Store,
        path: &ObjectPath,
        range: Range<u64>,
        version: Option<&str>,
    ) -> Result<ByteStream> {
        inner.get_range(path, range, version).await
    }
}

/// `inner` with its listings and ranged reads through `hook`; tests inspect `hook` afterwards.
#[derive(Debug)]
pub struct Hooked<H> {
    pub inner: Arc<dyn Store>,
    pub hook: H,
}

impl<H: Hook> Hooked<H> {
    pub fn wrap(inner: Arc<dyn Store>, hook: H) -> Self {
        Self { inner, hook }
    }
}

#[async_trait]
impl<H: Hook> Store for Hooked<H> {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn max_part_size(&self) -> u64 {
        self.inner.max_part_size()
    }

    async fn list(&self, request: &ListRequest) -> Result<ListPage> {
        self.hook.list(self.inner.as_ref(), request).await
    }

    async fn head(&self, path: &ObjectPath) -> Result<ObjectMeta> {
        self.inner.head(path).await
    }

    async fn get_range(
        &self,
        path: &ObjectPath,
        range: Range<u64>,
        version: Option<&str>,
    ) -> Result<ByteStream> {
        self.hook
            .get_range(self.inner.as_ref(), path, range, version)
            .await
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
        upload_id: &str,
    ) -> Result<ResumedUpload> {
        self.inner
            .resume_upload(path, total_size, part_size, upload_id)
            .await
    }

    async fn delete(&self, path: &ObjectPath) -> Result<()> {
        self.inner.delete(path).await
    }
}
