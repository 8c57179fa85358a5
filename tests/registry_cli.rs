//! `dataref datastore ...` through the real binary (SPEC §1, §6): the registry at
//! `<config-dir>/datastores.json`, secrets held by reference only.

mod common;

use std::fs;
use std::path::PathBuf;

use common::cli::{Outcome, command, mkdir, output, snapshot, write_file};
use serde_json::{Value, json};

/// A recognisable account key: it must never appear in any output or in the registry.
const KEY: &str = "VE9QU0VDUkVULUFDQ09VTlQtS0VZLTAxMjM0NTY3ODk=";
/// A recognisable SAS token held in an environment variable.
const SAS: &str = "sv=2024-05-04&ss=b&sig=TOPSECRETSASSIGNATURE";
const SAS_VAR: &str = "DATAREF_TEST_REGISTRY_SAS";

struct Env {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
}

impl Env {
    /// A fresh directory with a (not yet existing) config dir and a 0600 key file.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let config = root.join("config");
        write_file(&root.join("keys/account.key"), &format!("{KEY}\n"), 0o600);
        write_file(&root.join("keys/sas.token"), &format!("{SAS}\n"), 0o600);
        mkdir(&root.join("data"));
        Self {
            _dir: dir,
            root,
            config,
        }
    }

    fn key(&self) -> String {
        self.root.join("keys/account.key").display().to_string()
    }

    fn sas_file(&self) -> String {
        self.root.join("keys/sas.token").display().to_string()
    }

    fn registry_path(&self) -> PathBuf {
        self.config.join("datastores.json")
    }

    /// `dataref --config-dir CONFIG datastore ARGS...` from the root, with the SAS variable set.
    fn ds(&self, args: &[&str]) -> Outcome {
        let mut cmd = command();
        cmd.current_dir(&self.root)
            .env(SAS_VAR, SAS)
            .arg("--config-dir")
            .arg(&self.config)
            .arg("datastore")
            .args(args);
        let out = output(&mut cmd);
        assert_no_secret(&out.all_output());
        out
    }

    fn ok(&self, args: &[&str]) -> Outcome {
        let out = self.ds(args);
        out.expect_code(0);
        out
    }

    fn registry_text(&self) -> String {
        fs::read_to_string(self.registry_path()).unwrap()
    }

    /// The registry file, parsed and checked against the SPEC §1 shape.
    fn registry(&self) -> Value {
        let text = self.registry_text();
        assert_no_secret(&text);
        let value: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("datastores.json is not JSON ({e}):\n{text}"));
        let obj = value.as_object().expect("the registry is an object");
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["datastores", "default"], "{text}");
        assert!(
            value["default"].is_null() || value["default"].is_string(),
            "{text}"
        );
        assert!(value["datastores"].is_object(), "{text}");
        value
    }

    fn get(&self, name: &str) -> Value {
        self.ok(&["get", name]).json()
    }

    fn register_blob(&self, name: &str) {
        self.ok(&[
            "register",
            "azure-blob",
            "--name",
            name,
            "--account",
            "devstoreaccount1",
            "--container",
            "data",
            "--key-file",
            &self.key(),
        ]);
    }

    fn register_local(&self, name: &str) {
        let root = self.root.join("data").display().to_string();
        self.ok(&["register", "local", "--name", name, "--root", &root]);
    }
}

#[track_caller]
fn assert_no_secret(text: &str) {
    assert!(!text.contains(KEY), "the account key leaked:\n{text}");
    assert!(
        !text.contains("VE9QU0VDUkVU"),
        "the account key leaked:\n{text}"
    );
    assert!(
        !text.contains("TOPSECRETSAS"),
        "the SAS token leaked:\n{text}"
    );
}

fn list_lines(out: &Outcome) -> Vec<String> {
    out.stdout.lines().map(str::to_owned).collect()
}

#[test]
fn register_local_list_and_get() {
    let env = Env::new();
    // A relative --root is made absolute (against the cwd).
    env.ok(&["register", "local", "--name", "shared", "--root", "./data/"]);
    let out = env.ok(&["list"]);
    assert_eq!(list_lines(&out), ["shared\tlocal"]);
    let got = env.get("shared");
    assert_eq!(got["kind"], "local");
    assert_eq!(got["root"], json!(env.root.join("data")));
    assert_eq!(got["name"], "shared");
    assert_eq!(got["default"], false);
    assert_eq!(
        env.registry(),
        json!({"default": null,
               "datastores": {"shared": {"kind": "local", "root": env.root.join("data")}}})
    );
}

