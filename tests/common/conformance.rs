//! The store conformance suite: one body of checks that every backend must pass (local and
//! memory here; Azure Blob against Azurite and Azure Files against the strict FileREST server
//! in their own test files). Each check works under its own prefix so a shared container can
//! hold them all.
//!
//! A backend under test must be configured with a listing page size of at most 3 so that
//! pagination is exercised.

use bytes::Bytes;
use dataref::store::{Checksums, ListRequest, PutOptions, Store, StoreError, list_all};
use futures::TryStreamExt;

use super::data::p;

async fn read(store: &dyn Store, name: &str, range: std::ops::Range<u64>) -> Vec<u8> {
    let chunks: Vec<Bytes> = store
        .get_range(&p(name), range, None)
        .await
        .unwrap_or_else(|e| panic!("get_range {name}: {e}"))
        .try_collect()
        .await
        .unwrap();
    chunks.concat()
}

async fn put(store: &dyn Store, name: &str, data: &[u8]) {
    store
        .put(
            &p(name),
            Bytes::copy_from_slice(data),
            &PutOptions::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("put {name}: {e}"));
}

fn names(objects: &[dataref::store::ObjectMeta]) -> Vec<String> {
    let mut names: Vec<String> = objects.iter().map(|o| o.path.as_str().to_owned()).collect();
    names.sort();
    names
}

/// Runs every check against `store`, under `base` (an empty area of the store).
pub async fn run_all(store: &dyn Store, base: &str) {
    put_head_and_ranges(store, &format!("{base}/ranges")).await;
    listing_is_directory_aware(store, &format!("{base}/listing")).await;
    delimited_listing(store, &format!("{base}/delimited")).await;
    pagination(store, &format!("{base}/pages")).await;
    missing_objects(store, &format!("{base}/missing")).await;
    delete(store, &format!("{base}/delete")).await;
    part_upload(store, &format!("{base}/parts")).await;
    part_upload_abort_and_incomplete(store, &format!("{base}/abort")).await;
    unusual_names(store, &format!("{base}/names")).await;
    pinned_versions(store, &format!("{base}/versions")).await;
}

/// A read pinned to the version seen gets that version's bytes, or `Changed` once the object
/// was replaced: never the new bytes under the old version.
async fn pinned_versions(store: &dyn Store, base: &str) {
    let name = format!("{base}/model.bin");
    put(store, &name, b"version one").await;
    let first = store.head(&p(&name)).await.unwrap().version;
    assert!(first.is_some(), "{} names no version", store.describe());
    let listed = list_all(store, &p(base), false).await.unwrap();
    let listed = listed.objects[0].version.clone();
    if listed.is_some() {
        assert_eq!(listed, first, "listing and head name the same version");
    }
    let path = p(&name);
    let pinned = |version: Option<String>| {
        let path = path.clone();
        async move {
            let stream = store.get_range(&path, 0..11, version.as_deref()).await?;
            let chunks: Vec<Bytes> = stream.try_collect().await?;
            Ok::<_, StoreError>(chunks.concat())
        }
    };
    assert_eq!(pinned(first.clone()).await.unwrap(), b"version one");
    // Replaced, same size (what an mtime-and-size check would miss).
    put(store, &name, b"version two").await;
    let second = store.head(&p(&name)).await.unwrap().version;
    assert_ne!(second, first, "a replaced object is another version");
    let stale = pinned(first).await;
    assert!(
        matches!(stale, Err(StoreError::Changed { .. })),
        "{}: a read pinned to the old version returned {stale:?}",
        store.describe()
    );
    assert_eq!(pinned(second).await.unwrap(), b"version two");
}

async fn put_head_and_ranges(store: &dyn Store, base: &str) {
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let name = format!("{base}/data.bin");
    put(store, &name, &data).await;
    let meta = store.head(&p(&name)).await.unwrap();
    assert_eq!(meta.size, data.len() as u64);
    assert_eq!(meta.path, p(&name));
    assert_eq!(read(store, &name, 0..data.len() as u64).await, data);
    assert_eq!(read(store, &name, 10..20).await, &data[10..20]);
    assert_eq!(read(store, &name, 99_990..100_000).await, &data[99_990..]);
    // A range past the end is clipped.
    assert_eq!(read(store, &name, 99_995..200_000).await, &data[99_995..]);

    // A single put larger than 4 MiB (where SDKs start splitting bodies) stays one object.
    let large: Vec<u8> = (0..5 * 1024 * 1024 + 7u32)
        .map(|i| (i % 253) as u8)
        .collect();
    let large_name = format!("{base}/large.bin");
    put(store, &large_name, &large).await;
    assert_eq!(read(store, &large_name, 0..large.len() as u64).await, large);

    // A put replaces the object.
    put(store, &name, b"short").await;
    assert_eq!(store.head(&p(&name)).await.unwrap().size, 5);
    assert_eq!(read(store, &name, 0..5).await, b"short");

    // 0-byte objects exist, have size 0, and read as empty.
    let empty = format!("{base}/empty");
    put(store, &empty, b"").await;
    assert_eq!(store.head(&p(&empty)).await.unwrap().size, 0);
    assert!(read(store, &empty, 0..0).await.is_empty());
}

