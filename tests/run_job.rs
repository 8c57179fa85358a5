//! `dataref run JOB.json` end to end: the real binary, a `local` datastore, `sh` scripts.
//!
//! Layout of every test: `<tmp>/store` is the datastore root, `<tmp>/work` the working
//! directory (it holds `job.json`), `<tmp>/cfg` an empty config directory, and dataref's own
//! stdout/stderr go to `<tmp>/dataref.out` / `<tmp>/dataref.err`. Synchronisation with a running
//! script goes through marker files the script writes, polled with a deadline.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

/// Variables that would change dataref's behaviour (or what the child sees) behind a test's
/// back.
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

/// How long any single dataref run may take before the test gives up on it.
const RUN_LIMIT: Duration = Duration::from_secs(20);

struct Job {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    store: PathBuf,
    work: PathBuf,
    cfg: PathBuf,
}

impl Job {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let job = Self {
            store: root.join("store"),
            work: root.join("work"),
            cfg: root.join("cfg"),
            root,
            _tmp: tmp,
        };
        for dir in [&job.store, &job.work, &job.cfg] {
            fs::create_dir_all(dir).unwrap();
        }
        job
    }

    /// The inline datastore every test uses: `ds`, a local directory outside `work`.
    fn datastores(&self) -> Value {
        json!({"ds": {"kind": "local", "root": self.store}})
    }

    /// Writes `work/job.json`: the given fields plus the `ds` datastore.
    fn manifest(&self, mut fields: Value) -> PathBuf {
        fields
            .as_object_mut()
            .unwrap()
            .entry("datastores")
            .or_insert_with(|| self.datastores());
        let path = self.work.join("job.json");
        fs::write(&path, serde_json::to_string_pretty(&fields).unwrap()).unwrap();
        path
    }

    /// Writes a file into the datastore.
    fn put(&self, name: &str, contents: &str) {
        write(&self.store.join(name), contents);
    }

    fn command(&self, manifest: &Path) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_dataref"));
        self.prepare(&mut command);
        command
            .arg("--config-dir")
            .arg(&self.cfg)
            .arg("run")
            .arg("--no-progress")
            .arg(manifest);
        command
    }

    /// A clean environment, no stdin, output into files beside the working directory.
    fn prepare(&self, command: &mut Command) {
        for var in SCRUBBED_ENV {
            command.env_remove(var);
        }
        command
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(fs::File::create(self.root.join("dataref.out")).unwrap())
            .stderr(fs::File::create(self.root.join("dataref.err")).unwrap());
    }

    fn spawn(&self, manifest: &Path) -> Child {
        self.command(manifest).spawn().expect("dataref starts")
    }

    /// Runs the job to its end and returns dataref's exit code.
    fn run(&self, manifest: &Path) -> i32 {
        let mut child = self.spawn(manifest);
        self.code(&mut child)
    }

    /// Waits for a spawned dataref (with a deadline) and returns its exit code; dataref must
    /// exit on its own, not be killed by a signal.
    fn code(&self, child: &mut Child) -> i32 {
        let status = wait(child, RUN_LIMIT, || self.describe());
        status.code().unwrap_or_else(|| {
            panic!(
                "dataref was killed by a signal: {status:?}\n{}",
                self.describe()
            )
        })
    }

    fn job_dir(&self) -> PathBuf {
        self.work.join(".dataref")
    }

    fn result(&self) -> Value {
        let text = fs::read_to_string(self.job_dir().join("result.json"))
            .unwrap_or_else(|e| panic!("result.json: {e}\n{}", self.describe()));
        serde_json::from_str(&text).unwrap()
    }

    fn log(&self) -> String {
        fs::read_to_string(self.job_dir().join("job.log")).unwrap_or_default()
    }

    /// Everything a failing assertion should show.
    fn describe(&self) -> String {
        let read = |p: PathBuf| fs::read_to_string(p).unwrap_or_default();
        format!(
            "--- dataref stdout ---\n{}\n--- dataref stderr ---\n{}\n--- job.log ---\n{}\n\
             --- result.json ---\n{}",
            read(self.root.join("dataref.out")),
            read(self.root.join("dataref.err")),
            self.log(),
            read(self.job_dir().join("result.json")),
        )
    }

    #[track_caller]
    fn expect_code(&self, code: i32, expected: i32) {
        assert_eq!(code, expected, "dataref exit code\n{}", self.describe());
    }
}