#[test]
fn register_azure_blob_with_a_key_file_keeps_only_a_reference() {
    let env = Env::new();
    let out = env.ok(&[
        "register",
        "azure-blob",
        "--name",
        "blob",
        "--account",
        "devstoreaccount1",
        "--container",
        "data",
        "--key-file",
        &env.key(),
        "--endpoint",
        "http://127.0.0.1:10000/devstoreaccount1/",
    ]);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert!(out.stderr.contains("blob"), "{}", out.stderr);
    let got = env.get("blob");
    assert_eq!(got["kind"], "azure_blob");
    assert_eq!(got["account_name"], "devstoreaccount1");
    assert_eq!(got["container_name"], "data");
    // The trailing slash is dropped.
    assert_eq!(got["endpoint"], "http://127.0.0.1:10000/devstoreaccount1");
    assert_eq!(got["account_key"], json!({"file": env.key()}));
    assert!(got.get("sas_token").is_none());
    let registry = env.registry();
    assert_eq!(
        registry["datastores"]["blob"]["endpoint"],
        "http://127.0.0.1:10000/devstoreaccount1"
    );
    assert_eq!(
        registry["datastores"]["blob"]["account_key"],
        json!({"file": env.key()})
    );
    assert_eq!(list_lines(&env.ok(&["list"])), ["blob\tazure_blob"]);
}

#[test]
fn a_relative_key_file_is_stored_as_an_absolute_path() {
    let env = Env::new();
    env.ok(&[
        "register",
        "azure-blob",
        "--name",
        "blob",
        "--account",
        "acct1",
        "--container",
        "data",
        "--key-file",
        "keys/account.key",
    ]);
    assert_eq!(env.get("blob")["account_key"], json!({"file": env.key()}));
}

#[test]
fn register_with_sas_env_sas_file_key_env_and_anonymous() {
    let env = Env::new();
    env.ok(&[
        "register",
        "azure-blob",
        "--name",
        "by_sas_env",
        "--account",
        "acct1",
        "--container",
        "data",
        "--sas-env",
        SAS_VAR,
    ]);
    env.ok(&[
        "register",
        "azure-blob",
        "--name",
        "by_sas_file",
        "--account",
        "acct1",
        "--container",
        "data",
        "--sas-file",
        &env.sas_file(),
    ]);
    env.ok(&[
        "register",
        "azure-blob",
        "--name",
        "by_key_env",
        "--account",
        "acct1",
        "--container",
        "data",
        "--key-env",
        "MY_ACCOUNT_KEY",
    ]);
    env.ok(&[
        "register",
        "azure-blob",
        "--name",
        "public",
        "--account",
        "acct1",
        "--container",
        "open-data",
        "--anonymous",
    ]);
    assert_eq!(env.get("by_sas_env")["sas_token"], json!({"env": SAS_VAR}));
    assert_eq!(
        env.get("by_sas_file")["sas_token"],
        json!({"file": env.sas_file()})
    );
    assert_eq!(
        env.get("by_key_env")["account_key"],
        json!({"env": "MY_ACCOUNT_KEY"})
    );
    let public = env.get("public");
    assert_eq!(public["anonymous"], true);
    assert!(public.get("account_key").is_none() && public.get("sas_token").is_none());
    // Default endpoint: none stored.
    assert!(public.get("endpoint").is_none());
    let registry = env.registry();
    assert_eq!(registry["datastores"].as_object().unwrap().len(), 4);
}

#[test]
fn register_azure_file_share() {
    let env = Env::new();
    env.ok(&[
        "register",
        "azure-file",
        "--name",
        "files",
        "--account",
        "devstoreaccount1",
        "--share",
        "myshare",
        "--key-file",
        &env.key(),
        "--endpoint",
        "http://127.0.0.1:10001/devstoreaccount1/",
    ]);
    let got = env.get("files");
    assert_eq!(got["kind"], "azure_file");
    assert_eq!(got["share_name"], "myshare");
    assert_eq!(got["endpoint"], "http://127.0.0.1:10001/devstoreaccount1");
    assert_eq!(got["account_key"], json!({"file": env.key()}));
    assert_eq!(list_lines(&env.ok(&["list"])), ["files\tazure_file"]);

    // A file share has no anonymous access.
    let out = env.ds(&[
        "register",
        "azure-file",
        "--name",
        "anon",
        "--account",
        "acct1",
        "--share",
        "myshare",
        "--anonymous",
    ]);
    assert_eq!(out.code, 64, "{}", out.stderr);
    assert!(env.registry()["datastores"].get("anon").is_none());
}

