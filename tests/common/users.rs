//! Real local users for the tests that play an attacker against the root agent: made once per
//! machine with `useradd` (a shell, no home) and reused by every later run.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Mutex;

/// A local user account.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

static MAKING: Mutex<()> = Mutex::new(());

/// The user `name`, created with `useradd` (and a group of the same name) if it does not exist.
pub fn user(name: &str) -> User {
    let _one_at_a_time = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(user) = lookup(name) {
        return user;
    }
    let group_exists = Command::new("getent")
        .args(["group", name])
        .output()
        .is_ok_and(|o| o.status.success());
    let mut add = Command::new("useradd");
    add.args(["--no-create-home", "--shell", "/bin/sh"])
        .args(["--comment", "dataref adversarial tests"]);
    if group_exists {
        add.args(["--gid", name]);
    } else {
        add.arg("--user-group");
    }
    let out = add.arg(name).output().expect("useradd runs");
    // Another test binary may have made it meanwhile: what counts is that it exists now.
    lookup(name).unwrap_or_else(|| {
        panic!(
            "useradd {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn lookup(name: &str) -> Option<User> {
    let found = nix::unistd::User::from_name(name).ok().flatten()?;
    Some(User {
        name: name.to_owned(),
        uid: found.uid.as_raw(),
        gid: found.gid.as_raw(),
    })
}

impl User {
    /// `sh -c script` in `cwd` as this user (uid, gid, no supplementary groups).
    pub fn sh(&self, cwd: &Path, script: &str) -> Output {
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(cwd)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .uid(self.uid)
            .gid(self.gid)
            .output()
            .expect("sh runs")
    }

    /// [`User::sh`], which must succeed.
    #[track_caller]
    pub fn must(&self, cwd: &Path, script: &str) {
        let out = self.sh(cwd, script);
        assert!(
            out.status.success(),
            "as {}: {script}: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Gives `path` (not following a link) to this user.
    pub fn own(&self, path: &Path) {
        std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid)).unwrap();
    }

    /// `--run-as` / `UID:GID`.
    pub fn run_as(&self) -> String {
        format!("{}:{}", self.uid, self.gid)
    }
}

/// The group `name`, created with `groupadd` if it does not exist; its gid.
pub fn group(name: &str) -> u32 {
    let _one_at_a_time = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    let find = || {
        nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    };
    if let Some(gid) = find() {
        return gid;
    }
    let out = Command::new("groupadd")
        .arg(name)
        .output()
        .expect("groupadd runs");
    find().unwrap_or_else(|| {
        panic!(
            "groupadd {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
