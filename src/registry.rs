//! The datastore registry, `<config-dir>/datastores.json`: the compute-side twin of
//! `Datastore.register_*`, `Datastore.get`, `ws.datastores` and `set_default_datastore`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::model::DatastoreSpec;
use crate::model::issues::{Issue, Issues, Object};

pub const REGISTRY_FILE: &str = "datastores.json";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    pub default: Option<String>,
    pub datastores: BTreeMap<String, DatastoreSpec>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid: {}", format_issues(.issues))]
    Invalid { path: PathBuf, issues: Vec<Issue> },
}

fn format_issues(issues: &[Issue]) -> String {
    issues
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

impl Registry {
    pub fn path(config_dir: &Path) -> PathBuf {
        config_dir.join(REGISTRY_FILE)
    }

    /// Loads the registry; a missing file is an empty registry.
    pub fn load(config_dir: &Path) -> Result<Self, RegistryError> {
        let path = Self::path(config_dir);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(RegistryError::Io { path, source }),
        };
        let value: Value = serde_json::from_str(&text).map_err(|e| RegistryError::Invalid {
            path: path.clone(),
            issues: vec![Issue {
                path: String::new(),
                message: format!("invalid JSON: {e}"),
            }],
        })?;
        let mut issues = Issues::default();
        let registry = Self::parse(&value, config_dir, &mut issues);
        if !issues.is_empty() {
            return Err(RegistryError::Invalid {
                path,
                issues: issues.0,
            });
        }
        Ok(registry)
    }

    fn parse(value: &Value, config_dir: &Path, issues: &mut Issues) -> Self {
        let mut registry = Self::default();
        let Some(obj) = Object::new(value, "", issues) else {
            return registry;
        };
        obj.reject_unknown(&["default", "datastores"], issues);
        registry.default = obj.string("default", issues).map(str::to_owned);
        if let Some(stores) = obj.get("datastores") {
            if let Some(stores) = Object::new(stores, "datastores", issues) {
                for (name, spec) in stores.map {
                    let path = stores.field_path(name);
                    // The name becomes a directory under working_dir: a hand-edited
                    // registry must not smuggle in `..` or `/`.
                    if let Err(message) = crate::model::datastore::check_datastore_name(name) {
                        issues.push(&path, message);
                        continue;
                    }
                    if let Some(spec) = DatastoreSpec::parse(spec, &path, config_dir, issues) {
                        registry.datastores.insert(name.clone(), spec);
                    }
                }
            }
        }
        if let Some(default) = &registry.default {
            if !stores_contains(value, default) {
                issues.push(
                    "default",
                    format!("names {default:?}, which is not a registered datastore"),
                );
            }
        }
        registry
    }

    pub fn to_json(&self) -> Value {
        let stores: serde_json::Map<String, Value> = self
            .datastores
            .iter()
            .map(|(name, spec)| (name.clone(), spec.to_json()))
            .collect();
        json!({"default": self.default, "datastores": stores})
    }

    /// Writes the registry atomically: a temporary file in the same directory, fsynced, then
    /// renamed over the old one, so a crash never leaves a half-written registry.
    pub fn save(&self, config_dir: &Path) -> Result<(), RegistryError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RegistryError::Io { path, source }
        };
        fs::create_dir_all(config_dir).map_err(io(config_dir))?;
        let path = Self::path(config_dir);
        let temp = config_dir.join(format!(".{REGISTRY_FILE}.{}.tmp", std::process::id()));
        let mut text = serde_json::to_string_pretty(&self.to_json()).expect("JSON values encode");
        text.push('\n');
        let written = (|| {
            let mut file = fs::File::create(&temp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            fs::rename(&temp, &path)?;
            // The rename is durable only once the directory entry is.
            fs::File::open(config_dir)?.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(io(&path)(e));
        }
        Ok(())
    }
}

/// Where the registry keeps secrets it was handed inline (`datastore register --file`).
pub const KEYS_DIR: &str = "keys";

/// Writes `secret` to `<config-dir>/keys/<name>` (directory 0700, file 0600, replaced
/// atomically) and returns the file's path, for a datastore to reference instead of the value.
pub fn store_secret(config_dir: &Path, name: &str, secret: &str) -> Result<PathBuf, RegistryError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = config_dir.join(KEYS_DIR);
    let path = dir.join(name);
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(secret.as_bytes())?;
        file.sync_all()?;
        fs::rename(&temp, &path)?;
        fs::File::open(&dir)?.sync_all()
    })();
    if let Err(source) = written {
        let _ = fs::remove_file(&temp);
        return Err(RegistryError::Io { path, source });
    }
    Ok(path)
}

fn stores_contains(value: &Value, name: &str) -> bool {
    value
        .get("datastores")
        .and_then(Value::as_object)
        .is_some_and(|m| m.contains_key(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_is_empty_and_save_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("nested/config");
        assert_eq!(Registry::load(&config).unwrap(), Registry::default());
        let mut registry = Registry::default();
        registry.datastores.insert(
            "data".into(),
            DatastoreSpec::Local {
                root: "/srv/data".into(),
            },
        );
        registry.default = Some("data".into());
        registry.save(&config).unwrap();
        assert_eq!(Registry::load(&config).unwrap(), registry);
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(&config)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(REGISTRY_FILE)]);
    }

    #[test]
    fn dangling_default_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(REGISTRY_FILE),
            r#"{"default": "gone", "datastores": {}}"#,
        )
        .unwrap();
        let err = Registry::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("default") && err.contains("gone"), "{err}");
    }
}
