//! What the Azure ML SDKs write is what dataref runs. The real SDKs (`azureml-core` +
//! `azureml-train-core` for v1, `azure-ai-ml` for v2; installed by `scripts/test` into
//! `.tools/azureml-sdk`) write the jobs offline; `dataref run` runs them against Azurite; the
//! Python Azure Storage SDK puts the inputs and reads the outputs back.

mod common;

use std::path::Path;
use std::process::Command;

use common::azurite;
use common::cli::{run_in, write_file};
use serde_json::{Value, json};

use common::azurite::sdk_python;

/// Runs `tests/azureml/sdk_jobs.py` with the SDKs' Python; its standard output.
fn sdk(args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/azureml/sdk_jobs.py");
    let out = Command::new(sdk_python())
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sdk_jobs.py {}: {}",
        args[0],
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn connection_string() -> String {
    format!(
        "DefaultEndpointsProtocol=http;AccountName={};AccountKey={};BlobEndpoint={};",
        azurite::ACCOUNT,
        azurite::KEY,
        azurite::shared().endpoint()
    )
}

fn put(container: &str, files: Value) {
    sdk(&["put", &connection_string(), container, &files.to_string()]);
}

fn put_public(container: &str, files: Value) {
    let files = files.to_string();
    sdk(&["put", &connection_string(), container, &files, "--public"]);
}

/// Every blob of `container`, name → text, read with the Python Storage SDK.
fn get(container: &str) -> Value {
    serde_json::from_str(&sdk(&["get", &connection_string(), container])).unwrap()
}

/// A training script that writes what it saw, as JSON, to the file given by `--out`.
const SEEN_SCRIPT: &str = r#"
import argparse, json, os, sys
def tree(d):
    found = {}
    for root, _, files in os.walk(d):
        for f in files:
            full = os.path.join(root, f)
            found[os.path.relpath(full, d)] = open(full).read()
    return found
p = argparse.ArgumentParser()
p.add_argument("--out", "--model_out", dest="out")
p.add_argument("--dirs", nargs="*", action="extend", default=[])
p.add_argument("--data_dir", "--bar_dir", dest="dirs", action="append")
p.add_argument("--files", nargs="*", default=[])
p.add_argument("--words", nargs="*", default=[])
a = p.parse_args()
seen = {"dirs": [tree(d) for d in a.dirs], "files": [open(f).read() for f in a.files],
        "words": a.words, "inputstore": tree(os.environ.get("AZUREML_DATAREFERENCE_inputstore", "/-")),
        "env": {k: v for k, v in os.environ.items()
                                  if k.startswith(("AZURE", "EXAMPLE", "EPOCHS"))}}
if os.path.isdir(a.out):
    a.out = os.path.join(a.out, "seen.json")
with open(a.out, "w") as f:
    json.dump(seen, f, sort_keys=True)
"#;

/// Registers `container` as the blob datastore `name` in `config`.
fn register(dir: &Path, config: &Path, name: &str, container: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let key = azurite::key_file(dir);
    azurite::register(config, name, container, &key, &azurite::shared().endpoint());
}

fn run_job(cwd: &Path, config: &Path, job: &Path) -> common::cli::Outcome {
    let job = job.to_str().unwrap();
    let outcome = run_in(cwd, config, &["run", "--no-progress", job]);
    assert_eq!(outcome.code, 0, "{}", outcome.all_output());
    outcome
}

// The how-to's v1 lines (`ds.as_mount()` and `ds.path('./bar').as_download()` in
// `script_params`, `ds1.as_download()` in `inputs`, `ds3.as_upload(path_on_compute='./bar.pkl')`),
// written by the real SDK in all three forms, each run by `dataref run` as it is.
#[test]
fn v1_jobs_written_by_the_sdk_run_in_each_serialised_form() {
    let dir = tempfile::tempdir().unwrap();
    let data = azurite::unique_container("v1data");
    let inputs = azurite::unique_container("v1in");
    put(
        &data,
        json!({"a.txt": "A", "bar/b1.txt": "B1", "bar/sub/b2.txt": "B2"}),
    );
    put(&inputs, json!({"in.txt": "IN"}));

    let generated = dir.path().join("generated");
    std::fs::create_dir_all(&generated).unwrap();
    write_file(&generated.join("train.py"), "", 0o644);
    let store = |container: &str| json!({"container": container, "account": azurite::ACCOUNT, "key": azurite::KEY});
    let stores = json!({"blobstore": store(&data), "barstore": store(&data),
                        "inputstore": store(&inputs), "outstore": store("unused")});
    sdk(&["v1", generated.to_str().unwrap(), &stores.to_string()]);
    let configuration: Value =
        serde_json::from_slice(&std::fs::read(generated.join("configuration.json")).unwrap())
            .unwrap();
    // The SDK names the path reference with uuid4().hex; dataref must take it as it is.
    let bar_name = configuration["dataReferences"]
        .as_object()
        .unwrap()
        .keys()
        .find(|k| k.len() == 32)
        .expect("a uuid-hex reference name")
        .clone();

    for form in ["configuration.json", "submit_body.json", "job.runconfig"] {
        let case = dir.path().join(form.replace('.', "_"));
        let config = case.join("config");
        let out = azurite::unique_container("v1out");
        put(&out, json!({}));
        for (name, container) in [
            ("blobstore", &data),
            ("barstore", &data),
            ("inputstore", &inputs),
            ("outstore", &out),
        ] {
            register(&case, &config, name, container);
        }
        let source = case.join("src");
        write_file(&source.join("train.py"), SEEN_SCRIPT, 0o644);
        let job = source.join(form);
        std::fs::copy(generated.join(form), &job).unwrap();
        let outcome = run_in(&case, &config, &["validate", job.to_str().unwrap()]);
        assert_eq!(outcome.code, 0, "{form}: {}", outcome.all_output());
        assert!(outcome.stdout.contains("Azure ML v1"), "{}", outcome.stdout);
        run_job(&case, &config, &job);

        // The upload: ./bar.pkl at the root of outstore, holding what the script saw.
        let stored = get(&out);
        let seen: Value = serde_json::from_str(stored["bar.pkl"].as_str().unwrap()).unwrap();
        assert_eq!(seen["env"]["EXAMPLE_ENV_VAR"], "EXAMPLE_VALUE", "{form}");
        let variable = format!("AZUREML_DATAREFERENCE_{bar_name}");
        assert!(seen["env"][&variable].is_string(), "{form}: {seen}");
        let everything = json!({"a.txt": "A", "bar/b1.txt": "B1", "bar/sub/b2.txt": "B2"});
        let bar = json!({"b1.txt": "B1", "sub/b2.txt": "B2"});
        assert_eq!(seen["dirs"], json!([everything, bar]), "{form}");
        assert_eq!(seen["inputstore"], json!({"in.txt": "IN"}), "{form}");
        let log = std::fs::read_to_string(source.join(".dataref/job.log")).unwrap();
        assert!(log.contains("ignored service-side sections"), "{log}");
        assert!(log.contains(&bar_name), "{form}: {log}");
    }
}

// v2 command jobs: one dumped by the SDK itself (`azureml:https://…`, booleans as 1), one
// written by hand as users write YAML; ro_mount, download, upload, literals, https and wasbs
// paths of registered containers, and an anonymous read of a public container.
#[test]
fn v2_command_jobs_run_with_inputs_literals_and_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let data = azurite::unique_container("v2data");
    let public = azurite::unique_container("v2pub");
    put(
        &data,
        json!({"mnist/train.csv": "T", "mnist/sub/x.csv": "X", "cfg/cfg.json": "{}"}),
    );
    put_public(&public, json!({"open/readme.txt": "PUBLIC"}));
    let endpoint = azurite::shared().endpoint();
    let https = format!("https://{}.blob.core.windows.net/{data}", azurite::ACCOUNT);

    // Written by the SDK.
    let sdk_case = dir.path().join("sdk");
    let out = azurite::unique_container("v2out");
    put(&out, json!({}));
    let config = sdk_case.join("config");
    register(&sdk_case, &config, "workspaceblobstore", &data);
    register(&sdk_case, &config, "outputs", &out);
    let source = sdk_case.join("src");
    write_file(&source.join("train.py"), SEEN_SCRIPT, 0o644);
    let python = sdk_python();
    let spec = json!({
        "command": format!("{} train.py --dirs ${{{{inputs.data}}}} --files ${{{{inputs.cfg}}}} \
                    --words ${{{{inputs.lr}}}} ${{{{inputs.flag}}}} --out ${{{{outputs.model}}}}",
            python.display()),
        "inputs": {
            "data": {"type": "uri_folder", "mode": "ro_mount",
                     "path": "azureml://datastores/workspaceblobstore/paths/mnist/"},
            "cfg": {"type": "uri_file", "mode": "download", "path": format!("{https}/cfg/cfg.json")},
            "lr": 0.01,
            "flag": true,
        },
        "outputs": {"model": {"type": "uri_folder", "mode": "upload",
                              "path": "azureml://datastores/outputs/paths/runs/1/model/"}},
        "environment_variables": {"EPOCHS": "3"},
    });
    sdk(&["v2", source.to_str().unwrap(), &spec.to_string()]);
    let dumped = std::fs::read_to_string(source.join("job.yml")).unwrap();
    assert!(dumped.contains("azureml:https://"), "{dumped}");
    run_job(&sdk_case, &config, &source.join("job.yml"));
    let stored = get(&out);
    let seen: Value =
        serde_json::from_str(stored["runs/1/model/seen.json"].as_str().unwrap()).unwrap();
    assert_eq!(seen["dirs"][0], json!({"train.csv": "T", "sub/x.csv": "X"}));
    assert_eq!(seen["files"], json!(["{}"]));
    assert_eq!(seen["words"], json!(["0.01", "1"]));
    assert_eq!(seen["env"]["EPOCHS"], "3");
    assert_eq!(seen["env"]["AZURE_ML_INPUT_lr"], "0.01");
    assert!(seen["env"]["AZURE_ML_OUTPUT_model"].is_string());

    // Written by hand: wasbs, a public container read anonymously, a uri_file output, a
    // literal string, and `python` found by the shell.
    let hand = dir.path().join("hand");
    let out = azurite::unique_container("v2hand");
    put(&out, json!({}));
    let config = hand.join("config");
    register(&hand, &config, "outputs", &out);
    register(&hand, &config, "data", &data);
    let code = hand.join("project/src");
    write_file(&code.join("train.py"), SEEN_SCRIPT, 0o644);
    let yaml = format!(
        "$schema: https://azuremlschemas.azureedge.net/latest/commandJob.schema.json
type: command
code: src
command: >-
  {python} train.py --dirs ${{{{inputs.data}}}} ${{{{inputs.open}}}}
  --words ${{{{inputs.name}}}} --out ${{{{outputs.metrics}}}}
  && echo 1 > ${{{{outputs.ckpt}}}}/step.txt
environment: azureml:AzureML-sklearn-1.0-ubuntu20.04-py38-cpu@latest
compute: azureml:cpu-cluster
inputs:
  data:
    type: uri_folder
    path: wasbs://{data}@{account}.blob.core.windows.net/mnist/sub
    mode: download
  open:
    type: uri_folder
    path: {endpoint}/{public}/open
  name: resnet
outputs:
  metrics:
    type: uri_file
    path: azureml://datastores/outputs/paths/runs/2/metrics.json
    mode: upload
  ckpt:
    type: uri_folder
    path: azureml://datastores/outputs/paths/runs/3/ckpt
",
        python = python.display(),
        account = azurite::ACCOUNT,
    );
    let job = hand.join("project/job.yml");
    write_file(&job, &yaml, 0o644);
    run_job(&hand, &config, &job);
    let stored = get(&out);
    let seen: Value =
        serde_json::from_str(stored["runs/2/metrics.json"].as_str().unwrap()).unwrap();
    assert_eq!(
        seen["dirs"],
        json!([{"x.csv": "X"}, {"readme.txt": "PUBLIC"}])
    );
    assert_eq!(seen["words"], json!(["resnet"]));
    // An output without a mode is rw_mount: uploaded while the script runs.
    assert_eq!(stored["runs/3/ckpt/step.txt"], "1\n");
    let log = std::fs::read_to_string(code.join(".dataref/job.log")).unwrap();
    assert!(
        log.contains("ckpt: uploading") && log.contains("continuously"),
        "{log}"
    );
}

