//! Secrets (account keys, SAS tokens) held by reference, never by value in any document.
//!
//! A `SecretRef` names where a secret lives (`{"file": PATH}` or `{"env": VAR}`). Its value is
//! read only when needed, into a `Secret` whose `Debug` is redacted and which has no `Display`,
//! so it cannot reach a log line or an error message by accident.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Where a secret is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    File(PathBuf),
    Env(String),
}

/// A secret value. Redacted in `Debug`; read it with `expose`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for signing requests. Never log or format it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("secret file {path} does not exist")]
    Missing { path: PathBuf },
    #[error("secret file {path} cannot be read: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("secret file {path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error(
        "secret file {path} is readable by group or others (mode {mode:04o}); run `chmod 600 {path}`"
    )]
    UnsafePermissions { path: PathBuf, mode: u32 },
    #[error("secret file {path} is empty")]
    EmptyFile { path: PathBuf },
    #[error("environment variable {var} is not set")]
    EnvUnset { var: String },
    #[error("environment variable {var} is empty")]
    EnvEmpty { var: String },
}

impl SecretRef {
    /// Resolves a relative file path against `base` (the manifest's or registry's directory).
    pub fn resolved(&self, base: &Path) -> SecretRef {
        match self {
            SecretRef::File(path) if path.is_relative() => SecretRef::File(base.join(path)),
            other => other.clone(),
        }
    }

    /// Checks that the file exists, is a regular file (symlinks followed, so Kubernetes Secret
    /// volumes work) and is not readable by group or others. Reads nothing.
    pub fn check_permissions(&self) -> Result<(), SecretError> {
        let SecretRef::File(path) = self else {
            return Ok(());
        };
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => SecretError::Missing { path: path.clone() },
            _ => SecretError::Unreadable {
                path: path.clone(),
                reason: e.to_string(),
            },
        })?;
        if !meta.is_file() {
            return Err(SecretError::NotAFile { path: path.clone() });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(SecretError::UnsafePermissions {
                path: path.clone(),
                mode,
            });
        }
        Ok(())
    }

    /// Reads the secret, checking permissions first. Surrounding whitespace is dropped (files
    /// written by `echo` end in a newline).
    pub fn read(&self) -> Result<Secret, SecretError> {
        match self {
            SecretRef::File(path) => {
                self.check_permissions()?;
                let text = std::fs::read_to_string(path).map_err(|e| SecretError::Unreadable {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                let value = text.trim();
                if value.is_empty() {
                    return Err(SecretError::EmptyFile { path: path.clone() });
                }
                Ok(Secret::new(value))
            }
            SecretRef::Env(var) => match std::env::var(var) {
                Ok(value) if !value.trim().is_empty() => Ok(Secret::new(value.trim())),
                Ok(_) => Err(SecretError::EnvEmpty { var: var.clone() }),
                Err(_) => Err(SecretError::EnvUnset { var: var.clone() }),
            },
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            SecretRef::File(path) => serde_json::json!({ "file": path }),
            SecretRef::Env(var) => serde_json::json!({ "env": var }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn redacted_debug() {
        let secret = Secret::new("c2VjcmV0LWtleQ==");
        assert!(!format!("{secret:?}").contains("c2VjcmV0"));
    }

    #[test]
    fn file_permissions_are_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        fs::write(&path, "abc\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let secret = SecretRef::File(path.clone());
        assert!(matches!(
            secret.read(),
            Err(SecretError::UnsafePermissions { mode: 0o640, .. })
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(secret.read().unwrap().expose(), "abc");

        // A symlink to a safe file is followed (Kubernetes Secret volumes).
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert_eq!(SecretRef::File(link).read().unwrap().expose(), "abc");
    }

    #[test]
    fn missing_and_empty() {
        let dir = tempfile::tempdir().unwrap();
        let missing = SecretRef::File(dir.path().join("nope"));
        assert!(matches!(missing.read(), Err(SecretError::Missing { .. })));
        let empty = dir.path().join("empty");
        fs::write(&empty, "\n").unwrap();
        fs::set_permissions(&empty, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            SecretRef::File(empty).read(),
            Err(SecretError::EmptyFile { .. })
        ));
        let unset = SecretRef::Env("DATAREF_TEST_SURELY_UNSET_VAR".into());
        assert!(matches!(unset.read(), Err(SecretError::EnvUnset { .. })));
    }
}
