//! Scenarios every datastore backend must pass, written once and run for each: `local`, Azure
//! Blob (Azurite) and Azure Files (the strict FileREST server). Each scenario is a function of
//! the [`Backend`]; `backend_tests!` makes `local::NAME`, `blob::NAME` and `files::NAME` of it.
//! Backend-specific behaviour (SAS permissions, wrong keys, faults) stays in blob_job.rs,
//! file_job.rs and the fault tests.
//!
//! Every output of dataref is checked for the backend's secrets (account key, SAS signatures).

mod common;

use std::path::Path;

use common::backend::{Auth, Backend, Remote};
use common::cli::{Outcome, run, run_in, sh};
use common::data::pattern;
use common::fs::{files, read, write};
use common::mounts::{dataref_mounts, is_mounted};
use serde_json::{Value, json};

backend_tests!(
    upload_directory_files_and_download_back,
    download_of_nothing_exits_66_and_missing_source_too,
    plain_progress_lines_when_not_a_terminal,
    a_job_downloads_inputs_and_uploads_outputs,
    a_job_reads_its_mounts_through_the_variables,
    a_mount_of_nothing_exits_66_unless_allowed,
);

/// `dataref --config-dir CONFIG ARGS...`, checked for the backend's secrets.
fn cli(remote: &Remote, config: &Path, args: &[&str]) -> Outcome {
    let out = run(config, args);
    remote.assert_no_secret(&out.all_output(), &format!("the output of {args:?}"));
    out
}

/// Registers `container` as `name` (creating it first where storage can be asked to).
fn register(remote: &Remote, config: &Path, name: &str, container: &str, create: bool) {
    let args = remote.register_args(name, container, create);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cli(remote, config, &args).expect_code(0);
}

