//! The transfer engine against the in-memory and local stores: layout, skip rules, integrity,
//! multi-part paths, and no partial files.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use dataref::model::ObjectPath;
use dataref::store::local::LocalStore;
use dataref::store::memory::MemoryStore;
use dataref::store::{PutOptions, Store, read_to_bytes};
use dataref::transfer::{self, Engine, SkipReason, TransferError, UploadSource};
use md5::{Digest, Md5};

fn p(name: &str) -> ObjectPath {
    ObjectPath::parse(name).unwrap()
}

/// Small parts so that multi-part code paths run on small data.
fn engine() -> Engine {
    let mut engine = Engine::new(&dataref::store::Resources::new(64 * 1024 * 1024));
    engine.part_size = 64 * 1024;
    engine.part_concurrency = 4;
    engine.reserved_free_disk_bytes = 0;
    engine
}

async fn put(store: &MemoryStore, name: &str, data: &[u8]) {
    let md5: [u8; 16] = Md5::digest(data).into();
    store
        .put(
            &p(name),
            Bytes::copy_from_slice(data),
            &PutOptions {
                content_md5: Some(md5),
            },
        )
        .await
        .unwrap();
}

fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if path.is_dir() {
                out.push(format!("{rel}/"));
                walk(root, &path, out);
            } else {
                out.push(rel);
            }
        }
    }
    if root.exists() {
        walk(root, root, &mut out);
    }
    out.sort();
    out
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test]
async fn download_is_directory_aware_and_keeps_the_layout() {
    let store = MemoryStore::new();
    put(&store, "a/b/x.csv", b"x").await;
    put(&store, "a/b/sub/y.csv", b"y").await;
    put(&store, "a/b_v2.csv", b"other").await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out");
    let report = transfer::download(&engine(), Arc::new(store), &p("a/b"), &target, false)
        .await
        .unwrap();
    assert_eq!(report.files, 2);
    assert_eq!(tree(&target), vec!["sub/", "sub/y.csv", "x.csv"]);
    assert_eq!(std::fs::read(target.join("x.csv")).unwrap(), b"x");
}

#[tokio::test]
async fn a_single_blob_becomes_the_file() {
    let store = MemoryStore::new();
    put(&store, "models/model.pt", b"weights").await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("model.pt");
    let report = transfer::download(
        &engine(),
        Arc::new(store),
        &p("models/model.pt"),
        &target,
        false,
    )
    .await
    .unwrap();
    assert_eq!(report.files, 1);
    assert_eq!(std::fs::read(&target).unwrap(), b"weights");
}

#[tokio::test]
async fn a_directory_wins_over_a_file_of_the_same_name() {
    let store = MemoryStore::new();
    put(&store, "d/a", b"file").await;
    put(&store, "d/a/inner", b"inner").await;
    put(&store, "d/ok", b"ok").await;
    let dir = tempfile::tempdir().unwrap();
    let report = transfer::download(&engine(), Arc::new(store), &p("d"), dir.path(), false)
        .await
        .unwrap();
    assert_eq!(tree(dir.path()), vec!["a/", "a/inner", "ok"]);
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.skipped[0].path, "d/a");
    assert_eq!(report.skipped[0].reason, SkipReason::NameConflict);
}

#[tokio::test]
async fn overwrite_rules_and_extra_files_survive() {
    let store = Arc::new(MemoryStore::new());
    put(&store, "p/f1", b"new1").await;
    put(&store, "p/f2", b"new2").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f1"), b"old1").unwrap();
    std::fs::write(dir.path().join("extra"), b"mine").unwrap();

    let report = transfer::download(&engine(), store.clone(), &p("p"), dir.path(), false)
        .await
        .unwrap();
    assert_eq!(report.files, 1);
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.skipped[0].reason, SkipReason::Exists);
    assert_eq!(std::fs::read(dir.path().join("f1")).unwrap(), b"old1");

    let report = transfer::download(&engine(), store, &p("p"), dir.path(), true)
        .await
        .unwrap();
    assert_eq!(report.files, 2);
    assert_eq!(std::fs::read(dir.path().join("f1")).unwrap(), b"new1");
    assert_eq!(std::fs::read(dir.path().join("extra")).unwrap(), b"mine");
}

#[tokio::test]
async fn multi_part_download_is_exact_and_verified() {
    let store = MemoryStore::new();
    let data = pattern(1_000_003, 7);
    put(&store, "big.bin", &data).await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("big.bin");
    let report = transfer::download(&engine(), Arc::new(store), &p("big.bin"), &target, false)
        .await
        .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(std::fs::read(&target).unwrap(), data);
}

