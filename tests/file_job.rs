//! File-share datastores end to end, against the strict FileREST test server: a job that mounts
//! and downloads a share and uploads into new nested directories of another (SAS) share; the
//! registry's `--create-if-not-exists`; `dataref upload` / `download`. Every output of dataref
//! is checked for leaked secrets.

mod common;

use std::path::Path;

use common::cli::{run, run_in};
use common::filerest::{self, FileRest};
use dataref::model::ObjectPath;
use dataref::model::{AzureLocation, Credential, SecretRef};
use dataref::store::azure::file::FileStore;
use dataref::store::{PutOptions, Store, read_to_bytes};
use md5::{Digest, Md5};
use serde_json::json;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(167).wrapping_add(seed) ^ (i >> 13) as u8)
        .collect()
}

fn p(name: &str) -> ObjectPath {
    ObjectPath::parse(name).unwrap()
}

fn key_store(server: &FileRest, share: &str, key: &Path) -> FileStore {
    let location = AzureLocation {
        account_name: filerest::ACCOUNT.into(),
        container: share.into(),
        endpoint: Some(server.endpoint()),
        credential: Credential::AccountKey(SecretRef::File(key.to_path_buf())),
    };
    FileStore::new(
        &location,
        &server.endpoint(),
        &dataref::store::Resources::new(64 * 1024 * 1024),
    )
    .unwrap()
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

fn sas_signature(sas: &str) -> String {
    let sig = sas.split('&').find_map(|p| p.strip_prefix("sig=")).unwrap();
    percent_encoding::percent_decode_str(sig)
        .decode_utf8()
        .unwrap()
        .into_owned()
}

fn mountinfo() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap()
}

