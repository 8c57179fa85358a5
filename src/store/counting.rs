//! A store that counts ranged reads and list requests: how tests prove that a cache saved a
//! request.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use super::hooked::{Hook, Hooked};
use super::{ByteStream, ListPage, ListRequest, ObjectPath, Result, Store};

/// The counts a [`CountingStore`] keeps.
#[derive(Debug, Default)]
pub struct Counts {
    gets: AtomicU64,
    bytes: AtomicU64,
    lists: AtomicU64,
}

pub type CountingStore = Hooked<Counts>;

impl Hooked<Counts> {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self::wrap(inner, Counts::default())
    }

    /// `get_range` calls so far.
    pub fn gets(&self) -> u64 {
        self.hook.gets.load(Ordering::SeqCst)
    }

    /// Bytes asked for by those calls.
    pub fn bytes(&self) -> u64 {
        self.hook.bytes.load(Ordering::SeqCst)
    }

    /// `list` calls so far (one per page).
    pub fn lists(&self) -> u64 {
        self.hook.lists.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Hook for Counts {
    async fn list(&self, inner: &dyn Store, request: &ListRequest) -> Result<ListPage> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        inner.list(request).await
    }

    async fn get_range(
        &self,
        inner: &dyn Store,
        path: &ObjectPath,
        range: Range<u64>,
        version: Option<&str>,
    ) -> Result<ByteStream> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.bytes
            .fetch_add(range.end.saturating_sub(range.start), Ordering::SeqCst);
        inner.get_range(path, range, version).await
    }
}
