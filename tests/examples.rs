//! The quickstart example and the config sample, run on a copy (the repository stays clean).
//! The scheduler examples run in tests/slurm.rs and tests/kubernetes_example.rs.

mod common;

use std::path::Path;

use common::cli::run_in;

/// What running an example leaves in its directory (ignored by git); not copied, so a test
/// starts from the shipped state even after someone ran the example in the checkout.
const RUN_OUTPUTS: &[&str] = &[".dataref", "workspace", "outputs", "models"];

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if RUN_OUTPUTS.iter().any(|n| entry.file_name() == *n) {
            continue;
        }
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn quickstart_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let example = dir.path().join("quickstart");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart"),
        &example,
    );
    let config = dir.path().join("config");
    // Run from elsewhere: the manifest's paths resolve against its own directory.
    let out = run_in(dir.path(), &config, &["run", "quickstart/job.json"]);
    out.expect_code(0);
    assert!(
        out.stdout.contains("training on ") && out.stdout.contains("3 epochs"),
        "{}",
        out.stdout
    );

    // The input was downloaded where the variable pointed, and the model uploaded.
    let downloaded = example.join("workspace/iris/train.csv");
    assert_eq!(
        std::fs::read(&downloaded).unwrap(),
        std::fs::read(example.join("datastore/iris/train.csv")).unwrap()
    );
    let uploaded = example.join("datastore/models/quickstart");
    let metrics = std::fs::read_to_string(uploaded.join("metrics.json")).unwrap();
    let metrics: serde_json::Value = serde_json::from_str(&metrics).unwrap();
    assert!(metrics["accuracy"].as_f64().unwrap() > 0.9, "{metrics}");
    assert_eq!(metrics["test_rows"], 30);
    let model = std::fs::read_to_string(uploaded.join("model.csv")).unwrap();
    assert_eq!(model.lines().count(), 3, "{model}");

    let result: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(example.join(".dataref/result.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(result["end_reason"], "succeeded");
    assert_eq!(result["references"]["iris"]["files"], 2);
    assert_eq!(result["references"]["model"]["files"], 2);

    // Running it again works: overwrite=true replaces the model, the download keeps files.
    let again = run_in(dir.path(), &config, &["run", "quickstart/job.json"]);
    again.expect_code(0);
    let result: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(example.join(".dataref/result.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        result["references"]["iris"]["skipped"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(result["references"]["model"]["files"], 2);
}

/// The sample registry in config/ is what `datastore list` and `get` read.
#[test]
fn sample_registry_config_loads() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/datastores.example.json"),
        config.join("datastores.json"),
    )
    .unwrap();
    let out = common::cli::run(&config, &["datastore", "list"]);
    out.expect_code(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines,
        vec![
            "blobs\tazure_blob",
            "datasets\tlocal",
            "emulator\tazure_blob",
            "public\tazure_blob",
            "shared\tazure_file"
        ]
    );
    let get = common::cli::run(&config, &["datastore", "get", "datasets"]);
    get.expect_code(0);
    assert_eq!(get.json()["default"], true);
}