fn upload_directory_files_and_download_back(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote::start(backend, dir.path());
    let config = dir.path().join("config");

    // Blob and Files: `--create-if-not-exists` creates the container (the only time
    // registration contacts storage), and is idempotent. Local: the root must exist.
    let container = remote.fresh("cli");
    if backend == Backend::Local {
        remote.create(&container);
    }
    register(&remote, &config, "ws", &container, true);
    assert_eq!(
        remote.names(&container),
        Vec::<String>::new(),
        "created empty"
    );
    let mut again = remote.register_args("ws", &container, true);
    again.push("--overwrite".into());
    let again: Vec<&str> = again.iter().map(String::as_str).collect();
    cli(&remote, &config, &again).expect_code(0);
    cli(&remote, &config, &["datastore", "set-default", "ws"]).expect_code(0);

    // 9 MiB: several parts on Blob (8 MiB blocks) and ranges on Files (4 MiB at most).
    let src = dir.path().join("src");
    let big = pattern(9 * 1024 * 1024, 1);
    write(&src.join("a.txt"), "a");
    write(&src.join("nested/deeper/b.bin"), &big);

    // One directory: its contents go under the target path.
    let out = cli(
        &remote,
        &config,
        &[
            "upload",
            "--target-path",
            "data/v1",
            "--no-progress",
            src.to_str().unwrap(),
        ],
    );
    out.expect_code(0);
    assert!(
        out.stderr.contains("2 files"),
        "summary line: {}",
        out.stderr
    );
    assert_eq!(
        remote.names(&container),
        ["data/v1/a.txt", "data/v1/nested/deeper/b.bin"]
    );
    assert_eq!(remote.get(&container, "data/v1/a.txt"), b"a");
    assert!(remote.get(&container, "data/v1/nested/deeper/b.bin") == big);

    // Files: each lands at <target>/<name>; no --target-path = the root.
    let a = src.join("a.txt");
    let b = src.join("nested/deeper/b.bin");
    cli(
        &remote,
        &config,
        &[
            "upload",
            "--datastore",
            "ws",
            "--no-progress",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
        ],
    )
    .expect_code(0);
    assert_eq!(
        remote.names(&container),
        [
            "a.txt",
            "b.bin",
            "data/v1/a.txt",
            "data/v1/nested/deeper/b.bin"
        ]
    );

    // Existing objects are skipped without --overwrite, replaced with it.
    std::fs::write(&a, "changed").unwrap();
    let out = cli(
        &remote,
        &config,
        &["upload", "--no-progress", a.to_str().unwrap()],
    );
    out.expect_code(0);
    assert!(out.stderr.contains("skipped"), "{}", out.stderr);
    assert_eq!(remote.get(&container, "a.txt"), b"a");
    cli(
        &remote,
        &config,
        &[
            "upload",
            "--overwrite",
            "--no-progress",
            a.to_str().unwrap(),
        ],
    )
    .expect_code(0);
    assert_eq!(remote.get(&container, "a.txt"), b"changed");
    if remote.records_md5() {
        let md5 = remote.md5(&container, "a.txt");
        assert_eq!(md5, Some(common::data::md5_of(b"changed")), "Content-MD5");
    }

    // Mixing a directory and files is a usage error.
    let out = cli(
        &remote,
        &config,
        &["upload", src.to_str().unwrap(), a.to_str().unwrap()],
    );
    out.expect_code(64);

    // Download keeps the full name under the target: data/v1/nested/deeper/b.bin.
    let target = dir.path().join("down");
    cli(
        &remote,
        &config,
        &[
            "download",
            "--prefix",
            "data/v1",
            "--target-path",
            target.to_str().unwrap(),
            "--no-progress",
        ],
    )
    .expect_code(0);
    assert_eq!(
        files(&target),
        ["data/v1/a.txt", "data/v1/nested/deeper/b.bin"]
    );
    assert_eq!(read(&target.join("data/v1/a.txt")), "a");
    assert!(std::fs::read(target.join("data/v1/nested/deeper/b.bin")).unwrap() == big);

    // Everything when no prefix is given.
    let all = dir.path().join("all");
    cli(
        &remote,
        &config,
        &[
            "download",
            "--datastore",
            "ws",
            "--target-path",
            all.to_str().unwrap(),
            "--no-progress",
        ],
    )
    .expect_code(0);
    assert_eq!(
        files(&all),
        [
            "a.txt",
            "b.bin",
            "data/v1/a.txt",
            "data/v1/nested/deeper/b.bin"
        ]
    );
    assert_eq!(read(&all.join("a.txt")), "changed");
}

fn download_of_nothing_exits_66_and_missing_source_too(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote::start(backend, dir.path());
    let config = dir.path().join("config");
    let container = remote.container("nothing");
    remote.put(&container, &[("a/b_v2.csv", b"x".to_vec())]);
    register(&remote, &config, "ws", &container, false);
    let target = dir.path().join("down");
    // `a/b` is directory-aware: it never matches a/b_v2.csv.
    let out = cli(
        &remote,
        &config,
        &[
            "download",
            "--datastore",
            "ws",
            "--prefix",
            "a/b",
            "--target-path",
            target.to_str().unwrap(),
        ],
    );
    out.expect_code(66);
    assert!(!target.exists());

    let out = cli(
        &remote,
        &config,
        &["upload", "--datastore", "ws", "/nonexistent/file"],
    );
    out.expect_code(66);
    assert_eq!(remote.names(&container), ["a/b_v2.csv"]);
    // No datastore and no default.
    let out = cli(&remote, &config, &["upload", "/etc/hostname"]);
    out.expect_code(64);
}

fn plain_progress_lines_when_not_a_terminal(backend: Backend) {
    // The summary line is printed even without a terminal.
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote::start(backend, dir.path());
    let config = dir.path().join("config");
    let container = remote.container("progress");
    register(&remote, &config, "ws", &container, false);
    let file = dir.path().join("f.bin");
    std::fs::write(&file, vec![1u8; 1000]).unwrap();
    let out = cli(
        &remote,
        &config,
        &["upload", "--datastore", "ws", file.to_str().unwrap()],
    );
    out.expect_code(0);
    let summary: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("uploaded "))
        .collect();
    assert_eq!(summary.len(), 1, "{}", out.stderr);
    assert!(summary[0].contains("1 file, 1000 B"), "{}", summary[0]);
    assert_eq!(remote.get(&container, "f.bin"), vec![1u8; 1000]);
}

