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
    /// A file read by a process that runs as `user` (the secret of a job's own datastore, for
    /// a job run as that user): the kernel decides what it may read, so a file swapped for a
    /// link to root's secret yields EACCES, not root's secret.
    UserFile {
        path: PathBuf,
        user: UserIds,
    },
}

/// A user's ids, for acting with that user's rights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserIds {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl UserIds {
    /// Makes `command` run with these ids, set between fork and exec (groups and gid first:
    /// after setuid nothing can be changed, and there is no way back).
    pub fn run_command_as(&self, command: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        let (uid, gid) = (self.uid, self.gid);
        let groups: Vec<libc::gid_t> = self.groups.clone();
        // SAFETY: only async-signal-safe system calls between fork and exec.
        unsafe {
            command.pre_exec(move || switch_in_child(uid, gid, &groups));
        }
    }
}

/// Switches the calling process to `uid`, `gid` and `groups`, for the child between fork and
/// exec: only async-signal-safe calls (setgroups, setgid, setuid).
///
/// # Safety
/// Call only in a `pre_exec` hook.
pub unsafe fn switch_in_child(uid: u32, gid: u32, groups: &[libc::gid_t]) -> std::io::Result<()> {
    // Groups and gid first: after setuid we no longer may change them.
    // SAFETY: plain syscalls on a valid slice.
    unsafe {
        if libc::setgroups(groups.len(), groups.as_ptr()) != 0
            || libc::setgid(gid) != 0
            || libc::setuid(uid) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
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
    #[error(
        "secret file {path} is larger than {MAX_SECRET_BYTES} bytes; a key or SAS token is far smaller"
    )]
    TooLarge { path: PathBuf },
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
            SecretRef::UserFile { path, user } => {
                let text = read_as(path, user)?;
                let value = text.trim();
                if value.is_empty() {
                    return Err(SecretError::EmptyFile { path: path.clone() });
                }
                Ok(Secret::new(value))
            }
            SecretRef::File(path) => {
                use std::io::Read;
                self.check_permissions()?;
                let unreadable = |e: std::io::Error| SecretError::Unreadable {
                    path: path.clone(),
                    reason: e.to_string(),
                };
                // Never more than a secret's worth: the name comes from a manifest.
                let mut text = String::new();
                std::fs::File::open(path)
                    .map_err(unreadable)?
                    .take(MAX_SECRET_BYTES + 1)
                    .read_to_string(&mut text)
                    .map_err(unreadable)?;
                if text.len() as u64 > MAX_SECRET_BYTES {
                    return Err(SecretError::TooLarge { path: path.clone() });
                }
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

    /// This secret, read with `user`'s rights when it is a file.
    pub fn read_by(&self, user: &UserIds) -> SecretRef {
        match self {
            SecretRef::File(path) | SecretRef::UserFile { path, .. } => SecretRef::UserFile {
                path: path.clone(),
                user: user.clone(),
            },
            other => other.clone(),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            SecretRef::File(path) | SecretRef::UserFile { path, .. } => {
                serde_json::json!({ "file": path })
            }
            SecretRef::Env(var) => serde_json::json!({ "env": var }),
        }
    }
}

/// Reads `path` in a child process that dropped to `user`'s uid, gid and groups (no way back)
/// before it opened anything: `cat`, whose output is the file.
fn read_as(path: &Path, user: &UserIds) -> Result<String, SecretError> {
    use std::process::{Command, Stdio};
    let unreadable = |reason: String| SecretError::Unreadable {
        path: path.to_path_buf(),
        reason,
    };
    // At most one byte more than a secret may hold: the user names the file, and root holds
    // what is read.
    let mut cat = Command::new("/usr/bin/head");
    cat.arg("-c")
        .arg((MAX_SECRET_BYTES + 1).to_string())
        .arg("--")
        .arg(path)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    user.run_command_as(&mut cat);
    let out = cat
        .output()
        .map_err(|e| unreadable(format!("cannot start a reader as uid {}: {e}", user.uid)))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr);
        let reason = said.rsplit(": ").next().unwrap_or("").trim();
        return Err(unreadable(format!("as uid {}: {reason}", user.uid)));
    }
    if out.stdout.len() as u64 > MAX_SECRET_BYTES {
        return Err(SecretError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    String::from_utf8(out.stdout).map_err(|_| unreadable("not UTF-8 text".into()))
}

/// The largest secret file read (an account key is 88 bytes, a SAS token a few hundred).
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;

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

    // A secret file read as its user: what they may read, and nothing of root's even through
    // a link of theirs.
    #[test]
    fn a_user_file_is_read_with_the_users_rights() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let nobody = UserIds {
            uid: 65534,
            gid: 65534,
            groups: Vec::new(),
        };
        if !nix::unistd::geteuid().is_root() {
            return; // dropping to another user needs root; the suite runs as root
        }
        let theirs = dir.path().join("theirs");
        fs::write(&theirs, "their-sas\n").unwrap();
        fs::set_permissions(&theirs, fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let secret = SecretRef::File(theirs).read_by(&nobody);
        assert_eq!(secret.read().unwrap().expose(), "their-sas");
        let roots = dir.path().join("roots");
        fs::write(&roots, "ROOT-SAS").unwrap();
        fs::set_permissions(&roots, fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&roots, &link).unwrap();
        let error = SecretRef::File(link).read_by(&nobody).read().unwrap_err();
        assert!(
            matches!(&error, SecretError::Unreadable { reason, .. } if reason.contains("Permission denied")),
            "{error}"
        );
        assert!(!error.to_string().contains("ROOT-SAS"));
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

    /// A huge file named as a secret (a sparse file of the user's, say) is not read whole into
    /// root's memory, by root or by the reader with the user's rights.
    #[test]
    fn a_secret_file_is_read_up_to_a_bound() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        let file = fs::File::create(&big).unwrap();
        file.set_len(64 * 1024 * 1024 * 1024).unwrap(); // 64 GiB, sparse
        fs::set_permissions(&big, fs::Permissions::from_mode(0o600)).unwrap();
        let read = SecretRef::File(big.clone()).read();
        assert!(
            matches!(read, Err(SecretError::TooLarge { .. })),
            "{read:?}"
        );
        if !nix::unistd::geteuid().is_root() {
            return; // the reader's setgroups needs root; the suite runs as root
        }
        let me = UserIds {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            groups: Vec::new(),
        };
        let as_user = SecretRef::UserFile {
            path: big,
            user: me,
        }
        .read();
        assert!(
            matches!(as_user, Err(SecretError::TooLarge { .. })),
            "{as_user:?}"
        );
    }
}
