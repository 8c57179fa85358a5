//! The stage of the privilege-separation tests (issue 15): a daemon that runs one job at a
//! time for an ordinary user (`dr-adv-a`), with a registry datastore, where a job can be held in
//! the queue while the user swaps something, and a loopback "storage" endpoint that records
//! what it received.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use super::canary::{Canary, Unmounter};
use super::cli::{self, sh, write_file};
use super::daemon::{Area, Daemon};
use super::users::{User, user};
use super::wait::poll_or;

pub const ATTACKER: &str = "dr-adv-a";
pub const STRANGER: &str = "dr-adv-b";
pub const ENDED: &[&str] = &["succeeded", "failed", "cancelled", "interrupted"];
pub const JOB_LIMIT: Duration = Duration::from_secs(90);

/// A shell loop that waits (at most a minute) for the file `go` or the scene's stop file.
pub fn wait_for(go: &Path, stop: &Path) -> String {
    format!(
        "i=0; while [ $i -lt 600 ] && [ ! -e {} ] && [ ! -e {} ]; do sleep 0.1; i=$((i+1)); done",
        go.display(),
        stop.display()
    )
}

/// A daemon (`--max-jobs 1`, the attacker's group allowed) on an area whose `work/` belongs to
/// the attacker, with the registry datastore `reg` (root's `store/`, the administrator's grant).
pub struct Scene {
    daemon: Option<Daemon>,
    _unmount: Unmounter,
    pub area: Area,
    pub user: User,
    holds: std::cell::Cell<u32>,
}

impl Scene {
    pub fn new() -> Self {
        let user = user(ATTACKER);
        let area = Area::new();
        user.own(&area.path("work"));
        cli::mkdir(&area.path("ctl"));
        cli::register_local(&area.path("config"), "reg", &area.path("store"));
        let daemon = area.daemon(
            &["--max-jobs", "1", "--allow-group", &user.gid.to_string()],
            &[],
        );
        Scene {
            daemon: Some(daemon),
            _unmount: Unmounter(area.dir.path().to_path_buf()),
            area,
            user,
            holds: std::cell::Cell::new(0),
        }
    }

    pub fn work(&self) -> PathBuf {
        self.area.path("work")
    }

    pub fn stop_file(&self) -> PathBuf {
        self.area.path("ctl/stop")
    }

    /// A manifest in `work/` without the area's inline datastore unless `fields` names some.
    pub fn manifest(&self, name: &str, mut fields: Value) -> PathBuf {
        if fields.get("datastores").is_none() {
            fields["datastores"] = json!({});
        }
        self.area.manifest(name, fields)
    }

    /// Submits as the attacker; the job's id.
    pub fn submit(&self, manifest: &Path) -> String {
        let out = self.area.client_as(
            self.user.uid,
            self.user.gid,
            &["submit", manifest.to_str().unwrap()],
        );
        out.expect_code(0);
        out.stdout.trim().to_owned()
    }

    /// Submits as the attacker and waits for the end; the job's record.
    pub fn run(&self, manifest: &Path) -> Value {
        let id = self.submit(manifest);
        self.wait_end(&id)
    }

    /// Waits for the job to end (its log and the daemon's in the failure); its record.
    pub fn wait_end(&self, id: &str) -> Value {
        let mut record = Value::Null;
        poll_or(
            &format!("job {id} to end"),
            JOB_LIMIT,
            || {
                format!(
                    "--- job.log ---\n{}\n--- runner.log ---\n{}\n--- daemon ---\n{}",
                    self.job_log(id),
                    std::fs::read_to_string(
                        self.area.path("state/jobs").join(id).join("runner.log")
                    )
                    .unwrap_or_default(),
                    std::fs::read_to_string(self.area.path("daemon.stderr")).unwrap_or_default()
                )
            },
            || {
                record = self.area.status(id);
                ENDED.contains(&record["state"].as_str().unwrap_or(""))
            },
        );
        record
    }

