//! The daemon harness: a work area (config, state, socket, a local datastore, a working
//! directory) and a `dataref daemon` running on it, killed when dropped.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use super::cli::{self, sh};
use super::wait::{exit_within, poll};

/// A work area: config dir, state dir, socket, a local datastore, a working directory.
pub struct Area {
    pub dir: tempfile::TempDir,
}

impl Area {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Unprivileged clients and scripts must be able to traverse it.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for sub in ["config", "state", "store", "work"] {
            cli::mkdir(&dir.path().join(sub));
        }
        Self { dir }
    }
    pub fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }
    pub fn socket(&self) -> PathBuf {
        self.path("run/dataref.sock")
    }

    /// A manifest in `work/` with the local datastore `store` and the given fields.
    pub fn manifest(&self, name: &str, fields: Value) -> PathBuf {
        let mut with_store = fields;
        if with_store.get("datastores").is_none() {
            let store = json!({"store": {"kind": "local", "root": self.path("store")}});
            with_store["datastores"] = store;
        }
        self.registry_manifest(name, with_store)
    }

    /// A manifest in `work/` with the given fields and no datastore of its own: it uses the
    /// registry's (the administrator's, used with the service's rights).
    pub fn registry_manifest(&self, name: &str, fields: Value) -> PathBuf {
        let mut manifest = json!({"grace_period_seconds": 5});
        for (k, v) in fields.as_object().unwrap() {
            manifest[k] = v.clone();
        }
        cli::write_manifest(&self.path("work").join(name), &manifest)
    }

    /// A job that runs until signalled, then writes `word` to `outputs/term.txt` (uploaded to
    /// `store/results/`) and exits 0. It writes `outputs/started.txt` when it starts.
    pub fn trapping_job(&self, word: &str) -> PathBuf {
        self.manifest(
            "long.json",
            json!({
                "data_references": {
                    "out": {"datastore": "store", "path_on_datastore": "results",
                            "mode": "upload", "path_on_compute": "outputs"}
                },
                "command": sh(&format!(
                    "mkdir -p outputs; trap 'echo {word} > outputs/term.txt; exit 0' TERM; \
                     echo started > outputs/started.txt; while true; do sleep 0.1; done"
                )),
            }),
        )
    }

    /// `dataref daemon` on this area's socket and state, without systemd's variables.
    pub fn daemon_command(&self, extra: &[&str]) -> std::process::Command {
        let mut command = cli::command();
        command
            .arg("--config-dir")
            .arg(self.path("config"))
            .arg("daemon")
            .arg("--socket")
            .arg(self.socket())
            .arg("--state-dir")
            .arg(self.path("state"))
            .args(extra)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.path("daemon.stderr")).unwrap());
        command
    }

    pub fn daemon(&self, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut command = self.daemon_command(extra);
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().unwrap();
        let socket = self.socket();
        poll("the daemon's socket", Duration::from_secs(30), || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        Daemon { child: Some(child) }
    }

    /// `dataref ARGS[0] --socket SOCKET ARGS[1..]` from `work/`.
    fn client_command(&self, args: &[&str]) -> std::process::Command {
        let mut command = cli::command();
        command
            .current_dir(self.path("work"))
            .arg(args[0])
            .arg("--socket")
            .arg(self.socket())
            .args(&args[1..]);
        command
    }

    pub fn client(&self, args: &[&str]) -> cli::Outcome {
        cli::output(&mut self.client_command(args))
    }

    /// The client as another user.
    pub fn client_as(&self, uid: u32, gid: u32, args: &[&str]) -> cli::Outcome {
        cli::output(self.client_command(args).uid(uid).gid(gid))
    }

    pub fn status(&self, id: &str) -> Value {
        self.client(&["status", "--json", id]).expect_code(0).json()
    }

    pub fn wait_state(&self, id: &str, states: &[&str], limit: Duration) -> Value {
        let mut last = Value::Null;
        poll(&format!("job {id} to reach {states:?}"), limit, || {
            last = self.status(id);
            states.contains(&last["state"].as_str().unwrap_or(""))
        });
        last
    }

    pub fn submit(&self, manifest: &Path) -> String {
        let out = self.client(&["submit", manifest.to_str().unwrap()]);
        out.expect_code(0);
        out.stdout.trim().to_owned()
    }

    pub fn job_dirs(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path("state/jobs"))
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

pub struct Daemon {
    pub child: Option<Child>,
}

impl Daemon {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid()), signal).unwrap();
    }
    pub fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        exit_within(&mut child, limit, || "the daemon did not exit".into())
    }
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
