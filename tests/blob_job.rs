//! Blob datastores end to end, against Azurite: a job with two blob datastores (account key and
//! SAS), the registry's `--create-if-not-exists`, and `dataref upload` / `download`. Every
//! output of dataref is checked for leaked secrets.

mod common;

use std::path::{Path, PathBuf};

use common::azurite;
use common::cli::{output, run, run_in};
use dataref::model::ObjectPath;
use dataref::model::{AzureLocation, Credential, SecretRef};
use dataref::store::azure::blob::BlobStore;
use dataref::store::{PutOptions, Store, read_to_bytes};
use md5::{Digest, Md5};
use serde_json::json;

fn secret_file(dir: &Path, name: &str, value: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, value).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

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

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(167).wrapping_add(seed) ^ (i >> 13) as u8)
        .collect()
}

fn p(name: &str) -> ObjectPath {
    ObjectPath::parse(name).unwrap()
}

/// Every file under `root`, relative, sorted.
fn files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

fn assert_no_secret(haystack: &str, secrets: &[&str], place: &str) {
    for secret in secrets {
        assert!(!haystack.contains(secret), "a secret leaked into {place}");
    }
}

#[test]
fn a_job_with_two_blob_datastores_end_to_end() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let key_path = secret_file(&keys, "account.key", azurite::KEY);
    let sas = azurite::account_sas(&azurite::expiry_in(3600));
    let sas_path = secret_file(&keys, "outputs.sas", &sas);

    let inputs_name = azurite::unique_container("inputs");
    let outputs_name = azurite::unique_container("outputs");
    let inputs = blob_store(
        &inputs_name,
        Credential::AccountKey(SecretRef::File(key_path.clone())),
    );
    let outputs = blob_store(
        &outputs_name,
        Credential::SasToken(SecretRef::File(sas_path.clone())),
    );
    let big = pattern(20 * 1024 * 1024 + 12_345, 3); // three ranged parts of 8 MiB
    let input_blobs: Vec<(&str, Vec<u8>)> = vec![
        ("train/a.csv", b"x,y\n1,2\n".to_vec()),
        ("train/sub/big.bin", big.clone()),
        ("train/empty.txt", Vec::new()),
        ("train/with space ü.txt", "ünïcode".as_bytes().to_vec()),
        ("train_v2.csv", b"not part of train".to_vec()),
    ];
    runtime.block_on(async {
        inputs.create_container().await.unwrap();
        outputs.create_container().await.unwrap();
        for (name, data) in &input_blobs {
            let md5: [u8; 16] = Md5::digest(data).into();
            inputs
                .put(
                    &p(name),
                    data.clone().into(),
                    &PutOptions {
                        content_md5: Some(md5),
                    },
                )
                .await
                .unwrap();
        }
    });

    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let endpoint = azurite::shared().endpoint();
    let manifest = json!({
        "datastores": {
            "inputs": {"kind": "azure_blob", "account_name": azurite::ACCOUNT,
                       "container_name": inputs_name, "endpoint": endpoint,
                       "account_key": {"file": key_path}},
            "outputs": {"kind": "azure_blob", "account_name": azurite::ACCOUNT,
                        "container_name": outputs_name, "endpoint": format!("{endpoint}/"),
                        "sas_token": {"file": sas_path}}
        },
        "data_references": {
            "train": {"datastore": "inputs", "path_on_datastore": "train", "mode": "download"},
            "model": {"datastore": "outputs", "path_on_datastore": "runs/1", "mode": "upload",
                      "path_on_compute": "outputs"}
        },
        "command": ["sh", "-c", "mkdir -p outputs/copy && cp -r \"$1\"/. outputs/copy/ && \
                    head -c 9000000 outputs/copy/sub/big.bin > outputs/model.bin && \
                    echo trained > outputs/done.txt", "train", "$AZUREML_DATAREFERENCE_train"]
    });
    std::fs::write(work.join("job.json"), manifest.to_string()).unwrap();
    let config = dir.path().join("config");
    let out = run_in(&work, &config, &["run", "--no-progress", "job.json"]);
    out.expect_code(0);

    // Inputs: exactly the blobs under train/, at <working_dir>/<datastore>/<path>.
    let local = work.join("inputs/train");
    assert_eq!(
        files(&local),
        vec!["a.csv", "empty.txt", "sub/big.bin", "with space ü.txt"]
    );
    assert_eq!(std::fs::read(local.join("sub/big.bin")).unwrap(), big);

    // Outputs: every file, blob by blob, with its content and Content-MD5.
    let produced = files(&work.join("outputs"));
    assert_eq!(produced.len(), 6, "{produced:?}");
    runtime.block_on(async {
        for name in &produced {
            let data = std::fs::read(work.join("outputs").join(name)).unwrap();
            let blob = p(&format!("runs/1/{name}"));
            let meta = outputs.head(&blob).await.unwrap();
            let md5: [u8; 16] = Md5::digest(&data).into();
            assert_eq!(meta.content_md5, Some(md5), "{name}: Content-MD5");
            assert_eq!(
                read_to_bytes(&outputs, &blob).await.unwrap(),
                data,
                "{name}"
            );
        }
    });

    // No secret anywhere dataref writes.
    let key_text = azurite::KEY;
    let signature = azurite::sas_signature(&sas);
    let secrets = [key_text, signature.as_str()];
    assert_no_secret(&out.all_output(), &secrets, "the terminal");
    for file in ["job.log", "result.json"] {
        let text = std::fs::read_to_string(work.join(".dataref").join(file)).unwrap();
        assert_no_secret(&text, &secrets, file);
    }
    let child_env = std::fs::read_to_string(work.join("outputs/done.txt")).unwrap();
    assert_eq!(child_env, "trained\n");
}

