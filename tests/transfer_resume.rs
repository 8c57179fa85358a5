//! The transfer engine against stores that break or stall: ranges resumed from the missing
//! byte, hashed downloads requesting parts in order, and the upload journal. The plain layout,
//! skip and integrity rules are in transfer.rs.

mod common;

use dataref::store::hooked::{Hook, Hooked};

use common::data::{p, pattern, put_with_md5 as put};
use common::fs::tree;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use dataref::model::ObjectPath;
use dataref::store::memory::MemoryStore;
use dataref::store::{PutOptions, Store, read_to_bytes};
use dataref::transfer::{self, UploadSource};
use md5::{Digest, Md5};

use common::engines::small_parts as engine;

/// Ranged reads of which the first `failures` break after half their bytes; records every
/// range requested.
#[derive(Debug)]
struct Flaky {
    failures: std::sync::atomic::AtomicU32,
    ranges: std::sync::Mutex<Vec<std::ops::Range<u64>>>,
}

fn flaky(inner: MemoryStore, failures: u32) -> Arc<Hooked<Flaky>> {
    let hook = Flaky {
        failures: failures.into(),
        ranges: Default::default(),
    };
    Arc::new(Hooked::wrap(Arc::new(inner), hook))
}

#[async_trait::async_trait]
impl Hook for Flaky {
    async fn get_range(
        &self,
        inner: &dyn Store,
        path: &ObjectPath,
        range: std::ops::Range<u64>,
        _version: Option<&str>,
    ) -> dataref::store::Result<dataref::store::ByteStream> {
        use futures::StreamExt;
        self.ranges.lock().unwrap().push(range.clone());
        let data = read_to_bytes(inner, path).await?;
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
}

#[tokio::test]
async fn a_range_broken_mid_body_resumes_from_the_missing_byte() {
    let inner = MemoryStore::new();
    let data = pattern(64 * 1024 * 3, 5); // three parts of the test engine's 64 KiB
    put(&inner, "f.bin", &data).await;
    let store = flaky(inner, 2);
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
    let ranges = store.hook.ranges.lock().unwrap().clone();
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
    let store = flaky(inner, 1);
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
        *store.hook.ranges.lock().unwrap(),
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

/// Ranged reads that wait a little before their body, recording when each was requested and
/// when its body ended.
#[derive(Debug, Default)]
struct Slow {
    events: Arc<std::sync::Mutex<Vec<RangeEvent>>>,
}

#[async_trait::async_trait]
impl Hook for Slow {
    async fn get_range(
        &self,
        inner: &dyn Store,
        path: &ObjectPath,
        range: std::ops::Range<u64>,
        _version: Option<&str>,
    ) -> dataref::store::Result<dataref::store::ByteStream> {
        use futures::StreamExt;
        let start = range.start;
        self.events
            .lock()
            .unwrap()
            .push(RangeEvent::Requested(start));
        let data = read_to_bytes(inner, path).await?;
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
    let store = Arc::new(Hooked::wrap(Arc::new(inner), Slow::default()));
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("big.bin");
    let report = transfer::download(&engine, store.clone(), &p("big.bin"), &target, false)
        .await
        .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(std::fs::read(&target).unwrap(), data);
    let events = store.hook.events.lock().unwrap().clone();
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
    let store = Arc::new(Hooked::wrap(Arc::new(inner), Slow::default()));
    let target = dir.path().join("raw.bin");
    let report = transfer::download(&engine, store.clone(), &p("raw.bin"), &target, false)
        .await
        .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(std::fs::read(&target).unwrap(), data);
    let events = store.hook.events.lock().unwrap().clone();
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
