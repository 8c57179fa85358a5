//! Datastore definitions: one schema shared by the registry and a manifest's inline
//! `datastores`.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::issues::{Issues, Object, did_you_mean};
pub use super::secret::{Secret, SecretError, SecretRef, UserIds};

/// How a datastore authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    AccountKey(SecretRef),
    SasToken(SecretRef),
    Anonymous,
    /// Entra ID tokens from the node's managed identity (IMDS, `IDENTITY_ENDPOINT`, or Azure
    /// ML compute's `MSI_ENDPOINT`); `client_id` picks a user-assigned identity.
    ManagedIdentity {
        client_id: Option<String>,
    },
}

impl Credential {
    pub fn secret_ref(&self) -> Option<&SecretRef> {
        match self {
            Credential::AccountKey(r) | Credential::SasToken(r) => Some(r),
            Credential::Anonymous | Credential::ManagedIdentity { .. } => None,
        }
    }
}

/// An Azure storage location: account, container or share, endpoint and credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureLocation {
    pub account_name: String,
    /// The container (Blob) or share (Files).
    pub container: String,
    /// Full service URL without a trailing `/`, or `None` for the public Azure endpoint.
    pub endpoint: Option<String>,
    pub credential: Credential,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatastoreSpec {
    Local { root: PathBuf },
    AzureBlob(AzureLocation),
    AzureFile(AzureLocation),
}

/// The kind names used in JSON (`"kind": "azure_blob"`).
pub const KINDS: &[&str] = &["local", "azure_blob", "azure_file"];

