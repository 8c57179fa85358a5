//! `dataref validate` through the real binary (SPEC §2, §3, §5, §6): every invalid manifest is
//! refused with exit 65, every problem named by its JSON path, and nothing created on disk;
//! valid manifests resolve to the plan SPEC §3 describes.

mod common;

use std::path::{Path, PathBuf};

use common::cli::{
    Outcome, command, mkdir, output, problem_lines, run, run_in, snapshot, write_file,
    write_manifest,
};
use serde_json::{Value, json};

/// An environment variable no test sets: `{"env": ...}` secrets naming it are "unset".
const UNSET_VAR: &str = "DATAREF_TEST_SURELY_UNSET_SAS";
/// A variable the positive tests set, holding a recognisable secret value.
const SET_VAR: &str = "DATAREF_TEST_SAS_TOKEN";
const SET_VAR_VALUE: &str = "sv=2024&sig=ENV-SECRET-VALUE-42";

// ---------------------------------------------------------------------------------------------
// Invalid manifests
// ---------------------------------------------------------------------------------------------

/// One invalid manifest and what `validate` must say about it.
struct Case {
    name: &'static str,
    /// The manifest text (raw, so that broken JSON can be written too).
    manifest: String,
    /// Creates the files the manifest needs, inside the job directory.
    setup: fn(&Path),
    /// The JSON path (or, for documents that are not objects, the phrase) stderr must mention.
    field: &'static str,
    /// Another substring stderr must contain.
    also: Option<&'static str>,
    /// A substring that must appear nowhere in the output (a secret).
    absent: Option<&'static str>,
    /// How many problems the manifest has (the header's count and the number of lines).
    problems: usize,
}

fn case(
    name: &'static str,
    manifest: Value,
    field: &'static str,
    also: Option<&'static str>,
) -> Case {
    Case {
        name,
        manifest: serde_json::to_string_pretty(&manifest).unwrap(),
        setup: datastore_root,
        field,
        also,
        absent: None,
        problems: 1,
    }
}

impl Case {
    fn setup(mut self, setup: fn(&Path)) -> Self {
        self.setup = setup;
        self
    }
    fn absent(mut self, text: &'static str) -> Self {
        self.absent = Some(text);
        self
    }
    fn problems(mut self, n: usize) -> Self {
        self.problems = n;
        self
    }
}

/// The directory behind the inline local datastore `store` of most cases.
fn datastore_root(dir: &Path) {
    mkdir(&dir.join("datastore_root"));
}

fn key_file(dir: &Path, mode: u32) {
    datastore_root(dir);
    write_file(&dir.join("keys/blob.key"), "S0VZLVNFQ1JFVC0xMjM=\n", mode);
}

fn safe_key(dir: &Path) {
    key_file(dir, 0o600);
}

fn group_readable_key(dir: &Path) {
    key_file(dir, 0o640);
}

fn empty_key(dir: &Path) {
    datastore_root(dir);
    write_file(&dir.join("keys/blob.key"), "\n", 0o600);
}

fn store_named_dir(dir: &Path) {
    mkdir(&dir.join("store/train"));
}

fn nothing(_: &Path) {}

/// The inline local datastore most cases use; its root is outside `<working_dir>/store/`.
fn store() -> Value {
    json!({"store": {"kind": "local", "root": "./datastore_root"}})
}

/// A valid inline Azure Blob datastore with a key file (created by `safe_key`).
fn blob() -> Value {
    json!({"kind": "azure_blob", "account_name": "devstoreaccount1", "container_name": "data",
           "endpoint": "http://127.0.0.1:10000/devstoreaccount1",
           "account_key": {"file": "keys/blob.key"}})
}

/// A manifest using `datastores` (object), with one reference `train` to `blob`.
fn with_blob(blob: Value) -> Value {
    json!({"datastores": {"blob": blob},
           "data_references": {"train": {"datastore": "blob", "path_on_datastore": "train"}},
           "command": ["true"]})
}

/// A manifest with the `store` datastore, `references` and `extra` top-level fields.
fn with_refs(references: Value, extra: Value) -> Value {
    let mut manifest = json!({"datastores": store(), "data_references": references,
                              "command": ["python3", "train.py"]});
    for (k, v) in extra.as_object().unwrap() {
        manifest[k] = v.clone();
    }
    manifest
}

/// A valid manifest plus the top-level fields in `extra` (which may replace any).
fn base(extra: Value) -> Value {
    with_refs(
        json!({"train": {"datastore": "store", "path_on_datastore": "train",
                          "mode": "download"}}),
        extra,
    )
}

fn blob_with(field: &str, value: Value) -> Value {
    let mut b = blob();
    b[field] = value;
    with_blob(b)
}

fn blob_without(field: &str) -> Value {
    let mut b = blob();
    b.as_object_mut().unwrap().remove(field);
    with_blob(b)
}

