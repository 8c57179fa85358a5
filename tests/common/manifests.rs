//! Manifest builders shared by the `dataref validate` tests: the inline datastores most cases
//! use, and the files (key files, datastore roots) the cases set up in their job directory.

use std::path::Path;

use serde_json::{Value, json};

use super::cli::{mkdir, write_file};

/// An environment variable no test sets: `{"env": ...}` secrets naming it are "unset".
pub const UNSET_VAR: &str = "DATAREF_TEST_SURELY_UNSET_SAS";
/// A variable the positive tests set, holding a recognisable secret value.
pub const SET_VAR: &str = "DATAREF_TEST_SAS_TOKEN";
pub const SET_VAR_VALUE: &str = "sv=2024&sig=ENV-SECRET-VALUE-42";

pub fn datastore_root(dir: &Path) {
    mkdir(&dir.join("datastore_root"));
}

pub fn key_file(dir: &Path, mode: u32) {
    datastore_root(dir);
    write_file(&dir.join("keys/blob.key"), "S0VZLVNFQ1JFVC0xMjM=\n", mode);
}

pub fn safe_key(dir: &Path) {
    key_file(dir, 0o600);
}

pub fn group_readable_key(dir: &Path) {
    key_file(dir, 0o640);
}

pub fn empty_key(dir: &Path) {
    datastore_root(dir);
    write_file(&dir.join("keys/blob.key"), "\n", 0o600);
}

pub fn store_named_dir(dir: &Path) {
    mkdir(&dir.join("store/train"));
}

pub fn nothing(_: &Path) {}

/// The inline local datastore most cases use; its root is outside `<working_dir>/store/`.
pub fn store() -> Value {
    json!({"store": {"kind": "local", "root": "./datastore_root"}})
}

/// A valid inline Azure Blob datastore with a key file (created by `safe_key`).
pub fn blob() -> Value {
    json!({"kind": "azure_blob", "account_name": "devstoreaccount1", "container_name": "data",
           "endpoint": "http://127.0.0.1:10000/devstoreaccount1",
           "account_key": {"file": "keys/blob.key"}})
}

/// A manifest using `datastores` (object), with one reference `train` to `blob`.
pub fn with_blob(blob: Value) -> Value {
    json!({"datastores": {"blob": blob},
           "data_references": {"train": {"datastore": "blob", "path_on_datastore": "train"}},
           "command": ["true"]})
}

/// A manifest with the `store` datastore, `references` and `extra` top-level fields.
pub fn with_refs(references: Value, extra: Value) -> Value {
    let mut manifest = json!({"datastores": store(), "data_references": references,
                              "command": ["python3", "train.py"]});
    for (k, v) in extra.as_object().unwrap() {
        manifest[k] = v.clone();
    }
    manifest
}

/// A valid manifest plus the top-level fields in `extra` (which may replace any).
pub fn base(extra: Value) -> Value {
    with_refs(
        json!({"train": {"datastore": "store", "path_on_datastore": "train",
                          "mode": "download"}}),
        extra,
    )
}

pub fn blob_with(field: &str, value: Value) -> Value {
    let mut b = blob();
    b[field] = value;
    with_blob(b)
}

pub fn blob_without(field: &str) -> Value {
    let mut b = blob();
    b.as_object_mut().unwrap().remove(field);
    with_blob(b)
}
