//! `dataref datastore register --file`: Azure ML's own datastore YAML (the schema `az ml
//! datastore create --file` reads). Inline secrets move into `<config-dir>/keys/<name>` (0600);
//! the registry only references them; no output ever shows them.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::azurite;
use common::cli::{run_in, write_file};
use common::registry::{Env, KEY, SAS};
use serde_json::json;

fn write_yaml(env: &Env, name: &str, text: &str) -> String {
    let path = env.root.join(name);
    write_file(&path, text, 0o600);
    path.display().to_string()
}

// A blob datastore with an inline key is registered, its key moved to a 0600 file, and it
// works: a download through it from Azurite.
#[test]
fn a_blob_datastore_yaml_registers_with_its_key_moved_to_a_file_and_works() {
    let env = Env::new();
    let endpoint = azurite::shared().endpoint();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = runtime.block_on(azurite::fresh_store(&endpoint, &env.root, "fromyaml"));
    let container = azurite::container_of(&store);
    // One file to put there with dataref's own upload, through the new datastore.
    let seed = env.root.join("seed");
    write_file(&seed.join("hello.txt"), "hi", 0o644);
    let yaml = write_yaml(
        &env,
        "blob.yml",
        &format!(
            "$schema: https://azuremlschemas.azureedge.net/latest/azureBlob.schema.json
name: fromyaml
type: azure_blob
description: Credential-based blob datastore.
account_name: {account}
container_name: {container}
endpoint: {endpoint}
credentials:
  account_key: {key}
",
            account = azurite::ACCOUNT,
            key = azurite::KEY,
        ),
    );
    let out = env.ds(&["register", "--file", &yaml]);
    assert_eq!(out.code, 0, "{}", out.all_output());
    assert!(!out.all_output().contains(azurite::KEY));
    let key_file = env.config.join("keys/fromyaml");
    let meta = std::fs::metadata(&key_file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), azurite::KEY);
    let registry = env.registry_text();
    assert!(!registry.contains(azurite::KEY), "{registry}");
    let got = env.get("fromyaml");
    assert_eq!(got["kind"], "azure_blob");
    assert_eq!(got["container_name"], json!(container));
    assert_eq!(got["account_key"], json!({"file": key_file}));

    let upload = run_in(
        &env.root,
        &env.config,
        &[
            "upload",
            "--datastore",
            "fromyaml",
            "--no-progress",
            seed.to_str().unwrap(),
        ],
    );
    assert_eq!(upload.code, 0, "{}", upload.all_output());
    let target = env.root.join("down");
    let download = run_in(
        &env.root,
        &env.config,
        &[
            "download",
            "--datastore",
            "fromyaml",
            "--target-path",
            target.to_str().unwrap(),
            "--no-progress",
        ],
    );
    assert_eq!(download.code, 0, "{}", download.all_output());
    assert_eq!(
        std::fs::read_to_string(target.join("hello.txt")).unwrap(),
        "hi"
    );
}

// A file share with a SAS token and the public endpoint; `protocol` and the DNS suffix make the
// service URL the way Azure ML does.
#[test]
fn a_file_share_yaml_with_a_sas_and_a_sovereign_suffix() {
    let env = Env::new();
    let yaml = write_yaml(
        &env,
        "file.yml",
        &format!(
            "type: azure_file
name: share_one
account_name: myacct
file_share_name: training
endpoint: core.chinacloudapi.cn
credentials:
  sas_token: '{SAS}'
"
        ),
    );
    env.ok(&["register", "--file", &yaml]);
    let got = env.get("share_one");
    assert_eq!(got["kind"], "azure_file");
    assert_eq!(got["share_name"], "training");
    assert_eq!(got["endpoint"], "https://myacct.file.core.chinacloudapi.cn");
    let key_file = env.config.join("keys/share_one");
    assert_eq!(got["sas_token"], json!({"file": key_file}));
    assert_eq!(std::fs::read_to_string(key_file).unwrap(), SAS);
    // --name renames, and the public Azure endpoint stays implicit.
    let yaml = write_yaml(
        &env,
        "blob.yml",
        &format!(
            "type: azure_blob\nname: x\naccount_name: myacct\ncontainer_name: data\ncredentials: {{account_key: {KEY}}}\n"
        ),
    );
    env.ok(&["register", "--file", &yaml, "--name", "renamed"]);
    let got = env.get("renamed");
    assert_eq!(got.get("endpoint"), None, "{got}");
    // No credentials: identity-based access, the node's managed identity; no key file.
    let yaml = write_yaml(
        &env,
        "identity.yml",
        "type: azure_blob\nname: by_identity\naccount_name: myacct\ncontainer_name: data\n",
    );
    env.ok(&["register", "--file", &yaml]);
    let got = env.get("by_identity");
    assert_eq!(got["credential"], "managed_identity", "{got}");
    assert!(!env.config.join("keys/by_identity").exists());
}

// Invalid definitions are refused naming the field, write no key file, never echo a secret,
// and never replace another datastore's key.
#[test]
fn invalid_definitions_are_refused_naming_the_field_and_keep_existing_keys() {
    let env = Env::new();
    let cases = [
        (
            "type: azure_data_lake_gen2\nname: n\naccount_name: myacct\nfilesystem: f\n",
            "type: azure_data_lake_gen2 is not supported",
        ),
        (
            "type: azure_blob\nname: n\naccount_name: myacct\ncredentials: {account_key: K}\n",
            "container_name",
        ),
        (
            &format!(
                "type: azure_blob\nname: n\naccount_name: myacct\ncontainer_name: data\ncredentials: {{account_key: {KEY}, sas_token: '{SAS}'}}\n"
            ),
            "expected exactly one of account_key, sas_token",
        ),
        (
            "type: azure_blob\nname: n\naccount_name: myacct\ncontainer_name: data\ncredentials: {tenant_id: t, client_id: c, client_secret: s}\n",
            "service principal",
        ),
        (
            "type: azure_blob\nname: n\naccount_name: myacct\ncontainer_name: data\nprotocol: ftp\ncredentials: {account_key: K}\n",
            "protocol:",
        ),
        (
            "type: azure_blob\nname: bad-name\naccount_name: myacct\ncontainer_name: data\ncredentials: {account_key: K}\n",
            "name:",
        ),
    ];
    for (text, expected) in cases {
        let yaml = write_yaml(&env, "bad.yml", text);
        let out = env.ds(&["register", "--file", &yaml]);
        assert_eq!(out.code, 65, "{text}\n{}", out.all_output());
        assert!(out.stderr.contains(expected), "{expected}\n{}", out.stderr);
        assert!(!env.config.join("keys").exists(), "{text}");
    }
    // An existing datastore keeps its key file unless --overwrite is given.
    let yaml = |key: &str| {
        format!(
            "type: azure_blob\nname: kept\naccount_name: myacct\ncontainer_name: data\ncredentials: {{account_key: {key}}}\n"
        )
    };
    let first = write_yaml(&env, "first.yml", &yaml(KEY));
    env.ok(&["register", "--file", &first]);
    let second = write_yaml(&env, "second.yml", &yaml("b3RoZXIta2V5"));
    let out = env.ds(&["register", "--file", &second]);
    assert_eq!(out.code, 65, "{}", out.all_output());
    assert!(out.stderr.contains("--overwrite"), "{}", out.stderr);
    let key_file = env.config.join("keys/kept");
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), KEY);
    env.ok(&["register", "--file", &second, "--overwrite"]);
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), "b3RoZXIta2V5");
    // Neither a kind nor --file: a usage error.
    assert_eq!(env.ds(&["register"]).code, 64);
}
