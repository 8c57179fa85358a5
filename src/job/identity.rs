//! Running a job's script as another user (the daemon runs each job as the peer that
//! submitted it). dataref itself stays root — FUSE mounts need it — and the script drops to the
//! identity; what dataref does on the user's files (upload folders, downloads, outputs) is done
//! by a process with the identity's rights (`localfs`), so the files it makes are theirs.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::unistd::{Uid, User};

/// A uid, primary gid and supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl Identity {
    /// The first component of `path` that is a symbolic link owned by this user. A root agent
    /// reading the user's outputs must not follow one: `outputs -> /etc` would upload what
    /// the user cannot read. Links owned by root (an admin's `/home -> /data/home`) are trusted.
    pub fn own_symlink_on(&self, path: &Path) -> Option<PathBuf> {
        let mut current = PathBuf::new();
        for component in path.components() {
            current.push(component);
            if let Ok(meta) = std::fs::symlink_metadata(&current)
                && meta.file_type().is_symlink()
                && meta.uid() == self.uid
            {
                return Some(current);
            }
        }
        None
    }

    /// Parses `UID:GID[:G1,G2,...]` (the form `dataref run --run-as` takes).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = text.splitn(3, ':');
        let number = |part: Option<&str>, what: &str| -> Result<u32, String> {
            part.filter(|p| !p.is_empty())
                .ok_or_else(|| format!("expected UID:GID[:GROUPS], {what} is missing"))?
                .parse::<u32>()
                .map_err(|_| format!("{what} must be a number"))
        };
        let uid = number(parts.next(), "UID")?;
        let gid = number(parts.next(), "GID")?;
        let groups = match parts.next() {
            None | Some("") => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|g| {
                    g.parse::<u32>()
                        .map_err(|_| format!("group {g:?} is not a number"))
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(Self { uid, gid, groups })
    }

    pub fn to_arg(&self) -> String {
        let groups: Vec<String> = self.groups.iter().map(u32::to_string).collect();
        format!("{}:{}:{}", self.uid, self.gid, groups.join(","))
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Whether this identity differs from the process's own (mounts then need `allow_other`).
    pub fn is_other_than_self(&self) -> bool {
        Uid::effective().as_raw() != self.uid
    }

    /// The ids a process acting for this identity takes.
    pub fn user_ids(&self) -> crate::model::UserIds {
        crate::model::UserIds {
            uid: self.uid,
            gid: self.gid,
            groups: self.groups.clone(),
        }
    }

    /// The login variables of a clean environment for this user.
    pub fn login_environment(&self) -> Vec<(OsString, OsString)> {
        let user = User::from_uid(Uid::from_raw(self.uid)).ok().flatten();
        let (name, home, shell) = match user {
            Some(user) => (user.name, user.dir, user.shell),
            None => (self.uid.to_string(), "/".into(), "/bin/sh".into()),
        };
        vec![
            ("HOME".into(), home.into()),
            ("USER".into(), name.clone().into()),
            ("LOGNAME".into(), name.into()),
            ("SHELL".into(), shell.into()),
            ("PATH".into(), DEFAULT_PATH.into()),
        ]
    }

    /// Switches the calling process to the identity. For the child between fork and exec: only
    /// async-signal-safe calls (setgroups, setgid, setuid).
    ///
    /// # Safety
    /// Call only in a `pre_exec` hook.
    pub unsafe fn switch_in_child(
        uid: u32,
        gid: u32,
        groups: &[libc::gid_t],
    ) -> std::io::Result<()> {
        // SAFETY: the caller's contract is this one's.
        unsafe { crate::model::secret::switch_in_child(uid, gid, groups) }
    }
}

/// The `PATH` of a clean environment (Debian's default for login shells, with sbin).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Whether root may write under `path` for a job that runs as someone else: every existing
/// component (not followed if a symlink) must be root's and writable by root alone, except a
/// sticky directory (like `/tmp`) whose next component exists and is root's, which no one else
/// can then replace. The user can then swap nothing on the way, so no check-then-act race is
/// left; a path through anything the user could change is refused.
pub fn check_root_only_path(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mut prefix = PathBuf::from("/");
    let mut components = path.components().skip(1).peekable();
    loop {
        let meta = match std::fs::symlink_metadata(&prefix) {
            Ok(meta) => meta,
            // Missing from here on: dataref creates the rest, as root, under a safe parent.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("{}: {e}", prefix.display())),
        };
        if meta.file_type().is_symlink() {
            return Err(format!("{} is a symbolic link", prefix.display()));
        }
        if meta.uid() != 0 {
            return Err(format!(
                "{} is owned by uid {}",
                prefix.display(),
                meta.uid()
            ));
        }
        let Some(next) = components.next() else {
            return Ok(());
        };
        let mode = meta.permissions().mode();
        if mode & 0o022 != 0 {
            let sticky = mode & 0o1000 != 0;
            let next_is_roots = std::fs::symlink_metadata(prefix.join(next))
                .is_ok_and(|m| m.uid() == 0 && !m.file_type().is_symlink());
            if !(sticky && next_is_roots) {
                return Err(format!(
                    "{} is writable by others than root",
                    prefix.display()
                ));
            }
        }
        prefix.push(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_root_alone_controls_are_root_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
        if !nix::unistd::geteuid().is_root() {
            assert!(check_root_only_path(&root.join("x")).is_err());
            return;
        }
        // /tmp is sticky: its root-owned entries cannot be replaced by others.
        assert_eq!(check_root_only_path(&root.join("jobs/1")), Ok(()));
        let users = root.join("users");
        std::fs::create_dir(&users).unwrap();
        std::os::unix::fs::chown(&users, Some(65534), Some(65534)).unwrap();
        let problem = check_root_only_path(&users.join(".dataref")).unwrap_err();
        assert!(problem.contains("owned by uid 65534"), "{problem}");
        let open = root.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let problem = check_root_only_path(&open.join("job")).unwrap_err();
        assert!(problem.contains("writable by others"), "{problem}");
        std::os::unix::fs::symlink(root, root.join("link")).unwrap();
        let problem = check_root_only_path(&root.join("link/jobs")).unwrap_err();
        assert!(problem.contains("symbolic link"), "{problem}");
    }

    #[test]
    fn parses_and_prints_the_run_as_form() {
        let id = Identity::parse("1000:1001:27,44").unwrap();
        assert_eq!(id.uid, 1000);
        assert_eq!(id.gid, 1001);
        assert_eq!(id.groups, vec![27, 44]);
        assert_eq!(Identity::parse(&id.to_arg()).unwrap(), id);
        assert_eq!(Identity::parse("5:6").unwrap().groups, Vec::<u32>::new());
        assert!(Identity::parse("5").unwrap_err().contains("GID"));
        assert!(Identity::parse("a:6").unwrap_err().contains("UID"));
        assert!(Identity::parse("5:6:x").unwrap_err().contains("\"x\""));
    }
}
