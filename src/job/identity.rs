//! Running a job's script as another user (the daemon runs each job as the peer that
//! submitted it). dataref itself stays root — FUSE mounts need it — and only the script drops to
//! the identity; what dataref creates for the script (upload folders, downloaded files) is handed
//! to the identity so the script can use it as its own.

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

    /// Gives one path (not following a symlink) to the identity.
    pub fn chown(&self, path: &Path) -> std::io::Result<()> {
        std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid))
    }

    /// Gives a whole tree to the identity. Symlinks are changed themselves, never followed, so
    /// a link planted in the tree cannot hand out a file elsewhere.
    pub fn chown_tree(&self, root: &Path) -> std::io::Result<()> {
        let meta = std::fs::symlink_metadata(root)?;
        self.chown(root)?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(root)? {
                self.chown_tree(&entry?.path())?;
            }
        }
        Ok(())
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
}

/// The `PATH` of a clean environment (Debian's default for login shells, with sbin).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[cfg(test)]
mod tests {
    use super::*;

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
