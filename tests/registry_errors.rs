//! `dataref datastore ...` refusing what it must: unknown and duplicate names,
//! unsafe or missing secret files, credential flags, invalid names and locations, corrupt or
//! missing registries, and atomic writes. The happy paths are in registry_cli.rs.

mod common;

use common::registry::*;

use std::fs;

use common::cli::{command, mkdir, output, snapshot, write_file};
use serde_json::json;
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
    let out = env.ds(&blob_args(
        "loose",
        &["--sas-file", loose.to_str().unwrap()],
    ));
    assert_eq!(out.code, 65, "{}", out.stderr);
    assert_eq!(env.registry_text(), registry);
}

#[test]
fn missing_key_file_and_symlinked_secret() {
    let env = Env::new();
    let missing = env.root.join("keys/nope.key");
    let out = env.ds(&blob_args(
        "blob",
        &["--key-file", missing.to_str().unwrap()],
    ));
    assert_eq!(out.code, 65, "{}", out.stderr);
    assert!(out.stderr.contains("does not exist"), "{}", out.stderr);
    assert!(!env.config.exists());

    // A Kubernetes Secret volume: a symlink to a 0400 file is followed and accepted.
    write_file(&env.root.join("secret/..data/key"), KEY, 0o400);
    let link = env.root.join("secret/key");
    std::os::unix::fs::symlink(env.root.join("secret/..data/key"), &link).unwrap();
    env.ok(&blob_args("blob", &["--key-file", link.to_str().unwrap()]));
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
    let out = env.ds(&blob_args(
        "blob",
        &[
            "--anonymous",
            "--endpoint",
            "http://127.0.0.1:10000/acct1?sv=1&sig=TOPSECRETSASSIGNATURE",
        ],
    ));
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
