//! The disk filling up under dataref: a download larger than the free space is refused up
//! front, a disk that fills mid-download leaves no partial file, and the mount's disk cache
//! gives space back. Against Azurite and the in-memory store, on small tmpfs mounts (root).

mod common;

use dataref::store::hooked::{Hook, Hooked};

use common::data::{p, pattern_at};
use common::fs::files as files_under;
use common::mounts::test_config as mount_config;

use std::io::Read;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use common::azurite;
use common::tmpfs::Tmpfs;
use dataref::fs::cache::{CacheOptions, DEFAULT_BLOCK_SIZE};
use dataref::fs::filesystem::FsOptions;
use dataref::fs::mount::mount_into;
use dataref::model::ObjectPath;
use dataref::store::azure::blob::BlobStore;
use dataref::store::memory::MemoryStore;
use dataref::store::{ByteStream, PutOptions, Result as StoreResult, Store};
use dataref::transfer;

use common::engines::defaults as engine;

const MIB: u64 = 1024 * 1024;

/// A blob store on `endpoint` with a container of its own.
async fn blob_store(endpoint: &str, dir: &Path) -> Arc<BlobStore> {
    Arc::new(azurite::fresh_store(endpoint, dir, "disk-full").await)
}

/// Holds every ranged read until `parties` different objects have been asked for: each
/// download's up-front free-space check (made before its first read) has then passed before
/// any byte is written, however the two downloads are scheduled.
#[derive(Debug)]
struct Gate {
    parties: usize,
    asked: std::sync::Mutex<std::collections::HashSet<String>>,
    open: tokio::sync::watch::Sender<bool>,
}

impl Gate {
    fn new(parties: usize) -> Self {
        Self {
            parties,
            asked: Default::default(),
            open: tokio::sync::watch::channel(false).0,
        }
    }
}

#[async_trait::async_trait]
impl Hook for Gate {
    async fn get_range(
        &self,
        inner: &dyn Store,
        path: &ObjectPath,
        range: Range<u64>,
        version: Option<&str>,
    ) -> StoreResult<ByteStream> {
        let mut open = self.open.subscribe();
        let asked = {
            let mut asked = self.asked.lock().unwrap();
            asked.insert(path.as_str().to_owned());
            asked.len()
        };
        if asked >= self.parties {
            self.open.send_replace(true);
        }
        open.wait_for(|open| *open).await.unwrap();
        inner.get_range(path, range, version).await
    }
}

/// `dataref download` of more than the disk holds is refused before a byte is written, with
/// the path, the bytes needed and the bytes free; exit 74.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_larger_than_the_disk_is_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    let store = blob_store(&azurite::shared().endpoint(), dir.path()).await;
    for name in ["a", "b", "c"] {
        let data = pattern_at(0, 30 * MIB as usize, 5);
        store
            .put(
                &p(&format!("data/{name}.bin")),
                data.into(),
                &PutOptions::default(),
            )
            .await
            .unwrap();
    }
    let (container, key) = (azurite::container_of(&store), azurite::key_file(dir.path()));
    azurite::register(
        &config,
        "ws",
        &container,
        &key,
        &azurite::shared().endpoint(),
    );
    let tmpfs = Tmpfs::mount(&dir.path().join("small"), "64m");
    let target = tmpfs.path().join("t");
    let out = common::cli::run(
        &config,
        &[
            "download",
            "--datastore",
            "ws",
            "--prefix",
            "data",
            "--target-path",
            target.to_str().unwrap(),
            "--no-progress",
        ],
    );
    eprintln!("figure: refused up front: {}", out.stderr.trim());
    out.expect_code(74);
    let local = target.join("data");
    assert!(
        out.stderr.contains(local.to_str().unwrap()),
        "no path: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("needs 90.0 MiB") && out.stderr.contains("free on"),
        "no figures: {}",
        out.stderr
    );
    assert!(
        files_under(&target).is_empty(),
        "{:?}",
        files_under(&target)
    );
}

