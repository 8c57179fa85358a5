//! A mount's server never sends a request to its own mount: if it were killed while such a
//! request waits, the kernel would wait for an answer the dead server never sends, and the
//! process could never exit (seen: a `dataref mount` SIGKILLed while it checked that its mount
//! served stayed a zombie for 25 minutes). Neither starting a mount nor judging the node's
//! mounts (the dead-mount cleanup every job and the daemon run, with this process's mounts
//! live) may ask this process's own mount anything.

mod common;

use std::sync::Arc;

use common::data::p;
use common::mounts::{blocking, test_config};
use dataref::fs::cleanup;
use dataref::fs::filesystem::FsOptions;
use dataref::fs::mount::mount_into;
use dataref::model::MemoryBudget;
use dataref::store::local::LocalStore;
use dataref::store::{PutOptions, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neither_starting_a_mount_nor_judging_mounts_asks_our_own_mount() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path()).unwrap();
    store
        .put(&p("data/a.txt"), "a".into(), &PutOptions::default())
        .await
        .unwrap();
    let mountpoint = dir.path().join("mnt");
    let mounted = mount_into(
        Arc::new(store),
        &p("data"),
        &mountpoint,
        FsOptions::new(MemoryBudget::new(64 << 20)),
        &test_config("self-requests"),
    )
    .await
    .unwrap();
    assert_eq!(mounted.mount.requests_from_this_process(), 0, "at mount");

    let judged = blocking(cleanup::dataref_mounts).await;
    let ours = judged
        .iter()
        .find(|m| m.mountpoint == mountpoint)
        .expect("our mount is listed");
    assert!(!ours.dead, "our own mount judged dead: {ours:?}");
    assert_eq!(mounted.mount.requests_from_this_process(), 0, "judging");

    // The control: a request of ours is seen.
    let root = mountpoint.clone();
    let names = blocking(move || std::fs::read_dir(root).unwrap().count()).await;
    assert_eq!(names, 1);
    assert!(
        mounted.mount.requests_from_this_process() > 0,
        "not counted"
    );
    mounted.mount.unmount().unwrap();
}