    /// Submits `manifest` as the attacker behind a root job holding the only slot, checks that
    /// it is queued, runs `swap` (the attack, after every submit-time check), frees the slot.
    /// The job's id.
    pub fn queued(&self, manifest: &Path, swap: impl FnOnce()) -> String {
        let n = self.holds.get() + 1;
        self.holds.set(n);
        let release = self.area.path(&format!("ctl/release-{n}"));
        let holder = self.area.manifest(
            &format!("holder-{n}.json"),
            json!({"command": sh(&format!("{}; exit 0", wait_for(&release, &self.stop_file())))}),
        );
        let holder = self.area.submit(&holder);
        self.area.wait_state(&holder, &["running"], JOB_LIMIT);
        let id = self.submit(manifest);
        assert_eq!(self.area.status(&id)["state"], "queued");
        swap();
        write_file(&release, "", 0o644);
        self.wait_end(&holder);
        id
    }

    /// Queues `manifest`, makes the attacker run `swap` (a shell line, in `work/`) while it
    /// waits, lets it run to its end, and says what changed in `canary`'s tree, if anything.
    pub fn swapped_while_queued(
        &self,
        manifest: &Path,
        swap: &str,
        canary: &Canary,
        what: &str,
    ) -> Option<String> {
        let id = self.queued(manifest, || self.user.must(&self.work(), swap));
        let record = self.wait_end(&id);
        let changed = canary.changes();
        (!changed.is_empty()).then(|| {
            format!(
                "{what} changed (job {}):\n  {}\n{}",
                record["state"],
                changed.join("\n  "),
                self.job_log(&id)
            )
        })
    }

    /// What the attacker can learn of a job through the API: its log and its record.
    pub fn visible_to_user(&self, id: &str) -> String {
        let logs = self
            .area
            .client_as(self.user.uid, self.user.gid, &["logs", id]);
        let status = self
            .area
            .client_as(self.user.uid, self.user.gid, &["status", "--json", id]);
        format!("{}\n{}", logs.all_output(), status.all_output())
    }

    pub fn job_log(&self, id: &str) -> String {
        std::fs::read_to_string(self.area.path("state/jobs").join(id).join("job.log"))
            .unwrap_or_default()
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        // Every waiting script ends; the daemon drains (stage-out, unmount) before it is killed.
        let _ = std::fs::write(self.stop_file(), "");
        if let Some(mut daemon) = self.daemon.take() {
            daemon.signal(nix::sys::signal::Signal::SIGTERM);
            let child = daemon.child.as_mut().unwrap();
            for tick in 0..300 {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                if tick == 100 {
                    // A job stuck on a mount it can no longer take down: take it down.
                    drop(Unmounter(self.area.dir.path().to_path_buf()));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// A loopback "storage" endpoint that answers 403 and keeps every request head it received.
pub struct Listener {
    pub url: String,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Listener {
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/devstoreaccount1", listener.local_addr().unwrap());
        let heads = Arc::new(Mutex::new(Vec::new()));
        let record = heads.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let record = record.clone();
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut head = String::new();
                    let mut length = 0usize;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        head.push_str(&line);
                    }
                    let mut body = vec![0u8; length.min(1 << 20)];
                    let _ = reader.read_exact(&mut body);
                    head.push_str(&String::from_utf8_lossy(&body));
                    record.lock().unwrap().push(head);
                    let _ = stream.write_all(
                        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                });
            }
        });
        Listener { url, heads }
    }

    pub fn received(&self) -> String {
        self.heads.lock().unwrap().join("\n")
    }
}

/// A place for a `dataref run --run-as` test: a folder the user can traverse (0755), whose
/// `work/` and `store/` are the user's; anything left mounted below it is unmounted (before the
/// folder is removed) when it is dropped.
pub struct RunAsArea {
    _unmount: Unmounter,
    pub dir: tempfile::TempDir,
}

impl RunAsArea {
    pub fn new(user: &User) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        for theirs in ["work", "store"] {
            cli::mkdir(&dir.path().join(theirs));
            user.own(&dir.path().join(theirs));
        }
        Self {
            _unmount: Unmounter(dir.path().to_path_buf()),
            dir,
        }
    }

    pub fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }
}