#[tokio::test]
async fn md5_mismatch_keeps_no_file_and_no_partial() {
    for size in [1000usize, 300_000] {
        let store = MemoryStore::new();
        let data = pattern(size, 1);
        store
            .put(
                &p("bad.bin"),
                Bytes::from(data),
                &PutOptions {
                    content_md5: Some([0u8; 16]),
                },
            )
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let report = transfer::download(
            &engine(),
            Arc::new(store),
            &p("bad.bin"),
            &dir.path().join("bad.bin"),
            false,
        )
        .await
        .unwrap();
        assert_eq!(report.files, 0);
        assert_eq!(report.errors.len(), 1);
        assert!(
            report.errors[0].error.contains("Content-MD5 mismatch"),
            "{:?}",
            report.errors
        );
        assert!(
            tree(dir.path()).is_empty(),
            "left behind: {:?}",
            tree(dir.path())
        );
    }
}

#[tokio::test]
async fn nothing_matched_is_an_error() {
    let store = MemoryStore::new();
    put(&store, "a/b_v2.csv", b"x").await;
    let dir = tempfile::tempdir().unwrap();
    let err = transfer::download(&engine(), Arc::new(store), &p("a/b"), dir.path(), false)
        .await
        .unwrap_err();
    assert!(matches!(err, TransferError::NothingMatched { .. }), "{err}");
}

#[tokio::test]
async fn disk_full_is_refused_before_writing() {
    let store = MemoryStore::new();
    put(&store, "f", b"data").await;
    let dir = tempfile::tempdir().unwrap();
    let mut engine = engine();
    engine.reserved_free_disk_bytes = u64::MAX / 2;
    let err = transfer::download(
        &engine,
        Arc::new(store),
        &p("f"),
        &dir.path().join("f"),
        false,
    )
    .await
    .unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, TransferError::DiskFull { needed: 4, .. }),
        "{message}"
    );
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );
    assert!(tree(dir.path()).is_empty());
}

#[tokio::test]
async fn upload_directory_contents_with_md5_and_skip_rules() {
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("sub")).unwrap();
    let big = pattern(500_000, 3);
    std::fs::write(src.path().join("sub/big.bin"), &big).unwrap();
    std::fs::write(src.path().join("small.txt"), b"small").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", src.path().join("link")).unwrap();
    std::fs::create_dir(src.path().join(".dataref")).unwrap();
    std::fs::write(src.path().join(".dataref/job.log"), b"log").unwrap();

    let store = Arc::new(MemoryStore::new().with_max_part_size(64 * 1024));
    let source = UploadSource::Directory(src.path().to_path_buf());
    let exclude = vec![src.path().join(".dataref")];
    let report = transfer::upload(
        &engine(),
        store.clone(),
        &source,
        &p("out"),
        false,
        &exclude,
    )
    .await
    .unwrap();
    assert_eq!(report.files, 2, "{report:?}");
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.skipped[0].reason, SkipReason::Symlink);
    assert_eq!(
        read_to_bytes(store.as_ref(), &p("out/sub/big.bin"))
            .await
            .unwrap(),
        big
    );
    let meta = store.head(&p("out/sub/big.bin")).await.unwrap();
    let expected: [u8; 16] = Md5::digest(&big).into();
    assert_eq!(
        meta.content_md5,
        Some(expected),
        "multi-part upload records the MD5"
    );
    assert!(store.head(&p("out/.dataref/job.log")).await.is_err());
    assert!(store.head(&p("out/link")).await.is_err());

    // overwrite=false keeps what is there; true replaces.
    std::fs::write(src.path().join("small.txt"), b"changed").unwrap();
    let report = transfer::upload(
        &engine(),
        store.clone(),
        &source,
        &p("out"),
        false,
        &exclude,
    )
    .await
    .unwrap();
    assert_eq!(report.files, 0);
    assert_eq!(
        read_to_bytes(store.as_ref(), &p("out/small.txt"))
            .await
            .unwrap(),
        "small"
    );
    transfer::upload(&engine(), store.clone(), &source, &p("out"), true, &exclude)
        .await
        .unwrap();
    assert_eq!(
        read_to_bytes(store.as_ref(), &p("out/small.txt"))
            .await
            .unwrap(),
        "changed"
    );
}

