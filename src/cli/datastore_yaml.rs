//! `dataref datastore register --file`: Azure ML's datastore YAML (what `az ml datastore create
//! --file` reads) as a registry definition. An inline key or SAS token is moved into
//! `<config-dir>/keys/<name>` (0600) and referenced, never stored in the registry.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::datastore::{Common, checked_azure_spec};
use super::exit::CliError;
use crate::model::datastore::{Credential, DatastoreSpec, SecretRef, check_datastore_name};
use crate::model::issues::{Issues, Object};

const FIELDS: &[&str] = &[
    "$schema",
    "name",
    "type",
    "description",
    "tags",
    "properties",
    "account_name",
    "container_name",
    "file_share_name",
    "endpoint",
    "protocol",
    "credentials",
];

/// The credential a definition gives: a secret inline, or none (identity-based access).
enum InlineSecret {
    AccountKey(String),
    SasToken(String),
    Identity,
}

/// Reads `file` and returns the name and the definition to register; an inline secret is
/// written to its key file only once everything else is known to be valid.
pub(super) fn load(
    config_dir: &Path,
    file: &Path,
    name_override: Option<String>,
    common: Common,
) -> Result<(Common, DatastoreSpec), CliError> {
    let bytes = std::fs::read(file).map_err(|e| CliError::local(file.display().to_string(), e))?;
    let invalid = |lines: Vec<String>| {
        CliError::InvalidDefinition(format!(
            "{} is invalid: {}",
            file.display(),
            lines.join("; ")
        ))
    };
    let value = crate::manifest::decode_document(&bytes).map_err(|i| invalid(vec![i.message]))?;
    let mut issues = Issues::default();
    let parsed = parse(&value, name_override, &mut issues);
    let (name, blob, account, container, endpoint, secret) = match parsed {
        Some(parsed) if issues.is_empty() => parsed,
        _ => return Err(invalid(issues.iter().map(|i| i.to_string()).collect())),
    };
    check_datastore_name(&name).map_err(|message| invalid(vec![format!("name: {message}")]))?;
    // Checked before the key file is written: it must not replace another datastore's key.
    let registry = super::load_registry(config_dir)?;
    if registry.datastores.contains_key(&name) && !common.overwrite {
        return Err(CliError::InvalidDefinition(format!(
            "datastore {name:?} already exists; pass --overwrite to replace it"
        )));
    }
    // Azure ML's field names in messages (the registry's JSON says `share_name`).
    let spec = |credential| {
        checked_azure_spec(
            blob,
            account.clone(),
            container.clone(),
            endpoint.clone(),
            credential,
        )
        .map_err(|problems| {
            let problems = problems
                .iter()
                .map(|p| p.replacen("share_name:", "file_share_name:", 1));
            invalid(problems.collect())
        })
    };
    spec(Credential::AccountKey(SecretRef::File(PathBuf::from("/"))))?;
    let (value, as_credential): (&str, fn(SecretRef) -> Credential) = match &secret {
        InlineSecret::AccountKey(key) => (key, Credential::AccountKey),
        InlineSecret::SasToken(sas) => (sas, Credential::SasToken),
        InlineSecret::Identity => {
            let identity = Credential::ManagedIdentity { client_id: None };
            return Ok((Common { name, ..common }, spec(identity)?));
        }
    };
    let key_file = crate::registry::store_secret(config_dir, &name, value)?;
    eprintln!(
        "the secret of {} is now in {} (0600); the registry references that file",
        file.display(),
        key_file.display()
    );
    let spec = spec(as_credential(SecretRef::File(key_file)))?;
    Ok((Common { name, ..common }, spec))
}

type Parsed = (String, bool, String, String, Option<String>, InlineSecret);