// An https path to a container no datastore of the node holds is read anonymously; a private
// one then fails the job before its script, saying why and what to do.
#[test]
fn an_unregistered_private_container_fails_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let private = azurite::unique_container("v2private");
    put(&private, json!({"x.csv": "X"}));
    let endpoint = azurite::shared().endpoint();
    let yaml = format!(
        "command: echo ran > ran.txt\ninputs:\n  data:\n    type: uri_folder\n    \
         path: {endpoint}/{private}/\n    mode: download\n"
    );
    let job = dir.path().join("job.yml");
    write_file(&job, &yaml, 0o644);
    let config = dir.path().join("config");
    let outcome = run_in(
        dir.path(),
        &config,
        &["run", "--no-progress", job.to_str().unwrap()],
    );
    assert_ne!(outcome.code, 0, "{}", outcome.all_output());
    let output = outcome.all_output();
    assert!(output.contains("anonymously"), "{output}");
    assert!(output.contains("dataref datastore register"), "{output}");
    assert!(
        !dir.path().join("ran.txt").exists(),
        "the script must not run"
    );
}

/// `dataref validate` on a document: its exit code and all its output.
fn validate(dir: &Path, name: &str, text: &str) -> (i32, String) {
    let path = dir.join(name);
    write_file(&path, text, 0o644);
    let outcome = run_in(
        dir,
        &dir.join("config"),
        &["validate", path.to_str().unwrap()],
    );
    (outcome.code, outcome.all_output())
}