fn cases() -> Vec<Case> {
    let raw = |name, text: &str, field, also| Case {
        manifest: text.to_owned(),
        setup: nothing,
        ..case(name, Value::Null, field, also)
    };
    let train = |entry: Value| with_refs(json!({ "train": entry }), json!({}));
    vec![
        // The document itself.
        raw(
            "invalid_json",
            r#"{"command": ["true"],"#,
            "invalid JSON",
            Some("line"),
        ),
        raw(
            "top_level_not_an_object",
            r#"["python3", "train.py"]"#,
            "expected an object, got an array",
            None,
        ),
        // Top-level fields.
        case(
            "unknown_top_level_field_with_hint",
            base(json!({"comand": ["python3"]})),
            "comand",
            Some(r#"did you mean "command""#),
        ),
        case(
            "unknown_top_level_field_without_hint",
            base(json!({"zzqqxx": 1})),
            "zzqqxx",
            Some("expected one of"),
        ),
        case(
            "azure_ml_run_configuration_field_is_not_ours",
            base(json!({"target": "gpu-cluster"})),
            "target",
            Some("unknown field"),
        ),
        {
            let mut m = base(json!({}));
            m.as_object_mut().unwrap().remove("command");
            case(
                "missing_command",
                m,
                "command",
                Some("required field is missing"),
            )
        },
        case(
            "command_not_an_array",
            base(json!({"command": "python3 train.py"})),
            "command",
            Some("got a string"),
        ),
        case(
            "command_empty",
            base(json!({"command": []})),
            "command",
            Some("non-empty array"),
        ),
        case(
            "command_with_a_non_string",
            base(json!({"command": ["python3", 5]})),
            "command[1]",
            Some("got 5"),
        ),
        case(
            "working_dir_missing",
            base(json!({"working_dir": "./no/such/dir"})),
            "working_dir",
            Some("not an existing directory"),
        ),
        case(
            "working_dir_not_a_string",
            base(json!({"working_dir": 5})),
            "working_dir",
            Some("expected a string"),
        ),
        case(
            "bad_upload_policy",
            base(json!({"upload_policy": "on_failure"})),
            "upload_policy",
            Some("\"on_failure\""),
        ),
        case(
            "grace_period_negative",
            base(json!({"grace_period_seconds": -5})),
            "grace_period_seconds",
            Some("-5"),
        ),
        case(
            "grace_period_string",
            base(json!({"grace_period_seconds": "30"})),
            "grace_period_seconds",
            Some("non-negative integer"),
        ),
        case(
            "memory_budget_too_small",
            base(json!({"memory_budget_bytes": 1024})),
            "memory_budget_bytes",
            Some("at least"),
        ),
        // environment
        case(
            "environment_not_an_object",
            base(json!({"environment": ["A=B"]})),
            "environment",
            Some("expected an object"),
        ),
        case(
            "environment_value_not_a_string",
            base(json!({"environment": {"OMP_NUM_THREADS": 4}})),
            "environment.OMP_NUM_THREADS",
            Some("expected a string"),
        ),
        case(
            "environment_sets_the_reference_variable",
            base(json!({"environment": {"AZUREML_DATAREFERENCE_train": "/elsewhere"}})),
            "environment.AZUREML_DATAREFERENCE_train",
            Some("set by dataref"),
        ),
        case(
            "environment_sets_the_output_variable",
            with_refs(
                json!({"out": {"datastore": "store", "mode": "upload",
                                "path_on_compute": "outputs"}}),
                json!({"environment": {"AZURE_ML_OUTPUT_out": "/elsewhere"}}),
            ),
            "environment.AZURE_ML_OUTPUT_out",
            Some("set by dataref"),
        ),
        case(
            "invalid_dataset_mount_cache_size",
            base(json!({"environment": {"DATASET_MOUNT_CACHE_SIZE": "lots"}})),
            "environment.DATASET_MOUNT_CACHE_SIZE",
            Some("not a size"),
        ),
        case(
            "invalid_dataset_mount_attribute_cache_ttl",
            base(json!({"environment": {"DATASET_MOUNT_ATTRIBUTE_CACHE_TTL": "1m"}})),
            "environment.DATASET_MOUNT_ATTRIBUTE_CACHE_TTL",
            Some("milliseconds"),
        ),
        // mount
        case(
            "unknown_field_in_mount",
            base(json!({"mount": {"cache_sise_bytes": 1048576}})),
            "mount.cache_sise_bytes",
            Some(r#"did you mean "cache_size_bytes""#),
        ),
        case(
            "mount_size_of_wrong_type",
            base(json!({"mount": {"reserved_free_disk_bytes": "150MB"}})),
            "mount.reserved_free_disk_bytes",
            Some("non-negative integer"),
        ),
        // data_references as a whole
        case(
            "data_references_not_an_object",
            base(json!({"data_references": ["train"]})),
            "data_references",
            Some("expected an object, got an array"),
        ),
        case(
            "both_data_references_and_dataReferences",
            base(json!({"dataReferences": {"other": {"dataStoreName": "store"}}})),
            "dataReferences",
            Some("not both"),
        ),
        // One reference.
        case(
            "reference_not_an_object",
            train(json!("store/train")),
            "data_references.train",
            Some("expected an object, got a string"),
        ),
        case(
            "reference_name_starts_with_a_digit",
            with_refs(json!({"9x": {"datastore": "store"}}), json!({})),
            "data_references.9x",
            Some("^[A-Za-z_][A-Za-z0-9_]*$"),
        ),
        case(
            "reference_name_with_a_dash",
            with_refs(json!({"a-b": {"datastore": "store"}}), json!({})),
            "data_references.a-b",
            Some("not a valid reference name"),
        ),
        case(
            "unknown_field_in_reference_with_hint",
            train(json!({"datastore": "store", "path_on_datastor": "train"})),
            "data_references.train.path_on_datastor",
            Some(r#"did you mean "path_on_datastore""#),
        ),
        case(
            "mixed_snake_and_camel_spellings",
            train(json!({"datastore": "store", "pathOnDataStore": "train"})),
            "data_references.train",
            Some("mixes field spellings"),
        )
        .problems(2),
        case(
            "unknown_datastore_with_hint",
            train(json!({"datastore": "stor", "path_on_datastore": "train"})),
            "data_references.train.datastore",
            Some(r#"did you mean "store""#),
        ),
        {
            let mut m = train(json!({"path_on_datastore": "train"}));
            m.as_object_mut().unwrap().remove("datastores");
            case(
                "no_datastore_and_no_registry_default",
                m,
                "data_references.train.datastore",
                Some("no default"),
            )
            .setup(nothing)
        },
        case(
            "bad_mode",
            train(json!({"datastore": "store", "mode": "copy"})),
            "data_references.train.mode",
            Some("\"copy\""),
        ),
        case(
            "mode_of_wrong_type",
            train(json!({"datastore": "store", "mode": true})),
            "data_references.train.mode",
            Some("got a boolean"),
        ),
        case(
            "bad_mode_in_pascal_case",
            json!({"datastores": store(), "command": ["true"],
                   "dataReferences": {"train": {"DataStoreName": "store", "Mode": "Stream"}}}),
            "dataReferences.train.Mode",
            Some("\"Stream\""),
        ),
        case(
            "dotdot_in_path_on_datastore",
            train(json!({"datastore": "store", "path_on_datastore": "train/../../etc"})),
            "data_references.train.path_on_datastore",
            Some(".."),
        ),
        case(
            "dotdot_in_camel_case_path",
            json!({"datastores": store(), "command": ["true"],
                   "dataReferences": {"train": {"dataStoreName": "store",
                                                "pathOnDataStore": "../secrets"}}}),
            "dataReferences.train.pathOnDataStore",
            Some(".."),
        ),
        case(
            "path_on_datastore_of_wrong_type",
            train(json!({"datastore": "store", "path_on_datastore": ["a", "b"]})),
            "data_references.train.path_on_datastore",
            Some("expected a string"),
        ),
        case(
            "overwrite_as_string",
            train(json!({"datastore": "store", "mode": "download", "overwrite": "yes"})),
            "data_references.train.overwrite",
            Some("true or false"),
        ),
        case(
            "upload_without_path_on_compute",
            with_refs(
                json!({"out": {"datastore": "store", "mode": "upload",
                               "path_on_datastore": "models"}}),
                json!({}),
            ),
            "data_references.out.path_on_compute",
            Some("required"),
        ),
        case(
            "upload_with_empty_path_on_compute",
            with_refs(
                json!({"out": {"datastore": "store", "mode": "upload", "path_on_compute": ""}}),
                json!({}),
            ),
            "data_references.out.path_on_compute",
            Some("required"),
        ),
        // Between references.
        case(
            "two_references_with_the_same_local_path",
            with_refs(
                json!({"a": {"datastore": "store", "mode": "download",
                             "path_on_datastore": "x", "path_on_compute": "inputs"},
                       "b": {"datastore": "store", "mode": "mount",
                             "path_on_datastore": "x", "path_on_compute": "inputs"}}),
                json!({}),
            ),
            "data_references.b.path_on_compute",
            Some("is the same as"),
        ),
        case(
            "nested_local_paths",
            with_refs(
                json!({"all": {"datastore": "store", "path_on_datastore": "train"},
                       "images": {"datastore": "store", "mode": "download",
                                  "path_on_datastore": "train/images"}}),
                json!({}),
            ),
            "data_references.images.path_on_datastore",
            Some("is inside"),
        ),
        case(
            "upload_source_contains_an_input",
            with_refs(
                json!({"train": {"datastore": "store", "path_on_datastore": "train"},
                       "out": {"datastore": "store", "mode": "upload",
                               "path_on_compute": "store"}}),
                json!({}),
            ),
            "data_references.out.path_on_compute",
            Some("contains"),
        ),
        case(
            "local_datastore_overlapping_its_reference",
            json!({"datastores": {"store": {"kind": "local", "root": "./store"}},
                   "data_references": {"train": {"datastore": "store", "mode": "download",
                                                 "path_on_datastore": "train"}},
                   "command": ["true"]}),
            "data_references.train.path_on_datastore",
            Some("overlaps"),
        )
        .setup(store_named_dir),
        // Datastores.
        case(
            "unknown_datastore_kind",
            json!({"datastores": {"store": {"kind": "azure_blobs", "root": "."}},
                   "data_references": {"train": {"datastore": "store"}},
                   "command": ["true"]}),
            "datastores.store.kind",
            Some(r#"did you mean "azure_blob""#),
        ),
        case(
            "datastore_without_kind",
            json!({"datastores": {"store": {"root": "./datastore_root"}},
                   "data_references": {"train": {"datastore": "store"}},
                   "command": ["true"]}),
            "datastores.store.kind",
            Some("required"),
        ),
        case(
            "invalid_datastore_name",
            json!({"datastores": {"my-store": {"kind": "local", "root": "./datastore_root"}},
                   "command": ["true"]}),
            "datastores.my-store",
            Some("not a valid datastore name"),
        ),
        case(
            "local_datastore_root_missing",
            json!({"datastores": {"store": {"kind": "local", "root": "./no_such_root"}},
                   "data_references": {"train": {"datastore": "store"}},
                   "command": ["true"]}),
            "datastores.store.root",
            Some("not an existing directory"),
        ),
        case(
            "unknown_field_in_datastore",
            blob_with("acount_key", json!({"file": "keys/blob.key"})),
            "datastores.blob.acount_key",
            Some(r#"did you mean "account_key""#),
        )
        .setup(safe_key),
        case(
            "azure_blob_without_credential",
            blob_without("account_key"),
            "datastores.blob",
            Some("no credential"),
        ),
        case(
            "azure_blob_with_two_credentials",
            blob_with("sas_token", json!({"env": "SOME_SAS"})),
            "datastores.blob",
            Some("more than one credential"),
        )
        .setup(safe_key),
        case(
            "inline_literal_secret",
            blob_with("account_key", json!("c2VjcmV0LWtleS12YWx1ZQ==")),
            "datastores.blob.account_key",
            Some("never written inline"),
        )
        .absent("c2VjcmV0LWtleS12YWx1ZQ"),
        case(
            "secret_reference_with_file_and_env",
            blob_with(
                "account_key",
                json!({"file": "keys/blob.key", "env": "KEY"}),
            ),
            "datastores.blob.account_key",
            Some("not both"),
        )
        .setup(safe_key),
        case(
            "secret_file_missing",
            with_blob(blob()),
            "datastores.blob.account_key",
            Some("does not exist"),
        ),
        case(
            "secret_file_group_readable",
            with_blob(blob()),
            "datastores.blob.account_key",
            Some("readable by group or others (mode 0640)"),
        )
        .setup(group_readable_key)
        .absent("S0VZLVNFQ1JFVC0xMjM"),
        case(
            "secret_file_empty",
            with_blob(blob()),
            "datastores.blob.account_key",
            Some("is empty"),
        )
        .setup(empty_key),
        case(
            "secret_env_unset",
            {
                let mut b = blob();
                b.as_object_mut().unwrap().remove("account_key");
                b["sas_token"] = json!({"env": UNSET_VAR});
                with_blob(b)
            },
            "datastores.blob.sas_token",
            Some(UNSET_VAR),
        ),
        case(
            "bad_account_name",
            blob_with("account_name", json!("My_Account")),
            "datastores.blob.account_name",
            Some("storage account name"),
        )
        .setup(safe_key),
        case(
            "bad_container_name",
            blob_with("container_name", json!("Training_Data")),
            "datastores.blob.container_name",
            Some("not a valid name"),
        )
        .setup(safe_key),
        case(
            "endpoint_not_a_url",
            blob_with("endpoint", json!("127.0.0.1:10000/devstoreaccount1")),
            "datastores.blob.endpoint",
            Some("http://"),
        )
        .setup(safe_key),
        case(
            "endpoint_carrying_a_sas_query",
            blob_with(
                "endpoint",
                json!("http://127.0.0.1:10000/devstoreaccount1?sv=1&sig=TOPSECRETSIG"),
            ),
            "datastores.blob.endpoint",
            Some("query string"),
        )
        .setup(safe_key)
        .absent("TOPSECRETSIG"),
        case(
            "azure_file_anonymous",
            json!({"datastores": {"files": {"kind": "azure_file", "account_name": "acct1",
                                            "share_name": "share", "anonymous": true}},
                   "data_references": {"train": {"datastore": "files"}},
                   "command": ["true"]}),
            "datastores.files.anonymous",
            Some("unknown field"),
        )
        .problems(2),
        case(
            "azure_file_bad_share_in_the_seed_spelling",
            json!({"datastores": {"files": {"kind": "azure_file", "account_name": "acct1",
                                            "container_name": "Bad_Share",
                                            "sas_token": {"env": "SOME_SAS"}}},
                   "command": ["true"]}),
            "datastores.files.container_name",
            Some("not a valid name"),
        ),
        case(
            "azure_file_share_named_twice",
            json!({"datastores": {"files": {"kind": "azure_file", "account_name": "acct1",
                                            "share_name": "share", "container_name": "share",
                                            "sas_token": {"env": "SOME_SAS"}}},
                   "command": ["true"]}),
            "datastores.files.container_name",
            Some("not both"),
        ),
    ]
}

/// Runs one case in a fresh directory and checks exit code, message and the absence of side
/// effects. Returns a description of what went wrong, if anything.
fn check_case(case: &Case) -> Result<(), String> {
    let job = tempfile::tempdir().unwrap();
    let dir = job.path();
    (case.setup)(dir);
    write_file(&dir.join("job.json"), &case.manifest, 0o644);
    let config_parent = tempfile::tempdir().unwrap();
    let config = config_parent.path().join("config");

    let before = snapshot(dir);
    let mut cmd = command();
    cmd.current_dir(dir)
        .env_remove(UNSET_VAR)
        .arg("--config-dir")
        .arg(&config)
        .args(["validate", "job.json"]);
    let out = output(&mut cmd);
    let after = snapshot(dir);

    let mut failures = Vec::new();
    if out.code != 65 {
        failures.push(format!("exit code {} instead of 65", out.code));
    }
    if !out.stderr.contains(case.field) {
        failures.push(format!("stderr does not mention {:?}", case.field));
    }
    if let Some(also) = case.also {
        if !out.stderr.contains(also) {
            failures.push(format!("stderr does not contain {also:?}"));
        }
    }
    if let Some(secret) = case.absent {
        if out.all_output().contains(secret) {
            failures.push(format!("the output echoes the secret {secret:?}"));
        }
    }
    let header = format!(
        "({} problem{})",
        case.problems,
        if case.problems == 1 { "" } else { "s" }
    );
    if !out.stderr.contains(&header) {
        failures.push(format!("stderr does not announce {header}"));
    }
    let lines = problem_lines(&out.stderr).len();
    if lines != case.problems {
        failures.push(format!(
            "{lines} problem lines instead of {}",
            case.problems
        ));
    }
    if !out.stdout.is_empty() {
        failures.push("stdout is not empty".to_owned());
    }
    if before != after {
        failures.push(format!(
            "the job directory changed:\nbefore {before:#?}\nafter {after:#?}"
        ));
    }
    if config.exists() {
        failures.push("the config directory was created".to_owned());
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "case {}: {}\n--- manifest ---\n{}\n--- stderr ---\n{}",
            case.name,
            failures.join("; "),
            case.manifest,
            out.stderr
        ))
    }
}

#[test]
fn invalid_manifests_are_refused_with_their_json_path_and_no_side_effects() {
    let cases = cases();
    assert!(cases.len() >= 30, "only {} cases", cases.len());
    eprintln!("{} invalid-manifest cases", cases.len());
    let mut names: Vec<&str> = cases.iter().map(|c| c.name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "case names must be distinct");
    let failures: Vec<String> = cases.iter().filter_map(|c| check_case(c).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

#[test]
fn all_problems_are_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    datastore_root(dir.path());
    let manifest = json!({
        "datastores": store(),
        "comand": ["python3"],
        "upload_policy": "sometimes",
        "grace_period_seconds": -1,
        "environment": {"K": 1},
        "data_references": {
            "a": {"datastore": "stor", "mode": "copy"},
            "b": {"datastore": "store", "path_on_datastore": "a/../../b"},
            "c": {"datastore": "store", "mode": "upload"},
        },
    });
    write_manifest(&dir.path().join("job.json"), &manifest);
    let config = dir.path().join("config");
    let out = run_in(dir.path(), &config, &["validate", "job.json"]);
    out.expect_code(65);
    let expected = [
        "comand",
        "command",
        "upload_policy",
        "grace_period_seconds",
        "environment.K",
        "data_references.a.mode",
        "data_references.a.datastore",
        "data_references.b.path_on_datastore",
        "data_references.c.path_on_compute",
    ];
    let lines = problem_lines(&out.stderr);
    assert_eq!(lines.len(), expected.len(), "{}", out.stderr);
    assert!(out.stderr.contains("(9 problems)"), "{}", out.stderr);
    for path in expected {
        assert!(
            lines
                .iter()
                .any(|l| l.trim_start().starts_with(&format!("{path}:"))),
            "no line starts with {path}:\n{}",
            out.stderr
        );
    }
    assert!(!config.exists());
}

// ---------------------------------------------------------------------------------------------
// Exit codes other than 65
// ---------------------------------------------------------------------------------------------

#[test]
fn missing_manifest_exits_66() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    let out = run_in(dir.path(), &config, &["validate", "nope.json"]);
    out.expect_code(66);
    assert!(out.stderr.contains("nope.json"), "{}", out.stderr);
    assert!(snapshot(dir.path()).is_empty(), "something was created");
}

#[test]
fn usage_errors_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    write_manifest(&dir.path().join("job.json"), &json!({"command": ["true"]}));
    for args in [
        &["frobnicate"][..],
        &["validate"],
        &["validate", "--no-such-flag", "job.json"],
        &["validate", "job.json", "extra.json"],
    ] {
        let out = run_in(dir.path(), &config, args);
        assert_eq!(out.code, 64, "{args:?}: {}", out.stderr);
        assert!(!out.stderr.is_empty(), "{args:?} printed no error");
    }
    for args in [
        &["datastore", "frobnicate"][..],
        &["datastore", "get"],
        &["datastore", "register", "local", "--name", "x"],
        &["--config-dir"],
        // Help shown because a subcommand is missing is a usage error, not success.
        &[],
        &["datastore"],
        &["datastore", "register"],
    ] {
        let out = run_in(dir.path(), &config, args);
        assert_eq!(out.code, 64, "{args:?}: {}", out.stderr);
    }
    assert!(!config.exists());
}

#[test]
fn help_and_version_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    for args in [
        &["--help"][..],
        &["-h"],
        &["validate", "--help"],
        &["datastore", "register", "azure-blob", "--help"],
        &["help", "validate"],
    ] {
        let out = run_in(dir.path(), &config, args);
        out.expect_code(0);
        assert!(out.stdout.contains("Usage"), "{args:?}: {}", out.stdout);
    }
    let out = run_in(dir.path(), &config, &["--version"]);
    out.expect_code(0);
    assert!(
        out.stdout.contains(env!("CARGO_PKG_VERSION")),
        "{}",
        out.stdout
    );
    assert!(!config.exists());
}

// ---------------------------------------------------------------------------------------------
// Valid manifests: the resolved plan
// ---------------------------------------------------------------------------------------------

/// Writes `manifest` as `dir/name`, runs `validate --json` from `dir` and returns the plan.
fn plan_at(dir: &Path, config: &Path, name: &str, manifest: &Value) -> Value {
    write_manifest(&dir.join(name), manifest);
    let out = run_in(dir, config, &["validate", "--json", name]);
    out.expect_code(0);
    out.json()
}

/// A job directory with the `store` datastore's root and an empty config dir path.
fn job_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    datastore_root(dir.path());
    let config = dir.path().join("config");
    (dir, config)
}

fn reference<'a>(plan: &'a Value, name: &str) -> &'a Value {
    plan["references"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no reference {name} in {plan:#}"))
}

fn local(plan: &Value, name: &str) -> PathBuf {
    PathBuf::from(reference(plan, name)["local"].as_str().unwrap())
}

#[test]
fn the_three_spellings_yield_the_same_plan() {
    let (dir, config) = job_dir();
    let d = dir.path();
    let snake = json!({"datastores": store(), "command": ["true"], "data_references": {
        "train": {"datastore": "store", "path_on_datastore": "data/train", "mode": "download",
                  "path_on_compute": "inputs", "overwrite": true},
        "out": {"datastore": "store", "path_on_datastore": "models/run1", "mode": "upload",
                "path_on_compute": "outputs/model", "overwrite": false},
        "cfg": {"datastore": "store", "path_on_datastore": "config"}}});
    let camel = json!({"datastores": store(), "command": ["true"], "dataReferences": {
        "train": {"dataStoreName": "store", "pathOnDataStore": "data/train", "mode": "download",
                  "pathOnCompute": "inputs", "overwrite": true},
        "out": {"dataStoreName": "store", "pathOnDataStore": "models/run1", "mode": "upload",
                "pathOnCompute": "outputs/model", "overwrite": false},
        "cfg": {"dataStoreName": "store", "pathOnDataStore": "config"}}});
    let pascal = json!({"datastores": store(), "command": ["true"], "dataReferences": {
        "train": {"DataStoreName": "store", "PathOnDataStore": "data/train", "Mode": "Download",
                  "PathOnCompute": "inputs", "Overwrite": true},
        "out": {"DataStoreName": "store", "PathOnDataStore": "models/run1", "Mode": "Upload",
                "PathOnCompute": "outputs/model", "Overwrite": false},
        "cfg": {"DataStoreName": "store", "PathOnDataStore": "config"}}});
    let plans: Vec<Value> = [
        ("snake.json", snake),
        ("camel.json", camel),
        ("pascal.json", pascal),
    ]
    .iter()
    .map(|(name, m)| plan_at(d, &config, name, m))
    .collect();
    let expected = json!([
        {"name": "train", "datastore": "store", "datastore_kind": "local", "mode": "download",
         "path_on_datastore": "data/train",
         "local": d.join("store/inputs/data/train"),
         "variable": "AZUREML_DATAREFERENCE_train", "overwrite": true},
        {"name": "out", "datastore": "store", "datastore_kind": "local", "mode": "upload",
         "path_on_datastore": "models/run1", "local": d.join("outputs/model"),
         "variable": "AZUREML_DATAREFERENCE_out", "overwrite": false},
        {"name": "cfg", "datastore": "store", "datastore_kind": "local", "mode": "mount",
         "path_on_datastore": "config", "local": d.join("store/config"),
         "variable": "AZUREML_DATAREFERENCE_cfg", "overwrite": false},
    ]);
    for (plan, name) in plans.iter().zip(["snake", "camel", "pascal"]) {
        assert_eq!(plan["references"], expected, "{name}: {plan:#}");
        assert_eq!(plan["working_dir"], json!(d), "{name}");
    }
    assert!(!config.exists());
}

#[test]
fn mode_is_case_insensitive_and_defaults_to_mount() {
    let (dir, config) = job_dir();
    let manifest = with_refs(
        json!({
            "a": {"datastore": "store", "path_on_datastore": "a", "mode": "DOWNLOAD"},
            "b": {"datastore": "store", "path_on_datastore": "b", "mode": "Mount"},
            "c": {"datastore": "store", "path_on_datastore": "c", "mode": "uPlOaD",
                  "path_on_compute": "out"},
            "d": {"datastore": "store", "path_on_datastore": "d"},
            "e": {"datastore": "store", "path_on_datastore": "e", "mode": null},
        }),
        json!({}),
    );
    let plan = plan_at(dir.path(), &config, "job.json", &manifest);
    for (name, mode) in [
        ("a", "download"),
        ("b", "mount"),
        ("c", "upload"),
        ("d", "mount"),
        ("e", "mount"),
    ] {
        assert_eq!(reference(&plan, name)["mode"], mode, "{name}");
    }
}

#[test]
fn path_on_datastore_is_normalised() {
    let (dir, config) = job_dir();
    let d = dir.path();
    let manifest = with_refs(
        json!({
            "dot": {"datastore": "store", "path_on_datastore": "./bar", "path_on_compute": "p1"},
            "slash": {"datastore": "store", "path_on_datastore": "/bar", "path_on_compute": "p2"},
            "trail": {"datastore": "store", "path_on_datastore": "bar/", "path_on_compute": "p3"},
            "inner": {"datastore": "store", "path_on_datastore": "a/./b//c",
                      "path_on_compute": "p4"},
            "empty": {"datastore": "store", "path_on_datastore": "", "path_on_compute": "r1"},
            "cur": {"datastore": "store", "path_on_datastore": ".", "path_on_compute": "r2"},
            "root": {"datastore": "store", "path_on_datastore": "/", "path_on_compute": "r3"},
            "null": {"datastore": "store", "path_on_datastore": null, "path_on_compute": "r4"},
            "absent": {"datastore": "store", "path_on_compute": "r5"},
        }),
        json!({}),
    );
    let plan = plan_at(d, &config, "job.json", &manifest);
    for (name, poc) in [("dot", "p1"), ("slash", "p2"), ("trail", "p3")] {
        let r = reference(&plan, name);
        assert_eq!(r["path_on_datastore"], "bar", "{name}");
        assert_eq!(local(&plan, name), d.join("store").join(poc).join("bar"));
    }
    assert_eq!(reference(&plan, "inner")["path_on_datastore"], "a/b/c");
    for (name, poc) in [
        ("empty", "r1"),
        ("cur", "r2"),
        ("root", "r3"),
        ("null", "r4"),
        ("absent", "r5"),
    ] {
        assert_eq!(reference(&plan, name)["path_on_datastore"], "", "{name}");
        assert_eq!(local(&plan, name), d.join("store").join(poc), "{name}");
    }
}

#[test]
fn local_paths_follow_the_spec_layout() {
    let (dir, config) = job_dir();
    let d = dir.path();
    let elsewhere = tempfile::tempdir().unwrap();
    let abs_in = elsewhere.path().join("in");
    let abs_out = elsewhere.path().join("out/model.pt");
    let manifest = with_refs(
        json!({
            // No path_on_compute: <working_dir>/<datastore>/<path_on_datastore>.
            "plain": {"datastore": "store", "path_on_datastore": "data/plain"},
            // Relative: <working_dir>/<datastore>/<poc>/<path_on_datastore>.
            "rel": {"datastore": "store", "path_on_datastore": "data/rel", "mode": "download",
                    "path_on_compute": "cache/x"},
            // Absolute: <poc>/<path_on_datastore>.
            "abs": {"datastore": "store", "path_on_datastore": "data/abs",
                    "path_on_compute": abs_in},
            // Upload: path_on_compute relative to working_dir, or absolute.
            "up_rel": {"datastore": "store", "path_on_datastore": "models", "mode": "upload",
                       "path_on_compute": "./outputs/"},
            "up_abs": {"datastore": "store", "path_on_datastore": "models", "mode": "upload",
                       "path_on_compute": abs_out},
        }),
        json!({}),
    );
    let plan = plan_at(d, &config, "job.json", &manifest);
    assert_eq!(local(&plan, "plain"), d.join("store/data/plain"));
    assert_eq!(local(&plan, "rel"), d.join("store/cache/x/data/rel"));
    assert_eq!(local(&plan, "abs"), abs_in.join("data/abs"));
    assert_eq!(local(&plan, "up_rel"), d.join("outputs"));
    assert_eq!(local(&plan, "up_abs"), abs_out);
    // Switching mount <-> download does not move the data.
    let mut switched = manifest.clone();
    switched["data_references"]["plain"]["mode"] = json!("download");
    switched["data_references"]["rel"]["mode"] = json!("mount");
    let plan2 = plan_at(d, &config, "job2.json", &switched);
    assert_eq!(plan["references"].as_array().unwrap().len(), 5);
    for name in ["plain", "rel", "abs"] {
        assert_eq!(local(&plan, name), local(&plan2, name), "{name}");
    }
}

#[test]
fn relative_paths_resolve_against_the_manifest_directory() {
    let root = tempfile::tempdir().unwrap();
    let sub = root.path().join("project/jobs");
    mkdir(&sub.join("datastore_root"));
    mkdir(&sub.join("work"));
    let cwd = tempfile::tempdir().unwrap();
    let config = root.path().join("config");
    let manifest = json!({
        "datastores": {"store": {"kind": "local", "root": "./datastore_root"}},
        "working_dir": "work",
        "data_references": {
            "train": {"datastore": "store", "path_on_datastore": "train"},
            "out": {"datastore": "store", "mode": "upload", "path_on_compute": "outputs"},
        },
        "command": ["python3", "train.py"],
    });
    write_manifest(&sub.join("job.json"), &manifest);
    let before = snapshot(root.path());

    // From an unrelated directory, with an absolute manifest path.
    let manifest_path = sub.join("job.json");
    let out = run_in(
        cwd.path(),
        &config,
        &["validate", "--json", manifest_path.to_str().unwrap()],
    );
    out.expect_code(0);
    let plan = out.json();
    assert_eq!(plan["manifest"], json!(manifest_path));
    assert_eq!(plan["working_dir"], json!(sub.join("work")));
    assert_eq!(local(&plan, "train"), sub.join("work/store/train"));
    assert_eq!(local(&plan, "out"), sub.join("work/outputs"));

    // From the root, with a relative manifest path: the same plan.
    let out = run_in(
        root.path(),
        &config,
        &["validate", "--json", "project/jobs/job.json"],
    );
    out.expect_code(0);
    assert_eq!(out.json(), plan);

    // The datastore root resolved against the manifest's directory, not the cwd.
    let out = run_in(
        cwd.path(),
        &config,
        &["validate", manifest_path.to_str().unwrap()],
    );
    out.expect_code(0);
    let expected_root = sub.join("datastore_root");
    assert!(
        out.stdout
            .contains(&format!("local {}", expected_root.display())),
        "{}",
        out.stdout
    );

    assert_eq!(before, snapshot(root.path()), "validate created something");
    assert!(
        snapshot(cwd.path()).is_empty(),
        "validate wrote into its cwd"
    );
}

#[test]
fn working_dir_defaults_to_the_manifest_directory() {
    let root = tempfile::tempdir().unwrap();
    let sub = root.path().join("job");
    mkdir(&sub.join("datastore_root"));
    let config = root.path().join("config");
    write_manifest(
        &sub.join("job.json"),
        &with_refs(
            json!({"out": {"datastore": "store", "mode": "upload",
                           "path_on_compute": "outputs"}}),
            json!({}),
        ),
    );
    let out = run_in(
        root.path(),
        &config,
        &["validate", "--json", "job/job.json"],
    );
    out.expect_code(0);
    let plan = out.json();
    assert_eq!(plan["working_dir"], json!(sub));
    assert_eq!(local(&plan, "out"), sub.join("outputs"));
}

#[test]
fn omitted_datastore_uses_the_registry_default() {
    let (dir, config) = job_dir();
    let d = dir.path();
    let shared = tempfile::tempdir().unwrap();
    let shared_root = shared.path().to_str().unwrap();
    run(
        &config,
        &[
            "datastore",
            "register",
            "local",
            "--name",
            "shared",
            "--root",
            shared_root,
        ],
    )
    .expect_code(0);
    let manifest = json!({"command": ["true"], "data_references": {
        "train": {"path_on_datastore": "train", "mode": "download"},
        "named": {"datastore": "shared", "path_on_datastore": "named"}}});
    write_manifest(&d.join("job.json"), &manifest);

    // Registered but not the default: the unnamed reference has no datastore.
    let out = run_in(d, &config, &["validate", "job.json"]);
    out.expect_code(65);
    assert!(
        out.stderr.contains("data_references.train.datastore"),
        "{}",
        out.stderr
    );
    assert_eq!(problem_lines(&out.stderr).len(), 1, "{}", out.stderr);

    run(&config, &["datastore", "set-default", "shared"]).expect_code(0);
    let plan = plan_at(d, &config, "job.json", &manifest);
    let train = reference(&plan, "train");
    assert_eq!(train["datastore"], "shared");
    assert_eq!(train["datastore_kind"], "local");
    assert_eq!(local(&plan, "train"), d.join("shared/train"));
    assert_eq!(local(&plan, "named"), d.join("shared/named"));

    // DATAREF_CONFIG_DIR finds the same registry.
    let mut cmd = command();
    cmd.current_dir(d)
        .env("DATAREF_CONFIG_DIR", &config)
        .args(["validate", "--json", "job.json"]);
    let out = output(&mut cmd);
    out.expect_code(0);
    assert_eq!(out.json(), plan);
}

#[test]
fn inline_datastores_win_over_the_registry() {
    let (dir, config) = job_dir();
    let d = dir.path();
    let registry_root = tempfile::tempdir().unwrap();
    run(
        &config,
        &[
            "datastore",
            "register",
            "azure-blob",
            "--name",
            "store",
            "--account",
            "acct1",
            "--container",
            "public",
            "--anonymous",
        ],
    )
    .expect_code(0);
    run(
        &config,
        &[
            "datastore",
            "register",
            "local",
            "--name",
            "other",
            "--root",
            registry_root.path().to_str().unwrap(),
        ],
    )
    .expect_code(0);
    run(&config, &["datastore", "set-default", "store"]).expect_code(0);
    let manifest = with_refs(
        json!({"train": {"datastore": "store", "path_on_datastore": "train"},
               "implicit": {"path_on_datastore": "implicit"},
               "reg": {"datastore": "other", "path_on_datastore": "reg"}}),
        json!({}),
    );
    let plan = plan_at(d, &config, "job.json", &manifest);
    // The inline `store` (local) hides the registry's `store` (azure_blob), also as the default.
    assert_eq!(reference(&plan, "train")["datastore_kind"], "local");
    assert_eq!(reference(&plan, "implicit")["datastore"], "store");
    assert_eq!(reference(&plan, "implicit")["datastore_kind"], "local");
    // Registry datastores the manifest does not redefine are still available.
    assert_eq!(reference(&plan, "reg")["datastore_kind"], "local");
    let out = run_in(d, &config, &["validate", "job.json"]);
    out.expect_code(0);
    let expected = format!("store (local {})", d.join("datastore_root").display());
    assert!(out.stdout.contains(&expected), "{}", out.stdout);
}

#[test]
fn human_output_lists_every_reference() {
    let (dir, config) = job_dir();
    let d = dir.path();
    let manifest = with_refs(
        json!({"train": {"datastore": "store", "path_on_datastore": "data/train",
                          "mode": "download"},
               "out": {"datastore": "store", "path_on_datastore": "models", "mode": "upload",
                       "path_on_compute": "outputs"}}),
        json!({"command": ["python3", "train.py", "--data", "$AZUREML_DATAREFERENCE_train"]}),
    );
    write_manifest(&d.join("job.json"), &manifest);
    let out = run_in(d, &config, &["validate", "job.json"]);
    out.expect_code(0);
    let text = &out.stdout;
    let section = |name: &str| -> String {
        let start = text
            .find(&format!("reference {name}\n"))
            .unwrap_or_else(|| panic!("no section for {name}:\n{text}"));
        let rest = &text[start..];
        let end = rest[1..].find("\nreference ").map_or(rest.len(), |i| i + 1);
        rest[..end].to_owned()
    };
    let train = section("train");
    for (label, value) in [
        ("datastore", "store".to_owned()),
        ("mode", "download".to_owned()),
        ("remote", "data/train".to_owned()),
        ("local", d.join("store/data/train").display().to_string()),
        ("variable", "AZUREML_DATAREFERENCE_train".to_owned()),
    ] {
        assert!(
            train
                .lines()
                .any(|l| l.trim_start().starts_with(label) && l.contains(&value)),
            "train: no {label} line with {value}:\n{train}"
        );
    }
    let out_section = section("out");
    for (label, value) in [
        ("mode", "upload".to_owned()),
        ("remote", "models".to_owned()),
        ("local", d.join("outputs").display().to_string()),
        ("variable", "AZUREML_DATAREFERENCE_out".to_owned()),
    ] {
        assert!(
            out_section
                .lines()
                .any(|l| l.trim_start().starts_with(label) && l.contains(&value)),
            "out: no {label} line with {value}:\n{out_section}"
        );
    }
    assert!(text.contains("$AZUREML_DATAREFERENCE_train"), "{text}");
}

#[test]
fn a_valid_manifest_creates_nothing() {
    let (dir, config) = job_dir();
    let d = dir.path();
    write_file(&d.join("keys/blob.key"), "S0VZLVNFQ1JFVC0xMjM=\n", 0o600);
    let manifest = json!({
        "datastores": {
            "store": {"kind": "local", "root": "./datastore_root"},
            "blob": blob(),
        },
        "data_references": {
            "train": {"datastore": "store", "path_on_datastore": "train", "mode": "download"},
            "remote": {"datastore": "blob", "path_on_datastore": "remote"},
            "out": {"datastore": "blob", "mode": "upload",
                    "path_on_compute": "outputs/deep/model"},
        },
        "mount": {"cache_dir": "./cache"},
        "command": ["true"],
    });
    write_manifest(&d.join("job.json"), &manifest);
    let before = snapshot(d);
    let out = run_in(d, &config, &["validate", "job.json"]);
    out.expect_code(0);
    assert_eq!(before, snapshot(d), "validate created something");
    assert!(!config.exists());
    assert!(!out.all_output().contains("S0VZLVNFQ1JFVC0xMjM"));
}

#[test]
fn secrets_are_checked_but_never_shown() {
    let (dir, config) = job_dir();
    let d = dir.path();
    // A Kubernetes-style secret: a symlink to a 0400 file.
    write_file(
        &d.join("secrets/..data/key"),
        "S0VZLVNFQ1JFVC0xMjM=\n",
        0o400,
    );
    std::os::unix::fs::symlink(d.join("secrets/..data/key"), d.join("secrets/key")).unwrap();
    let manifest = json!({
        "datastores": {
            "blob": {"kind": "azure_blob", "account_name": "devstoreaccount1",
                     "container_name": "data", "endpoint": "http://127.0.0.1:10000/devstoreaccount1/",
                     "account_key": {"file": "secrets/key"}},
            "files": {"kind": "azure_file", "account_name": "acct1", "container_name": "share",
                      "sas_token": {"env": SET_VAR}},
        },
        "data_references": {
            "a": {"datastore": "blob", "path_on_datastore": "a"},
            "b": {"datastore": "files", "path_on_datastore": "b", "mode": "download"},
        },
        "command": ["true"],
    });
    write_manifest(&d.join("job.json"), &manifest);
    for json_flag in [true, false] {
        let mut cmd = command();
        cmd.current_dir(d)
            .env(SET_VAR, SET_VAR_VALUE)
            .arg("--config-dir")
            .arg(&config)
            .arg("validate");
        if json_flag {
            cmd.arg("--json");
        }
        cmd.arg("job.json");
        let out: Outcome = output(&mut cmd);
        out.expect_code(0);
        let all = out.all_output();
        assert!(!all.contains("S0VZLVNFQ1JFVC0xMjM"), "{all}");
        assert!(!all.contains("ENV-SECRET-VALUE"), "{all}");
        if json_flag {
            let plan = out.json();
            assert_eq!(reference(&plan, "a")["datastore_kind"], "azure_blob");
            assert_eq!(reference(&plan, "b")["datastore_kind"], "azure_file");
        } else {
            // The endpoint's trailing slash is dropped: no `//data`.
            assert!(
                all.contains("http://127.0.0.1:10000/devstoreaccount1/data"),
                "{all}"
            );
            assert!(!all.contains("devstoreaccount1//data"), "{all}");
        }
    }
    // Without the variable the same manifest is invalid, naming the variable.
    let mut cmd = command();
    cmd.current_dir(d)
        .env_remove(SET_VAR)
        .arg("--config-dir")
        .arg(&config)
        .args(["validate", "job.json"]);
    let out = output(&mut cmd);
    out.expect_code(65);
    assert!(
        out.stderr.contains("datastores.files.sas_token") && out.stderr.contains(SET_VAR),
        "{}",
        out.stderr
    );
}

#[test]
fn registry_secrets_are_checked_at_validation() {
    let (dir, config) = job_dir();
    let d = dir.path();
    let key = d.join("keys/reg.key");
    write_file(&key, "UkVHSVNUUlktS0VZ\n", 0o600);
    run(
        &config,
        &[
            "datastore",
            "register",
            "azure-blob",
            "--name",
            "reg",
            "--account",
            "devstoreaccount1",
            "--container",
            "data",
            "--key-file",
            key.to_str().unwrap(),
        ],
    )
    .expect_code(0);
    let manifest = json!({"command": ["true"],
        "data_references": {"train": {"datastore": "reg", "path_on_datastore": "t"}}});
    let plan = plan_at(d, &config, "job.json", &manifest);
    assert_eq!(reference(&plan, "train")["datastore_kind"], "azure_blob");

    // The key file's permissions loosen after registration: the job is refused.
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = run_in(d, &config, &["validate", "job.json"]);
    out.expect_code(65);
    assert!(
        out.stderr.contains("datastores.reg.account_key") && out.stderr.contains("chmod 600"),
        "{}",
        out.stderr
    );
    assert!(!out.all_output().contains("UkVHSVNUUlktS0VZ"));
}

#[test]
fn a_job_without_data_references_is_valid() {
    let (dir, config) = job_dir();
    let plan = plan_at(
        dir.path(),
        &config,
        "job.json",
        &json!({"command": ["echo", "hello world"], "upload_policy": "on_success",
                "grace_period_seconds": 5, "environment": {"DATASET_MOUNT_CACHE_SIZE": "10GB"}}),
    );
    assert_eq!(plan["references"], json!([]));
    assert_eq!(plan["command"], json!(["echo", "hello world"]));
    assert_eq!(plan["upload_policy"], "on_success");
    assert_eq!(plan["grace_period_seconds"], 5);
}

#[test]
fn a_corrupt_registry_is_a_validation_error() {
    let (dir, config) = job_dir();
    write_file(&config.join("datastores.json"), "{not json", 0o644);
    write_manifest(&dir.path().join("job.json"), &base(json!({})));
    let out = run_in(dir.path(), &config, &["validate", "job.json"]);
    out.expect_code(65);
    assert!(out.stderr.contains("datastores.json"), "{}", out.stderr);
}

#[test]
fn a_manifest_that_is_not_utf8_is_invalid_not_missing() {
    let (dir, config) = job_dir();
    std::fs::write(
        dir.path().join("job.json"),
        b"\xff\xfe{\"command\": [\"true\"]}",
    )
    .unwrap();
    let out = run_in(dir.path(), &config, &["validate", "job.json"]);
    out.expect_code(65);
    assert!(out.stderr.contains("UTF-8"), "{}", out.stderr);
}

#[test]
fn an_unreadable_registry_makes_validate_exit_65() {
    // `validate` exits 0, 64, 65 or 66 only (SPEC §5).
    let (dir, _) = job_dir();
    let config = dir.path().join("config");
    mkdir(&config.join("datastores.json")); // a directory where the file should be
    write_manifest(&dir.path().join("job.json"), &base(json!({})));
    let out = run_in(dir.path(), &config, &["validate", "job.json"]);
    out.expect_code(65);
    assert!(out.stderr.contains("datastores.json"), "{}", out.stderr);
}
