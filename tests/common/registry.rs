//! The registry harness of registry_*.rs: a directory with a (not yet existing) config dir,
//! a 0600 key file and a SAS file, and `dataref datastore ...` run against it with every output
//! checked for the secrets.

use std::fs;
use std::path::PathBuf;

use serde_json::Value;

use super::cli::{Outcome, command, mkdir, output, write_file};

/// A recognisable account key: it must never appear in any output or in the registry.
pub const KEY: &str = "VE9QU0VDUkVULUFDQ09VTlQtS0VZLTAxMjM0NTY3ODk=";
/// A recognisable SAS token held in an environment variable.
pub const SAS: &str = "sv=2024-05-04&ss=b&sig=TOPSECRETSASSIGNATURE";
pub const SAS_VAR: &str = "DATAREF_TEST_REGISTRY_SAS";

pub struct Env {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub config: PathBuf,
}

impl Env {
    /// A fresh directory with a (not yet existing) config dir and a 0600 key file.
    pub fn new() -> Self {
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

    pub fn key(&self) -> String {
        self.root.join("keys/account.key").display().to_string()
    }

    pub fn sas_file(&self) -> String {
        self.root.join("keys/sas.token").display().to_string()
    }

    pub fn registry_path(&self) -> PathBuf {
        self.config.join("datastores.json")
    }

    /// `dataref --config-dir CONFIG datastore ARGS...` from the root, with the SAS variable set.
    pub fn ds(&self, args: &[&str]) -> Outcome {
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

    pub fn ok(&self, args: &[&str]) -> Outcome {
        let out = self.ds(args);
        out.expect_code(0);
        out
    }

    pub fn registry_text(&self) -> String {
        fs::read_to_string(self.registry_path()).unwrap()
    }

    /// The registry file, parsed and checked against the documented shape.
    pub fn registry(&self) -> Value {
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

    pub fn get(&self, name: &str) -> Value {
        self.ok(&["get", name]).json()
    }

    pub fn register_blob(&self, name: &str) {
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

    pub fn register_local(&self, name: &str) {
        let root = self.root.join("data").display().to_string();
        self.ok(&["register", "local", "--name", name, "--root", &root]);
    }
}

/// The key, its recognisable prefix and the SAS signature: none may appear in any output or in
/// the registry.
#[track_caller]
pub fn assert_no_secret(text: &str) {
    super::secrets::assert_no_secret(
        text,
        &[KEY, "VE9QU0VDUkVU", "TOPSECRETSAS"],
        "dataref's output or the registry",
    );
}

pub fn list_lines(out: &Outcome) -> Vec<String> {
    out.stdout.lines().map(str::to_owned).collect()
}

/// `register azure-blob --name NAME --account acct1 --container data` and `credential` (the
/// flags a test is about).
pub fn blob_args<'a>(name: &'a str, credential: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "register",
        "azure-blob",
        "--name",
        name,
        "--account",
        "acct1",
        "--container",
        "data",
    ];
    args.extend_from_slice(credential);
    args
}