#[test]
fn register_with_create_and_the_upload_download_commands() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    let key = secret_file(dir.path(), "account.key", azurite::KEY);
    let container = azurite::unique_container("cli");
    let endpoint = azurite::shared().endpoint();
    let out = run(
        &config,
        &[
            "datastore",
            "register",
            "azure-blob",
            "--name",
            "blobs",
            "--account",
            azurite::ACCOUNT,
            "--container",
            &container,
            "--key-file",
            key.to_str().unwrap(),
            "--endpoint",
            &endpoint,
            "--create-if-not-exists",
        ],
    );
    out.expect_code(0);

    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("nested")).unwrap();
    std::fs::write(src.join("a.txt"), "a").unwrap();
    std::fs::write(src.join("nested/b.bin"), pattern(3 * 1024 * 1024, 1)).unwrap();
    let out = run(
        &config,
        &[
            "upload",
            "--datastore",
            "blobs",
            "--target-path",
            "data",
            "--no-progress",
            src.to_str().unwrap(),
        ],
    );
    out.expect_code(0);
    assert!(out.stderr.contains("2 files"), "{}", out.stderr);

    let target = dir.path().join("down");
    let out = run(
        &config,
        &[
            "download",
            "--datastore",
            "blobs",
            "--prefix",
            "data",
            "--target-path",
            target.to_str().unwrap(),
            "--no-progress",
        ],
    );
    out.expect_code(0);
    assert_eq!(files(&target), vec!["data/a.txt", "data/nested/b.bin"]);
    assert_eq!(
        std::fs::read(target.join("data/nested/b.bin")).unwrap(),
        pattern(3 * 1024 * 1024, 1)
    );
    assert_no_secret(&out.all_output(), &[azurite::KEY], "download output");

    // A wrong key: registration without --create-if-not-exists succeeds (storage is not
    // contacted), and using it fails with 69 and no secret in the message.
    let bad = secret_file(dir.path(), "bad.key", &azurite::KEY.replace('E', "F"));
    run(
        &config,
        &[
            "datastore",
            "register",
            "azure-blob",
            "--name",
            "bad",
            "--account",
            azurite::ACCOUNT,
            "--container",
            &container,
            "--key-file",
            bad.to_str().unwrap(),
            "--endpoint",
            &endpoint,
        ],
    )
    .expect_code(0);
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
    assert_no_secret(&out.all_output(), &[azurite::KEY], "error output");
}

#[test]
fn a_killed_download_leaves_no_file_under_its_final_name() {
    use common::fault_proxy::{Fault, FaultProxy, Rule};
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
                    pattern(size, i).into(),
                    &PutOptions::default(),
                )
                .await
                .unwrap();
        }
    });
    // Every body arrives in part, then hangs: dataref is killed mid-file.
    let proxy = FaultProxy::start(azurite::shared().port);
    for _ in 0..6 {
        proxy.push(Rule {
            method: Some("GET"),
            ranged_only: true,
            fault: Fault::Stall(std::time::Duration::from_secs(30)),
        });
    }
    let config = dir.path().join("config");
    run(
        &config,
        &[
            "datastore",
            "register",
            "azure-blob",
            "--name",
            "slow",
            "--account",
            azurite::ACCOUNT,
            "--container",
            &container,
            "--key-file",
            key.to_str().unwrap(),
            "--endpoint",
            &proxy.endpoint(),
        ],
    )
    .expect_code(0);
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
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let partial_exists = || {
        target.join("d").is_dir()
            && files(&target)
                .iter()
                .any(|f| f.contains(".dataref-partial."))
            && proxy.fired().len() == 6
    };
    while !partial_exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the download never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
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
