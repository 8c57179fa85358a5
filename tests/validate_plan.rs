//! `dataref validate` of valid manifests through the real binary: exit codes
//! other than 65, and the plan a valid manifest resolves to. Invalid manifests are in
//! validate_cli.rs.

mod common;

use std::path::{Path, PathBuf};

use common::cli::{
    Outcome, command, mkdir, output, problem_lines, run, run_in, snapshot, write_file,
    write_manifest,
};
use common::manifests::*;
use serde_json::{Value, json};

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
    common::cli::register_local(&config, "shared", Path::new(shared_root));
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
    common::cli::register_local(&config, "other", registry_root.path());
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
                "grace_period_seconds": 5, "environment": {"DATASET_MOUNT_CACHE_SIZE": "10GB"},
                "verify": "md5"}),
    );
    assert_eq!(plan["references"], json!([]));
    assert_eq!(plan["command"], json!(["echo", "hello world"]));
    assert_eq!(plan["upload_policy"], "on_success");
    assert_eq!(plan["verify"], "md5");
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
    // `validate` exits 0, 64, 65 or 66 only.
    let (dir, _) = job_dir();
    let config = dir.path().join("config");
    mkdir(&config.join("datastores.json")); // a directory where the file should be
    write_manifest(&dir.path().join("job.json"), &base(json!({})));
    let out = run_in(dir.path(), &config, &["validate", "job.json"]);
    out.expect_code(65);
    assert!(out.stderr.contains("datastores.json"), "{}", out.stderr);
}
