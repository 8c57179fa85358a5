//! Azure Files specifics of the binary, against the strict FileREST test server: a share SAS
//! cannot create shares but moves data, and single files land at `<target>/<file name>`. What
//! every backend must do (jobs with mounts, downloads and uploads into new nested directories,
//! `--create-if-not-exists`, `dataref upload` / `download`) is in backend_matrix.rs. Every output
//! of dataref is checked for leaked secrets.

mod common;

use std::path::Path;

use common::cli::run;
use common::data::pattern;
use common::filerest::{self, FileRest};
use common::fs::files;
use common::secrets::{assert_no_secret, sas_expiry, sas_signature, secret_file};

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
fn a_share_sas_cannot_create_shares_but_uploads_and_downloads() {
    let server = FileRest::start(3);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    let key = secret_file(dir.path(), "account.key", filerest::KEY);
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
    // A share SAS cannot create shares: exit 69, nothing registered, no secret shown.
    let sas = server.share_sas(&share, "rcwdl", &sas_expiry(3600));
    let sas_file = secret_file(dir.path(), "share.sas", &sas);
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