impl DatastoreSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            DatastoreSpec::Local { .. } => "local",
            DatastoreSpec::AzureBlob(_) => "azure_blob",
            DatastoreSpec::AzureFile(_) => "azure_file",
        }
    }

    pub fn credential(&self) -> Option<&Credential> {
        match self {
            DatastoreSpec::Local { .. } => None,
            DatastoreSpec::AzureBlob(loc) | DatastoreSpec::AzureFile(loc) => Some(&loc.credential),
        }
    }

    /// This datastore with its secret file read by `user` (see `SecretRef::UserFile`).
    pub fn with_secret_read_by(&self, user: &UserIds) -> DatastoreSpec {
        let mut spec = self.clone();
        if let DatastoreSpec::AzureBlob(loc) | DatastoreSpec::AzureFile(loc) = &mut spec {
            loc.credential = match &loc.credential {
                Credential::AccountKey(r) => Credential::AccountKey(r.read_by(user)),
                Credential::SasToken(r) => Credential::SasToken(r.read_by(user)),
                other => other.clone(),
            };
        }
        spec
    }

    /// The service URL: the configured endpoint or Azure's public one.
    pub fn service_url(&self) -> Option<String> {
        let (loc, service) = match self {
            DatastoreSpec::Local { .. } => return None,
            DatastoreSpec::AzureBlob(loc) => (loc, "blob"),
            DatastoreSpec::AzureFile(loc) => (loc, "file"),
        };
        Some(
            loc.endpoint.clone().unwrap_or_else(|| {
                format!("https://{}.{service}.core.windows.net", loc.account_name)
            }),
        )
    }

    /// Where the data lives, for plans and messages (never a secret).
    pub fn location(&self) -> String {
        match self {
            DatastoreSpec::Local { root } => root.display().to_string(),
            DatastoreSpec::AzureBlob(loc) | DatastoreSpec::AzureFile(loc) => {
                format!(
                    "{}/{}",
                    self.service_url().unwrap_or_default(),
                    loc.container
                )
            }
        }
    }

    /// Parses one datastore object, resolving relative paths against `base`.
    pub fn parse(value: &Value, path: &str, base: &Path, issues: &mut Issues) -> Option<Self> {
        let obj = Object::new(value, path, issues)?;
        let kind = obj.required_string("kind", issues)?;
        match kind {
            "local" => {
                obj.reject_unknown(&["kind", "root"], issues);
                let root = obj.required_string("root", issues)?;
                Some(DatastoreSpec::Local {
                    root: super::resolve_path(base, root),
                })
            }
            "azure_blob" => {
                obj.reject_unknown(
                    &[
                        "kind",
                        "account_name",
                        "container_name",
                        "endpoint",
                        "account_key",
                        "sas_token",
                        "anonymous",
                        "credential",
                        "client_id",
                    ],
                    issues,
                );
                let container = obj.required_string("container_name", issues);
                if let Some(name) = container {
                    check_container_name(name, &obj.field_path("container_name"), issues);
                }
                let loc = parse_azure(&obj, container, true, base, issues)?;
                Some(DatastoreSpec::AzureBlob(loc))
            }
            "azure_file" => {
                obj.reject_unknown(
                    &[
                        "kind",
                        "account_name",
                        "share_name",
                        "container_name",
                        "endpoint",
                        "account_key",
                        "sas_token",
                        "credential",
                        "client_id",
                    ],
                    issues,
                );
                // `container_name` is the seed's spelling for a share.
                let share = match (obj.get("share_name"), obj.get("container_name")) {
                    (Some(_), Some(_)) => {
                        issues.push(
                            obj.field_path("container_name"),
                            "give either share_name or its alias container_name, not both",
                        );
                        None
                    }
                    (None, Some(_)) => obj.required_string("container_name", issues),
                    _ => obj.required_string("share_name", issues),
                };
                if let Some(name) = share {
                    // Name the field the document actually used.
                    let field = if obj.get("share_name").is_some() {
                        "share_name"
                    } else {
                        "container_name"
                    };
                    check_container_name(name, &obj.field_path(field), issues);
                }
                let loc = parse_azure(&obj, share, false, base, issues)?;
                Some(DatastoreSpec::AzureFile(loc))
            }
            other => {
                let hint = match did_you_mean(other, KINDS) {
                    Some(s) => format!("unknown kind {other:?}; did you mean \"{s}\"?"),
                    None => format!(
                        "unknown kind {other:?}; expected one of: {}",
                        KINDS.join(", ")
                    ),
                };
                issues.push(obj.field_path("kind"), hint);
                None
            }
        }
    }

    /// The JSON stored in the registry (secrets by reference only).
    pub fn to_json(&self) -> Value {
        match self {
            DatastoreSpec::Local { root } => json!({"kind": "local", "root": root}),
            DatastoreSpec::AzureBlob(loc) | DatastoreSpec::AzureFile(loc) => {
                let mut map = serde_json::Map::new();
                map.insert("kind".into(), self.kind().into());
                map.insert("account_name".into(), loc.account_name.clone().into());
                let container_key = match self {
                    DatastoreSpec::AzureFile(_) => "share_name",
                    _ => "container_name",
                };
                map.insert(container_key.into(), loc.container.clone().into());
                if let Some(endpoint) = &loc.endpoint {
                    map.insert("endpoint".into(), endpoint.clone().into());
                }
                match &loc.credential {
                    Credential::AccountKey(r) => {
                        map.insert("account_key".into(), r.to_json());
                    }
                    Credential::SasToken(r) => {
                        map.insert("sas_token".into(), r.to_json());
                    }
                    Credential::Anonymous => {
                        map.insert("anonymous".into(), true.into());
                    }
                    Credential::ManagedIdentity { client_id } => {
                        map.insert("credential".into(), "managed_identity".into());
                        if let Some(id) = client_id {
                            map.insert("client_id".into(), id.clone().into());
                        }
                    }
                }
                Value::Object(map)
            }
        }
    }
}