#[tokio::test]
async fn upload_files_land_under_the_prefix_by_name() {
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("a.pkl"), b"a").unwrap();
    std::fs::write(src.path().join("b.pkl"), b"b").unwrap();
    let store = Arc::new(MemoryStore::new());
    let source = UploadSource::Files(vec![src.path().join("a.pkl"), src.path().join("b.pkl")]);
    let report = transfer::upload(
        &engine(),
        store.clone(),
        &source,
        &p("models/v1"),
        false,
        &[],
    )
    .await
    .unwrap();
    assert_eq!(report.files, 2);
    assert_eq!(
        read_to_bytes(store.as_ref(), &p("models/v1/a.pkl"))
            .await
            .unwrap(),
        "a"
    );
    // To the root when no prefix is given.
    transfer::upload(
        &engine(),
        store.clone(),
        &source,
        &ObjectPath::root(),
        false,
        &[],
    )
    .await
    .unwrap();
    assert_eq!(
        read_to_bytes(store.as_ref(), &p("b.pkl")).await.unwrap(),
        "b"
    );
}

#[tokio::test]
async fn local_store_round_trip_through_the_engine() {
    let remote = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let data = pattern(200_000, 9);
    std::fs::create_dir_all(src.path().join("x/y")).unwrap();
    std::fs::write(src.path().join("x/y/data.bin"), &data).unwrap();
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(remote.path()).unwrap());
    transfer::upload(
        &engine(),
        store.clone(),
        &UploadSource::Directory(src.path().into()),
        &p("up"),
        false,
        &[],
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read(remote.path().join("up/x/y/data.bin")).unwrap(),
        data
    );
    let back = tempfile::tempdir().unwrap();
    transfer::download(&engine(), store, &p("up"), back.path(), false)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(back.path().join("x/y/data.bin")).unwrap(),
        data
    );
}

#[tokio::test]
async fn hostile_local_names_are_refused_and_never_escape() {
    let remote = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(remote.path().join("in")).unwrap();
    std::fs::write(remote.path().join("in/ok.txt"), b"ok").unwrap();
    // A backslash name would be a path on Windows-minded tools; a link could point anywhere.
    std::fs::write(remote.path().join("in/..\\..\\evil"), b"evil").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", remote.path().join("in/passwd")).unwrap();
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(remote.path()).unwrap());
    let outer = tempfile::tempdir().unwrap();
    let target = outer.path().join("deep/target");
    let report = transfer::download(&engine(), store, &p("in"), &target, false)
        .await
        .unwrap();
    assert_eq!(report.files, 1);
    let mut refused: Vec<SkipReason> = report.skipped.iter().map(|s| s.reason).collect();
    refused.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(
        refused,
        vec![SkipReason::RefusedName, SkipReason::RefusedName]
    );
    // Only the one good file exists anywhere under the outer directory.
    assert_eq!(
        tree(outer.path()),
        vec!["deep/", "deep/target/", "deep/target/ok.txt"]
    );
}

