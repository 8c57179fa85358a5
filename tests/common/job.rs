//! The `dataref run` harness of run_job*.rs: a job area with a `local` datastore.
//!
//! Layout: `<tmp>/store` is the datastore root, `<tmp>/work` the working directory (it holds
//! `job.json`), `<tmp>/cfg` an empty config directory, and dataref's own stdout/stderr go to
//! `<tmp>/dataref.out` / `<tmp>/dataref.err`. Synchronisation with a running script goes through
//! marker files the script writes, polled with a deadline.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use super::fs::write;
use super::wait::{exit_within, poll_or};

/// How long any single dataref run may take before the test gives up on it. The longest job here copies 1 GiB (2-6 s; over 20 s was seen on a machine running four
/// builds at once): 120 s is 5x that and still ends a hung job.
pub const RUN_LIMIT: Duration = Duration::from_secs(120);

pub struct Job {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub store: PathBuf,
    pub work: PathBuf,
    pub cfg: PathBuf,
}

impl Job {
    pub fn new() -> Self {
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
    pub fn datastores(&self) -> Value {
        json!({"ds": {"kind": "local", "root": self.store}})
    }

    /// Writes `work/job.json`: the given fields plus the `ds` datastore.
    pub fn manifest(&self, mut fields: Value) -> PathBuf {
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
    pub fn put(&self, name: &str, contents: &str) {
        write(&self.store.join(name), contents);
    }

    pub fn command(&self, manifest: &Path) -> Command {
        let mut command = super::cli::command();
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
    pub fn prepare(&self, command: &mut Command) {
        super::cli::scrub(command);
        command
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(fs::File::create(self.root.join("dataref.out")).unwrap())
            .stderr(fs::File::create(self.root.join("dataref.err")).unwrap());
    }

    pub fn spawn(&self, manifest: &Path) -> Child {
        self.command(manifest).spawn().expect("dataref starts")
    }

    /// Spawns the job and waits until its script has created `work/ready`.
    pub fn spawn_until_ready(&self, manifest: &Path) -> Child {
        let child = self.spawn(manifest);
        poll_or(
            "the script's ready marker",
            Duration::from_secs(10),
            || self.describe(),
            || self.work.join("ready").exists(),
        );
        child
    }

    /// Runs the job to its end and returns dataref's exit code.
    pub fn run(&self, manifest: &Path) -> i32 {
        let mut child = self.spawn(manifest);
        self.code(&mut child)
    }

    /// Waits for a spawned dataref (with a deadline) and returns its exit code; dataref must
    /// exit on its own, not be killed by a signal.
    pub fn code(&self, child: &mut Child) -> i32 {
        let status = exit_within(child, RUN_LIMIT, || self.describe());
        status.code().unwrap_or_else(|| {
            panic!(
                "dataref was killed by a signal: {status:?}\n{}",
                self.describe()
            )
        })
    }

    pub fn job_dir(&self) -> PathBuf {
        self.work.join(".dataref")
    }

    pub fn result(&self) -> Value {
        let text = fs::read_to_string(self.job_dir().join("result.json"))
            .unwrap_or_else(|e| panic!("result.json: {e}\n{}", self.describe()));
        serde_json::from_str(&text).unwrap()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.job_dir().join("job.log")).unwrap_or_default()
    }

    /// Everything a failing assertion should show.
    pub fn describe(&self) -> String {
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
    pub fn expect_code(&self, code: i32, expected: i32) {
        assert_eq!(code, expected, "dataref exit code\n{}", self.describe());
    }

    /// Runs `manifest`, whose script would touch `script-started`, and checks that reference
    /// `failed` stopped the job with `code` before the script ran. Returns `result.json`.
    #[track_caller]
    pub fn run_failing_input(&self, manifest: &Path, code: i32, failed: &str) -> Value {
        let got = self.run(manifest);
        self.expect_code(got, code);
        assert!(!self.work.join("script-started").exists(), "the script ran");
        let result = self.result();
        assert_eq!(result["end_reason"], "input_failed", "{result:#}");
        assert_eq!(
            result["references"][failed]["status"], "failed",
            "{result:#}"
        );
        result
    }
}

pub fn signal(child: &Child, sig: Signal) {
    kill(Pid::from_raw(child.id() as i32), sig).unwrap();
}

pub fn upload_ref(path_on_datastore: &str, path_on_compute: &str) -> Value {
    json!({"datastore": "ds", "path_on_datastore": path_on_datastore, "mode": "upload",
           "path_on_compute": path_on_compute})
}

pub fn download_ref(path_on_datastore: &str) -> Value {
    json!({"datastore": "ds", "path_on_datastore": path_on_datastore, "mode": "download"})
}

/// `dataref run --job-dir JOB_DIR [EXTRA] MANIFEST` in `work`, with the config directory
/// `<root>/config` and dataref's output in `<root>/dataref.out` / `.err`.
pub fn spawn_run(
    root: &Path,
    work: &Path,
    job_dir: &Path,
    manifest: &Path,
    extra: &[&str],
) -> Child {
    let log = |name: &str| fs::File::create(root.join(name)).unwrap();
    super::cli::command()
        .current_dir(work)
        .arg("--config-dir")
        .arg(root.join("config"))
        .args(["run", "--no-progress", "--job-dir"])
        .arg(job_dir)
        .args(extra)
        .arg(manifest)
        .stdin(Stdio::null())
        .stdout(log("dataref.out"))
        .stderr(log("dataref.err"))
        .spawn()
        .expect("dataref starts")
}