fn parse_azure(
    obj: &Object<'_>,
    container: Option<&str>,
    anonymous_allowed: bool,
    base: &Path,
    issues: &mut Issues,
) -> Option<AzureLocation> {
    let account = obj.required_string("account_name", issues);
    if let Some(account) = account {
        check_account_name(account, &obj.field_path("account_name"), issues);
    }
    let endpoint = obj
        .string("endpoint", issues)
        .and_then(|e| normalize_endpoint(e, &obj.field_path("endpoint"), issues));
    let key = obj
        .get("account_key")
        .and_then(|v| parse_secret_ref(v, &obj.field_path("account_key"), base, issues));
    let sas = obj
        .get("sas_token")
        .and_then(|v| parse_secret_ref(v, &obj.field_path("sas_token"), base, issues));
    let anonymous = if anonymous_allowed {
        obj.bool("anonymous", issues).unwrap_or(false)
    } else {
        false
    };
    let identity = match obj.string("credential", issues) {
        None => false,
        Some("managed_identity") => true,
        Some(other) => {
            issues.push(
                obj.field_path("credential"),
                format!("expected \"managed_identity\", got {other:?}"),
            );
            false
        }
    };
    let client_id = obj.string("client_id", issues).map(str::to_owned);
    if client_id.is_some() && !identity {
        issues.push(
            obj.field_path("client_id"),
            "only with \"credential\": \"managed_identity\" (it names a user-assigned identity)",
        );
    }
    let given = [
        obj.get("account_key").is_some(),
        obj.get("sas_token").is_some(),
        anonymous,
        identity,
    ];
    let expected = if anonymous_allowed {
        "account_key, sas_token, \"credential\": \"managed_identity\" or \"anonymous\": true"
    } else {
        "account_key, sas_token or \"credential\": \"managed_identity\""
    };
    match given.iter().filter(|g| **g).count() {
        0 => issues.push(
            &obj.path,
            format!("no credential: expected exactly one of {expected}"),
        ),
        1 => {}
        _ => issues.push(
            &obj.path,
            format!("more than one credential: expected exactly one of {expected}"),
        ),
    }
    let credential = match (key, sas, anonymous, identity) {
        (Some(k), None, false, false) => Credential::AccountKey(k),
        (None, Some(s), false, false) => Credential::SasToken(s),
        (None, None, true, false) => Credential::Anonymous,
        (None, None, false, true) => Credential::ManagedIdentity { client_id },
        _ => return None,
    };
    Some(AzureLocation {
        account_name: account?.to_owned(),
        container: container?.to_owned(),
        endpoint,
        credential,
    })
}

/// Parses `{"file": PATH}` or `{"env": VAR}`.
pub fn parse_secret_ref(
    value: &Value,
    path: &str,
    base: &Path,
    issues: &mut Issues,
) -> Option<SecretRef> {
    let obj = match value {
        // A literal secret in a document is exactly what must never happen: say so clearly,
        // without echoing it.
        Value::String(_) => {
            issues.push(
                path,
                "secrets are never written inline; give {\"file\": PATH} or {\"env\": VAR}",
            );
            return None;
        }
        other => Object::new(other, path, issues)?,
    };
    obj.reject_unknown(&["file", "env"], issues);
    match (obj.get("file"), obj.get("env")) {
        (Some(_), Some(_)) => {
            issues.push(path, "give either \"file\" or \"env\", not both");
            None
        }
        (Some(_), None) => obj
            .required_string("file", issues)
            .map(|f| SecretRef::File(super::resolve_path(base, f))),
        (None, Some(_)) => {
            let var = obj.required_string("env", issues)?;
            if !is_env_name(var) {
                issues.push(
                    obj.field_path("env"),
                    format!("{var:?} is not a valid environment variable name"),
                );
                return None;
            }
            Some(SecretRef::Env(var.to_owned()))
        }
        (None, None) => {
            issues.push(path, "expected {\"file\": PATH} or {\"env\": VAR}");
            None
        }
    }
}

/// `^[A-Za-z_][A-Za-z0-9_]*$`, the portable shell variable name.
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Datastore names become a directory under `working_dir`, so they must be safe path
/// segments; Azure ML allows letters, digits and underscores.
pub fn check_datastore_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err("must be 1 to 255 characters".into());
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "{name:?} is not a valid datastore name: use letters, digits and underscores"
        ));
    }
    Ok(())
}

fn check_account_name(name: &str, path: &str, issues: &mut Issues) {
    let ok = (3..=24).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !ok {
        issues.push(
            path,
            format!("{name:?} is not a storage account name: 3-24 lowercase letters and digits"),
        );
    }
}