/// A symlink inside the download target (planted by the script's user, or left by an earlier
/// job) is never followed: a blob under its name fails with a clear error, and nothing lands
/// where the link points, for small and multi-part files alike.
#[tokio::test]
async fn symlinked_directories_inside_the_target_are_not_followed() {
    let store = MemoryStore::new();
    put(&store, "in/ok.txt", b"ok").await;
    put(&store, "in/etc/passwd", b"small").await;
    put(&store, "in/etc/deep/big.bin", &vec![7u8; 300 * 1024]).await;
    let outer = tempfile::tempdir().unwrap();
    let victim = outer.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    let target = outer.path().join("target");
    std::fs::create_dir(&target).unwrap();
    std::os::unix::fs::symlink(&victim, target.join("etc")).unwrap();

    for overwrite in [false, true] {
        let report = transfer::download(
            &engine(),
            Arc::new(store.clone()),
            &p("in"),
            &target,
            overwrite,
        )
        .await
        .unwrap();
        let mut failed: Vec<&str> = report.errors.iter().map(|e| e.path.as_str()).collect();
        failed.sort();
        assert_eq!(failed, ["in/etc/deep/big.bin", "in/etc/passwd"]);
        for error in &report.errors {
            assert!(
                error.local && error.error.contains("is a symbolic link; not followed"),
                "{error:?}"
            );
        }
        assert!(tree(&victim).is_empty(), "written through the link");
        assert!(
            std::fs::symlink_metadata(target.join("etc"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }
    assert_eq!(std::fs::read(target.join("ok.txt")).unwrap(), b"ok");
}

/// Delegates to a memory store, but the first `failures` streams break after half their bytes;
/// records every range requested.
#[derive(Debug)]
struct FlakyStore {
    inner: MemoryStore,
    failures: std::sync::atomic::AtomicU32,
    ranges: std::sync::Mutex<Vec<std::ops::Range<u64>>>,
}

#[async_trait::async_trait]
impl Store for FlakyStore {
    fn describe(&self) -> String {
        "flaky".into()
    }
    fn max_part_size(&self) -> u64 {
        self.inner.max_part_size()
    }
    async fn list(
        &self,
        request: &dataref::store::ListRequest,
    ) -> dataref::store::Result<dataref::store::ListPage> {
        self.inner.list(request).await
    }
    async fn head(&self, path: &ObjectPath) -> dataref::store::Result<dataref::store::ObjectMeta> {
        self.inner.head(path).await
    }
    async fn get_range(
        &self,
        path: &ObjectPath,
        range: std::ops::Range<u64>,
    ) -> dataref::store::Result<dataref::store::ByteStream> {
        use futures::StreamExt;
        self.ranges.lock().unwrap().push(range.clone());
        let data = read_to_bytes(&self.inner, path).await?;
        let slice = data.slice(range.start as usize..range.end.min(data.len() as u64) as usize);
        let fail = self
            .failures
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            )
            .is_ok();
        if fail {
            let half = slice.slice(..slice.len() / 2);
            let broken: Vec<dataref::store::Result<Bytes>> = vec![
                Ok(half),
                Err(dataref::store::StoreError::Network {
                    message: "connection reset by peer".into(),
                }),
            ];
            return Ok(futures::stream::iter(broken).boxed());
        }
        Ok(futures::stream::iter(vec![Ok(slice)]).boxed())
    }
    async fn put(
        &self,
        path: &ObjectPath,
        data: Bytes,
        o: &PutOptions,
    ) -> dataref::store::Result<()> {
        self.inner.put(path, data, o).await
    }
    async fn start_upload(
        &self,
        path: &ObjectPath,
        size: u64,
    ) -> dataref::store::Result<Box<dyn dataref::store::PartUpload>> {
        self.inner.start_upload(path, size).await
    }
    async fn delete(&self, path: &ObjectPath) -> dataref::store::Result<()> {
        self.inner.delete(path).await
    }
}

#[tokio::test]
async fn a_range_broken_mid_body_resumes_from_the_missing_byte() {
    let inner = MemoryStore::new();
    let data = pattern(64 * 1024 * 3, 5); // three parts of the test engine's 64 KiB
    put(&inner, "f.bin", &data).await;
    let store = Arc::new(FlakyStore {
        inner,
        failures: 2.into(),
        ranges: Default::default(),
    });
    let dir = tempfile::tempdir().unwrap();
    let mut engine = engine();
    engine.part_concurrency = 1; // deterministic order of requests
    engine.retry.initial_backoff = std::time::Duration::from_millis(1);
    let report = transfer::download(
        &engine,
        store.clone(),
        &p("f.bin"),
        &dir.path().join("f.bin"),
        false,
    )
    .await
    .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(std::fs::read(dir.path().join("f.bin")).unwrap(), data);
    let ranges = store.ranges.lock().unwrap().clone();
    // The first range broke at its middle and was resumed there, twice; the rest went once.
    let part = 64 * 1024u64;
    assert_eq!(
        ranges,
        vec![
            0..part,
            part / 2..part,
            3 * part / 4..part,
            part..2 * part,
            2 * part..3 * part
        ]
    );
}

#[tokio::test]
async fn a_small_file_broken_mid_body_resumes_from_the_missing_byte() {
    let inner = MemoryStore::new();
    let data = pattern(10_000, 9); // one part: fetched into memory, written once
    put(&inner, "small.bin", &data).await;
    let store = Arc::new(FlakyStore {
        inner,
        failures: 1.into(),
        ranges: Default::default(),
    });
    let dir = tempfile::tempdir().unwrap();
    let mut engine = engine();
    engine.retry.initial_backoff = std::time::Duration::from_millis(1);
    let report = transfer::download(
        &engine,
        store.clone(),
        &p("small.bin"),
        &dir.path().join("small.bin"),
        false,
    )
    .await
    .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(std::fs::read(dir.path().join("small.bin")).unwrap(), data);
    assert_eq!(
        *store.ranges.lock().unwrap(),
        vec![0..10_000, 5_000..10_000]
    );
    assert_eq!(tree(dir.path()), vec!["small.bin"], "no partial file left");
}

/// What a `SlowStore` saw, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeEvent {
    Requested(u64),
    Completed(u64),
}

/// Delegates to a memory store; every ranged read waits a little before its body, and records
/// when it was requested and when its body ended.
#[derive(Debug)]
struct SlowStore {
    inner: MemoryStore,
    events: Arc<std::sync::Mutex<Vec<RangeEvent>>>,
}

#[async_trait::async_trait]
impl Store for SlowStore {
    fn describe(&self) -> String {
        "slow".into()
    }
    fn max_part_size(&self) -> u64 {
        self.inner.max_part_size()
    }
    async fn list(
        &self,
        request: &dataref::store::ListRequest,
    ) -> dataref::store::Result<dataref::store::ListPage> {
        self.inner.list(request).await
    }
    async fn head(&self, path: &ObjectPath) -> dataref::store::Result<dataref::store::ObjectMeta> {
        self.inner.head(path).await
    }
    async fn get_range(
        &self,
        path: &ObjectPath,
        range: std::ops::Range<u64>,
    ) -> dataref::store::Result<dataref::store::ByteStream> {
        use futures::StreamExt;
        let start = range.start;
        self.events
            .lock()
            .unwrap()
            .push(RangeEvent::Requested(start));
        let data = read_to_bytes(&self.inner, path).await?;
        let slice = data.slice(range.start as usize..range.end.min(data.len() as u64) as usize);
        let events = self.events.clone();
        let body = futures::stream::unfold(Some(slice), move |next| {
            let events = events.clone();
            async move {
                match next {
                    Some(slice) => {
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                        Some((Ok(slice), None))
                    }
                    None => {
                        events.lock().unwrap().push(RangeEvent::Completed(start));
                        None
                    }
                }
            }
        });
        Ok(body.boxed())
    }
    async fn put(
        &self,
        path: &ObjectPath,
        data: Bytes,
        o: &PutOptions,
    ) -> dataref::store::Result<()> {
        self.inner.put(path, data, o).await
    }
    async fn start_upload(
        &self,
        path: &ObjectPath,
        size: u64,
    ) -> dataref::store::Result<Box<dyn dataref::store::PartUpload>> {
        self.inner.start_upload(path, size).await
    }
    async fn delete(&self, path: &ObjectPath) -> dataref::store::Result<()> {
        self.inner.delete(path).await
    }
}

/// A download whose MD5 is verified requests its parts lowest offset first and at most
/// `hash_window` parts ahead of the hashing (which needs every byte before a part): part `i` is
/// requested only once parts `0..=i - window` have arrived. Without an MD5 the window does not
/// apply.
#[tokio::test]
async fn hashed_download_requests_parts_in_order_within_the_window() {
    let part = 64 * 1024u64;
    let parts = 16u64;
    let window = 2u64;
    let data = pattern((part * parts) as usize, 3);
    let mut engine = engine();
    engine.part_concurrency = 8;
    engine.hash_window = window as usize;

    // With an MD5.
    let inner = MemoryStore::new();
    put(&inner, "big.bin", &data).await;
    let store = Arc::new(SlowStore {
        inner,
        events: Default::default(),
    });
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("big.bin");
    let report = transfer::download(&engine, store.clone(), &p("big.bin"), &target, false)
        .await
        .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(std::fs::read(&target).unwrap(), data);
    let events = store.events.lock().unwrap().clone();
    let requested: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            RangeEvent::Requested(offset) => Some(*offset),
            _ => None,
        })
        .collect();
    assert_eq!(
        requested,
        (0..parts).map(|i| i * part).collect::<Vec<_>>(),
        "parts requested in offset order"
    );
    for (at, event) in events.iter().enumerate() {
        let RangeEvent::Requested(offset) = *event else {
            continue;
        };
        let index = offset / part;
        for earlier in 0..(index + 1).saturating_sub(window) {
            assert!(
                events[..at].contains(&RangeEvent::Completed(earlier * part)),
                "part {index} was requested before part {earlier} had arrived: {events:?}"
            );
        }
    }

    // Without an MD5 (nothing to hash in order): parts go out as fast as the concurrency
    // allows, more than the window at once.
    let inner = MemoryStore::new();
    inner
        .put(
            &p("raw.bin"),
            Bytes::from(data.clone()),
            &PutOptions::default(),
        )
        .await
        .unwrap();
    let store = Arc::new(SlowStore {
        inner,
        events: Default::default(),
    });
    let target = dir.path().join("raw.bin");
    let report = transfer::download(&engine, store.clone(), &p("raw.bin"), &target, false)
        .await
        .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(std::fs::read(&target).unwrap(), data);
    let events = store.events.lock().unwrap().clone();
    let before_first_completion = events
        .iter()
        .take_while(|e| matches!(e, RangeEvent::Requested(_)))
        .count();
    assert_eq!(before_first_completion, 8, "{events:?}");
}

