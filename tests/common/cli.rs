//! Helpers for the tests that run the real `dataref` binary: running it with a private config
//! directory, writing files with a given mode, and snapshotting a directory tree to prove that
//! a command created nothing.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Environment variables that would change the binary's behaviour (or what a job's script
/// sees) behind a test's back.
const SCRUBBED_ENV: &[&str] = &[
    "DATAREF_CONFIG_DIR",
    "DATAREF_JOB_DIR",
    "DATAREF_SOCKET",
    "DATAREF_STATE_DIR",
    "DATAREF_LOG_FORMAT",
    "RUST_LOG",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

/// What one run of the binary produced.
#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// stdout and stderr together, for "never appears anywhere" checks.
    pub fn all_output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// Panics with both streams unless the exit code is `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "expected exit code {code}, got {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    /// Parses stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e})\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// A command for the `dataref` binary with a clean `DATAREF_*` environment. The caller adds
/// `--config-dir` (or `DATAREF_CONFIG_DIR`), so `/etc/dataref` is never read.
pub fn command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dataref"));
    scrub(&mut command);
    command
}

/// Removes the variables of `SCRUBBED_ENV` from a command's environment (for a wrapper such as
/// `unshare` or `script` that runs the binary).
pub fn scrub(command: &mut Command) {
    for var in SCRUBBED_ENV {
        command.env_remove(var);
    }
}

/// Runs a prepared command and collects its outcome.
pub fn output(command: &mut Command) -> Outcome {
    let out = command.output().expect("the dataref binary runs");
    Outcome {
        code: out
            .status
            .code()
            .unwrap_or_else(|| panic!("dataref was killed by a signal: {:?}", out.status)),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `dataref --config-dir CONFIG ARGS...`, run in `cwd`.
pub fn run_in(cwd: &Path, config_dir: &Path, args: &[&str]) -> Outcome {
    let mut cmd = command();
    cmd.current_dir(cwd).arg("--config-dir").arg(config_dir);
    cmd.args(args);
    output(&mut cmd)
}

/// `dataref --config-dir CONFIG ARGS...`, run in the config directory's parent (which exists).
pub fn run(config_dir: &Path, args: &[&str]) -> Outcome {
    let cwd = existing_ancestor(config_dir);
    run_in(&cwd, config_dir, args)
}

fn existing_ancestor(path: &Path) -> PathBuf {
    path.ancestors()
        .find(|p| p.is_dir())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// Writes `contents` to `path` (creating parents) and sets its permission bits.
pub fn write_file(path: &Path, contents: &str, mode: u32) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, contents).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Creates a directory and its parents.
pub fn mkdir(path: &Path) {
    fs::create_dir_all(path).unwrap();
}

/// Writes a manifest as pretty JSON and returns its path.
pub fn write_manifest(path: &Path, manifest: &serde_json::Value) -> PathBuf {
    write_file(
        path,
        &serde_json::to_string_pretty(manifest).unwrap(),
        0o644,
    );
    path.to_path_buf()
}

/// One entry of a tree snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir { mode: u32 },
    File { mode: u32, len: u64 },
    Symlink { target: PathBuf },
    Other,
}

/// Every path under `root` (relative to it, recursively, symlinks not followed) with its type,
/// permission bits and, for files, size. Comparing two snapshots shows whether anything was
/// created, removed or changed.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut entries = BTreeMap::new();
    walk(root, root, &mut entries);
    entries
}

fn walk(root: &Path, dir: &Path, entries: &mut BTreeMap<PathBuf, Entry>) {
    let Ok(read) = fs::read_dir(dir) else {
        return;
    };
    for item in read {
        let item = item.unwrap();
        let path = item.path();
        let meta = fs::symlink_metadata(&path).unwrap();
        let relative = path.strip_prefix(root).unwrap().to_path_buf();
        let mode = meta.mode() & 0o7777;
        let entry = if meta.file_type().is_symlink() {
            Entry::Symlink {
                target: fs::read_link(&path).unwrap(),
            }
        } else if meta.is_dir() {
            Entry::Dir { mode }
        } else if meta.is_file() {
            Entry::File {
                mode,
                len: meta.len(),
            }
        } else {
            Entry::Other
        };
        let is_dir = matches!(entry, Entry::Dir { .. });
        entries.insert(relative, entry);
        if is_dir {
            walk(root, &path, entries);
        }
    }
}

/// Lines of `text` that report a problem (the indented lines under "... is invalid (N problems):").
pub fn problem_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.starts_with("  ")).collect()
}

/// A manifest `command` that runs `script` with `sh -c`.
pub fn sh(script: &str) -> serde_json::Value {
    serde_json::json!(["sh", "-c", script])
}

/// `datastore register local --name NAME --root ROOT`, which must succeed.
pub fn register_local(config_dir: &Path, name: &str, root: &Path) {
    run(
        config_dir,
        &[
            "datastore",
            "register",
            "local",
            "--name",
            name,
            "--root",
            root.to_str().unwrap(),
        ],
    )
    .expect_code(0);
}
