//! Blob-specific behaviour of the binary, against Azurite: a wrong account key, and a download
//! killed mid-file. What every backend must do (jobs, `--create-if-not-exists`, `dataref
//! upload` / `download`) is in backend_matrix.rs. Every output is checked for leaked secrets.

mod common;

use std::time::Duration;

use common::azurite;
use common::cli::output;
use common::data::{p, pattern};
use common::fs::files;
use common::secrets::{assert_no_secret, secret_file};
use common::wait::poll;
use dataref::model::{AzureLocation, Credential, SecretRef};
use dataref::store::azure::blob::BlobStore;
use dataref::store::{PutOptions, Store};

fn blob_store(container: &str, credential: Credential) -> BlobStore {
    let endpoint = azurite::shared().endpoint();
    let location = AzureLocation {
        account_name: azurite::ACCOUNT.into(),
        container: container.into(),
        endpoint: Some(endpoint.clone()),
        credential,
    };
    BlobStore::new(
        &location,
        &endpoint,
        &dataref::store::Resources::new(64 * 1024 * 1024),
    )
    .unwrap()
}

// A wrong key: registration without --create-if-not-exists succeeds (storage is not
// contacted), and using it fails with 69 and no secret in the message.
#[test]
fn a_wrong_key_registers_and_then_fails_with_69_without_the_key_in_the_message() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    let key = secret_file(dir.path(), "account.key", azurite::KEY);
    let container = azurite::unique_container("wrongkey");
    let store = blob_store(&container, Credential::AccountKey(SecretRef::File(key)));
    runtime.block_on(async {
        store.create_container().await.unwrap();
        let data = bytes::Bytes::from_static(b"a");
        store
            .put(&p("data/a.txt"), data, &PutOptions::default())
            .await
            .unwrap();
    });
    let bad = secret_file(dir.path(), "bad.key", &azurite::KEY.replace('E', "F"));
    azurite::register(
        &config,
        "bad",
        &container,
        &bad,
        &azurite::shared().endpoint(),
    );
    let target = dir.path().join("down");
    let mut command = common::cli::command();
    command.args([
        "--config-dir",
        config.to_str().unwrap(),
        "download",
        "--datastore",
        "bad",
        "--target-path",
        target.to_str().unwrap(),
    ]);
    let out = output(&mut command);
    out.expect_code(69);
    let wrong = azurite::KEY.replace('E', "F");
    assert_no_secret(&out.all_output(), &[azurite::KEY, &wrong], "error output");
    assert!(files(&target).is_empty(), "{:?}", files(&target));
}

#[test]
fn a_killed_download_leaves_no_file_under_its_final_name() {
    use common::fault_proxy::{Fault, FaultProxy, ranged_get};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = secret_file(dir.path(), "account.key", azurite::KEY);
    let container = azurite::unique_container("killed");
    let store = blob_store(
        &container,
        Credential::AccountKey(SecretRef::File(key.clone())),
    );
    runtime.block_on(async {
        store.create_container().await.unwrap();
        // Two files of one part (fetched into memory, written at the end) and two of two
        // parts (written into a temporary file as they arrive).
        for i in 0..4 {
            let mib: usize = if i < 2 { 3 } else { 9 };
            let size = mib * 1024 * 1024;
            store
                .put(
                    &p(&format!("d/f{i}.bin")),
                    pattern(size, i as u32).into(),
                    &PutOptions::default(),
                )
                .await
                .unwrap();
        }
    });
    // Every body arrives in part, then hangs: dataref is killed mid-file.
    let proxy = FaultProxy::start(azurite::shared().port);
    for _ in 0..6 {
        proxy.push(ranged_get(Fault::Stall(Duration::from_secs(30))));
    }
    let config = dir.path().join("config");
    azurite::register(&config, "slow", &container, &key, &proxy.endpoint());
    let target = dir.path().join("down");
    let mut child = common::cli::command()
        .args([
            "--config-dir",
            config.to_str().unwrap(),
            "download",
            "--datastore",
            "slow",
            "--target-path",
            target.to_str().unwrap(),
            "--no-progress",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    poll("the download to start", Duration::from_secs(20), || {
        target.join("d").is_dir()
            && files(&target)
                .iter()
                .any(|f| f.contains(".dataref-partial."))
            && proxy.fired().len() == 6
    });
    child.kill().unwrap(); // SIGKILL: no cleanup code runs
    child.wait().unwrap();
    let left = files(&target);
    assert!(!left.is_empty());
    for name in &left {
        assert!(
            name.contains(".dataref-partial."),
            "a file under its final name: {name}"
        );
    }
}