fn write(path: &Path, contents: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, contents).unwrap();
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `["sh", "-c", script]`.
fn sh(script: &str) -> Value {
    json!(["sh", "-c", script])
}

/// Waits for `child`, killing it and failing the test after `limit`.
fn wait(child: &mut Child, limit: Duration, describe: impl Fn() -> String) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("dataref did not exit within {limit:?}\n{}", describe());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Polls `ready` every few milliseconds until it holds; fails the test after `limit`.
fn poll_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn signal(child: &Child, sig: Signal) {
    kill(Pid::from_raw(child.id() as i32), sig).unwrap();
}

/// Every file under `dir`, relative, sorted (directories end in `/`).
fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if path.is_dir() {
                out.push(format!("{rel}/"));
                walk(root, &path, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn upload_ref(path_on_datastore: &str, path_on_compute: &str) -> Value {
    json!({"datastore": "ds", "path_on_datastore": path_on_datastore, "mode": "upload",
           "path_on_compute": path_on_compute})
}

fn download_ref(path_on_datastore: &str) -> Value {
    json!({"datastore": "ds", "path_on_datastore": path_on_datastore, "mode": "download"})
}

/// The state letter of a live process (`None` once it is gone).
fn process_state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().next()?.chars().next()
}

// 1. SIGTERM while the script runs: forwarded, trapped, outputs still uploaded, exit 143.
#[test]
fn sigterm_reaches_the_script_and_outputs_are_still_uploaded() {
    let job = Job::new();
    let manifest = job.manifest(json!({
        "data_references": {"out": upload_ref("results", "outputs")},
        "command": sh("trap 'echo got-term > outputs/term.txt; exit 143' TERM
             mkdir -p outputs
             echo before-term > outputs/progress.txt
             touch ready
             while :; do sleep 0.05; done"),
    }));
    let mut child = job.spawn(&manifest);
    poll_until("the script's ready marker", Duration::from_secs(10), || {
        job.work.join("ready").exists()
    });
    signal(&child, Signal::SIGTERM);
    let code = job.code(&mut child);
    job.expect_code(code, 143);

    // The trap ran (the signal reached the script) and what it wrote after was uploaded too.
    assert_eq!(read(&job.store.join("results/term.txt")), "got-term\n");
    assert_eq!(
        read(&job.store.join("results/progress.txt")),
        "before-term\n"
    );
    let result = job.result();
    assert_eq!(result["end_reason"], "preempted", "{result:#}");
    assert_eq!(result["exit_code"], 143);
    assert_eq!(result["child"]["exit_code"], 143);
    assert_eq!(result["child"]["forwarded_signal"], "SIGTERM");
    assert_eq!(result["child"]["killed_after_grace"], false);
    assert_eq!(result["references"]["out"]["status"], "done");
    assert_eq!(result["references"]["out"]["files"], 2);
}

// 2. A script that ignores SIGTERM is SIGKILLed after the grace period; outputs uploaded.
#[test]
fn script_ignoring_sigterm_is_killed_after_grace() {
    let job = Job::new();
    let manifest = job.manifest(json!({
        "data_references": {"out": upload_ref("results", "outputs")},
        "grace_period_seconds": 1,
        "command": sh("trap '' TERM
             mkdir -p outputs
             echo stubborn > outputs/o.txt
             touch ready
             while :; do sleep 0.05; done"),
    }));
    let mut child = job.spawn(&manifest);
    poll_until("the script's ready marker", Duration::from_secs(10), || {
        job.work.join("ready").exists()
    });
    let signalled = Instant::now();
    signal(&child, Signal::SIGTERM);
    let code = job.code(&mut child);
    let elapsed = signalled.elapsed();
    job.expect_code(code, 137);
    assert!(
        elapsed >= Duration::from_millis(900),
        "SIGKILL came before the 1 s grace period ended ({elapsed:?})"
    );

    assert_eq!(read(&job.store.join("results/o.txt")), "stubborn\n");
    let result = job.result();
    assert_eq!(result["child"]["killed_after_grace"], true, "{result:#}");
    assert_eq!(result["child"]["signal"], 9);
    assert_eq!(result["child"]["forwarded_signal"], "SIGTERM");
    assert_eq!(result["end_reason"], "preempted");
    assert_eq!(result["exit_code"], 137);
    assert_eq!(result["references"]["out"]["status"], "done");
}

// 3. A grandchild that escaped with setsid does not outlive the job.
#[test]
fn setsid_grandchild_does_not_outlive_the_job() {
    let job = Job::new();
    let manifest = job.manifest(json!({
        "command": sh("setsid sh -c 'echo $$ > grandchild.pid; exec sleep 1000' &
             while [ ! -s grandchild.pid ]; do sleep 0.01; done
             gpid=$(cat grandchild.pid)
             kill -0 \"$gpid\" && echo alive > alive.txt
             exit 0"),
    }));
    let code = job.run(&manifest);
    job.expect_code(code, 0);

    assert_eq!(read(&job.work.join("alive.txt")), "alive\n");
    let pid: i32 = read(&job.work.join("grandchild.pid"))
        .trim()
        .parse()
        .unwrap();
    // dataref has exited: the grandchild must be dead. dataref kills and reaps it before it
    // exits; a zombie waiting for an outside reaper is dead too.
    match process_state(pid) {
        None | Some('Z') | Some('X') => {}
        Some(state) => {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            panic!(
                "the setsid grandchild {pid} outlived the job (state {state})\n{}",
                job.describe()
            );
        }
    }
    assert!(
        job.log().contains("killed 1 leftover process"),
        "{}",
        job.describe()
    );
    assert_eq!(job.result()["end_reason"], "succeeded");
}

// 4. SIGTERM while inputs download: the script never starts, no partial file is left.
#[test]
fn sigterm_during_download_stops_before_the_script() {
    let job = Job::new();
    // A sparse 1 GiB input: no disk space at the source, and long enough to copy (hundreds of
    // ms at the very least) that the signal lands while it is in flight. The test waits for the
    // temporary download file to exist, so the signal is sent mid-download, never before.
    fs::create_dir_all(job.store.join("big")).unwrap();
    fs::File::create(job.store.join("big/blob.bin"))
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let manifest = job.manifest(json!({
        "data_references": {"inp": download_ref("big")},
        "command": sh("touch script-started"),
    }));
    let target = job.work.join("ds/big");
    let is_partial = |name: &str| name.contains(".dataref-partial.");
    let mut child = job.spawn(&manifest);
    poll_until("a partial download file", Duration::from_secs(10), || {
        fs::read_dir(&target).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| is_partial(&e.file_name().to_string_lossy()))
        })
    });
    signal(&child, Signal::SIGTERM);
    let code = job.code(&mut child);
    job.expect_code(code, 143);

    assert!(
        !job.work.join("script-started").exists(),
        "the script ran after a SIGTERM during downloads"
    );
    let left: Vec<String> = tree(&job.work.join("ds"));
    assert!(
        left.iter()
            .all(|p| !is_partial(p) && !p.ends_with("blob.bin")),
        "partial or unverified files left behind: {left:?}"
    );
    let result = job.result();
    assert_eq!(result["end_reason"], "signal_before_start", "{result:#}");
    assert_eq!(result["exit_code"], 143);
    assert_eq!(result["child"], Value::Null);
    assert_ne!(result["references"]["inp"]["status"], "done");
    assert!(job.log().contains("inp: downloading"), "{}", job.describe());
}

// 5a. The script's own exit code is passed through; `always` uploads after a failure.
#[test]
fn script_failure_passes_its_code_and_uploads_by_default() {
    let job = Job::new();
    let manifest = job.manifest(json!({
        "data_references": {"out": upload_ref("results", "outputs")},
        "command": sh("mkdir -p outputs; echo partial > outputs/o.txt; exit 3"),
    }));
    let code = job.run(&manifest);
    job.expect_code(code, 3);
    assert_eq!(read(&job.store.join("results/o.txt")), "partial\n");
    let result = job.result();
    assert_eq!(result["end_reason"], "script_failed");
    assert_eq!(result["exit_code"], 3);
    assert_eq!(result["child"]["exit_code"], 3);
    assert_eq!(result["references"]["out"]["status"], "done");
}

// 4b. SIGTERM during stage-out (the script has ended): the uploads finish, the signal is logged
// and recorded, and the job keeps the outcome it had (here: success, exit 0).
#[test]
fn sigterm_during_stage_out_lets_the_uploads_finish() {
    let job = Job::new();
    // A sparse 1 GiB output: cheap to create, and seconds to read and hash, so the signal
    // lands while the upload is in flight.
    let manifest = job.manifest(json!({
        "data_references": {"out": upload_ref("results", "outputs")},
        "command": sh("mkdir -p outputs && truncate -s 1G outputs/model.bin"),
    }));
    let mut child = job.spawn(&manifest);
    poll_until("the staging_out phase", Duration::from_secs(10), || {
        fs::read_to_string(job.job_dir().join("result.json"))
            .is_ok_and(|text| text.contains("\"staging_out\""))
    });
    signal(&child, Signal::SIGTERM);
    let code = job.code(&mut child);
    job.expect_code(code, 0);

    let uploaded = fs::metadata(job.store.join("results/model.bin")).unwrap();
    assert_eq!(uploaded.len(), 1 << 30);
    assert_eq!(tree(&job.store), ["results/", "results/model.bin"]);
    let result = job.result();
    assert_eq!(result["end_reason"], "succeeded", "{result:#}");
    assert_eq!(result["signals_during_stage_out"], json!(["SIGTERM"]));
    assert_eq!(result["references"]["out"]["status"], "done");
    assert_eq!(result["references"]["out"]["bytes"], 1u64 << 30);
    assert!(
        job.log()
            .contains("received SIGTERM during stage-out; finishing it first"),
        "{}",
        job.describe()
    );
}

// 4c. A scheduler that signals every process of the job at once (Slurm's scancel): the script
// dies of its own SIGTERM a moment before dataref's copy arrives. That is a preemption, not a
// failure: `on_success` still uploads, and the result says preempted.
#[test]
fn script_and_agent_signalled_together_count_as_preempted() {
    let job = Job::new();
    let manifest = job.manifest(json!({
        "data_references": {"out": upload_ref("results", "outputs")},
        "upload_policy": "on_success",
        "command": sh("mkdir -p outputs; echo saved > outputs/o.txt; touch ready; sleep 30"),
    }));
    let mut child = job.spawn(&manifest);
    poll_until("the script's ready marker", Duration::from_secs(10), || {
        job.work.join("ready").exists()
    });
    let group = job.result()["script_pid"]
        .as_i64()
        .expect("script_pid while running");
    // The script's whole group first (it has no trap: sh dies of the signal), then dataref.
    nix::sys::signal::killpg(Pid::from_raw(group as i32), Signal::SIGTERM).unwrap();
    signal(&child, Signal::SIGTERM);
    let code = job.code(&mut child);
    job.expect_code(code, 143);
    let result = job.result();
    assert_eq!(result["end_reason"], "preempted", "{result:#}");
    assert_eq!(result["references"]["out"]["status"], "done");
    assert_eq!(read(&job.store.join("results/o.txt")), "saved\n");
}

// 5b. `on_success` uploads nothing when the script failed on its own.
#[test]
fn on_success_policy_skips_upload_after_failure() {
    let job = Job::new();
    let manifest = job.manifest(json!({
        "data_references": {"out": upload_ref("results", "outputs")},
        "upload_policy": "on_success",
        "command": sh("mkdir -p outputs; echo partial > outputs/o.txt; exit 3"),
    }));
    let code = job.run(&manifest);
    job.expect_code(code, 3);
    assert!(job.work.join("outputs/o.txt").exists());
    assert_eq!(tree(&job.store), Vec::<String>::new(), "nothing uploaded");
    let result = job.result();
    assert_eq!(result["references"]["out"]["status"], "skipped_by_policy");
    assert_eq!(result["references"]["out"]["files"], 0);
    assert_eq!(result["end_reason"], "script_failed");
}

// 5c. The script succeeded but stage-out failed: 75.
#[test]
fn stage_out_failure_after_success_exits_75() {
    let job = Job::new();
    // A file where the upload needs a directory: results/o.txt cannot be created.
    job.put("results", "in the way\n");
    let manifest = job.manifest(json!({
        "data_references": {"out": upload_ref("results", "outputs")},
        "command": sh("mkdir -p outputs; echo x > outputs/o.txt"),
    }));
    let code = job.run(&manifest);
    job.expect_code(code, 75);
    assert_eq!(read(&job.store.join("results")), "in the way\n");
    let result = job.result();
    assert_eq!(result["end_reason"], "stage_out_failed", "{result:#}");
    assert_eq!(result["exit_code"], 75);
    assert_eq!(result["child"]["exit_code"], 0);
    assert_eq!(result["references"]["out"]["status"], "failed");
    assert!(
        !result["references"]["out"]["errors"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

// 5c'. A preempted script that still exits 0 but whose outputs did not all arrive: 75, not 0.
#[test]
fn stage_out_failure_after_preemption_with_exit_0_exits_75() {
    let job = Job::new();
    job.put("results", "in the way\n");
    let manifest = job.manifest(json!({
        "data_references": {"out": upload_ref("results", "outputs")},
        "command": sh("trap 'exit 0' TERM
             mkdir -p outputs; echo x > outputs/o.txt
             touch ready
             while :; do sleep 0.05; done"),
    }));
    let mut child = job.spawn(&manifest);
    poll_until("the script's ready marker", Duration::from_secs(10), || {
        job.work.join("ready").exists()
    });
    signal(&child, Signal::SIGTERM);
    let code = job.code(&mut child);
    job.expect_code(code, 75);
    let result = job.result();
    assert_eq!(result["end_reason"], "stage_out_failed", "{result:#}");
    assert_eq!(result["child"]["exit_code"], 0);
    assert_eq!(result["child"]["forwarded_signal"], "SIGTERM");
    assert_eq!(result["references"]["out"]["status"], "failed");
}

// 5c''. A download that fails on the local side (a file where the target directory must go):
// 74, the script never starts.
#[test]
fn local_io_failure_during_download_exits_74() {
    let job = Job::new();
    job.put("in/a.txt", "a");
    write(
        &job.work.join("ds"),
        "a file where <working_dir>/ds must be a directory\n",
    );
    let manifest = job.manifest(json!({
        "data_references": {"inp": download_ref("in")},
        "command": sh("touch script-started"),
    }));
    let code = job.run(&manifest);
    job.expect_code(code, 74);
    assert!(!job.work.join("script-started").exists());
    let result = job.result();
    assert_eq!(result["end_reason"], "input_failed", "{result:#}");
    assert_eq!(result["references"]["inp"]["status"], "failed");
}

// 5d. An input prefix that matches nothing: 66, the script never starts.
#[test]
fn missing_input_exits_66_without_running_the_script() {
    let job = Job::new();
    job.put("other/file.txt", "x");
    let manifest = job.manifest(json!({
        "data_references": {"inp": download_ref("nothing/here")},
        "command": sh("touch script-started"),
    }));
    let code = job.run(&manifest);
    job.expect_code(code, 66);
    assert!(!job.work.join("script-started").exists());
    let result = job.result();
    assert_eq!(result["end_reason"], "input_failed", "{result:#}");
    assert_eq!(result["exit_code"], 66);
    assert_eq!(result["child"], Value::Null);
    assert_eq!(result["references"]["inp"]["status"], "failed");
}

// 5e. The same with `allow_empty`: the script runs and finds an empty directory.
#[test]
fn allow_empty_input_runs_the_script() {
    let job = Job::new();
    job.put("other/file.txt", "x");
    let mut reference = download_ref("nothing/here");
    reference["allow_empty"] = json!(true);
    let manifest = job.manifest(json!({
        "data_references": {"inp": reference},
        "command": sh("test -d \"$AZUREML_DATAREFERENCE_inp\" && touch script-started"),
    }));
    let code = job.run(&manifest);
    job.expect_code(code, 0);
    assert!(job.work.join("script-started").exists());
    assert_eq!(
        tree(&job.work.join("ds/nothing/here")),
        Vec::<String>::new()
    );
    let result = job.result();
    assert_eq!(result["end_reason"], "succeeded");
    assert_eq!(result["references"]["inp"]["status"], "done");
}

// 6. The child's environment and argument substitution.
#[test]
fn child_environment_and_argument_substitution() {
    let job = Job::new();
    job.put("train/a.txt", "a");
    job.put("train_v2/b.txt", "b");
    let manifest = job.manifest(json!({
        "data_references": {
            "train": download_ref("train"),
            "train_v2": download_ref("train_v2"),
            "out": upload_ref("results", "outputs"),
        },
        "environment": {"FROM_MANIFEST": "manifest value", "NOTIFY_SOCKET": "/from/manifest"},
        "command": ["sh", "-c", "env > env.txt; printf '%s\\n' \"$@\" > args.txt", "sh",
                    "$AZUREML_DATAREFERENCE_train",
                    "$AZUREML_DATAREFERENCE_train_v2",
                    "${AZUREML_DATAREFERENCE_train}_v2",
                    "--out=${AZURE_ML_OUTPUT_out}/x",
                    "$FROM_MANIFEST",
                    "$SURELY_UNKNOWN_VARIABLE_X/y",
                    "${SURELY_UNKNOWN_VARIABLE_X}"],
    }));
    let mut command = job.command(&manifest);
    command
        .env("NOTIFY_SOCKET", "/tmp/x")
        .env("WATCHDOG_USEC", "1000")
        .env("WATCHDOG_PID", "1")
        .env("DATAREF_TEST_INHERITED", "inherited")
        // dataref turns library backtraces off for itself only.
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LIB_BACKTRACE");
    let mut child = command.spawn().unwrap();
    let code = job.code(&mut child);
    job.expect_code(code, 0);

    let env_text = read(&job.work.join("env.txt"));
    let env: std::collections::BTreeMap<&str, &str> = env_text
        .lines()
        .filter_map(|line| line.split_once('='))
        .collect();
    for withheld in [
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "RUST_LIB_BACKTRACE",
        "DATAREF_SET_RUST_LIB_BACKTRACE",
    ] {
        assert!(
            !env.contains_key(withheld),
            "{withheld} reached the child:\n{env_text}"
        );
    }
    assert_eq!(env.get("RUST_BACKTRACE"), Some(&"1"));
    let work = job.work.display().to_string();
    let train = format!("{work}/ds/train");
    let train_v2 = format!("{work}/ds/train_v2");
    let outputs = format!("{work}/outputs");
    let expected = [
        ("AZUREML_DATAREFERENCE_train", train.as_str()),
        ("AZURE_ML_INPUT_train", &train),
        ("AZUREML_DATAREFERENCE_train_v2", &train_v2),
        ("AZURE_ML_INPUT_train_v2", &train_v2),
        ("AZUREML_DATAREFERENCE_out", &outputs),
        ("AZURE_ML_OUTPUT_out", &outputs),
        ("FROM_MANIFEST", "manifest value"),
        ("DATAREF_TEST_INHERITED", "inherited"),
    ];
    for (name, value) in expected {
        assert_eq!(env.get(name), Some(&value), "{name} in:\n{env_text}");
    }
    assert!(!env.contains_key("AZURE_ML_OUTPUT_train"));
    assert!(!env.contains_key("AZURE_ML_INPUT_out"));
    assert!(Path::new(&train).is_absolute());

    let args = read(&job.work.join("args.txt"));
    let args: Vec<&str> = args.lines().collect();
    assert_eq!(
        args,
        [
            train.clone(),
            train_v2.clone(),
            format!("{train}_v2"),
            format!("--out={outputs}/x"),
            "manifest value".into(),
            "$SURELY_UNKNOWN_VARIABLE_X/y".into(),
            "${SURELY_UNKNOWN_VARIABLE_X}".into(),
        ]
    );
}

// 7. As PID 1 of a pid namespace, dataref reaps orphans and passes the script's code on.
#[test]
fn as_pid_1_orphans_are_reaped() {
    let job = Job::new();
    let manifest = job.manifest(json!({
        "command": sh("sh -c '(sleep 0.5; exit 0) & echo $! > orphan.pid; exit 0'
             opid=$(cat orphan.pid)
             # the orphan now belongs to PID 1, which is dataref
             cut -d' ' -f4 /proc/$opid/stat > orphan.ppid
             echo $$ > script.pid
             n=0
             while [ -e /proc/$opid ] && [ $n -lt 500 ]; do sleep 0.01; n=$((n+1)); done
             if [ -e /proc/$opid ]; then echo not-reaped > reaped.txt; else echo reaped > reaped.txt; fi
             ps -eo stat,pid | grep -c '^Z' > zombies.txt
             exit 7"),
    }));
    let mut command = Command::new("unshare");
    job.prepare(&mut command);
    command
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(env!("CARGO_BIN_EXE_dataref"))
        .arg("--config-dir")
        .arg(&job.cfg)
        .arg("run")
        .arg(&manifest);
    let mut child = command.spawn().expect("unshare starts");
    let code = job.code(&mut child);
    job.expect_code(code, 7);

    // Inside the namespace the script is PID 1's child and the orphan was re-parented to PID 1.
    let script_pid: i32 = read(&job.work.join("script.pid")).trim().parse().unwrap();
    assert!(script_pid > 1);
    assert_eq!(read(&job.work.join("orphan.ppid")).trim(), "1");
    assert_eq!(
        read(&job.work.join("reaped.txt")).trim(),
        "reaped",
        "{}",
        job.describe()
    );
    assert_eq!(read(&job.work.join("zombies.txt")).trim(), "0");
    let result = job.result();
    assert_eq!(result["exit_code"], 7);
    assert_eq!(result["end_reason"], "script_failed");
}

// 8. Download and upload layouts; overwrite=false keeps a local file.
#[test]
fn download_and_upload_layout() {
    let job = Job::new();
    job.put("data/b.csv", "remote b\n");
    job.put("data/sub/a.csv", "remote a\n");
    job.put("data_v2.csv", "not under data/\n");
    // Already on the compute node: kept (overwrite=false) and reported as skipped.
    write(&job.work.join("ds/data/b.csv"), "local b\n");
    let manifest = job.manifest(json!({
        "data_references": {
            "inp": download_ref("data"),
            "model": upload_ref("models/v1", "model.bin"),
        },
        "command": sh("cat \"$AZUREML_DATAREFERENCE_inp/sub/a.csv\" > seen.txt
             echo weights > \"$AZUREML_DATAREFERENCE_model\""),
    }));
    let code = job.run(&manifest);
    job.expect_code(code, 0);

    assert_eq!(
        tree(&job.work.join("ds")),
        ["data/", "data/b.csv", "data/sub/", "data/sub/a.csv"]
    );
    assert_eq!(read(&job.work.join("ds/data/b.csv")), "local b\n");
    assert_eq!(read(&job.work.join("seen.txt")), "remote a\n");
    // A single file lands at <path_on_datastore>/<file name>.
    assert_eq!(read(&job.store.join("models/v1/model.bin")), "weights\n");

    let result = job.result();
    let inp = &result["references"]["inp"];
    assert_eq!(inp["status"], "done", "{result:#}");
    assert_eq!(inp["files"], 1);
    assert_eq!(inp["bytes"], "remote a\n".len());
    assert_eq!(inp["local"], job.work.join("ds/data").display().to_string());
    assert_eq!(
        inp["skipped"],
        json!([{"path": "data/b.csv", "reason": "exists"}])
    );
    assert_eq!(result["references"]["model"]["files"], 1);
    assert_eq!(
        result["references"]["model"]["local"],
        job.work.join("model.bin").display().to_string()
    );
}

// 8b. Uploading the working directory itself never uploads the job directory.
#[test]
fn uploading_the_working_dir_leaves_out_the_job_dir() {
    let job = Job::new();
    let manifest = job.manifest(json!({
        "data_references": {"all": upload_ref("snapshot", ".")},
        "command": sh("mkdir -p sub; echo f > sub/f.txt; echo g > g.txt"),
    }));
    let code = job.run(&manifest);
    job.expect_code(code, 0);
    // The job directory exists locally (result.json, job.log) but was not uploaded.
    assert!(job.job_dir().join("job.log").exists());
    assert_eq!(
        tree(&job.store.join("snapshot")),
        ["g.txt", "job.json", "sub/", "sub/f.txt"],
        "{}",
        job.describe()
    );
    assert_eq!(job.result()["references"]["all"]["files"], 3);
}

// 9. result.json and job.log contents.
#[test]
fn result_json_and_job_log_record_the_job() {
    let job = Job::new();
    job.put("in/x.bin", "12345");
    job.put("in/y.bin", "678");
    let manifest = job.manifest(json!({
        "data_references": {
            "inp": download_ref("in"),
            "out": upload_ref("results", "outputs"),
        },
        "command": sh("echo hello-from-stdout
             echo hello-from-stderr >&2
             mkdir -p outputs; printf abcd > outputs/o.txt"),
    }));
    let code = job.run(&manifest);
    job.expect_code(code, 0);

    let result = job.result();
    assert_eq!(result["version"], 1, "{result:#}");
    assert_eq!(result["end_reason"], "succeeded");
    assert_eq!(result["exit_code"], 0);
    assert_eq!(result["child"]["exit_code"], 0);
    assert_eq!(result["child"]["signal"], Value::Null);
    assert!(result["child"]["pid"].as_u64().unwrap() > 0);
    assert!(result["finished_at"].as_f64().unwrap() >= result["started_at"].as_f64().unwrap());
    let inp = &result["references"]["inp"];
    assert_eq!(inp["mode"], "download");
    assert_eq!(inp["status"], "done");
    assert_eq!(inp["files"], 2);
    assert_eq!(inp["bytes"], 8);
    assert_eq!(inp["errors"], json!([]));
    assert!(inp["duration_seconds"].is_number());
    let out = &result["references"]["out"];
    assert_eq!(out["mode"], "upload");
    assert_eq!(out["status"], "done");
    assert_eq!(out["files"], 1);
    assert_eq!(out["bytes"], 4);

    let log = job.log();
    let lines: Vec<&str> = log.lines().collect();
    for expected in ["hello-from-stdout", "hello-from-stderr"] {
        assert!(
            lines.contains(&expected),
            "{expected} not in job.log:\n{log}"
        );
    }
    for dataref_line in [
        "dataref: inp: downloading",
        "dataref: started sh -c",
        "dataref: script exited with code 0",
        "dataref: out: uploading",
        "dataref: out: uploaded 1 file",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(dataref_line)),
            "{dataref_line:?} not in job.log:\n{log}"
        );
    }
    // The script's output also reaches dataref's own stdout/stderr.
    assert!(read(&job.root.join("dataref.out")).contains("hello-from-stdout"));
    assert!(read(&job.root.join("dataref.err")).contains("hello-from-stderr"));
}

// 10. A second run in the same job directory replaces result.json and job.log.
#[test]
fn rerun_replaces_result_and_log() {
    let job = Job::new();
    let manifest = job.manifest(json!({"command": sh("echo first-run-output")}));
    let code = job.run(&manifest);
    job.expect_code(code, 0);
    assert!(job.log().contains("first-run-output"));
    let first = job.result();
    assert_eq!(first["exit_code"], 0);

    let manifest = job.manifest(json!({"command": sh("echo second-run-output; exit 4")}));
    let code = job.run(&manifest);
    job.expect_code(code, 4);
    let log = job.log();
    assert!(log.contains("second-run-output"), "{log}");
    assert!(!log.contains("first-run-output"), "old log kept:\n{log}");
    let second = job.result();
    assert_eq!(second["exit_code"], 4);
    assert_eq!(second["end_reason"], "script_failed");
    assert_ne!(second["child"]["pid"], first["child"]["pid"]);
    assert_eq!(
        tree(&job.job_dir()),
        ["job.log", "result.json"],
        "stray files in the job directory"
    );
}

// With a terminal on stdin, the script's process group becomes the terminal's foreground
// group (so it can read the terminal and gets Ctrl-C directly). `script` gives dataref a pty.
#[test]
fn a_terminal_is_handed_to_the_script() {
    let job = Job::new();
    let manifest = job.manifest(json!({
        "command": sh("echo \"$(ps -o tpgid= -p $$) $(ps -o pgid= -p $$)\" > fg.txt; \
                       test -t 0 && echo tty > stdin.txt; exit 4"),
    }));
    let inner = format!(
        "{} --config-dir {} run --no-progress {}",
        env!("CARGO_BIN_EXE_dataref"),
        job.cfg.display(),
        manifest.display()
    );
    let mut command = Command::new("script");
    job.prepare(&mut command);
    command.args(["-qec", &inner, "/dev/null"]);
    let mut child = command.spawn().expect("script(1) starts");
    let code = job.code(&mut child);
    job.expect_code(code, 4);
    let fg = read(&job.work.join("fg.txt"));
    let ids: Vec<&str> = fg.split_whitespace().collect();
    assert_eq!(ids.len(), 2, "{fg}");
    assert_eq!(
        ids[0], ids[1],
        "the script's group is not the foreground group: {fg}"
    );
    assert_eq!(read(&job.work.join("stdin.txt")), "tty\n");
}

// 11. An upload journal that cannot be opened costs only resumability, not the outputs.
#[test]
fn an_unusable_upload_journal_does_not_stop_the_upload() {
    let job = Job::new();
    fs::create_dir_all(job.job_dir().join("uploads.journal")).unwrap();
    let manifest = job.manifest(json!({
        "data_references": {"model": upload_ref("models/v1", "model.bin")},
        "command": sh("echo weights > model.bin"),
    }));
    let code = job.run(&manifest);
    job.expect_code(code, 0);
    assert_eq!(read(&job.store.join("models/v1/model.bin")), "weights\n");
    let log = read(&job.job_dir().join("job.log"));
    assert!(
        log.contains("uploads.journal") && log.contains("cannot be resumed"),
        "{log}"
    );
}
