//! End-to-end integrity: the CRC64 recorded by every upload and checked range by range by every
//! download (in memory and on Azurite), the `verify` modes, a byte corrupted in transit caught
//! on download and through the mount, and reads pinned to the version listed, so that an object
//! replaced mid-read never yields a mix of its old and new bytes.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use common::azurite;
use common::checksums::{LARGE, crc64_round_trip};
use common::data::{p, pattern, put_with_md5};
use common::engines::small_parts as engine;
use common::fault_proxy::{Fault, FaultProxy, ranged_get};
use dataref::fs::filesystem::{FsCore, FsError, FsOptions, ROOT_INO};
use dataref::model::{MemoryBudget, ObjectPath, Verify};
use dataref::store::checksum::crc64;
use dataref::store::hooked::{Hook, Hooked};
use dataref::store::memory::MemoryStore;
use dataref::store::{ByteStream, Checksums, PutOptions, Store, StoreError};
use dataref::transfer::{self, UploadSource};

#[tokio::test]
async fn uploads_record_a_crc64_that_downloads_check_range_by_range() {
    crc64_round_trip(Arc::new(MemoryStore::new()), true).await;
    let dir = tempfile::tempdir().unwrap();
    let blob = azurite::fresh_store(&azurite::shared().endpoint(), dir.path(), "crc64").await;
    crc64_round_trip(Arc::new(blob), true).await;
}