#[test]
fn a_job_mounts_and_downloads_a_share_and_uploads_into_new_directories() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // Pages of two entries: the binary's listings follow NextMarker through every directory.
    let server = FileRest::start(2);
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let key_path = filerest::secret_file(&keys, "account.key", filerest::KEY);
    let inputs_name = filerest::unique_share("inputs");
    let outputs_name = filerest::unique_share("outputs");
    server.create_share(&outputs_name);
    let sas = server.share_sas(&outputs_name, "rcwdl", &filerest::sas_time(3600));
    let sas_path = filerest::secret_file(&keys, "outputs.sas", &sas);

    let inputs = key_store(&server, &inputs_name, &key_path);
    let big = pattern(9 * 1024 * 1024 + 4321, 3); // three ranges of at most 4 MiB
    let input_files: Vec<(&str, Vec<u8>)> = vec![
        ("train/a.csv", b"x,y\n1,2\n".to_vec()),
        ("train/sub/big.bin", big.clone()),
        ("train/sub/deeper/c.txt", b"c".to_vec()),
        ("train/empty.txt", Vec::new()),
        ("train/with space ü.txt", "ünïcode".as_bytes().to_vec()),
        ("train_v2.csv", b"not part of train".to_vec()),
    ];
    runtime.block_on(async {
        inputs.create_share().await.unwrap();
        for (name, data) in &input_files {
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
    let endpoint = server.endpoint();
    let manifest = json!({
        "datastores": {
            "inputs": {"kind": "azure_file", "account_name": filerest::ACCOUNT,
                       "share_name": inputs_name, "endpoint": endpoint,
                       "account_key": {"file": key_path}},
            "outputs": {"kind": "azure_file", "account_name": filerest::ACCOUNT,
                        "container_name": outputs_name, "endpoint": format!("{endpoint}/"),
                        "sas_token": {"file": sas_path}}
        },
        "data_references": {
            "mounted": {"datastore": "inputs", "path_on_datastore": "train", "mode": "mount",
                        "path_on_compute": "m"},
            "copied": {"datastore": "inputs", "path_on_datastore": "train", "mode": "download",
                       "path_on_compute": "d"},
            "model": {"datastore": "outputs", "path_on_datastore": "runs/1", "mode": "upload",
                      "path_on_compute": "outputs"}
        },
        "command": ["sh", "-c", r#"
            set -e
            mkdir -p outputs/from-mount outputs/from-download outputs/new/nested/dirs
            grep " $1 " /proc/self/mountinfo | grep -c 'dataref:' > outputs/mounted.txt
            cp -r "$1"/. outputs/from-mount/
            cp -r "$2"/. outputs/from-download/
            head -c 9000000 "$1/sub/big.bin" > outputs/new/nested/dirs/model.bin
            echo trained > outputs/new/nested/dirs/done.txt
        "#, "job", "$AZUREML_DATAREFERENCE_mounted", "$AZUREML_DATAREFERENCE_copied"]
    });
    std::fs::write(work.join("job.json"), manifest.to_string()).unwrap();
    let config = dir.path().join("config");
    let out = run_in(&work, &config, &["run", "--no-progress", "job.json"]);
    out.expect_code(0);

    // The script saw the share through a dataref mount, and the mount is gone afterwards.
    let outputs = work.join("outputs");
    assert_eq!(
        std::fs::read_to_string(outputs.join("mounted.txt")).unwrap(),
        "1\n"
    );
    let mountpoint = work.join("inputs/m/train");
    assert!(!mountinfo().contains(&format!(" {} ", mountpoint.display())));

    // Mount and download show exactly the files under train/ (never train_v2.csv).
    let expected = vec![
        "a.csv",
        "empty.txt",
        "sub/big.bin",
        "sub/deeper/c.txt",
        "with space ü.txt",
    ];
    let downloaded = work.join("inputs/d/train");
    assert_eq!(files(&downloaded), expected);
    for copy in [downloaded.as_path(), &outputs.join("from-mount")] {
        assert_eq!(files(copy), expected, "{}", copy.display());
        for (name, data) in &input_files {
            if let Some(relative) = name.strip_prefix("train/") {
                assert_eq!(&std::fs::read(copy.join(relative)).unwrap(), data, "{name}");
            }
        }
    }

    // Outputs: every file, in new nested directories, with its content and Content-MD5.
    let produced = files(&outputs);
    assert_eq!(produced.len(), 13, "{produced:?}");
    let reader = key_store(&server, &outputs_name, &key_path);
    runtime.block_on(async {
        for name in &produced {
            let data = std::fs::read(outputs.join(name)).unwrap();
            let remote = p(&format!("runs/1/{name}"));
            let meta = reader.head(&remote).await.unwrap();
            let md5: [u8; 16] = Md5::digest(&data).into();
            assert_eq!(meta.content_md5, Some(md5), "{name}: Content-MD5");
            assert_eq!(
                read_to_bytes(&reader, &remote).await.unwrap(),
                data,
                "{name}"
            );
        }
    });
    // Nothing else on the share: no temporary file survived.
    let mut on_share: Vec<String> = server
        .files(&outputs_name)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    on_share.sort();
    let mut wanted: Vec<String> = produced.iter().map(|n| format!("runs/1/{n}")).collect();
    wanted.sort();
    assert_eq!(on_share, wanted);
    assert!(
        server
            .directories(&outputs_name)
            .contains(&"runs/1/new/nested/dirs".to_owned())
    );

    // No secret anywhere dataref writes.
    let signature = sas_signature(&sas);
    let secrets = [filerest::KEY, signature.as_str()];
    assert_no_secret(&out.all_output(), &secrets, "the terminal");
    for file in ["job.log", "result.json"] {
        let text = std::fs::read_to_string(work.join(".dataref").join(file)).unwrap();
        assert_no_secret(&text, &secrets, file);
    }
}

fn register(
    config: &Path,
    name: &str,
    share: &str,
    credential: &[&str],
    extra: &[&str],
    endpoint: &str,
) -> common::cli::Outcome {
    let mut args = vec![
        "datastore",
        "register",
        "azure-file",
        "--name",
        name,
        "--account",
        filerest::ACCOUNT,
        "--share",
        share,
        "--endpoint",
        endpoint,
    ];
    args.extend_from_slice(credential);
    args.extend_from_slice(extra);
    run(config, &args)
}

#[test]
fn register_with_create_and_the_upload_download_commands() {
    let server = FileRest::start(3);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    let key = filerest::secret_file(dir.path(), "account.key", filerest::KEY);
    let share = filerest::unique_share("cli");
    let endpoint = server.endpoint();
    let key_flag = ["--key-file", key.to_str().unwrap()];

    register(
        &config,
        "files",
        &share,
        &key_flag,
        &["--create-if-not-exists"],
        &endpoint,
    )
    .expect_code(0);
    // The share exists now: an empty listing, not ShareNotFound.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = key_store(&server, &share, &key);
    runtime
        .block_on(dataref::store::list_all(&store, &ObjectPath::root(), false))
        .unwrap();
    // Idempotent.
    register(
        &config,
        "files",
        &share,
        &key_flag,
        &["--create-if-not-exists", "--overwrite"],
        &endpoint,
    )
    .expect_code(0);

    // A share SAS cannot create shares: exit 69, nothing registered, no secret shown.
    let sas = server.share_sas(&share, "rcwdl", &filerest::sas_time(3600));
    let sas_file = filerest::secret_file(dir.path(), "share.sas", &sas);
    let sas_flag = ["--sas-file", sas_file.to_str().unwrap()];
    let out = register(
        &config,
        "viasas",
        "other-share",
        &sas_flag,
        &["--create-if-not-exists"],
        &endpoint,
    );
    out.expect_code(69);
    assert_no_secret(
        &out.all_output(),
        &[&sas_signature(&sas)],
        "register output",
    );
    let listed = run(&config, &["datastore", "list"]);
    assert!(!listed.stdout.contains("viasas"), "{}", listed.stdout);
    // Without creation, storage is not contacted.
    register(&config, "viasas", &share, &sas_flag, &[], &endpoint).expect_code(0);

    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("nested/deeper")).unwrap();
    std::fs::write(src.join("a.txt"), "a").unwrap();
    let big = pattern(9 * 1024 * 1024, 1);
    std::fs::write(src.join("nested/deeper/b.bin"), &big).unwrap();
    let out = run(
        &config,
        &[
            "upload",
            "--datastore",
            "files",
            "--target-path",
            "data/v1",
            "--no-progress",
            src.to_str().unwrap(),
        ],
    );
    out.expect_code(0);
    assert!(out.stderr.contains("2 files"), "{}", out.stderr);
    let mut on_share = server.files(&share);
    on_share.sort();
    assert_eq!(
        on_share,
        [
            ("data/v1/a.txt".to_owned(), b"a".to_vec()),
            ("data/v1/nested/deeper/b.bin".to_owned(), big.clone())
        ]
    );

    // Single files through the SAS datastore land at <target>/<file name>.
    let out = run(
        &config,
        &[
            "upload",
            "--datastore",
            "viasas",
            "--target-path",
            "loose",
            "--no-progress",
            src.join("a.txt").to_str().unwrap(),
        ],
    );
    out.expect_code(0);

    let target = dir.path().join("down");
    let out = run(
        &config,
        &[
            "download",
            "--datastore",
            "viasas",
            "--prefix",
            "data",
            "--target-path",
            target.to_str().unwrap(),
            "--no-progress",
        ],
    );
    out.expect_code(0);
    assert_eq!(
        files(&target),
        vec!["data/v1/a.txt", "data/v1/nested/deeper/b.bin"]
    );
    assert_eq!(
        std::fs::read(target.join("data/v1/nested/deeper/b.bin")).unwrap(),
        big
    );
    assert_no_secret(
        &out.all_output(),
        &[filerest::KEY, &sas_signature(&sas)],
        "download output",
    );

    // Everything, with --prefix omitted.
    let all = dir.path().join("all");
    run(
        &config,
        &[
            "download",
            "--datastore",
            "files",
            "--target-path",
            all.to_str().unwrap(),
            "--no-progress",
        ],
    )
    .expect_code(0);
    assert_eq!(
        files(&all),
        vec![
            "data/v1/a.txt",
            "data/v1/nested/deeper/b.bin",
            "loose/a.txt"
        ]
    );
}
