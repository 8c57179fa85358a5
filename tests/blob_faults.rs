//! Faults between dataref and Azurite, injected by a TCP proxy: resets mid-body, 503 with and
//! without Retry-After, stalled and truncated responses. Transfers must complete, exactly.

mod common;

use common::data::{p, pattern};
use common::fault_proxy::ranged_get;
use common::secrets::{sas_expiry, secret_file};

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::azurite;
use common::fault_proxy::{Fault, FaultProxy, Rule};
use dataref::model::{AzureLocation, Credential, SecretRef};
use dataref::store::azure::blob::BlobStore;
use dataref::store::{PutOptions, Store, read_to_bytes};
use dataref::transfer::{self, Engine, UploadSource};
use md5::Digest;

/// A container reached through a fresh proxy.
async fn setup(dir: &Path) -> (FaultProxy, Arc<BlobStore>) {
    let proxy = FaultProxy::start(azurite::shared().port);
    let store = azurite::fresh_store(&proxy.endpoint(), dir, "faults").await;
    (proxy, Arc::new(store))
}

/// The defaults with a stall timeout of 1 s.
fn engine() -> Engine {
    let mut engine = common::engines::defaults();
    engine.stall_timeout = Duration::from_secs(1);
    engine
}

async fn put_big(store: &BlobStore, name: &str, data: &[u8]) {
    store
        .put(&p(name), data.to_vec().into(), &PutOptions::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn resets_and_truncations_mid_body_are_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let (proxy, store) = setup(dir.path()).await;
    let data = pattern(20 * 1024 * 1024, 1);
    put_big(&store, "big.bin", &data).await;
    proxy.push(ranged_get(Fault::ResetAfter(1024 * 1024)));
    proxy.push(ranged_get(Fault::ResetAfter(3 * 1024 * 1024 + 17)));
    proxy.push(ranged_get(Fault::TruncateAfter(2 * 1024 * 1024)));
    let target = dir.path().join("big.bin");
    let report = transfer::download(&engine(), store, &p("big.bin"), &target, false)
        .await
        .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(proxy.fired().len(), 3, "every fault hit a request");
    assert!(std::fs::read(&target).unwrap() == data, "content differs");
}

#[tokio::test]
async fn busy_answers_with_and_without_retry_after_are_retried() {
    let dir = tempfile::tempdir().unwrap();
    let (proxy, store) = setup(dir.path()).await;
    let data = pattern(9 * 1024 * 1024, 2);
    put_big(&store, "in/data.bin", &data).await;
    for retry_after_seconds in [Some(1), None] {
        // The listing, a ranged read, and the writes of the upload all meet a 503.
        for method in ["GET", "GET", "PUT", "PUT"] {
            proxy.push(Rule {
                method: Some(method),
                ranged_only: false,
                fault: Fault::Status {
                    code: 503,
                    retry_after_seconds,
                },
            });
        }
    }
    let local = dir.path().join("down");
    let report = transfer::download(&engine(), store.clone(), &p("in"), &local, false)
        .await
        .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(std::fs::read(local.join("data.bin")).unwrap() == data);

    let mut engine = engine();
    engine.part_size = 4 * 1024 * 1024; // three blocks
    let source = UploadSource::Directory(local.clone());
    let report = transfer::upload(&engine, store.clone(), &source, &p("out"), false, &[])
        .await
        .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(
        proxy.pending(),
        0,
        "every 503 was served: {:?}",
        proxy.fired()
    );
    let meta = store.head(&p("out/data.bin")).await.unwrap();
    let md5: [u8; 16] = md5::Md5::digest(&data).into();
    assert_eq!(meta.content_md5, Some(md5));
    assert!(
        read_to_bytes(store.as_ref(), &p("out/data.bin"))
            .await
            .unwrap()
            == data
    );
}

#[tokio::test]
async fn a_stalled_response_is_abandoned_and_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let (proxy, store) = setup(dir.path()).await;
    let data = pattern(10 * 1024 * 1024, 3);
    put_big(&store, "slow.bin", &data).await;
    // Far longer than the engine's 1 s stall timeout: waited out, it would take 120 s.
    proxy.push(ranged_get(Fault::Stall(Duration::from_secs(120))));
    let target = dir.path().join("slow.bin");
    let started = std::time::Instant::now();
    let report = transfer::download(&engine(), store, &p("slow.bin"), &target, false)
        .await
        .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(proxy.fired().len(), 1);
    assert!(std::fs::read(&target).unwrap() == data);
    // Not a timing assertion on speed: only that the stall was not waited out. The code needs
    // the 1 s stall timeout, one backoff (at most 0.2 s) and 10 MiB through the proxy: about
    // 2 s, 5 s on a loaded 2-core machine; 60 s is 12x that and half the stall.
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(60),
        "the stall was waited out ({took:?})"
    );
}

