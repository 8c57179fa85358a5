//! `dataref run JOB.json` end to end: the real binary, a `local` datastore, `sh` scripts: exit
//! codes and end reasons, upload policies, the child's environment, layouts, result.json and
//! job.log. Signals and process handling are in run_job_signals.rs; what every backend must
//! do, in backend_matrix.rs.

mod common;

use common::cli::sh;
use common::fs::{read, tree, write};
use common::job::{Job, download_ref, upload_ref};
use common::tmpfs::{BindMount, Tmpfs};

use std::fs;
use std::path::Path;

use serde_json::{Value, json};
// 5a. The script's own exit code is passed through; `always` uploads after a failure.
#[test]
fn script_failure_passes_its_code_and_uploads_by_default() {
    let job = Job::new();
    let manifest = job.manifest(json!({
        "data_references": {"out": upload_ref("results", "outputs")},
        "command": sh("mkdir -p outputs; echo partial > outputs/o.txt; exit 3"),
    }));
    let code = job.run(&manifest);
    job.expect_code(code, 3);
    assert_eq!(read(&job.store.join("results/o.txt")), "partial\n");
    let result = job.result();
    assert_eq!(result["end_reason"], "script_failed");
    assert_eq!(result["exit_code"], 3);
    assert_eq!(result["child"]["exit_code"], 3);
    assert_eq!(result["references"]["out"]["status"], "done");
}

// 5b. `on_success` uploads nothing when the script failed on its own.
#[test]
fn on_success_policy_skips_upload_after_failure() {
    let job = Job::new();
    let manifest = job.manifest(json!({
        "data_references": {"out": upload_ref("results", "outputs")},
        "upload_policy": "on_success",
        "command": sh("mkdir -p outputs; echo partial > outputs/o.txt; exit 3"),
    }));
    let code = job.run(&manifest);
    job.expect_code(code, 3);
    assert!(job.work.join("outputs/o.txt").exists());
    assert_eq!(tree(&job.store), Vec::<String>::new(), "nothing uploaded");
    let result = job.result();
    assert_eq!(result["references"]["out"]["status"], "skipped_by_policy");
    assert_eq!(result["references"]["out"]["files"], 0);
    assert_eq!(result["end_reason"], "script_failed");
}