async fn listing_is_directory_aware(store: &dyn Store, base: &str) {
    for name in [
        "a/b/x.csv",
        "a/b/sub/y.csv",
        "a/b_v2.csv",
        "a/bc/z.csv",
        "top.txt",
    ] {
        put(store, &format!("{base}/{name}"), name.as_bytes()).await;
    }
    let listed = list_all(store, &p(&format!("{base}/a/b")), false)
        .await
        .unwrap();
    assert_eq!(
        names(&listed.objects),
        vec![format!("{base}/a/b/sub/y.csv"), format!("{base}/a/b/x.csv")],
        "a listing of a/b must not include a/b_v2.csv or a/bc/"
    );
    let everything = list_all(store, &p(base), false).await.unwrap();
    assert_eq!(everything.objects.len(), 5);
    let size = everything
        .objects
        .iter()
        .find(|o| o.path == p(&format!("{base}/top.txt")))
        .unwrap()
        .size;
    assert_eq!(size, "top.txt".len() as u64);
    // A directory that does not exist lists as empty.
    let nothing = list_all(store, &p(&format!("{base}/nope")), false)
        .await
        .unwrap();
    assert!(nothing.objects.is_empty() && nothing.directories.is_empty());
}

async fn delimited_listing(store: &dyn Store, base: &str) {
    for name in ["f1", "f2", "d1/x", "d1/y/z", "d2/x"] {
        put(store, &format!("{base}/{name}"), b"1").await;
    }
    let page = list_all(store, &p(base), true).await.unwrap();
    assert_eq!(
        names(&page.objects),
        vec![format!("{base}/f1"), format!("{base}/f2")]
    );
    let mut dirs: Vec<String> = page
        .directories
        .iter()
        .map(|d| d.as_str().to_owned())
        .collect();
    dirs.sort();
    assert_eq!(dirs, vec![format!("{base}/d1"), format!("{base}/d2")]);
    let inner = list_all(store, &p(&format!("{base}/d1")), true)
        .await
        .unwrap();
    assert_eq!(names(&inner.objects), vec![format!("{base}/d1/x")]);
    assert_eq!(inner.directories, vec![p(&format!("{base}/d1/y"))]);
}

async fn pagination(store: &dyn Store, base: &str) {
    let expected: Vec<String> = (0..10).map(|i| format!("{base}/d/f{i:02}")).collect();
    for name in &expected {
        put(store, name, b"x").await;
    }
    for i in 0..4 {
        put(store, &format!("{base}/f{i}"), b"x").await;
        put(store, &format!("{base}/sub{i}/x"), b"x").await;
    }
    // Walk the pages by hand: several pages, each name exactly once.
    let mut request = ListRequest {
        dir: p(&format!("{base}/d")),
        delimited: false,
        continuation: None,
    };
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = store.list(&request).await.unwrap();
        pages += 1;
        seen.extend(page.objects.iter().map(|o| o.path.as_str().to_owned()));
        match page.continuation {
            Some(token) => request.continuation = Some(token),
            None => break,
        }
        assert!(pages < 100, "pagination does not terminate");
    }
    seen.sort();
    assert_eq!(seen, expected);
    assert!(
        pages > 1,
        "the backend must be configured with a small page size"
    );

    // Delimited pagination returns every file and directory once.
    let all = list_all(store, &p(base), true).await.unwrap();
    assert_eq!(all.objects.len(), 4);
    let mut dirs: Vec<String> = all
        .directories
        .iter()
        .map(|d| d.as_str().to_owned())
        .collect();
    dirs.sort();
    dirs.dedup();
    assert_eq!(dirs.len(), 5, "{dirs:?}");
    assert_eq!(all.directories.len(), 5, "a directory was listed twice");
}