/// Uploads `count` small blobs under `prefix` with the account key.
async fn small_blobs(store: &BlobStore, prefix: &str, count: usize) -> Vec<Vec<u8>> {
    let mut all = Vec::new();
    for i in 0..count {
        let data = pattern(64 * 1024, i as u32);
        store
            .put(
                &p(&format!("{prefix}/f{i:03}")),
                data.clone().into(),
                &PutOptions::default(),
            )
            .await
            .unwrap();
        all.push(data);
    }
    all
}

#[tokio::test]
async fn a_sas_rotated_mid_download_keeps_the_job_going() {
    let dir = tempfile::tempdir().unwrap();
    let (proxy, keyed) = setup(dir.path()).await;
    let expected = small_blobs(&keyed, "data", 24).await;

    // A store that authenticates with a SAS file whose token expires in 3 s.
    let sas_path = secret_file(
        dir.path(),
        "data.sas",
        &azurite::account_sas(&sas_expiry(3)),
    );
    let endpoint = proxy.endpoint();
    let container = azurite::container_of(&keyed);
    let location = AzureLocation {
        account_name: azurite::ACCOUNT.into(),
        container,
        endpoint: Some(endpoint.clone()),
        credential: Credential::SasToken(SecretRef::File(sas_path.clone())),
    };
    let store = Arc::new(
        BlobStore::new(
            &location,
            &endpoint,
            &dataref::store::Resources::new(64 * 1024 * 1024),
        )
        .unwrap(),
    );
    let old_token_store = {
        let old = dir.path().join("old.sas");
        std::fs::copy(&sas_path, &old).unwrap();
        let location = AzureLocation {
            credential: Credential::SasToken(SecretRef::File(old)),
            ..location.clone()
        };
        BlobStore::new(
            &location,
            &endpoint,
            &dataref::store::Resources::new(64 * 1024 * 1024),
        )
        .unwrap()
    };

    // One file at a time, each response held back 250 ms: about 6 s in all, so the first
    // token expires half-way.
    for _ in 0..24 {
        proxy.push(ranged_get(Fault::Stall(Duration::from_millis(250))));
    }
    let rotate = {
        let sas_path = sas_path.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            secret_file(
                sas_path.parent().unwrap(),
                "data.sas",
                &azurite::account_sas(&sas_expiry(3600)),
            );
        })
    };
    let mut engine = engine();
    engine.file_concurrency = 1;
    let local = dir.path().join("down");
    let report = transfer::download(&engine, store, &p("data"), &local, false)
        .await
        .unwrap();
    rotate.await.unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    for (i, data) in expected.iter().enumerate() {
        assert!(
            std::fs::read(local.join(format!("f{i:03}"))).unwrap() == *data,
            "f{i:03}"
        );
    }
    // The first token really did expire: without the rotation the job would have failed.
    let err = old_token_store.head(&p("data/f000")).await.unwrap_err();
    assert!(
        matches!(err, dataref::store::StoreError::PermissionDenied { .. }),
        "{err}"
    );
}