// Sections dataref cannot honour are refused naming the field (exit 65), never dropped.
#[test]
fn what_cannot_be_honoured_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    common::cli::register_local(&dir.path().join("config"), "ws", &store);
    let v1 = |extra: &str| format!("script: train.py\n{extra}\n");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "v1.runconfig",
            v1("data:\n  d: {dataLocation: {}}"),
            "data:",
        ),
        ("v1.runconfig", v1("outputData:\n  o: {}"), "outputData:"),
        ("v1.runconfig", v1("datacaches: [{}]"), "datacaches:"),
        ("v1.runconfig", v1("nodeCount: 4"), "nodeCount:"),
        ("v1.runconfig", v1("communicator: Mpi"), "communicator:"),
        ("v1.runconfig", v1("framework: PySpark"), "framework:"),
        ("v1.runconfig", "arguments: [a]\n".into(), "script:"),
        (
            "v1.json",
            json!({"Configuration": {"script": "t.py", "nodeCount": 2}}).to_string(),
            "Configuration.nodeCount:",
        ),
        (
            "v1.json",
            json!({"script": "t.py", "dataReferences": {"r": {
                "DataStoreName": "ws", "Mode": "mount", "ForceRead": "yes"}}})
            .to_string(),
            "dataReferences.r.ForceRead:",
        ),
        (
            "v2.yml",
            "command: x\ndistribution: {type: pytorch}\n".into(),
            "distribution:",
        ),
        (
            "v2.yml",
            "command: x\nresources: {instance_count: 2}\n".into(),
            "resources.instance_count:",
        ),
        ("v2.yml", "type: pipeline\ncommand: x\n".into(), "type:"),
        (
            "v2.yml",
            "command: x\ninputs:\n  d: {type: mltable, path: azureml://datastores/ws/paths/a}\n"
                .into(),
            "inputs.d.type:",
        ),
        (
            "v2.yml",
            "command: x\ninputs:\n  d: {path: azureml://datastores/ws/paths/a, mode: direct}\n"
                .into(),
            "inputs.d.mode:",
        ),
        (
            "v2.yml",
            "command: echo ${{inputs.nope}}\n".into(),
            "command:",
        ),
        (
            "v2.yml",
            "command: x\ninputs:\n  d: {path: azureml://datastores/nope/paths/a}\n".into(),
            "inputs.d.path:",
        ),
        (
            "v2.yml",
            "command: x\ninputs:\n  d: {path: 'azureml:mnist:1'}\n".into(),
            "inputs.d.path:",
        ),
    ];
    // rw_mount (an output's default) is accepted: uploaded while the script runs.
    let (code, output) = validate(
        dir.path(),
        "v2.yml",
        "command: x\noutputs:\n  o: {path: azureml://datastores/ws/paths/o}\n",
    );
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("sync       continuous"), "{output}");
    for (name, text, field) in cases {
        let before = common::cli::snapshot(dir.path());
        let (code, output) = validate(dir.path(), name, &text);
        assert_eq!(code, 65, "{text}\n{output}");
        assert!(
            common::cli::problem_lines(&output)
                .iter()
                .any(|l| l.trim_start().starts_with(field)),
            "{field} not named for\n{text}\n{output}"
        );
        let after = common::cli::snapshot(dir.path());
        let created: Vec<_> = after.keys().filter(|k| !before.contains_key(*k)).collect();
        assert!(created.iter().all(|p| p.ends_with(name)), "{created:?}");
    }
}

// A v1 document's absent fields written as nulls, the node runtime's `ForceRead`, and
// reference names that start with a digit are accepted in dataref's own manifest too.
#[test]
fn azure_ml_spellings_are_accepted_in_the_own_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    common::cli::register_local(&dir.path().join("config"), "ws", &store);
    let manifest = json!({
        "command": ["true"],
        "dataReferences": {
            "0a1b2c3d4e5f60718293a4b5c6d7e8f9": {"DataStoreName": "ws", "Mode": "Download",
                "PathOnDataStore": null, "PathOnCompute": "dl", "ForceRead": true},
            "m": {"dataStoreName": "ws", "pathOnDataStore": null, "mode": "mount",
                  "pathOnCompute": "mnt", "overwrite": false},
        }
    });
    let (code, output) = validate(dir.path(), "job.json", &manifest.to_string());
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("AZUREML_DATAREFERENCE_0a1b2c3d4e5f60718293a4b5c6d7e8f9"),
        "{output}"
    );
}
