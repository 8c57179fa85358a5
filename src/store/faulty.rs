//! A store whose ranged reads fail as planned (a body broken, truncated, stalled or too
//! long; a refused request) and which records every range asked for: how unit tests prove that
//! a resumed read starts at the first missing byte.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::hooked::{Hook, Hooked};
use super::memory::MemoryStore;
use super::{ByteStream, ObjectPath, PutOptions, Result, Store, StoreError};

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
    /// Before the request is served, the object is replaced (same size, other bytes).
    Replace,
}

/// The plan a [`FaultyStore`] follows, and what it was asked.
#[derive(Debug, Default)]
pub struct Faults {
    planned: Mutex<VecDeque<Fault>>,
    requested: Mutex<Vec<Range<u64>>>,
}

pub type FaultyStore = Hooked<Faults>;

impl Hooked<Faults> {
    /// A store holding one object `name` with `data`, whose reads meet `faults` in turn.
    pub async fn with_object(name: &str, data: Vec<u8>, faults: Vec<Fault>) -> (Self, ObjectPath) {
        let path = ObjectPath::parse(name).unwrap();
        let inner = MemoryStore::new();
        inner
            .put(&path, data.into(), &PutOptions::default())
            .await
            .unwrap();
        let faults = Faults {
            planned: Mutex::new(faults.into()),
            requested: Mutex::default(),
        };
        (Self::wrap(Arc::new(inner), faults), path)
    }

    /// Every range asked for, in order.
    pub fn requested(&self) -> Vec<Range<u64>> {
        self.hook.requested.lock().unwrap().clone()
    }
}

#[async_trait]
impl Hook for Faults {
    async fn get_range(
        &self,
        inner: &dyn Store,
        path: &ObjectPath,
        range: Range<u64>,
        version: Option<&str>,
    ) -> Result<ByteStream> {
        self.requested.lock().unwrap().push(range.clone());
        let fault = self.planned.lock().unwrap().pop_front();
        if let Some(Fault::Refuse) = fault {
            return Err(StoreError::Http {
                status: 503,
                message: "refused as planned".into(),
                retry_after: None,
            });
        }
        if let Some(Fault::Replace) = fault {
            let old = super::read_to_bytes(inner, path).await?;
            let new: Vec<u8> = old.iter().map(|b| !b).collect();
            inner.put(path, new.into(), &PutOptions::default()).await?;
        }
        let body: Vec<Bytes> = inner
            .get_range(path, range, version)
            .await?
            .try_collect()
            .await?;
        let body = Bytes::from(body.concat());
        let head = |n: usize| body.slice(..n.min(body.len()));
        let chunks = |data: Bytes| futures::stream::iter([Ok(data)]);
        Ok(match fault {
            None | Some(Fault::Refuse | Fault::Replace) => chunks(body).boxed(),
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
}