/// Azure's container and share naming rules; `$root`/`$web` are Blob's special containers.
fn check_container_name(name: &str, path: &str, issues: &mut Issues) {
    if name == "$root" || name == "$web" || name == "$logs" {
        return;
    }
    let chars_ok = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let ok = (3..=63).contains(&name.len())
        && chars_ok
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if !ok {
        issues.push(
            path,
            format!(
                "{name:?} is not a valid name: 3-63 lowercase letters, digits and single \
                 hyphens, starting and ending with a letter or digit"
            ),
        );
    }
}

/// Checks an endpoint URL and drops a trailing `/` (which would yield `//container`).
fn normalize_endpoint(endpoint: &str, path: &str, issues: &mut Issues) -> Option<String> {
    let trimmed = endpoint.trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("https://")
        .or_else(|| trimmed.strip_prefix("http://"));
    match rest {
        None => {
            issues.push(path, "expected an http:// or https:// URL");
            None
        }
        Some(rest) if rest.is_empty() || rest.contains(char::is_whitespace) => {
            issues.push(path, "expected an http:// or https:// URL with a host");
            None
        }
        // A query string would be a SAS token in plain sight: refuse without echoing it.
        Some(rest) if rest.contains('?') || rest.contains('#') => {
            issues.push(
                path,
                "the endpoint must not carry a query string; give a SAS token as sas_token",
            );
            None
        }
        Some(_) => Some(trimmed.to_owned()),
    }
}

impl fmt::Display for DatastoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind(), self.location())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: Value) -> (Option<DatastoreSpec>, Issues) {
        let mut issues = Issues::default();
        let spec = DatastoreSpec::parse(&value, "ds", Path::new("/base"), &mut issues);
        (spec, issues)
    }

    #[test]
    fn round_trips_through_json() {
        let cases = [
            json!({"kind": "local", "root": "/data"}),
            json!({"kind": "azure_blob", "account_name": "devstoreaccount1",
                   "container_name": "data", "endpoint": "http://127.0.0.1:10000/devstoreaccount1",
                   "account_key": {"file": "/etc/dataref/keys/k"}}),
            json!({"kind": "azure_blob", "account_name": "acct", "container_name": "pub",
                   "anonymous": true}),
            json!({"kind": "azure_file", "account_name": "acct", "share_name": "share",
                   "sas_token": {"env": "SAS"}}),
        ];
        for case in cases {
            let (spec, issues) = parse(case.clone());
            assert!(issues.is_empty(), "{issues:?}");
            assert_eq!(spec.unwrap().to_json(), case);
        }
    }

    #[test]
    fn trailing_slash_is_ignored_and_relative_paths_resolve() {
        let (spec, _) = parse(json!({"kind": "azure_blob", "account_name": "acct",
            "container_name": "data", "endpoint": "http://h:1/acct/", "sas_token": {"file": "k"}}));
        let Some(DatastoreSpec::AzureBlob(loc)) = spec else {
            panic!()
        };
        assert_eq!(loc.endpoint.as_deref(), Some("http://h:1/acct"));
        assert_eq!(
            loc.credential,
            Credential::SasToken(SecretRef::File("/base/k".into()))
        );
    }

    #[test]
    fn file_share_accepts_the_seed_spelling() {
        let (spec, issues) = parse(json!({"kind": "azure_file", "account_name": "acct",
            "container_name": "share", "account_key": {"env": "KEY"}}));
        assert!(issues.is_empty(), "{issues:?}");
        assert!(matches!(spec, Some(DatastoreSpec::AzureFile(loc)) if loc.container == "share"));
    }

    #[test]
    fn inline_secret_is_refused_without_echoing_it() {
        let (_, issues) = parse(json!({"kind": "azure_blob", "account_name": "acct",
            "container_name": "data", "account_key": "c2VjcmV0LWtleQ=="}));
        let text = format!("{issues:?}");
        assert!(text.contains("ds.account_key"), "{text}");
        assert!(!text.contains("c2VjcmV0"), "{text}");
    }

    #[test]
    fn public_endpoint_by_default() {
        let (spec, _) = parse(json!({"kind": "azure_file", "account_name": "acct",
            "share_name": "share", "account_key": {"env": "KEY"}}));
        assert_eq!(
            spec.unwrap().service_url().unwrap(),
            "https://acct.file.core.windows.net"
        );
    }
}
