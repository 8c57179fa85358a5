//! A wrapper store whose ranged reads fail as planned (a body broken, truncated, stalled or too
//! long; a refused request) and which records every range asked for: how unit tests prove that
//! a resumed read starts at the first missing byte.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::memory::MemoryStore;
use super::{
    ByteStream, ListPage, ListRequest, ObjectMeta, ObjectPath, PartUpload, PutOptions, Result,
    Store, StoreError,
};

/// What the next ranged read does; reads beyond the plan are served normally.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// The body breaks (a network error) after this many bytes.
    BreakAfter(usize),
    /// The body ends cleanly after this many bytes.
    EndAfter(usize),
    /// The body stops sending after this many bytes, without ending.
    StallAfter(usize),
    /// The whole body, then one byte more.
    Extra,
    /// The request fails with a 503.
    Refuse,
}

#[derive(Debug, Default)]
pub struct FaultyStore {
    inner: MemoryStore,
    faults: Mutex<VecDeque<Fault>>,
    requested: Mutex<Vec<Range<u64>>>,
}

impl FaultyStore {
    /// A store holding one object `name` with `data`, whose reads meet `faults` in turn.
    pub async fn with_object(name: &str, data: Vec<u8>, faults: Vec<Fault>) -> (Self, ObjectPath) {
        let path = ObjectPath::parse(name).unwrap();
        let inner = MemoryStore::new();
        inner
            .put(&path, data.into(), &PutOptions::default())
            .await
            .unwrap();
        let store = Self {
            inner,
            faults: Mutex::new(faults.into()),
            requested: Mutex::default(),
        };
        (store, path)
    }

    /// Every range asked for, in order.
    pub fn requested(&self) -> Vec<Range<u64>> {
        self.requested.lock().unwrap().clone()
    }
}

#[async_trait]
impl Store for FaultyStore {
    fn describe(&self) -> String {
        "faulty".into()
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
        self.requested.lock().unwrap().push(range.clone());
        let fault = self.faults.lock().unwrap().pop_front();
        if let Some(Fault::Refuse) = fault {
            return Err(StoreError::Http {
                status: 503,
                message: "refused as planned".into(),
                retry_after: None,
            });
        }
        let body: Vec<Bytes> = self
            .inner
            .get_range(path, range)
            .await?
            .try_collect()
            .await?;
        let body = Bytes::from(body.concat());
        let head = |n: usize| body.slice(..n.min(body.len()));
        let chunks = |data: Bytes| futures::stream::iter([Ok(data)]);
        Ok(match fault {
            None | Some(Fault::Refuse) => chunks(body).boxed(),
            Some(Fault::BreakAfter(n)) => chunks(head(n))
                .chain(futures::stream::iter([Err(StoreError::Network {
                    message: "connection reset as planned".into(),
                })]))
                .boxed(),
            Some(Fault::EndAfter(n)) => chunks(head(n)).boxed(),
            Some(Fault::StallAfter(n)) => chunks(head(n)).chain(futures::stream::pending()).boxed(),
            Some(Fault::Extra) => chunks(body).chain(chunks(Bytes::from_static(b"!"))).boxed(),
        })
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

    async fn delete(&self, path: &ObjectPath) -> Result<()> {
        self.inner.delete(path).await
    }
}