#[test]
fn list_prints_one_name_tab_kind_line_per_datastore() {
    let env = Env::new();
    env.register_local("zeta");
    env.register_blob("alpha");
    env.ok(&[
        "register",
        "azure-file",
        "--name",
        "mid",
        "--account",
        "acct1",
        "--share",
        "share",
        "--sas-env",
        SAS_VAR,
    ]);
    let out = env.ok(&["list"]);
    let mut lines = list_lines(&out);
    for line in &lines {
        assert_eq!(line.matches('\t').count(), 1, "{line:?}");
    }
    lines.sort();
    assert_eq!(
        lines,
        ["alpha\tazure_blob", "mid\tazure_file", "zeta\tlocal"]
    );
}

#[test]
fn set_default_and_remove() {
    let env = Env::new();
    env.register_local("one");
    env.register_blob("two");
    assert_eq!(env.registry()["default"], Value::Null);

    env.ok(&["set-default", "two"]);
    assert_eq!(env.registry()["default"], "two");
    assert_eq!(env.get("two")["default"], true);
    assert_eq!(env.get("one")["default"], false);

    // Removing another datastore keeps the default.
    env.ok(&["remove", "one"]);
    let registry = env.registry();
    assert_eq!(registry["default"], "two");
    assert!(registry["datastores"].get("one").is_none());
    assert_eq!(list_lines(&env.ok(&["list"])), ["two\tazure_blob"]);

    // Removing the default clears it.
    env.ok(&["remove", "two"]);
    assert_eq!(env.registry(), json!({"default": null, "datastores": {}}));
    assert!(env.ok(&["list"]).stdout.is_empty());
    // The key file itself is untouched.
    assert_eq!(
        fs::read_to_string(env.key()).unwrap().trim(),
        KEY,
        "remove must not touch the secret"
    );
}

#[test]
fn unknown_names_exit_65_and_change_nothing() {
    let env = Env::new();
    env.register_local("training");
    env.ok(&["set-default", "training"]);
    let before = env.registry_text();
    for args in [
        &["get", "trainig"][..],
        &["set-default", "trainig"],
        &["remove", "trainig"],
    ] {
        let out = env.ds(args);
        assert_eq!(out.code, 65, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("trainig"), "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains(r#"did you mean "training""#),
            "{args:?}: {}",
            out.stderr
        );
        assert!(out.stdout.is_empty());
    }
    assert_eq!(env.registry_text(), before);
}

#[test]
fn a_duplicate_name_needs_overwrite() {
    let env = Env::new();
    env.register_local("store");
    let before = env.registry_text();
    let blob_args = |overwrite: bool| {
        let mut args = vec![
            "register".to_owned(),
            "azure-blob".into(),
            "--name".into(),
            "store".into(),
            "--account".into(),
            "acct1".into(),
            "--container".into(),
            "data".into(),
            "--anonymous".into(),
        ];
        if overwrite {
            args.push("--overwrite".into());
        }
        args
    };
    let args = blob_args(false);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = env.ds(&args);
    assert_eq!(out.code, 65, "{}", out.stderr);
    assert!(
        out.stderr.contains("already exists") && out.stderr.contains("--overwrite"),
        "{}",
        out.stderr
    );
    assert_eq!(env.registry_text(), before);
    assert_eq!(env.get("store")["kind"], "local");

    let args = blob_args(true);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    env.ok(&args);
    assert_eq!(env.get("store")["kind"], "azure_blob");
    assert_eq!(list_lines(&env.ok(&["list"])), ["store\tazure_blob"]);
}