/// Puts `data` under `name` with the given stored checksums.
async fn put_with(store: &dyn Store, name: &str, data: &[u8], checksums: Checksums) {
    store
        .put(
            &p(name),
            Bytes::copy_from_slice(data),
            &PutOptions { checksums },
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_wrong_stored_crc64_fails_the_file_naming_it_and_keeps_nothing() {
    for size in [1000, LARGE] {
        let store = MemoryStore::new();
        let data = pattern(size, 3);
        let wrong = Checksums {
            md5: None,
            crc64: Some(crc64(&data) ^ 1),
        };
        put_with(&store, "d/bad.bin", &data, wrong).await;
        let dir = tempfile::tempdir().unwrap();
        let report = transfer::download(&engine(), Arc::new(store), &p("d"), dir.path(), false)
            .await
            .unwrap();
        assert_eq!(report.errors.len(), 1, "{size}: {:?}", report.errors);
        let error = &report.errors[0].error;
        assert!(
            error.contains("d/bad.bin") && error.contains("CRC64 mismatch"),
            "{error}"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(
            left.is_empty(),
            "{size}: nothing kept, no partial: {left:?}"
        );
    }
}

#[tokio::test]
async fn verify_auto_md5_and_off_check_what_they_say() {
    let store = MemoryStore::new();
    let data = pattern(LARGE, 5);
    put_with_md5(&store, "d/md5-only.bin", &data).await;
    put_with(&store, "d/nothing.bin", &data, Checksums::default()).await;
    let both = Checksums {
        md5: Some(common::data::md5_of(&data)),
        crc64: Some(crc64(&data)),
    };
    put_with(&store, "d/both.bin", &data, both).await;
    let store: Arc<dyn Store> = Arc::new(store);
    let download = |verify: Verify| {
        let store = store.clone();
        async move {
            let dir = tempfile::tempdir().unwrap();
            let engine = engine().with_verify(verify);
            let report = transfer::download(&engine, store, &p("d"), dir.path(), false)
                .await
                .unwrap();
            (report, dir)
        }
    };

    let (auto, _dir) = download(Verify::Auto).await;
    assert!(auto.errors.is_empty(), "{:?}", auto.errors);
    let counts = (
        auto.verified.crc64,
        auto.verified.md5,
        auto.verified.unverified,
    );
    assert_eq!(counts, (1, 1, 1), "CRC64 first, else MD5, else none");

    let (md5, dir) = download(Verify::Md5).await;
    assert_eq!(md5.verified.md5, 2, "{:?}", md5.verified);
    assert_eq!(md5.errors.len(), 1, "{:?}", md5.errors);
    assert!(
        md5.errors[0].path == "d/nothing.bin" && md5.errors[0].error.contains("no Content-MD5"),
        "{:?}",
        md5.errors
    );
    assert!(!dir.path().join("nothing.bin").exists());

    let (off, _dir) = download(Verify::Off).await;
    assert_eq!(off.verified.unverified, 3, "{:?}", off.verified);
}

/// Reads a whole file through the mount's core in 128 KiB reads, as `cat` does: the bytes, or
/// the first error.
async fn read_through_mount(core: &FsCore, name: &str) -> Result<Vec<u8>, FsError> {
    let mut ino = ROOT_INO;
    for segment in name.split('/') {
        ino = core.lookup(ino, segment).await?.ino;
    }
    let handle = core.open(ino).await?;
    let mut all = Vec::new();
    loop {
        let chunk = core.read(handle, all.len() as u64, 128 * 1024).await?;
        if chunk.is_empty() {
            return Ok(all);
        }
        all.extend_from_slice(&chunk);
    }
}

fn mount_of(store: Arc<dyn Store>) -> FsCore {
    let options = FsOptions::new(MemoryBudget::new(64 * 1024 * 1024));
    FsCore::new(store, ObjectPath::root(), options)
}

#[tokio::test]
async fn a_byte_flipped_in_transit_is_caught_on_download_and_through_the_mount() {
    let proxy = FaultProxy::start(azurite::shared().port);
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(azurite::fresh_store(&proxy.endpoint(), dir.path(), "flip").await);
    let data = pattern(LARGE, 9);
    let source = dir.path().join("model.bin");
    std::fs::write(&source, &data).unwrap();
    let files = UploadSource::Files(vec![source]);
    let report = transfer::upload(&engine(), store.clone(), &files, &p("m"), false, &[])
        .await
        .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);

    // Control: the same reads without a fault.
    let target = dir.path().join("ok");
    let report = transfer::download(&engine(), store.clone(), &p("m"), &target, false)
        .await
        .unwrap();
    assert!(
        report.errors.is_empty() && report.verified.crc64 == 1,
        "{report:?}"
    );
    let mount = mount_of(store.clone());
    assert!(read_through_mount(&mount, "m/model.bin").await.unwrap() == data);

    // One byte of one range inverted on its way, for the download.
    proxy.push(ranged_get(Fault::FlipBodyByte(12_345)));
    let mut serial = engine();
    serial.part_concurrency = 1;
    let target = dir.path().join("bad");
    let report = transfer::download(&serial, store.clone(), &p("m"), &target, false)
        .await
        .unwrap();
    assert_eq!(report.errors.len(), 1, "{report:?}");
    assert!(
        report.errors[0].error.contains("m/model.bin")
            && report.errors[0].error.contains("CRC64 mismatch"),
        "{:?}",
        report.errors
    );
    assert!(!target.join("model.bin").exists(), "no file kept");
    assert_eq!(proxy.pending(), 0, "the fault hit the download");

    // And for the mount: the read that completes the file fails (EIO).
    proxy.push(ranged_get(Fault::FlipBodyByte(0)));
    let mount = mount_of(store.clone());
    let error = read_through_mount(&mount, "m/model.bin").await.unwrap_err();
    assert!(error.to_string().contains("CRC64 mismatch"), "{error}");
    assert_eq!(proxy.pending(), 0, "the fault hit the mount's read");
}

/// Replaces the object with other bytes of the same size after `after` ranged reads were
/// served, `times` times in all: another writer, between two ranges of our read.
#[derive(Debug)]
struct Rewriter {
    after: usize,
    times: usize,
    served: AtomicUsize,
}

#[async_trait::async_trait]
impl Hook for Rewriter {
    async fn get_range(
        &self,
        inner: &dyn Store,
        path: &ObjectPath,
        range: std::ops::Range<u64>,
        version: Option<&str>,
    ) -> dataref::store::Result<ByteStream> {
        let served = self.served.fetch_add(1, Ordering::SeqCst);
        if served >= self.after && served < self.after + self.times {
            let size = inner.head(path).await?.size as usize;
            let seed = 100 + served as u32;
            let new = Bytes::from(pattern(size, seed));
            inner.put(path, new, &PutOptions::default()).await?;
        }
        inner.get_range(path, range, version).await
    }
}

fn rewritten(inner: Arc<dyn Store>, after: usize, times: usize) -> Arc<dyn Store> {
    let hook = Rewriter {
        after,
        times,
        served: AtomicUsize::new(0),
    };
    Arc::new(Hooked::wrap(inner, hook))
}

#[tokio::test]
async fn a_blob_replaced_between_ranges_is_downloaded_whole_as_its_new_version_never_mixed() {
    let dir = tempfile::tempdir().unwrap();
    let blob: Arc<dyn Store> =
        Arc::new(azurite::fresh_store(&azurite::shared().endpoint(), dir.path(), "pin").await);
    let mut serial = engine();
    serial.part_concurrency = 1;

    // Replaced once, after two of the five ranges: the new version, whole.
    put_with(
        blob.as_ref(),
        "a/data.bin",
        &pattern(LARGE, 1),
        Checksums::default(),
    )
    .await;
    let target = dir.path().join("once");
    let store = rewritten(blob.clone(), 2, 1);
    let report = transfer::download(&serial, store, &p("a"), &target, false)
        .await
        .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let got = std::fs::read(target.join("data.bin")).unwrap();
    assert!(
        got == pattern(LARGE, 102),
        "the replacement, every byte of it"
    );

    // Replaced again while the new version is fetched: the file fails, named, nothing kept.
    let target = dir.path().join("twice");
    let store = rewritten(blob.clone(), 2, 2);
    let report = transfer::download(&serial, store, &p("a"), &target, false)
        .await
        .unwrap();
    assert_eq!(report.errors.len(), 1, "{report:?}");
    assert!(
        report.errors[0].error.contains("a/data.bin")
            && report.errors[0].error.contains("replaced in storage twice"),
        "{:?}",
        report.errors
    );
    assert!(!target.join("data.bin").exists());
}

#[tokio::test]
async fn a_blob_replaced_while_open_through_the_mount_fails_reads_never_mixes() {
    let dir = tempfile::tempdir().unwrap();
    let blob: Arc<dyn Store> = Arc::new(
        azurite::fresh_store(&azurite::shared().endpoint(), dir.path(), "pin-mount").await,
    );
    let size = 8 * 1024 * 1024;
    put_with(
        blob.as_ref(),
        "big.bin",
        &pattern(size, 1),
        Checksums::default(),
    )
    .await;
    let mount = mount_of(blob.clone());
    let ino = mount.lookup(ROOT_INO, "big.bin").await.unwrap().ino;
    let handle = mount.open(ino).await.unwrap();
    let first = mount.read(handle, 0, 64 * 1024).await.unwrap();
    assert!(first[..] == pattern(size, 1)[..64 * 1024]);

    put_with(
        blob.as_ref(),
        "big.bin",
        &pattern(size, 2),
        Checksums::default(),
    )
    .await;
    // Far past anything read ahead: it must come from storage, from the version opened.
    let late = mount.read(handle, 7 * 1024 * 1024, 64 * 1024).await;
    assert!(
        matches!(late, Err(FsError::Store(StoreError::Changed { .. }))),
        "{late:?}"
    );
    // Opened again (after the listing's TTL, or in a new mount), the new version is read whole.
    let fresh = mount_of(blob);
    assert!(read_through_mount(&fresh, "big.bin").await.unwrap() == pattern(size, 2));
}
