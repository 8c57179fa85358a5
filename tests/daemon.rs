//! `dataref daemon` and its clients, run for real: a daemon process on a private socket and
//! state directory, `dataref submit | status | cancel | logs` as clients, jobs on a local
//! datastore. sd_notify is checked on a real datagram socket.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use common::cli;

/// Tests that mount or kill daemons must not overlap (dead-mount cleanup is machine-wide).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const NOBODY: u32 = 65534;

fn poll(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A work area: config dir, state dir, socket, a local datastore, a working directory.
struct Area {
    dir: tempfile::TempDir,
}

impl Area {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Unprivileged clients and scripts must be able to traverse it.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for sub in ["config", "state", "store", "work"] {
            cli::mkdir(&dir.path().join(sub));
        }
        Self { dir }
    }
    fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }
    fn socket(&self) -> PathBuf {
        self.path("run/dataref.sock")
    }

    /// A manifest in `work/` with the local datastore `store` and the given fields.
    fn manifest(&self, name: &str, fields: Value) -> PathBuf {
        let mut manifest = json!({
            "datastores": {"store": {"kind": "local", "root": self.path("store")}},
            "grace_period_seconds": 5,
        });
        for (k, v) in fields.as_object().unwrap() {
            manifest[k] = v.clone();
        }
        cli::write_manifest(&self.path("work").join(name), &manifest)
    }

    /// A job that runs until signalled, then writes `word` to `outputs/term.txt` (uploaded to
    /// `store/results/`) and exits 0. It writes `outputs/started.txt` when it starts.
    fn trapping_job(&self, word: &str) -> PathBuf {
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
    fn daemon_command(&self, extra: &[&str]) -> std::process::Command {
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

    fn daemon(&self, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
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

    fn client(&self, args: &[&str]) -> cli::Outcome {
        let mut command = cli::command();
        command
            .current_dir(self.path("work"))
            .arg(args[0])
            .arg("--socket")
            .arg(self.socket())
            .args(&args[1..]);
        cli::output(&mut command)
    }

    fn client_as(&self, uid: u32, gid: u32, args: &[&str]) -> cli::Outcome {
        let mut command = cli::command();
        command
            .current_dir(self.path("work"))
            .arg(args[0])
            .arg("--socket")
            .arg(self.socket())
            .args(&args[1..])
            .uid(uid)
            .gid(gid);
        cli::output(&mut command)
    }

    fn status(&self, id: &str) -> Value {
        self.client(&["status", "--json", id]).expect_code(0).json()
    }

    fn wait_state(&self, id: &str, states: &[&str], limit: Duration) -> Value {
        let mut last = Value::Null;
        poll(&format!("job {id} to reach {states:?}"), limit, || {
            last = self.status(id);
            states.contains(&last["state"].as_str().unwrap_or(""))
        });
        last
    }

    fn submit(&self, manifest: &Path) -> String {
        let out = self.client(&["submit", manifest.to_str().unwrap()]);
        out.expect_code(0);
        out.stdout.trim().to_owned()
    }

    fn job_dirs(&self) -> Vec<String> {
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

struct Daemon {
    child: Option<Child>,
}

impl Daemon {
    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }
    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid()), signal).unwrap();
    }
    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(start.elapsed() < limit, "the daemon did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    fn rss_kib(&self) -> u64 {
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

fn sh(script: &str) -> Value {
    json!(["sh", "-c", script])
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn alive(pid: i32) -> bool {
    // A zombie is dead for our purpose.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

fn mounted_at(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let needle = format!(" {} ", path.display());
    info.lines().any(|l| l.contains(&needle))
}

#[test]
fn sd_notify_ready_after_the_socket_accepts_then_watchdog_and_stopping() {
    let area = Area::new();
    let notify_path = area.path("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut command = area.daemon_command(&[]);
    command
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "400000");
    let mut daemon = Daemon {
        child: Some(command.spawn().unwrap()),
    };
    let mut buf = [0u8; 256];
    let mut recv = || {
        let n = notify.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut before_ready = Vec::new();
    loop {
        let message = recv();
        if message == "READY=1" {
            break;
        }
        before_ready.push(message);
    }
    // READY means the API answers now, not soon.
    std::os::unix::net::UnixStream::connect(area.socket()).expect("socket accepts at READY");
    assert!(
        before_ready.iter().all(|m| m == "WATCHDOG=1"),
        "{before_ready:?}"
    );
    // Watchdog every 200 ms (half of 400 ms): count over ~1.2 s.
    let start = Instant::now();
    let mut pings = 0;
    while start.elapsed() < Duration::from_millis(1200) {
        if recv() == "WATCHDOG=1" {
            pings += 1;
        }
    }
    assert!((4..=9).contains(&pings), "{pings} watchdog pings in 1.2 s");

    // A job that takes 1.5 s to stop keeps the daemon draining: the pings must go on.
    let manifest = area.manifest(
        "slow-stop.json",
        json!({"command": sh("trap 'sleep 1.5; exit 0' TERM; touch started; \
                              while true; do sleep 0.1; done")}),
    );
    area.submit(&manifest);
    poll("the job to start", Duration::from_secs(60), || {
        area.path("work/started").exists()
    });
    daemon.signal(Signal::SIGTERM);
    while recv() != "STOPPING=1" {}
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut pings_while_draining = 0;
    let status = loop {
        if let Some(status) = daemon.child.as_mut().unwrap().try_wait().unwrap() {
            break status;
        }
        let mut buf = [0u8; 256];
        if let Ok(n) = notify.recv(&mut buf) {
            if &buf[..n] == b"WATCHDOG=1" {
                pings_while_draining += 1;
            }
        }
    };
    daemon.child = None;
    assert_eq!(status.code(), Some(0), "exit 0 after SIGTERM");
    assert!(
        pings_while_draining >= 4,
        "{pings_while_draining} watchdog pings while draining for 1.5 s"
    );
}

#[test]
fn no_watchdog_pings_when_watchdog_pid_names_another_process() {
    let area = Area::new();
    let notify_path = area.path("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let _daemon = area.daemon(
        &[],
        &[
            ("NOTIFY_SOCKET", notify_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
            ("WATCHDOG_PID", "1"),
        ],
    );
    let mut messages = Vec::new();
    let start = Instant::now();
    let mut buf = [0u8; 256];
    while start.elapsed() < Duration::from_secs(2) {
        if let Ok(n) = notify.recv(&mut buf) {
            messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    assert!(messages.contains(&"READY=1".to_owned()), "{messages:?}");
    assert!(
        !messages.iter().any(|m| m == "WATCHDOG=1"),
        "watchdog meant for pid 1 must be ignored: {messages:?}"
    );
}

#[test]
fn submit_wait_follows_the_log_and_exits_with_the_jobs_code() {
    let area = Area::new();
    let _daemon = area.daemon(&[], &[("LEAKY_VAR", "from-daemon")]);
    cli::write_file(&area.path("store/in/a.txt"), "input-a", 0o644);
    let manifest = area.manifest(
        "job.json",
        json!({
            "data_references": {
                "data": {"datastore": "store", "path_on_datastore": "in", "mode": "download"},
                "out": {"datastore": "store", "path_on_datastore": "results", "mode": "upload",
                        "path_on_compute": "outputs"}
            },
            "command": sh("cat $AZUREML_DATAREFERENCE_data/a.txt; echo; mkdir outputs; \
                           echo saved > outputs/m.txt; \
                           echo \"leak=${LEAKY_VAR:-none}\"; exit 3"),
        }),
    );
    let out = area.client(&["submit", "--wait", manifest.to_str().unwrap()]);
    out.expect_code(3);
    assert!(out.stdout.contains("input-a"), "{}", out.stdout);
    // A clean environment: the daemon's own variables do not reach the script.
    assert!(out.stdout.contains("leak=none"), "{}", out.stdout);
    // Relative paths resolved against the manifest's directory, as with `dataref run`.
    assert_eq!(read(&area.path("store/results/m.txt")), "saved\n");

    let list = area.client(&["status", "--json"]).expect_code(0).json();
    let jobs = list["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1);
    let id = jobs[0]["id"].as_str().unwrap();
    let status = area.status(id);
    assert_eq!(status["state"], "failed");
    assert_eq!(status["exit_code"], 3);
    assert_eq!(status["result"]["end_reason"], "script_failed");
    assert_eq!(status["result"]["references"]["out"]["status"], "done");
    let logs = area.client(&["logs", id]);
    logs.expect_code(0);
    assert!(logs.stdout.contains("input-a"), "{}", logs.stdout);
    let table = area.client(&["status"]);
    table.expect_code(0);
    assert!(
        table.stdout.contains(id) && table.stdout.contains("failed"),
        "{}",
        table.stdout
    );
}

#[test]
fn invalid_manifest_is_refused_with_every_problem_and_nothing_stored() {
    let area = Area::new();
    let _daemon = area.daemon(&[], &[]);
    let manifest = area.manifest(
        "bad.json",
        json!({
            "data_references": {"x": {"datastore": "nope", "mode": "download"}},
            "command": [],
        }),
    );
    let out = area.client(&["submit", manifest.to_str().unwrap()]);
    out.expect_code(65);
    assert!(out.stderr.contains("data_references.x"), "{}", out.stderr);
    assert!(out.stderr.contains("command"), "{}", out.stderr);
    assert!(area.job_dirs().is_empty(), "{:?}", area.job_dirs());
    // Unknown job ids: 66; the daemon unreachable: 69.
    area.client(&["status", "no-such-job"]).expect_code(66);
    let out = cli::output(
        cli::command()
            .args(["status", "--socket"])
            .arg(area.path("missing.sock")),
    );
    out.expect_code(69);
    assert!(
        out.stderr.contains("is `dataref daemon` running"),
        "{}",
        out.stderr
    );
}

#[test]
fn cancel_stops_a_running_job_like_a_preemption_and_outputs_are_uploaded() {
    let _serial = serial();
    let area = Area::new();
    let _daemon = area.daemon(&["--max-jobs", "1"], &[]);
    let manifest = area.trapping_job("got-term");
    let first = area.submit(&manifest);
    let second = area.submit(&manifest);
    area.wait_state(&first, &["running"], Duration::from_secs(60));
    poll("the script to start", Duration::from_secs(30), || {
        area.path("work/outputs/started.txt").exists()
    });
    // --max-jobs 1: the second waits.
    assert_eq!(area.status(&second)["state"], "queued");
    area.client(&["cancel", &second]).expect_code(0);
    assert_eq!(area.status(&second)["state"], "cancelled");

    area.client(&["cancel", &first]).expect_code(0);
    let status = area.wait_state(&first, &["cancelled"], Duration::from_secs(60));
    assert_eq!(status["result"]["end_reason"], "preempted", "{status:#}");
    assert_eq!(read(&area.path("store/results/term.txt")), "got-term\n");
    // A finished job cannot be cancelled again.
    let again = area.client(&["cancel", &first]);
    assert_ne!(again.code, 0);
    assert!(again.stderr.contains("already ended"), "{}", again.stderr);
}

#[test]
fn sigterm_drains_running_jobs_uploads_and_exits_0() {
    let _serial = serial();
    let area = Area::new();
    let mut daemon = area.daemon(&[], &[]);
    let manifest = area.trapping_job("drained");
    let id = area.submit(&manifest);
    poll("the script to start", Duration::from_secs(60), || {
        area.path("work/outputs/started.txt").exists()
    });
    daemon.signal(Signal::SIGTERM);
    let status = daemon.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0));
    assert_eq!(read(&area.path("store/results/term.txt")), "drained\n");
    let record: Value =
        serde_json::from_str(&read(&area.path(&format!("state/jobs/{id}/record.json")))).unwrap();
    assert_eq!(record["state"], "interrupted", "{record:#}");
    assert!(!area.socket().exists(), "the socket is removed at exit");
}

/// The daemon is SIGKILLed while a job with a mount and an output runs; a new daemon marks the
/// job interrupted, kills what survived, removes the dead mount, and uploads the outputs.
#[test]
fn daemon_killed_mid_job_is_recovered_at_the_next_start() {
    let _serial = serial();
    let area = Area::new();
    cli::write_file(&area.path("store/in/a.txt"), "mounted-a", 0o644);
    let mut daemon = area.daemon(&[], &[]);
    let manifest = area.manifest(
        "job.json",
        json!({
            "data_references": {
                "data": {"datastore": "store", "path_on_datastore": "in", "mode": "mount"},
                "out": {"datastore": "store", "path_on_datastore": "results", "mode": "upload",
                        "path_on_compute": "outputs"}
            },
            "command": sh("mkdir -p outputs; cp $AZUREML_DATAREFERENCE_data/a.txt outputs/copy.txt; \
                           echo $$ > outputs/pid; while true; do sleep 0.1; done"),
        }),
    );
    let id = area.submit(&manifest);
    let pid_file = area.path("work/outputs/pid");
    poll("the script to start", Duration::from_secs(60), || {
        std::fs::read_to_string(&pid_file).is_ok_and(|s| s.ends_with('\n'))
    });
    let script: i32 = read(&pid_file).trim().parse().unwrap();
    let mountpoint = PathBuf::from(
        area.status(&id)["result"]["references"]["data"]["local"]
            .as_str()
            .unwrap(),
    );
    assert!(mounted_at(&mountpoint));

    daemon.signal(Signal::SIGKILL);
    daemon.wait(Duration::from_secs(10));
    // The job's own supervisor outlives the daemon; the restart must deal with it.
    assert!(alive(script), "the script survives the daemon alone");

    let _daemon = area.daemon(&[], &[]);
    let status = area.status(&id);
    assert_eq!(status["state"], "interrupted", "{status:#}");
    assert!(!alive(script), "the script was killed at restart");
    assert!(!mounted_at(&mountpoint), "the dead mount was removed");
    let status = {
        let mut last = Value::Null;
        poll("the recovery upload", Duration::from_secs(60), || {
            last = area.status(&id);
            last["recovery"] != "uploading"
        });
        last
    };
    assert_eq!(status["recovery"], "done", "{status:#}");
    assert_eq!(read(&area.path("store/results/copy.txt")), "mounted-a");
    assert_eq!(status["result"]["end_reason"], "interrupted");
    // Nothing half-written under a final name: only the two outputs, complete.
    let mut names: Vec<String> = std::fs::read_dir(area.path("store/results"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["copy.txt", "pid"]);
}

/// A job's user cannot make the root agent upload what they may not read: an output path they
/// turned into a symlink (`outputs -> a root-only folder`) is not followed; the reference fails
/// and says why.
#[test]
fn a_users_symlinked_output_is_not_followed_by_the_root_agent() {
    let _serial = serial();
    let area = Area::new();
    let work = area.path("work");
    std::os::unix::fs::chown(&work, Some(NOBODY), Some(NOBODY)).unwrap();
    cli::write_file(&area.path("private/shadow"), "root-only", 0o600);
    std::fs::set_permissions(area.path("private"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let _daemon = area.daemon(&["--allow-group", &NOBODY.to_string()], &[]);
    let manifest = area.manifest(
        "job.json",
        json!({
            "data_references": {
                "out": {"datastore": "store", "path_on_datastore": "stolen", "mode": "upload",
                        "path_on_compute": "outputs"}
            },
            "command": sh(&format!("ln -s {} outputs", area.path("private").display())),
        }),
    );
    let out = area.client_as(
        NOBODY,
        NOBODY,
        &["submit", "--wait", manifest.to_str().unwrap()],
    );
    out.expect_code(75);
    assert!(
        !area.path("store/stolen").exists(),
        "the root-only folder was uploaded"
    );
    let id = area.job_dirs().pop().expect("a job directory");
    let result: Value =
        serde_json::from_str(&read(&area.path("state/jobs").join(id).join("result.json"))).unwrap();
    assert_eq!(
        result["references"]["out"]["status"], "failed",
        "{result:#}"
    );
    assert!(
        result["references"]["out"]["errors"][0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("is a symbolic link owned by the job's user; not followed"),
        "{result:#}"
    );
}

/// A job submitted by an unprivileged user runs as that user; it may not use a secret file it
/// does not own, and peers outside the allowed group are refused and audited.
#[test]
fn unprivileged_peers_run_as_themselves_and_cannot_borrow_roots_secrets() {
    let _serial = serial();
    let area = Area::new();
    cli::write_file(&area.path("store/in/a.txt"), "for-nobody", 0o600);
    let work = area.path("work");
    std::os::unix::fs::chown(&work, Some(NOBODY), Some(NOBODY)).unwrap();
    // The store is writable by root only: uploads are dataref's (root) work, not the script's.
    let _daemon = area.daemon(&["--allow-group", &NOBODY.to_string()], &[]);
    let socket_mode = std::fs::metadata(area.socket()).unwrap();
    assert_eq!(socket_mode.mode() & 0o777, 0o660);
    assert_eq!(socket_mode.gid(), NOBODY);

    let manifest = area.manifest(
        "job.json",
        json!({
            "data_references": {
                "data": {"datastore": "store", "path_on_datastore": "in", "mode": "mount"},
                "dl": {"datastore": "store", "path_on_datastore": "in", "mode": "download",
                       "path_on_compute": "dl"},
                "out": {"datastore": "store", "path_on_datastore": "who", "mode": "upload",
                        "path_on_compute": "made/by/dataref/outputs"}
            },
            // dataref creates made/by/dataref as root: the script can only write there if
            // dataref gave those folders to it. The source file is 0600 root: the script reads
            // it through the mount (0444, allow_other) and owns its downloaded copy.
            "command": sh("mkdir made/by/dataref/outputs && cd made/by/dataref/outputs && \
                           id -u > uid && echo \"$HOME $USER\" > env && \
                           cat $AZUREML_DATAREFERENCE_data/a.txt > mounted && \
                           stat -c %u $AZUREML_DATAREFERENCE_dl/a.txt > downloaded_owner && \
                           echo changed >> $AZUREML_DATAREFERENCE_dl/a.txt"),
        }),
    );
    let out = area.client_as(
        NOBODY,
        NOBODY,
        &["submit", "--wait", manifest.to_str().unwrap()],
    );
    out.expect_code(0);
    assert_eq!(read(&area.path("store/who/uid")).trim(), NOBODY.to_string());
    assert_eq!(read(&area.path("store/who/env")), "/nonexistent nobody\n");
    assert_eq!(read(&area.path("store/who/mounted")), "for-nobody");
    assert_eq!(
        read(&area.path("store/who/downloaded_owner")).trim(),
        NOBODY.to_string()
    );
    for created in ["made", "made/by", "made/by/dataref"] {
        assert_eq!(
            std::fs::metadata(area.path("work").join(created))
                .unwrap()
                .uid(),
            NOBODY,
            "{created}: the folders dataref created belong to the script's user"
        );
    }

    // A secret file owned by root: refused (403 → 77), audited, nothing queued.
    cli::write_file(
        &area.path("config/root-only.key"),
        "cm9vdC1vbmx5LWtleQ==",
        0o600,
    );
    let jobs_before = area.job_dirs();
    let secret_manifest = area.manifest(
        "secret.json",
        json!({
            "datastores": {"blob": {"kind": "azure_blob", "account_name": "acct",
                                     "container_name": "data",
                                     "account_key": {"file": area.path("config/root-only.key")}}},
            "data_references": {"d": {"datastore": "blob", "path_on_datastore": "x",
                                      "mode": "download"}},
            "command": ["true"],
        }),
    );
    let out = area.client_as(
        NOBODY,
        NOBODY,
        &["submit", secret_manifest.to_str().unwrap()],
    );
    out.expect_code(77);
    assert!(
        out.stderr.contains("not owned by uid 65534"),
        "{}",
        out.stderr
    );
    assert!(
        !out.all_output().contains("cm9vdC1vbmx5"),
        "the secret never shows"
    );
    assert_eq!(area.job_dirs(), jobs_before);
    let audit = read(&area.path("state/audit.log"));
    assert!(audit.contains("refused a job of uid 65534"), "{audit}");

    // A peer outside root and the allowed group (socket opened up to reach the check): 403.
    std::fs::set_permissions(area.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = area.client_as(NOBODY, 4242, &["status"]);
    out.expect_code(77);
    assert!(out.stderr.contains("permission denied"), "{}", out.stderr);
    let audit = read(&area.path("state/audit.log"));
    assert!(
        audit.contains("refused a job listing: uid 65534 gid 4242"),
        "{audit}"
    );
}

/// 200 jobs in a burst: all complete, never more than --max-jobs at once, daemon RSS flat.
#[test]
fn a_burst_of_200_jobs_completes_within_max_jobs() {
    let area = Area::new();
    let daemon = area.daemon(&["--max-jobs", "3"], &[]);
    let manifest = area.manifest("tiny.json", json!({"command": ["true"]}));
    let manifest_bytes = std::fs::read(&manifest).unwrap();
    let base = area.path("work");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = dataref::daemon::client::Client::new(&area.socket());
    let started = Instant::now();
    let rss_start = daemon.rss_kib();
    let path = format!(
        "/v1/jobs?base_dir={}",
        dataref::daemon::client::query_value(base.to_str().unwrap())
    );
    let ids: Vec<String> = runtime.block_on(async {
        let mut ids = Vec::new();
        for _ in 0..200 {
            let (status, body) = client
                .json(hyper::Method::POST, &path, Some(manifest_bytes.clone()))
                .await
                .unwrap();
            assert_eq!(status, 201, "{body}");
            ids.push(body["id"].as_str().unwrap().to_owned());
        }
        ids
    });
    let submitted = started.elapsed();
    let mut rss_peak = rss_start;
    let records = runtime.block_on(async {
        loop {
            rss_peak = rss_peak.max(daemon.rss_kib());
            let (_, body) = client
                .json(hyper::Method::GET, "/v1/jobs", None)
                .await
                .unwrap();
            let jobs = body["jobs"].as_array().unwrap().clone();
            if jobs.iter().all(|j| j["state"] == "succeeded") {
                return jobs;
            }
            let bad: Vec<&Value> = jobs
                .iter()
                .filter(|j| {
                    ["failed", "cancelled", "interrupted"].contains(&j["state"].as_str().unwrap())
                })
                .collect();
            assert!(bad.is_empty(), "{bad:#?}");
            assert!(started.elapsed() < Duration::from_secs(600), "too slow");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let total = started.elapsed();
    assert_eq!(records.len(), 200);
    assert_eq!(ids.len(), 200);
    // Never more than 3 at once: no instant is inside more than 3 [started, finished] spans.
    let mut events: Vec<(f64, i32)> = Vec::new();
    for r in &records {
        events.push((r["started_at"].as_f64().unwrap(), 1));
        events.push((r["finished_at"].as_f64().unwrap(), -1));
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut running = 0;
    let mut peak = 0;
    for (_, delta) in events {
        running += delta;
        peak = peak.max(running);
    }
    assert!(peak <= 3, "{peak} jobs ran at once with --max-jobs 3");
    let rss_end = daemon.rss_kib();
    eprintln!(
        "200 jobs: submitted in {:.2} s, all done in {:.1} s; peak concurrency {peak}; \
         daemon RSS {rss_start} KiB at start, peak {rss_peak} KiB, {rss_end} KiB at end",
        submitted.as_secs_f64(),
        total.as_secs_f64()
    );
    assert!(
        rss_peak < rss_start + 32 * 1024,
        "RSS grew from {rss_start} to {rss_peak} KiB"
    );
}

/// Oversize, malformed and unknown requests get a 4xx and change nothing.
#[test]
fn malformed_and_oversize_requests_are_rejected_without_effect() {
    let area = Area::new();
    let _daemon = area.daemon(&[], &[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = dataref::daemon::client::Client::new(&area.socket());
    let post = |path: &str, body: Vec<u8>| {
        runtime
            .block_on(client.json(hyper::Method::POST, path, Some(body)))
            .unwrap()
    };
    let (status, body) = post("/v1/jobs", vec![b' '; 2 * 1024 * 1024]);
    assert_eq!(status, 413, "{body}");
    let (status, body) = post("/v1/jobs", b"{not json".to_vec());
    assert_eq!(status, 422, "{body}");
    assert!(
        body["issues"][0]["message"]
            .as_str()
            .unwrap()
            .contains("invalid JSON")
    );
    let (status, _) = post("/v1/jobs?base_dir=relative/dir", b"{}".to_vec());
    assert_eq!(status, 400);
    let (status, _) = post("/v1/nothing", b"{}".to_vec());
    assert_eq!(status, 404);
    let (status, _) = post("/v1/jobs/../../etc/cancel", Vec::new());
    assert_eq!(status, 404);
    let (status, _) = runtime
        .block_on(client.json(hyper::Method::DELETE, "/v1/jobs", None))
        .unwrap();
    assert_eq!(status, 405);
    assert!(area.job_dirs().is_empty(), "{:?}", area.job_dirs());
}

/// 1,000 status requests a second for 10 s while jobs run: every one answered, RSS flat.
#[test]
fn a_thousand_status_requests_a_second_while_jobs_run() {
    let area = Area::new();
    let daemon = area.daemon(&["--max-jobs", "2"], &[]);
    let manifest = area.manifest("sleepy.json", json!({"command": sh("sleep 120")}));
    let ids = [area.submit(&manifest), area.submit(&manifest)];
    for id in &ids {
        area.wait_state(id, &["running"], Duration::from_secs(60));
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let socket = area.socket();
    let rss_before = daemon.rss_kib();
    let started = Instant::now();
    let (answered, failures) = runtime.block_on(async {
        let mut tasks = Vec::new();
        // 20 clients × 50 requests a second.
        for n in 0..20 {
            let socket = socket.clone();
            let id = ids[n % 2].clone();
            tasks.push(tokio::spawn(async move {
                let client = dataref::daemon::client::Client::new(&socket);
                let mut ticks = tokio::time::interval(Duration::from_millis(20));
                let (mut ok, mut failed) = (0u32, Vec::new());
                for _ in 0..500 {
                    ticks.tick().await;
                    match client
                        .json(hyper::Method::GET, &format!("/v1/jobs/{id}"), None)
                        .await
                    {
                        Ok((status, body)) if status == 200 && body["state"] == "running" => {
                            ok += 1
                        }
                        other => failed.push(format!("{other:?}")),
                    }
                }
                (ok, failed)
            }));
        }
        let mut answered = 0;
        let mut failures = Vec::new();
        for task in tasks {
            let (ok, failed) = task.await.unwrap();
            answered += ok;
            failures.extend(failed);
        }
        (answered, failures)
    });
    let elapsed = started.elapsed().as_secs_f64();
    let rss_after = daemon.rss_kib();
    eprintln!(
        "{answered} status requests in {elapsed:.1} s ({:.0}/s); daemon RSS {rss_before} → \
         {rss_after} KiB",
        answered as f64 / elapsed
    );
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..1]
    );
    assert_eq!(answered, 10_000);
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
}