// 5c. The script succeeded but stage-out failed: 75.
#[test]
fn stage_out_failure_after_success_exits_75() {
    let job = Job::new();
    // A file where the upload needs a directory: results/o.txt cannot be created.
    job.put("results", "in the way\n");
    let manifest = job.manifest(json!({
        "data_references": {"out": upload_ref("results", "outputs")},
        "command": sh("mkdir -p outputs; echo x > outputs/o.txt"),
    }));
    let code = job.run(&manifest);
    job.expect_code(code, 75);
    assert_eq!(read(&job.store.join("results")), "in the way\n");
    let result = job.result();
    assert_eq!(result["end_reason"], "stage_out_failed", "{result:#}");
    assert_eq!(result["exit_code"], 75);
    assert_eq!(result["child"]["exit_code"], 0);
    assert_eq!(result["references"]["out"]["status"], "failed");
    assert!(
        !result["references"]["out"]["errors"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

// 5c''. A download that fails on the local side (a file where the target directory must go):
// 74, the script never starts.
#[test]
fn local_io_failure_during_download_exits_74() {
    let job = Job::new();
    job.put("in/a.txt", "a");
    write(
        &job.work.join("ds"),
        "a file where <working_dir>/ds must be a directory\n",
    );
    let manifest = job.manifest(json!({
        "data_references": {"inp": download_ref("in")},
        "command": sh("touch script-started"),
    }));
    job.run_failing_input(&manifest, 74, "inp");
}

// 5d. An input prefix that matches nothing: 66, the script never starts.
#[test]
fn missing_input_exits_66_without_running_the_script() {
    let job = Job::new();
    job.put("other/file.txt", "x");
    let manifest = job.manifest(json!({
        "data_references": {"inp": download_ref("nothing/here")},
        "command": sh("touch script-started"),
    }));
    let result = job.run_failing_input(&manifest, 66, "inp");
    assert_eq!(result["exit_code"], 66);
    assert_eq!(result["child"], Value::Null);
}

// 5e. The same with `allow_empty`: the script runs and finds an empty directory.
#[test]
fn allow_empty_input_runs_the_script() {
    let job = Job::new();
    job.put("other/file.txt", "x");
    let mut reference = download_ref("nothing/here");
    reference["allow_empty"] = json!(true);
    let manifest = job.manifest(json!({
        "data_references": {"inp": reference},
        "command": sh("test -d \"$AZUREML_DATAREFERENCE_inp\" && touch script-started"),
    }));
    let code = job.run(&manifest);
    job.expect_code(code, 0);
    assert!(job.work.join("script-started").exists());
    assert_eq!(
        tree(&job.work.join("ds/nothing/here")),
        Vec::<String>::new()
    );
    let result = job.result();
    assert_eq!(result["end_reason"], "succeeded");
    assert_eq!(result["references"]["inp"]["status"], "done");
}

// 5f. `verify`: the job's setting, and a reference's own. Files of a local datastore carry no
// MD5, so a reference that requires one fails before the script; `result.json` says how each
// file was checked.
#[test]
fn verify_is_the_jobs_unless_a_reference_sets_its_own() {
    let job = Job::new();
    job.put("data/a.txt", "a");
    let mut strict = download_ref("data");
    strict["verify"] = json!("md5");
    strict["path_on_compute"] = json!("strict");
    let manifest = job.manifest(json!({
        "data_references": {"lax": download_ref("data"), "strict": strict},
        "command": sh("touch script-started"),
    }));
    let result = job.run_failing_input(&manifest, 69, "strict");
    let strict = &result["references"]["strict"];
    assert!(
        strict["errors"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("data/a.txt") && e.contains("no Content-MD5")),
        "{result:#}"
    );

    let mut lax = download_ref("data");
    lax["path_on_compute"] = json!("unchecked");
    let manifest = job.manifest(json!({
        "data_references": {"lax": lax},
        "command": sh("touch script-started"),
        "verify": "off",
    }));
    let code = job.run(&manifest);
    job.expect_code(code, 0);
    let result = job.result();
    assert_eq!(
        result["references"]["lax"]["verified"],
        json!({"crc64": 0, "md5": 0, "unverified": 1}),
        "{result:#}"
    );
}

// 6. The child's environment and argument substitution.
#[test]
fn child_environment_and_argument_substitution() {
    let job = Job::new();
    job.put("train/a.txt", "a");
    job.put("train_v2/b.txt", "b");
    let manifest = job.manifest(json!({
        "data_references": {
            "train": download_ref("train"),
            "train_v2": download_ref("train_v2"),
            "out": upload_ref("results", "outputs"),
        },
        "environment": {"FROM_MANIFEST": "manifest value", "NOTIFY_SOCKET": "/from/manifest"},
        "command": ["sh", "-c", "env > env.txt; printf '%s\\n' \"$@\" > args.txt", "sh",
                    "$AZUREML_DATAREFERENCE_train",
                    "$AZUREML_DATAREFERENCE_train_v2",
                    "${AZUREML_DATAREFERENCE_train}_v2",
                    "--out=${AZURE_ML_OUTPUT_out}/x",
                    "$FROM_MANIFEST",
                    "$SURELY_UNKNOWN_VARIABLE_X/y",
                    "${SURELY_UNKNOWN_VARIABLE_X}"],
    }));
    let mut command = job.command(&manifest);
    command
        .env("NOTIFY_SOCKET", "/tmp/x")
        .env("WATCHDOG_USEC", "1000")
        .env("WATCHDOG_PID", "1")
        .env("DATAREF_TEST_INHERITED", "inherited")
        // dataref turns library backtraces off for itself only.
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LIB_BACKTRACE");
    let mut child = command.spawn().unwrap();
    let code = job.code(&mut child);
    job.expect_code(code, 0);

    let env_text = read(&job.work.join("env.txt"));
    let env: std::collections::BTreeMap<&str, &str> = env_text
        .lines()
        .filter_map(|line| line.split_once('='))
        .collect();
    for withheld in [
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "RUST_LIB_BACKTRACE",
        "DATAREF_SET_RUST_LIB_BACKTRACE",
    ] {
        assert!(
            !env.contains_key(withheld),
            "{withheld} reached the child:\n{env_text}"
        );
    }
    assert_eq!(env.get("RUST_BACKTRACE"), Some(&"1"));
    let work = job.work.display().to_string();
    let train = format!("{work}/ds/train");
    let train_v2 = format!("{work}/ds/train_v2");
    let outputs = format!("{work}/outputs");
    let expected = [
        ("AZUREML_DATAREFERENCE_train", train.as_str()),
        ("AZURE_ML_INPUT_train", &train),
        ("AZUREML_DATAREFERENCE_train_v2", &train_v2),
        ("AZURE_ML_INPUT_train_v2", &train_v2),
        ("AZUREML_DATAREFERENCE_out", &outputs),
        ("AZURE_ML_OUTPUT_out", &outputs),
        ("FROM_MANIFEST", "manifest value"),
        ("DATAREF_TEST_INHERITED", "inherited"),
    ];
    for (name, value) in expected {
        assert_eq!(env.get(name), Some(&value), "{name} in:\n{env_text}");
    }
    assert!(!env.contains_key("AZURE_ML_OUTPUT_train"));
    assert!(!env.contains_key("AZURE_ML_INPUT_out"));
    assert!(Path::new(&train).is_absolute());

    let args = read(&job.work.join("args.txt"));
    let args: Vec<&str> = args.lines().collect();
    assert_eq!(
        args,
        [
            train.clone(),
            train_v2.clone(),
            format!("{train}_v2"),
            format!("--out={outputs}/x"),
            "manifest value".into(),
            "$SURELY_UNKNOWN_VARIABLE_X/y".into(),
            "${SURELY_UNKNOWN_VARIABLE_X}".into(),
        ]
    );
}

// 8b. Uploading the working directory itself never uploads the job directory.
#[test]
fn uploading_the_working_dir_leaves_out_the_job_dir() {
    let job = Job::new();
    let manifest = job.manifest(json!({
        "data_references": {"all": upload_ref("snapshot", ".")},
        "command": sh("mkdir -p sub; echo f > sub/f.txt; echo g > g.txt"),
    }));
    let code = job.run(&manifest);
    job.expect_code(code, 0);
    // The job directory exists locally (result.json, job.log) but was not uploaded.
    assert!(job.job_dir().join("job.log").exists());
    assert_eq!(
        tree(&job.store.join("snapshot")),
        ["g.txt", "job.json", "sub/", "sub/f.txt"],
        "{}",
        job.describe()
    );
    assert_eq!(job.result()["references"]["all"]["files"], 3);
}

// 9. result.json and job.log contents.
#[test]
fn result_json_and_job_log_record_the_job() {
    let job = Job::new();
    job.put("in/x.bin", "12345");
    job.put("in/y.bin", "678");
    let manifest = job.manifest(json!({
        "data_references": {
            "inp": download_ref("in"),
            "out": upload_ref("results", "outputs"),
        },
        "command": sh("echo hello-from-stdout
             echo hello-from-stderr >&2
             mkdir -p outputs; printf abcd > outputs/o.txt"),
    }));
    let code = job.run(&manifest);
    job.expect_code(code, 0);

    let result = job.result();
    assert_eq!(result["version"], 1, "{result:#}");
    assert_eq!(result["end_reason"], "succeeded");
    assert_eq!(result["exit_code"], 0);
    assert_eq!(result["child"]["exit_code"], 0);
    assert_eq!(result["child"]["signal"], Value::Null);
    assert!(result["child"]["pid"].as_u64().unwrap() > 0);
    assert!(result["finished_at"].as_f64().unwrap() >= result["started_at"].as_f64().unwrap());
    let inp = &result["references"]["inp"];
    assert_eq!(inp["mode"], "download");
    assert_eq!(inp["status"], "done");
    assert_eq!(inp["files"], 2);
    assert_eq!(inp["bytes"], 8);
    assert_eq!(inp["errors"], json!([]));
    assert!(inp["duration_seconds"].is_number());
    let out = &result["references"]["out"];
    assert_eq!(out["mode"], "upload");
    assert_eq!(out["status"], "done");
    assert_eq!(out["files"], 1);
    assert_eq!(out["bytes"], 4);

    let log = job.log();
    let lines: Vec<&str> = log.lines().collect();
    for expected in ["hello-from-stdout", "hello-from-stderr"] {
        assert!(
            lines.contains(&expected),
            "{expected} not in job.log:\n{log}"
        );
    }
    for dataref_line in [
        "dataref: inp: downloading",
        "dataref: started sh -c",
        "dataref: script exited with code 0",
        "dataref: out: uploading",
        "dataref: out: uploaded 1 file",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(dataref_line)),
            "{dataref_line:?} not in job.log:\n{log}"
        );
    }
    // The script's output also reaches dataref's own stdout/stderr.
    assert!(read(&job.root.join("dataref.out")).contains("hello-from-stdout"));
    assert!(read(&job.root.join("dataref.err")).contains("hello-from-stderr"));
}

// 10. A second run in the same job directory replaces result.json and job.log.
#[test]
fn rerun_replaces_result_and_log() {
    let job = Job::new();
    let manifest = job.manifest(json!({"command": sh("echo first-run-output")}));
    let code = job.run(&manifest);
    job.expect_code(code, 0);
    assert!(job.log().contains("first-run-output"));
    let first = job.result();
    assert_eq!(first["exit_code"], 0);

    let manifest = job.manifest(json!({"command": sh("echo second-run-output; exit 4")}));
    let code = job.run(&manifest);
    job.expect_code(code, 4);
    let log = job.log();
    assert!(log.contains("second-run-output"), "{log}");
    assert!(!log.contains("first-run-output"), "old log kept:\n{log}");
    let second = job.result();
    assert_eq!(second["exit_code"], 4);
    assert_eq!(second["end_reason"], "script_failed");
    assert_ne!(second["child"]["pid"], first["child"]["pid"]);
    assert_eq!(
        tree(&job.job_dir()),
        ["job.log", "live.json", "result.json"],
        "stray files in the job directory"
    );
}

// 11. An upload journal that cannot be opened costs only resumability, not the outputs.
#[test]
fn an_unusable_upload_journal_does_not_stop_the_upload() {
    let job = Job::new();
    fs::create_dir_all(job.job_dir().join("uploads.journal")).unwrap();
    let manifest = job.manifest(json!({
        "data_references": {"model": upload_ref("models/v1", "model.bin")},
        "command": sh("echo weights > model.bin"),
    }));
    let code = job.run(&manifest);
    job.expect_code(code, 0);
    assert_eq!(read(&job.store.join("models/v1/model.bin")), "weights\n");
    let log = read(&job.job_dir().join("job.log"));
    assert!(
        log.contains("uploads.journal") && log.contains("cannot be resumed"),
        "{log}"
    );
}

// 11b. A journal that cannot be written (its disk is full) costs only resumability too: a
// multi-part output (three 8 MiB parts, so the upload journals) is uploaded whole and the job
// exits 0; the log says once that the journal stopped.
#[test]
fn an_unwritable_upload_journal_does_not_stop_a_multi_part_upload() {
    let job = Job::new();
    // The journal's file lives on a full tmpfs, bind-mounted where dataref keeps it; the rest
    // of the job directory has room (job.log, result.json).
    let full = Tmpfs::mount(&job.root.join("full"), "1m");
    let on_full_disk = full.path().join("journal");
    fs::write(&on_full_disk, "").unwrap();
    full.fill();
    fs::create_dir_all(job.job_dir()).unwrap();
    let journal = job.job_dir().join("uploads.journal");
    fs::write(&journal, "").unwrap();
    let _bound = BindMount::new(&on_full_disk, &journal);
    let manifest = job.manifest(json!({
        "data_references": {"model": upload_ref("models/v1", "model.bin")},
        "command": sh("head -c 20000000 /dev/urandom > model.bin"),
    }));
    let code = job.run(&manifest);
    job.expect_code(code, 0);
    assert!(
        fs::read(job.store.join("models/v1/model.bin")).unwrap()
            == fs::read(job.work.join("model.bin")).unwrap(),
        "the uploaded object differs from the output"
    );
    let log = job.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("uploads.journal") && l.contains("stopped"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].contains("No space left on device")
            && warnings[0].contains("cannot be resumed"),
        "{log}"
    );
    assert_eq!(fs::read(&journal).unwrap(), b"", "nothing half-written");
}
