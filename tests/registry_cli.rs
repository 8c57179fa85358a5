//! `dataref datastore ...` through the real binary: the registry at
//! `<config-dir>/datastores.json`, secrets held by reference only.

mod common;

use common::registry::*;

use std::fs;

use serde_json::{Value, json};
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
    env.ok(&blob_args("blob", &["--key-file", "keys/account.key"]));
    assert_eq!(env.get("blob")["account_key"], json!({"file": env.key()}));
}

#[test]
fn register_with_sas_env_sas_file_key_env_and_anonymous() {
    let env = Env::new();
    env.ok(&blob_args("by_sas_env", &["--sas-env", SAS_VAR]));
    env.ok(&blob_args("by_sas_file", &["--sas-file", &env.sas_file()]));
    env.ok(&blob_args("by_key_env", &["--key-env", "MY_ACCOUNT_KEY"]));
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