/// The input objects of the job scenarios: `train/` and, beside it, a name that shares its
/// prefix but is not under it.
fn training_set() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("train/a.csv", b"x,y\n1,2\n".to_vec()),
        // Three ranged parts of 8 MiB on Blob, six ranges of at most 4 MiB on Files.
        ("train/sub/big.bin", pattern(20 * 1024 * 1024 + 12_345, 3)),
        ("train/sub/deeper/c.txt", b"c".to_vec()),
        ("train/empty.txt", Vec::new()),
        ("train/with space ü.txt", "ünïcode".as_bytes().to_vec()),
        ("train_v2.csv", b"not part of train".to_vec()),
    ]
}

/// What a download or a mount of `train` must show: everything under `train/`, nothing else.
fn assert_is_the_training_set(local: &Path, set: &[(&str, Vec<u8>)]) {
    let expected: Vec<&str> = set
        .iter()
        .filter_map(|(name, _)| name.strip_prefix("train/"))
        .collect();
    let mut expected = expected;
    expected.sort_unstable();
    assert_eq!(files(local), expected, "{}", local.display());
    for (name, data) in set {
        if let Some(relative) = name.strip_prefix("train/") {
            assert!(
                std::fs::read(local.join(relative)).unwrap() == *data,
                "{name} in {}",
                local.display()
            );
        }
    }
}

/// Writes `manifest` to `<work>/job.json`, runs it in `work` and checks every output for the
/// backend's secrets. Returns the outcome and result.json.
fn run_job(remote: &Remote, dir: &Path, work: &Path, manifest: &Value) -> (Outcome, Value) {
    std::fs::write(work.join("job.json"), manifest.to_string()).unwrap();
    let out = run_in(
        work,
        &dir.join("config"),
        &["run", "--no-progress", "job.json"],
    );
    remote.assert_no_secret(&out.all_output(), "the terminal");
    for file in ["job.log", "result.json"] {
        let text = std::fs::read_to_string(work.join(".dataref").join(file)).unwrap_or_default();
        remote.assert_no_secret(&text, file);
    }
    let result = std::fs::read_to_string(work.join(".dataref/result.json"))
        .unwrap_or_else(|e| panic!("result.json: {e}\n{out:?}"));
    (out, serde_json::from_str(&result).unwrap())
}