fn parse(value: &Value, name_override: Option<String>, issues: &mut Issues) -> Option<Parsed> {
    let top = Object::new(value, "", issues)?;
    top.reject_unknown(FIELDS, issues);
    let blob = match top.required_string("type", issues) {
        Some("azure_blob") => Some(true),
        Some("azure_file") => Some(false),
        Some(kind @ ("azure_data_lake_gen1" | "azure_data_lake_gen2")) => {
            issues.push(
                "type",
                format!("{kind} is not supported: dataref reads Blob containers and File shares"),
            );
            None
        }
        Some(other) => {
            issues.push(
                "type",
                format!("expected \"azure_blob\" or \"azure_file\", got {other:?}"),
            );
            None
        }
        None => None,
    };
    let name = match name_override {
        Some(name) => Some(name),
        None => top.required_string("name", issues).map(str::to_owned),
    };
    let account = top
        .required_string("account_name", issues)
        .map(str::to_owned);
    let container_field = match blob {
        Some(false) => "file_share_name",
        _ => "container_name",
    };
    let container = top
        .required_string(container_field, issues)
        .map(str::to_owned);
    let endpoint = endpoint(&top, account.as_deref(), blob, issues);
    let secret = secret(&top, issues);
    Some((name?, blob?, account?, container?, endpoint?, secret?))
}

/// Azure ML's `endpoint` is the storage DNS suffix (`core.windows.net`, the default); a full URL
/// (`http://127.0.0.1:10000/devstoreaccount1`, an emulator) is taken as the service URL.
fn endpoint(
    top: &Object<'_>,
    account: Option<&str>,
    blob: Option<bool>,
    issues: &mut Issues,
) -> Option<Option<String>> {
    let scheme = match top.string("protocol", issues) {
        None | Some("https" | "wasbs") => "https",
        Some("http" | "wasb") => "http",
        Some(other) => {
            issues.push(
                "protocol",
                format!("expected \"https\", \"wasbs\", \"http\" or \"wasb\", got {other:?}"),
            );
            return None;
        }
    };
    let suffix = top.string("endpoint", issues).unwrap_or("core.windows.net");
    if suffix.contains("://") {
        return Some(Some(suffix.trim_end_matches('/').to_owned()));
    }
    if scheme == "https" && suffix == "core.windows.net" {
        return Some(None); // Azure's public endpoint, dataref's default
    }
    let service = if blob == Some(false) { "file" } else { "blob" };
    Some(Some(format!("{scheme}://{}.{service}.{suffix}", account?)))
}

fn secret(top: &Object<'_>, issues: &mut Issues) -> Option<InlineSecret> {
    // No credentials: identity-based access, the node's managed identity (Azure ML v2's
    // recommended setup).
    let credentials = match top.get("credentials") {
        None | Some(Value::Null) => return Some(InlineSecret::Identity),
        Some(value) => Object::new(value, "credentials", issues)?,
    };
    if credentials.map.is_empty() {
        return Some(InlineSecret::Identity);
    }
    let keys: Vec<&str> = credentials.map.keys().map(String::as_str).collect();
    // Never echo a value: only its type when it is not a string.
    let text = |field: &str, issues: &mut Issues| match credentials.get(field) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Some(other) => {
            let what = match other {
                Value::String(_) => "an empty string".to_owned(),
                other => crate::model::issues::type_name(other).to_owned(),
            };
            issues.push(
                credentials.field_path(field),
                format!("expected the secret as a string, got {what}"),
            );
            None
        }
        None => None,
    };
    match keys.as_slice() {
        ["account_key"] => text("account_key", issues).map(InlineSecret::AccountKey),
        ["sas_token"] => text("sas_token", issues).map(InlineSecret::SasToken),
        _ if keys
            .iter()
            .any(|k| ["client_id", "tenant_id", "client_secret", "certificate"].contains(k)) =>
        {
            issues.push(
                "credentials",
                "service principal credentials are not supported; give account_key or sas_token",
            );
            None
        }
        _ => {
            issues.push(
                "credentials",
                format!(
                    "expected exactly one of account_key, sas_token; got {}",
                    keys.join(", ")
                ),
            );
            None
        }
    }
}
