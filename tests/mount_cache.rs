//! The disk cache through real FUSE mounts (as root): a second read of a file is served from
//! the cache without a request to storage, the cache directory is gone after unmount, and on a
//! small real filesystem (tmpfs) the cache never eats into the reserved free space.

mod common;

use common::data::{p, pattern};
use common::mounts::{blocking, is_mounted, test_config as config};

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use common::tmpfs::Tmpfs;
use dataref::fs::cache::{CacheOptions, DEFAULT_BLOCK_SIZE, LOCK_FILE};
use dataref::fs::filesystem::FsOptions;
use dataref::fs::mount::{MountedPath, mount_into};
use dataref::store::counting::CountingStore;
use dataref::store::memory::MemoryStore;
use dataref::store::{PutOptions, Store};

const MIB: u64 = 1024 * 1024;

/// A counted in-memory store holding `data/big.bin`.
async fn store_with(len: usize) -> (Arc<CountingStore>, Vec<u8>) {
    let memory = MemoryStore::new();
    let bytes = pattern(len, 3);
    memory
        .put(
            &p("data/big.bin"),
            Bytes::from(bytes.clone()),
            &PutOptions::default(),
        )
        .await
        .unwrap();
    (Arc::new(CountingStore::new(Arc::new(memory))), bytes)
}

async fn mount(store: Arc<CountingStore>, mountpoint: &Path, cache: CacheOptions) -> MountedPath {
    let options = FsOptions {
        cache: Some(cache),
        ..FsOptions::new(dataref::model::MemoryBudget::new(256 * 1024 * 1024))
    };
    mount_into(store, &p("data"), mountpoint, options, &config("cache"))
        .await
        .unwrap()
}

/// Reads the file in 1 MiB reads, comparing, then drops its pages from the kernel's cache so
/// that the next read reaches the filesystem again.
fn read_and_compare(path: PathBuf, expected: Arc<Vec<u8>>) {
    let mut file = std::fs::File::open(&path).unwrap();
    common::fs::assert_reads_as(&mut file, &expected, &path.display().to_string());
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0);
}

/// Bytes the cache's data file holds on disk (its holes excluded).
fn allocated(cache: &dataref::fs::cache::DiskCache) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(cache.data_path()).unwrap().blocks() * 512
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn second_read_through_the_mount_comes_from_the_disk_cache() {
    let dir = tempfile::tempdir().unwrap();
    let len = 24 * MIB as usize + 5;
    let (store, bytes) = store_with(len).await;
    let bytes = Arc::new(bytes);
    let mountpoint = dir.path().join("mnt");
    let cache_dir = dir.path().join("job/cache/data");
    let cache = CacheOptions {
        dir: cache_dir.clone(),
        max_bytes: None,
        reserved_free_bytes: 0,
        block_size: DEFAULT_BLOCK_SIZE,
    };
    let mounted = mount(store.clone(), &mountpoint, cache).await;
    let file = mountpoint.join("big.bin");

    blocking({
        let (file, bytes) = (file.clone(), bytes.clone());
        move || read_and_compare(file, bytes)
    })
    .await;
    let disk = mounted.mount.cache().unwrap().clone();
    disk.wait_idle().await;
    assert_eq!(disk.stats().blocks, 25);
    assert!(allocated(&disk) >= len as u64, "every block is on disk");
    let gets = store.gets();
    assert!(gets > 0);

    blocking({
        let (file, bytes) = (file.clone(), bytes.clone());
        move || read_and_compare(file, bytes)
    })
    .await;
    assert_eq!(store.gets(), gets, "the second pass reached the store");
    assert!(disk.stats().hits >= 25, "{:?}", disk.stats());

    blocking(move || mounted.mount.unmount().unwrap()).await;
    assert!(!is_mounted(&mountpoint));
    assert!(!cache_dir.exists(), "the cache outlived the mount");
    assert!(
        cache_dir.parent().unwrap().exists(),
        "only the mount's own folder goes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cache_on_a_small_disk_keeps_the_reserved_free_space() {
    let dir = tempfile::tempdir().unwrap();
    let tmpfs = Tmpfs::mount(&dir.path().join("small-disk"), "16m");
    let floor = 8 * MIB;
    let len = 32 * MIB as usize;
    let (store, bytes) = store_with(len).await;
    let bytes = Arc::new(bytes);
    let mountpoint = dir.path().join("mnt");
    let cache_dir = tmpfs.path().join("cache");
    let cache = CacheOptions {
        dir: cache_dir.clone(),
        max_bytes: None,
        reserved_free_bytes: floor,
        block_size: DEFAULT_BLOCK_SIZE,
    };
    let mounted = mount(store.clone(), &mountpoint, cache).await;
    let disk = mounted.mount.cache().unwrap().clone();
    for _ in 0..2 {
        blocking({
            let (file, bytes) = (mountpoint.join("big.bin"), bytes.clone());
            move || read_and_compare(file, bytes)
        })
        .await;
        disk.wait_idle().await;
        assert!(
            tmpfs.free() >= floor,
            "free {} < floor {floor}",
            tmpfs.free()
        );
    }
    let stats = disk.stats();
    // Some blocks were cached (the disk had room for about 8 MiB), most skipped or evicted.
    assert!(stats.blocks > 0 && stats.bytes <= 8 * MIB, "{stats:?}");
    assert!(stats.evicted + stats.skipped > 0, "{stats:?}");
    assert!(cache_dir.join(LOCK_FILE).exists());
    blocking(move || mounted.mount.unmount().unwrap()).await;
    assert!(!cache_dir.exists());
}