#[test]
fn a_group_readable_key_file_is_refused_and_nothing_is_written() {
    let env = Env::new();
    let loose = env.root.join("keys/loose.key");
    write_file(&loose, &format!("{KEY}\n"), 0o640);
    let before = snapshot(&env.root);
    for (kind, container_flag) in [("azure-blob", "--container"), ("azure-file", "--share")] {
        let out = env.ds(&[
            "register",
            kind,
            "--name",
            "loose",
            "--account",
            "acct1",
            container_flag,
            "data",
            "--key-file",
            loose.to_str().unwrap(),
        ]);
        assert_eq!(out.code, 65, "{kind}: {}", out.stderr);
        assert!(
            out.stderr.contains("readable by group or others") && out.stderr.contains("0640"),
            "{kind}: {}",
            out.stderr
        );
        assert!(out.stderr.contains("loose.key"), "{}", out.stderr);
    }
    assert_eq!(before, snapshot(&env.root), "something was written");
    assert!(!env.config.exists(), "the config dir was created");

    // With an existing registry, it is left byte for byte as it was.
    env.register_local("ok");
    let registry = env.registry_text();
    let out = env.ds(&[
        "register",
        "azure-blob",
        "--name",
        "loose",
        "--account",
        "acct1",
        "--container",
        "data",
        "--sas-file",
        loose.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 65, "{}", out.stderr);
    assert_eq!(env.registry_text(), registry);
}

#[test]
fn missing_key_file_and_symlinked_secret() {
    let env = Env::new();
    let missing = env.root.join("keys/nope.key");
    let out = env.ds(&[
        "register",
        "azure-blob",
        "--name",
        "blob",
        "--account",
        "acct1",
        "--container",
        "data",
        "--key-file",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 65, "{}", out.stderr);
    assert!(out.stderr.contains("does not exist"), "{}", out.stderr);
    assert!(!env.config.exists());

    // A Kubernetes Secret volume: a symlink to a 0400 file is followed and accepted.
    write_file(&env.root.join("secret/..data/key"), KEY, 0o400);
    let link = env.root.join("secret/key");
    std::os::unix::fs::symlink(env.root.join("secret/..data/key"), &link).unwrap();
    env.ok(&[
        "register",
        "azure-blob",
        "--name",
        "blob",
        "--account",
        "acct1",
        "--container",
        "data",
        "--key-file",
        link.to_str().unwrap(),
    ]);
    assert_eq!(env.get("blob")["account_key"], json!({"file": link}));
}

#[test]
fn credential_flags_are_usage_errors_unless_exactly_one() {
    let env = Env::new();
    let key = env.key();
    let base = [
        "register",
        "azure-blob",
        "--name",
        "blob",
        "--account",
        "acct1",
        "--container",
        "data",
    ];
    let combos: Vec<Vec<&str>> = vec![
        vec![],                                         // no credential
        vec!["--key-file", &key, "--sas-env", SAS_VAR], // two
        vec!["--anonymous", "--key-env", "K"],          // two
        vec!["--sas-file", &key, "--sas-env", SAS_VAR], // two
    ];
    for extra in &combos {
        let mut args: Vec<&str> = base.to_vec();
        args.extend(extra);
        let out = env.ds(&args);
        assert_eq!(out.code, 64, "{extra:?}: {}", out.stderr);
        assert!(!out.stderr.is_empty());
    }
    // azure-file: no credential.
    let out = env.ds(&[
        "register",
        "azure-file",
        "--name",
        "files",
        "--account",
        "acct1",
        "--share",
        "share",
    ]);
    assert_eq!(out.code, 64, "{}", out.stderr);
    assert!(!env.config.exists(), "a usage error wrote the registry");
}

#[test]
fn invalid_names_and_locations_exit_65() {
    let env = Env::new();
    let key = env.key();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["register", "local", "--name", "my-store", "--root", "data"],
            "--name",
        ),
        (
            vec![
                "register",
                "local",
                "--name",
                "store",
                "--root",
                "no/such/dir",
            ],
            "--root",
        ),
        (
            vec![
                "register",
                "azure-blob",
                "--name",
                "blob",
                "--account",
                "My_Account",
                "--container",
                "data",
                "--key-file",
                &key,
            ],
            "--account",
        ),
        (
            vec![
                "register",
                "azure-blob",
                "--name",
                "blob",
                "--account",
                "acct1",
                "--container",
                "Bad_Container",
                "--key-file",
                &key,
            ],
            "--container",
        ),
        (
            vec![
                "register",
                "azure-file",
                "--name",
                "files",
                "--account",
                "acct1",
                "--share",
                "x",
                "--key-file",
                &key,
            ],
            "--share",
        ),
        (
            vec![
                "register",
                "azure-blob",
                "--name",
                "blob",
                "--account",
                "acct1",
                "--container",
                "data",
                "--key-file",
                &key,
                "--endpoint",
                "localhost:10000",
            ],
            "--endpoint",
        ),
    ];
    for (args, flag) in &cases {
        let out = env.ds(args);
        assert_eq!(out.code, 65, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(flag), "{args:?}: {}", out.stderr);
    }
    // An endpoint carrying a SAS query is refused without echoing it.
    let out = env.ds(&[
        "register",
        "azure-blob",
        "--name",
        "blob",
        "--account",
        "acct1",
        "--container",
        "data",
        "--anonymous",
        "--endpoint",
        "http://127.0.0.1:10000/acct1?sv=1&sig=TOPSECRETSASSIGNATURE",
    ]);
    assert_eq!(out.code, 65, "{}", out.stderr);
    assert!(
        !env.config.exists(),
        "a refused registration wrote the registry"
    );
}

