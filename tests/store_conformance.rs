//! The conformance suite against the backends that need no server.

mod common;

use dataref::store::local::LocalStore;
use dataref::store::memory::MemoryStore;

#[tokio::test]
async fn local_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path()).unwrap().with_page_size(3);
    common::conformance::run_all(&store, "suite").await;
}

#[tokio::test]
async fn memory_store_conforms() {
    let store = MemoryStore::new()
        .with_page_size(3)
        .with_max_part_size(64 * 1024);
    common::conformance::run_all(&store, "suite").await;
}