async fn missing_objects(store: &dyn Store, base: &str) {
    put(store, &format!("{base}/dir/file"), b"x").await;
    let missing = p(&format!("{base}/nope"));
    assert!(matches!(
        store.head(&missing).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.get_range(&missing, 0..1, None).await,
        Err(StoreError::NotFound { .. })
    ));
    // A directory is not an object.
    assert!(matches!(
        store.head(&p(&format!("{base}/dir"))).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn delete(store: &dyn Store, base: &str) {
    let name = format!("{base}/gone");
    put(store, &name, b"x").await;
    put(store, &format!("{base}/kept"), b"y").await;
    store.delete(&p(&name)).await.unwrap();
    assert!(store.head(&p(&name)).await.unwrap_err().is_not_found());
    assert!(store.delete(&p(&name)).await.unwrap_err().is_not_found());
    let left = list_all(store, &p(base), false).await.unwrap();
    assert_eq!(names(&left.objects), vec![format!("{base}/kept")]);
}

async fn part_upload(store: &dyn Store, base: &str) {
    let part = store.max_part_size().min(64 * 1024) as usize;
    let total = part * 3 + 123;
    let data: Vec<u8> = (0..total).map(|i| (i * 7 % 256) as u8).collect();
    let name = p(&format!("{base}/big.bin"));
    let upload = store.start_upload(&name, total as u64).await.unwrap();
    // Parts in reverse order: offsets, not arrival order, place them.
    let mut parts: Vec<(u64, usize)> = (0..4).map(|i| (i as u64, i * part)).collect();
    parts.reverse();
    for (index, offset) in parts {
        let end = (offset + part).min(total);
        upload
            .put_part(
                index,
                offset as u64,
                Bytes::copy_from_slice(&data[offset..end]),
            )
            .await
            .unwrap();
    }
    // Nothing is visible before the commit.
    assert!(store.head(&name).await.unwrap_err().is_not_found());
    let listed = list_all(store, &p(base), false).await.unwrap();
    assert!(
        listed.objects.is_empty(),
        "partial upload visible: {listed:?}"
    );
    upload.complete(Checksums::default()).await.unwrap();
    assert_eq!(store.head(&name).await.unwrap().size, total as u64);
    assert_eq!(read(store, name.as_str(), 0..total as u64).await, data);

    // A part larger than the backend's maximum is refused.
    let max = store.max_part_size();
    if max < 64 * 1024 * 1024 {
        let upload = store
            .start_upload(&p(&format!("{base}/too-big")), max + 1)
            .await
            .unwrap();
        let oversized = Bytes::from(vec![0u8; max as usize + 1]);
        assert!(upload.put_part(0, 0, oversized).await.is_err());
        upload.abort().await.unwrap();
    }
}

async fn part_upload_abort_and_incomplete(store: &dyn Store, base: &str) {
    let name = p(&format!("{base}/aborted"));
    let upload = store.start_upload(&name, 10).await.unwrap();
    upload
        .put_part(0, 0, Bytes::from_static(b"01234"))
        .await
        .unwrap();
    upload.abort().await.unwrap();
    assert!(store.head(&name).await.unwrap_err().is_not_found());

    // Completing with bytes missing fails and exposes nothing.
    let name = p(&format!("{base}/incomplete"));
    let upload = store.start_upload(&name, 10).await.unwrap();
    upload
        .put_part(0, 0, Bytes::from_static(b"01234"))
        .await
        .unwrap();
    assert!(upload.complete(Checksums::default()).await.is_err());
    assert!(store.head(&name).await.unwrap_err().is_not_found());

    // Writing past the declared size is refused.
    let upload = store
        .start_upload(&p(&format!("{base}/overrun")), 4)
        .await
        .unwrap();
    assert!(
        upload
            .put_part(0, 0, Bytes::from_static(b"12345"))
            .await
            .is_err()
    );
    upload.abort().await.unwrap();
    let left = list_all(store, &p(base), false).await.unwrap();
    assert!(left.objects.is_empty(), "{left:?}");
}

async fn unusual_names(store: &dyn Store, base: &str) {
    let names_in = [
        "with space.txt",
        "ünïcødé/日本語.txt",
        "percent%20sign",
        "plus+and&amp",
        "dots..in..name",
        ".hidden",
    ];
    for name in names_in {
        put(store, &format!("{base}/{name}"), name.as_bytes()).await;
    }
    let listed = list_all(store, &p(base), false).await.unwrap();
    let mut expected: Vec<String> = names_in.iter().map(|n| format!("{base}/{n}")).collect();
    expected.sort();
    assert_eq!(names(&listed.objects), expected);
    for name in names_in {
        let full = format!("{base}/{name}");
        assert_eq!(read(store, &full, 0..1000).await, name.as_bytes(), "{name}");
    }
}