// Two datastores (inputs with the account key, outputs with a SAS and an endpoint written with a
// trailing `/`): a download reference, a directory upload into new nested directories and a
// single-file upload; overwrite=false keeps a file already on the compute node.
fn a_job_downloads_inputs_and_uploads_outputs(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote::start(backend, dir.path());
    let inputs = remote.container("inputs");
    let outputs = remote.container("outputs");
    let set = training_set();
    remote.put(&inputs, &set);

    let work = dir.path().join("work");
    // Already on the compute node: kept (overwrite=false) and reported as skipped.
    write(&work.join("inputs/train/a.csv"), "local a\n");
    let manifest = json!({
        "datastores": {
            "inputs": remote.datastore(&inputs, Auth::Key, false),
            "outputs": remote.datastore(&outputs, Auth::Sas, true),
        },
        "data_references": {
            "train": {"datastore": "inputs", "path_on_datastore": "train", "mode": "download"},
            "out": {"datastore": "outputs", "path_on_datastore": "runs/1", "mode": "upload",
                    "path_on_compute": "outputs"},
            "model": {"datastore": "outputs", "path_on_datastore": "models/v1",
                      "mode": "upload", "path_on_compute": "model.bin"}
        },
        "command": sh(r#"
            set -e
            mkdir -p outputs/copy outputs/new/nested/dirs
            cp -r "$AZUREML_DATAREFERENCE_train"/. outputs/copy/
            head -c 9000000 "$AZUREML_DATAREFERENCE_train/sub/big.bin" > outputs/new/nested/dirs/part.bin
            echo trained > outputs/new/nested/dirs/done.txt
            echo weights > "$AZUREML_DATAREFERENCE_model"
        "#),
    });
    let (out, result) = run_job(&remote, dir.path(), &work, &manifest);
    out.expect_code(0);

    // Inputs: exactly the objects under train/, at <working_dir>/<datastore>/<path>, but for
    // the file that was there already.
    let local = work.join("inputs/train");
    let mut downloaded = set.clone();
    downloaded[0].1 = b"local a\n".to_vec();
    assert_is_the_training_set(&local, &downloaded);
    let train = &result["references"]["train"];
    assert_eq!(train["status"], "done", "{result:#}");
    assert_eq!(train["files"], 4);
    let bytes: usize = set[1..5].iter().map(|(_, d)| d.len()).sum();
    assert_eq!(train["bytes"], bytes);
    assert_eq!(train["local"], local.display().to_string());
    assert_eq!(
        train["skipped"],
        json!([{"path": "train/a.csv", "reason": "exists"}])
    );

    // Outputs: every file, object by object, with its content (and Content-MD5 where the
    // backend records one), in new nested directories; a single file lands at
    // <path_on_datastore>/<file name>; nothing else (no temporary object survived).
    let produced = files(&work.join("outputs"));
    assert_eq!(produced.len(), 7, "{produced:?}");
    let mut wanted: Vec<String> = produced.iter().map(|n| format!("runs/1/{n}")).collect();
    wanted.push("models/v1/model.bin".into());
    wanted.sort();
    assert_eq!(remote.names(&outputs), wanted);
    for name in &produced {
        let data = std::fs::read(work.join("outputs").join(name)).unwrap();
        let object = format!("runs/1/{name}");
        assert!(remote.get(&outputs, &object) == data, "{name}");
        if remote.records_md5() {
            let md5 = remote.md5(&outputs, &object);
            assert_eq!(
                md5,
                Some(common::data::md5_of(&data)),
                "{name}: Content-MD5"
            );
        }
    }
    assert_eq!(remote.get(&outputs, "models/v1/model.bin"), b"weights\n");
    if let Some(directories) = remote.directories(&outputs) {
        assert!(
            directories.contains(&"runs/1/new/nested/dirs".to_owned()),
            "{directories:?}"
        );
    }
    assert_eq!(result["references"]["out"]["status"], "done");
    assert_eq!(result["references"]["out"]["files"], 7);
    assert_eq!(result["references"]["model"]["files"], 1);
    assert_eq!(
        result["references"]["model"]["local"],
        work.join("model.bin").display().to_string()
    );
    assert_eq!(result["end_reason"], "succeeded");
}

// A directory mount (`mount` is the default mode) and a single-object mount beside a download
// in the same folder, read by the script through the variables: read-only, the disk cache in
// the job directory, everything unmounted and removed after the job.
fn a_job_reads_its_mounts_through_the_variables(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote::start(backend, dir.path());
    let data = remote.container("mounted");
    let mut set = training_set();
    set.push(("model.pt", b"weights\n".to_vec()));
    set.push(("other.txt", b"not shown\n".to_vec()));
    remote.put(&data, &set);
    let results = remote.container("results");

    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let manifest = json!({
        "datastores": {
            "ds": remote.datastore(&data, Auth::Key, false),
            "out": remote.datastore(&results, Auth::Key, false),
        },
        "data_references": {
            "data": {"datastore": "ds", "path_on_datastore": "train"},
            "model": {"datastore": "ds", "path_on_datastore": "model.pt", "mode": "MOUNT",
                      "path_on_compute": "weights"},
            "beside": {"datastore": "ds", "path_on_datastore": "other.txt", "mode": "download",
                       "path_on_compute": "weights"},
            "results": {"datastore": "out", "path_on_datastore": "results", "mode": "upload",
                        "path_on_compute": "outputs"}
        },
        "command": sh(r#"
            set -e
            mkdir -p outputs/from-mount
            grep " $AZUREML_DATAREFERENCE_data " /proc/self/mountinfo | grep -c 'dataref:' > outputs/mounted.txt
            cp -r "$AZUREML_DATAREFERENCE_data"/. outputs/from-mount/
            cat "$AZUREML_DATAREFERENCE_model" > outputs/model.txt
            ls "$(dirname "$AZUREML_DATAREFERENCE_model")" > outputs/single-dir.txt
            if touch "$AZUREML_DATAREFERENCE_data/new" 2> outputs/touch.err; then echo writable; fi
            echo "$AZUREML_DATAREFERENCE_data" > outputs/var.txt
            ls -A .dataref/cache/data > outputs/cache.txt
        "#),
    });
    let (out, result) = run_job(&remote, dir.path(), &work, &manifest);
    out.expect_code(0);

    let outputs = work.join("outputs");
    let text = |name: &str| read(&outputs.join(name));
    assert_eq!(text("mounted.txt"), "1\n", "the script saw a dataref mount");
    assert_is_the_training_set(&outputs.join("from-mount"), &set);
    assert_eq!(text("model.txt"), "weights\n");
    assert_eq!(
        text("single-dir.txt"),
        "model.pt\nother.txt\n",
        "a single-object mount is that file, beside its folder's other entries"
    );
    assert!(
        text("touch.err").contains("Read-only file system"),
        "{}",
        text("touch.err")
    );
    // The variable is root/<path_on_datastore>, the same as a download would use.
    let mountpoint = work.join("ds/train");
    assert_eq!(text("var.txt").trim(), mountpoint.to_str().unwrap());
    // The uploaded copy arrived too.
    assert_eq!(remote.get(&results, "results/model.txt"), b"weights\n");

    // The default disk cache lives in the job directory while the job runs, and goes with it.
    assert!(
        text("cache.txt").contains(".dataref-cache.lock"),
        "{}",
        text("cache.txt")
    );
    assert!(
        !work.join(".dataref/cache/data").exists(),
        "cache left behind"
    );
    let log = read(&work.join(".dataref/job.log"));
    assert!(log.contains("data: disk cache at"), "{log}");

    // Everything unmounted after the job.
    assert!(!is_mounted(&mountpoint));
    let leftover: Vec<String> = dataref_mounts("dataref:run.")
        .into_iter()
        .filter(|m| m.starts_with(dir.path().to_str().unwrap()))
        .collect();
    assert!(leftover.is_empty(), "mounts left behind: {leftover:?}");
    assert_eq!(result["references"]["data"]["status"], "done");
    assert_eq!(result["references"]["model"]["status"], "done");
    assert_eq!(result["end_reason"], "succeeded");
}

// A mount whose prefix matches nothing (`a/b` never matches a/b_v2.csv) stops the job with 66
// before the script; with `allow_empty` the script runs on an empty mounted folder.
fn a_mount_of_nothing_exits_66_unless_allowed(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote::start(backend, dir.path());
    let data = remote.container("nothing");
    remote.put(&data, &[("a/b_v2.csv", b"x".to_vec())]);
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let manifest = |allow_empty: bool| {
        json!({
            "datastores": {"ds": remote.datastore(&data, Auth::Key, false)},
            "data_references": {"inp": {"datastore": "ds", "path_on_datastore": "a/b",
                                        "allow_empty": allow_empty}},
            "command": sh(r#"ls -A "$AZUREML_DATAREFERENCE_inp" > listed.txt"#),
        })
    };
    let (out, result) = run_job(&remote, dir.path(), &work, &manifest(false));
    out.expect_code(66);
    assert!(!work.join("listed.txt").exists(), "the script ran");
    assert_eq!(result["references"]["inp"]["status"], "failed");

    let (out, result) = run_job(&remote, dir.path(), &work, &manifest(true));
    out.expect_code(0);
    assert_eq!(read(&work.join("listed.txt")), "");
    assert_eq!(result["references"]["inp"]["status"], "done");
}