/// Two downloads that each fit, together filling the disk: the one that meets ENOSPC fails
/// naming the file and the bytes it still needed, and leaves neither a temporary file nor a
/// file under the final name; what completes is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_up_mid_download_leaves_no_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = blob_store(&azurite::shared().endpoint(), dir.path()).await;
    let size = 40 * MIB as usize;
    let data: Vec<Vec<u8>> = (0..2).map(|i| pattern_at(0, size, 10 + i)).collect();
    for (i, bytes) in data.iter().enumerate() {
        store
            .put(
                &p(&format!("d{i}/x.bin")),
                bytes.clone().into(),
                &PutOptions::default(),
            )
            .await
            .unwrap();
    }
    let tmpfs = Tmpfs::mount(&dir.path().join("small"), "64m");
    let engine = engine();
    let store: Arc<dyn Store> = Arc::new(Hooked {
        inner: store,
        hook: Gate::new(2),
    });
    let (d0, d1) = (tmpfs.path().join("d0"), tmpfs.path().join("d1"));
    let (r0, r1) = (p("d0"), p("d1"));
    let (first, second) = tokio::join!(
        transfer::download(&engine, store.clone(), &r0, &d0, false),
        transfer::download(&engine, store.clone(), &r1, &d1, false),
    );
    let mut failed = 0;
    for (i, report) in [first.unwrap(), second.unwrap()].into_iter().enumerate() {
        let local = tmpfs.path().join(format!("d{i}"));
        if report.errors.is_empty() {
            assert!(std::fs::read(local.join("x.bin")).unwrap() == data[i]);
            continue;
        }
        failed += 1;
        let error = &report.errors[0];
        eprintln!("figure: disk filled mid-download: {}", error.error);
        assert!(error.local, "a full disk is a local failure: {error:?}");
        let dest = local.join("x.bin");
        assert!(
            error.error.contains(dest.to_str().unwrap()) && error.error.contains("needs"),
            "{}",
            error.error
        );
        assert!(files_under(&local).is_empty(), "{:?}", files_under(&local));
    }
    assert!(failed > 0, "80 MiB fitted on a 64 MiB disk");
}

/// The mount's disk cache on a small tmpfs that another writer fills to the last byte: reads
/// stay exact and never see ENOSPC, and the cache gives its space back down to the floor.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_mount_cache_gives_space_back_when_the_disk_fills() {
    let dir = tempfile::tempdir().unwrap();
    let tmpfs = Tmpfs::mount(&dir.path().join("small"), "32m");
    let floor = 4 * MIB;
    let size = 24 * MIB as usize;
    let memory = MemoryStore::new();
    let bytes = Arc::new(pattern_at(0, size, 9));
    memory
        .put(
            &p("data/big.bin"),
            Bytes::from(bytes.to_vec()),
            &PutOptions::default(),
        )
        .await
        .unwrap();
    let options = FsOptions {
        cache: Some(CacheOptions {
            dir: tmpfs.path().join("cache"),
            max_bytes: None,
            reserved_free_bytes: floor,
            block_size: DEFAULT_BLOCK_SIZE,
        }),
        ..FsOptions::new(dataref::model::MemoryBudget::new(256 * 1024 * 1024))
    };
    let mountpoint = dir.path().join("mnt");
    let mounted = mount_into(
        Arc::new(memory),
        &p("data"),
        &mountpoint,
        options,
        &mount_config("full"),
    )
    .await
    .unwrap();
    let cache = mounted.mount.cache().unwrap().clone();
    let read_all = {
        let (file, bytes) = (mountpoint.join("big.bin"), bytes.clone());
        move || {
            use std::os::fd::AsRawFd;
            let mut handle = std::fs::File::open(&file).unwrap();
            let mut got = Vec::with_capacity(bytes.len());
            handle.read_to_end(&mut got).unwrap();
            assert!(got == *bytes, "wrong bytes through the mount");
            // The next pass must reach the filesystem again, not the page cache.
            let rc =
                unsafe { libc::posix_fadvise(handle.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            assert_eq!(rc, 0);
        }
    };
    tokio::task::spawn_blocking(read_all.clone()).await.unwrap();
    cache.wait_idle().await;
    let cached = cache.stats().bytes;
    assert!(cached > 8 * MIB, "little was cached: {:?}", cache.stats());

    // Someone else (the script writing checkpoints) takes every free byte.
    let filler = tmpfs.path().join("checkpoint");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![1u8; 64 * 1024];
        while file.write_all(&block).is_ok() {}
    }
    assert!(tmpfs.free() < MIB, "the disk is not full: {}", tmpfs.free());

    tokio::task::spawn_blocking(read_all).await.unwrap();
    cache.wait_idle().await;
    eprintln!(
        "figure: cache on a full disk: {cached} bytes cached before, {:?} after; free {} \
         (floor {floor})",
        cache.stats(),
        tmpfs.free()
    );
    assert!(
        tmpfs.free() >= floor,
        "free {} < floor {floor}: {:?}",
        tmpfs.free(),
        cache.stats()
    );
    tokio::task::spawn_blocking(move || mounted.mount.unmount().unwrap())
        .await
        .unwrap();
}