/// The records of `<job_dir>/uploads.journal`, as JSON.
fn journal_records(job_dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(job_dir.join(transfer::journal::JOURNAL_FILE))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ops(records: &[serde_json::Value]) -> Vec<&str> {
    records.iter().map(|r| r["op"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn a_journaled_upload_records_each_step() {
    let job_dir = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let big = pattern(200 * 1024, 1); // four parts of 64 KiB
    std::fs::write(src.path().join("big.bin"), &big).unwrap();
    std::fs::write(
        src.path().join("small.txt"),
        b"one request, nothing to resume",
    )
    .unwrap();
    let store = Arc::new(MemoryStore::new());
    let journal = transfer::UploadJournal::open(job_dir.path()).unwrap();
    let report = transfer::upload_journaled(
        &engine(),
        store.clone(),
        &UploadSource::Directory(src.path().to_path_buf()),
        &p("out"),
        false,
        &[],
        Some(journal.for_reference("model")),
    )
    .await
    .unwrap();
    assert_eq!(report.files, 2);
    assert_eq!(report.parts_resumed, 0);

    let records = journal_records(job_dir.path());
    assert_eq!(
        ops(&records),
        [
            "start",
            "staged",
            "staged",
            "staged",
            "staged",
            "committed",
            "done"
        ]
    );
    let start = &records[0];
    assert_eq!(start["v"], 1);
    assert_eq!(start["ref"], "model");
    assert_eq!(start["object"], "out/big.bin");
    assert_eq!(start["size"], big.len());
    assert_eq!(start["part_size"], 64 * 1024);
    assert_eq!(start["parts"], 4);
    let mut staged: Vec<u64> = records[1..5]
        .iter()
        .map(|r| r["part"].as_u64().unwrap())
        .collect();
    staged.sort();
    assert_eq!(staged, [0, 1, 2, 3]);
    use base64::Engine as _;
    let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(&big));
    assert_eq!(records[5]["md5"], md5.as_str());
    assert_eq!(records[6]["ref"], "model");
}

#[tokio::test]
async fn an_unfinished_upload_on_a_store_that_cannot_resume_is_sent_whole() {
    use std::os::unix::fs::MetadataExt;
    let job_dir = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let source = src.path().join("big.bin");
    let big = pattern(200 * 1024, 2);
    std::fs::write(&source, &big).unwrap();
    let meta = std::fs::metadata(&source).unwrap();
    // What a killed run left: its start, and nothing after.
    let start = serde_json::json!({
        "v": 1, "op": "start", "ref": "model", "object": "out/big.bin", "source": source,
        "size": big.len(), "mtime_ns": meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        "part_size": 64 * 1024, "parts": 4
    });
    std::fs::write(
        job_dir.path().join(transfer::journal::JOURNAL_FILE),
        format!("{start}\n"),
    )
    .unwrap();
    let store = Arc::new(MemoryStore::new());
    let journal = transfer::UploadJournal::open(job_dir.path()).unwrap();
    let report = transfer::upload_journaled(
        &engine(),
        store.clone(),
        &UploadSource::Files(vec![source]),
        &p("out"),
        false,
        &[],
        Some(journal.for_reference("model")),
    )
    .await
    .unwrap();
    assert_eq!(report.files, 1);
    assert_eq!(report.parts_resumed, 0);
    assert_eq!(
        read_to_bytes(store.as_ref(), &p("out/big.bin"))
            .await
            .unwrap(),
        big
    );
    // Taken as a resume (no second start), which this store answers with a fresh upload.
    assert_eq!(
        ops(&journal_records(job_dir.path())),
        [
            "start",
            "staged",
            "staged",
            "staged",
            "staged",
            "committed",
            "done"
        ]
    );
}