#[test]
fn a_missing_registry_file_is_an_empty_registry() {
    let env = Env::new();
    let out = env.ok(&["list"]);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    let out = env.ds(&["get", "anything"]);
    assert_eq!(out.code, 65, "{}", out.stderr);
    assert!(
        out.stderr.contains("anything") && out.stderr.contains("the registry is empty"),
        "{}",
        out.stderr
    );
    // Reading never creates the config directory.
    assert!(!env.config.exists());
    // An existing config dir without datastores.json is empty too.
    mkdir(&env.config);
    assert!(env.ok(&["list"]).stdout.is_empty());
    assert!(!env.registry_path().exists());
}

#[test]
fn the_registry_is_written_atomically_without_leftovers() {
    let env = Env::new();
    env.register_local("a");
    env.register_blob("b");
    env.ok(&["set-default", "b"]);
    env.ok(&["remove", "a"]);
    let names: Vec<String> = fs::read_dir(&env.config)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["datastores.json"]);
    let registry = env.registry();
    assert_eq!(registry["default"], "b");
    assert_eq!(
        registry["datastores"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["b"]
    );
}

#[test]
fn dataref_config_dir_env_works_like_the_flag() {
    let env = Env::new();
    let root = env.root.join("data").display().to_string();
    let via_env = |args: &[&str]| {
        let mut cmd = command();
        cmd.current_dir(&env.root)
            .env("DATAREF_CONFIG_DIR", &env.config)
            .args(args);
        output(&mut cmd)
    };
    via_env(&[
        "datastore",
        "register",
        "local",
        "--name",
        "envstore",
        "--root",
        &root,
    ])
    .expect_code(0);
    via_env(&["datastore", "set-default", "envstore"]).expect_code(0);
    assert_eq!(env.registry()["default"], "envstore");
    // The flag sees what the variable wrote.
    assert_eq!(list_lines(&env.ok(&["list"])), ["envstore\tlocal"]);
    let out = via_env(&["datastore", "list"]);
    out.expect_code(0);
    assert_eq!(list_lines(&out), ["envstore\tlocal"]);

    // The flag beats the variable.
    let other = env.root.join("other-config");
    let mut cmd = command();
    cmd.current_dir(&env.root)
        .env("DATAREF_CONFIG_DIR", &env.config)
        .arg("--config-dir")
        .arg(&other)
        .args(["datastore", "list"]);
    let out = output(&mut cmd);
    out.expect_code(0);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
}

#[test]
fn a_corrupt_registry_exits_65_naming_the_file() {
    let env = Env::new();
    let corrupt = [
        "{\"default\": null, \"datastores\": {",    // truncated JSON
        "[]",                                       // not an object
        r#"{"default": "gone", "datastores": {}}"#, // dangling default
        r#"{"datastores": {"x": {"kind": "s3"}}}"#, // unknown kind
        r#"{"default": null, "datastores": {}, "extra": 1}"#, // unknown field
        r#"{"datastores": {"../escape": {"kind": "local", "root": "/"}}}"#, // unsafe name
    ];
    for text in corrupt {
        write_file(&env.registry_path(), text, 0o644);
        let root = env.root.join("data").display().to_string();
        for args in [
            &["list"][..],
            &["get", "x"],
            &["set-default", "x"],
            &["remove", "x"],
            &["register", "local", "--name", "new", "--root", &root],
        ] {
            let out = env.ds(args);
            assert_eq!(out.code, 65, "{text}: {args:?}: {}", out.stderr);
            assert!(
                out.stderr
                    .contains(&env.registry_path().display().to_string()),
                "{text}: {args:?}: {}",
                out.stderr
            );
        }
        // Never overwritten by a failed command.
        assert_eq!(env.registry_text(), text);
    }
}

#[test]
fn relative_secret_paths_in_the_registry_resolve_against_the_config_dir() {
    let env = Env::new();
    write_file(&env.config.join("keys/hand.key"), KEY, 0o600);
    write_file(
        &env.registry_path(),
        r#"{"default": null, "datastores": {"hand": {"kind": "azure_blob",
            "account_name": "acct1", "container_name": "data",
            "account_key": {"file": "keys/hand.key"}}}}"#,
        0o644,
    );
    let got = env.get("hand");
    assert_eq!(
        got["account_key"],
        json!({"file": env.config.join("keys/hand.key")})
    );
}
