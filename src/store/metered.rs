//! A store that times and counts every request into one reference's figures
//! ([`ReferenceMetrics`]): requests by operation and outcome, and their latency. A job wraps
//! each reference's store in one, so a datastore shared by two references still tells them
//! apart. A ranged read is timed until its body starts (its bytes are counted by whoever
//! consumes them).

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    ByteStream, Checksums, ListPage, ListRequest, ObjectMeta, ObjectPath, PartUpload, PutOptions,
    Result, ResumedUpload, Store, StoreError,
};
use crate::model::metrics::{Outcome, ReferenceMetrics, StoreOp};

#[derive(Debug)]
pub struct Metered {
    inner: Arc<dyn Store>,
    metrics: Arc<ReferenceMetrics>,
}

impl Metered {
    pub fn wrap(inner: Arc<dyn Store>, metrics: Arc<ReferenceMetrics>) -> Arc<dyn Store> {
        Arc::new(Self { inner, metrics })
    }
}

async fn timed<T>(
    metrics: &ReferenceMetrics,
    op: StoreOp,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let started = Instant::now();
    let result = work.await;
    let outcome = match &result {
        Ok(_) => Outcome::Ok,
        Err(StoreError::NotFound { .. }) => Outcome::NotFound,
        Err(_) => Outcome::Error,
    };
    metrics.observe_store(op, outcome, started.elapsed());
    result
}

#[async_trait]
impl Store for Metered {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn max_part_size(&self) -> u64 {
        self.inner.max_part_size()
    }

    async fn list(&self, request: &ListRequest) -> Result<ListPage> {
        timed(&self.metrics, StoreOp::List, self.inner.list(request)).await
    }

    async fn head(&self, path: &ObjectPath) -> Result<ObjectMeta> {
        timed(&self.metrics, StoreOp::Head, self.inner.head(path)).await
    }

    async fn get_range(
        &self,
        path: &ObjectPath,
        range: Range<u64>,
        version: Option<&str>,
    ) -> Result<ByteStream> {
        let read = self.inner.get_range(path, range, version);
        timed(&self.metrics, StoreOp::Get, read).await
    }

    async fn get_range_with_crc64(
        &self,
        path: &ObjectPath,
        range: Range<u64>,
        version: Option<&str>,
    ) -> Result<(ByteStream, Option<u64>)> {
        let read = self.inner.get_range_with_crc64(path, range, version);
        timed(&self.metrics, StoreOp::Get, read).await
    }

    async fn put(&self, path: &ObjectPath, data: Bytes, options: &PutOptions) -> Result<()> {
        timed(
            &self.metrics,
            StoreOp::Put,
            self.inner.put(path, data, options),
        )
        .await
    }

    async fn start_upload(
        &self,
        path: &ObjectPath,
        total_size: u64,
    ) -> Result<Box<dyn PartUpload>> {
        let upload = self.inner.start_upload(path, total_size).await?;
        Ok(Box::new(MeteredUpload {
            inner: upload,
            metrics: self.metrics.clone(),
        }))
    }

    async fn resume_upload(
        &self,
        path: &ObjectPath,
        total_size: u64,
        part_size: u64,
        upload_id: &str,
    ) -> Result<ResumedUpload> {
        let resumed = self
            .inner
            .resume_upload(path, total_size, part_size, upload_id)
            .await?;
        Ok(ResumedUpload {
            upload: Box::new(MeteredUpload {
                inner: resumed.upload,
                metrics: self.metrics.clone(),
            }),
            staged: resumed.staged,
        })
    }

    async fn delete(&self, path: &ObjectPath) -> Result<()> {
        timed(&self.metrics, StoreOp::Delete, self.inner.delete(path)).await
    }
}

struct MeteredUpload {
    inner: Box<dyn PartUpload>,
    metrics: Arc<ReferenceMetrics>,
}

#[async_trait]
impl PartUpload for MeteredUpload {
    async fn put_part(&self, index: u64, offset: u64, data: Bytes) -> Result<()> {
        let put = self.inner.put_part(index, offset, data);
        timed(&self.metrics, StoreOp::PutPart, put).await
    }

    fn upload_id(&self) -> Option<String> {
        self.inner.upload_id()
    }

    async fn complete(self: Box<Self>, checksums: Checksums) -> Result<()> {
        let metrics = self.metrics.clone();
        timed(&metrics, StoreOp::Commit, self.inner.complete(checksums)).await
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    #[tokio::test]
    async fn every_request_is_counted_by_operation_and_outcome() {
        let metrics = ReferenceMetrics::new();
        let store = Metered::wrap(Arc::new(MemoryStore::new()), metrics.clone());
        let path = ObjectPath::parse("a/b").unwrap();
        store
            .put(&path, Bytes::from_static(b"xyz"), &PutOptions::default())
            .await
            .unwrap();
        store.head(&path).await.unwrap();
        assert!(
            store
                .head(&ObjectPath::parse("nope").unwrap())
                .await
                .is_err()
        );
        let figures = metrics.snapshot(None);
        assert_eq!((figures.requests, figures.errors), (3, 0));
        assert_eq!(figures.storage["head"].ok, 1);
        assert_eq!(figures.storage["head"].not_found, 1);
        assert_eq!(figures.storage["put"].latency.count, 1);
    }
}
