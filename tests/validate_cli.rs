//! `dataref validate` of invalid manifests through the real binary: every
//! invalid manifest is refused with exit 65, every problem named by its JSON path, and nothing
//! created on disk. Valid manifests and other exit codes are in validate_plan.rs.

mod common;

use std::path::Path;

use common::cli::{command, output, problem_lines, run_in, snapshot, write_file, write_manifest};
use common::manifests::*;
use serde_json::{Value, json};

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
            "bad_verify",
            base(json!({"verify": "sha256"})),
            "verify",
            Some("\"auto\", \"md5\" or \"off\""),
        ),
        case(
            "bad_reference_verify",
            with_refs(
                json!({"inp": {"datastore": "store", "mode": "download", "verify": "crc32"}}),
                json!({}),
            ),
            "data_references.inp.verify",
            Some("\"crc32\""),
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
            "reference_name_with_a_dot",
            with_refs(json!({"a.b": {"datastore": "store"}}), json!({})),
            "data_references.a.b",
            Some("letters, digits and underscores"),
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
