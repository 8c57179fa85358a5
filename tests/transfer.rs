//! The transfer engine against the in-memory and local stores: layout, skip rules, integrity,
//! multi-part paths, and no partial files.

mod common;

use common::data::{p, pattern, put_with_md5 as put};
use common::engines::small_parts as engine;
use common::fs::tree;

use std::sync::Arc;

use bytes::Bytes;
use dataref::model::ObjectPath;
use dataref::store::local::LocalStore;
use dataref::store::memory::MemoryStore;
use dataref::store::{PutOptions, Store, read_to_bytes};
use dataref::transfer::{self, SkipReason, TransferError, UploadSource};
use md5::{Digest, Md5};

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
    put(store.as_ref(), "p/f1", b"new1").await;
    put(store.as_ref(), "p/f2", b"new2").await;
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
                    checksums: dataref::store::Checksums::md5_only([0u8; 16]),
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
