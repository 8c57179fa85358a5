//! The Kubernetes example (`examples/kubernetes/dataref-job.yaml`) without a cluster: the
//! container's command runs as PID 1 of a fresh pid namespace (`unshare --pid --fork
//! --mount-proc`), as in a pod, against Azurite.
//!
//! The pod's filesystem is laid out under a temp dir: the ConfigMap's files (taken from the
//! YAML) at `<root>/etc/dataref-job`, the Secret at `<root>/etc/dataref/keys` with Kubernetes'
//! layout (`account-key -> ..data/account-key`, file mode 0400 as `defaultMode`), the emptyDir at
//! `<root>/scratch`. The adaptations, all made here and nowhere in the example: every mount path
//! in job.json and the command gets the `<root>` prefix, `dataref` is the test's binary, and the
//! datastore's account and endpoint are Azurite's.

mod common;

use common::fs::sorted_names;
use common::procs::children_of;
use common::wait::poll_or;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::azurite;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

const DATAREF: &str = env!("CARGO_BIN_EXE_dataref");
/// The pod's volume mounts, as in the YAML (checked against it): ConfigMap, Secret, emptyDir.
const JOB_MOUNT: &str = "/etc/dataref-job";
const KEYS_MOUNT: &str = "/etc/dataref/keys";
const SCRATCH_MOUNT: &str = "/scratch";
const RUN_LIMIT: Duration = Duration::from_secs(30);

fn example_yaml() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kubernetes/dataref-job.yaml");
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The literal block scalar `key: |` (the ConfigMap's files), with its indentation removed.
fn block_scalar(yaml: &str, key: &str) -> String {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != format!("{key}: |"));
    assert!(lines.next().is_some(), "no `{key}: |` block in the YAML");
    let body: Vec<&str> = lines
        .take_while(|l| l.trim().is_empty() || l.starts_with("    "))
        .collect();
    let indent = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap();
    let mut text: String = body
        .iter()
        .map(|l| format!("{}\n", l.get(indent..).unwrap_or("")))
        .collect();
    text = text.trim_end().to_string();
    text.push('\n');
    text
}

/// The value of the first `key: value` line.
fn scalar<'a>(yaml: &'a str, key: &str) -> &'a str {
    yaml.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no `{key}:` in the YAML"))
}

/// A pod's filesystem and the example's job, ready to run.
struct Pod {
    tmp: tempfile::TempDir,
    root: PathBuf,
    container: String,
    command: Vec<String>,
    /// The manifest (paths already under `root`), to adjust before `write_manifest`.
    manifest: Value,
    cfg: PathBuf,
}

impl Pod {
    fn new() -> Self {
        let yaml = example_yaml();
        for mount in [JOB_MOUNT, KEYS_MOUNT, SCRATCH_MOUNT] {
            assert!(
                yaml.contains(&format!("mountPath: {mount}\n")),
                "the YAML no longer mounts {mount}: update the test's constants"
            );
        }
        assert_eq!(scalar(&yaml, "defaultMode"), "0400");

        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("pod");
        let under_root = |text: &str| {
            [JOB_MOUNT, KEYS_MOUNT, SCRATCH_MOUNT]
                .iter()
                .fold(text.to_string(), |t, m| {
                    t.replace(m, &format!("{}{m}", root.display()))
                })
        };

        // The ConfigMap volume.
        let job_dir = root.join(&JOB_MOUNT[1..]);
        fs::create_dir_all(&job_dir).unwrap();
        fs::write(job_dir.join("train.sh"), block_scalar(&yaml, "train.sh")).unwrap();
        let mut manifest: Value =
            serde_json::from_str(&under_root(&block_scalar(&yaml, "job.json"))).unwrap();

        // The Secret volume, laid out as the kubelet does: the key is a symlink into a
        // timestamped directory, the file itself 0400.
        let keys = root.join(&KEYS_MOUNT[1..]);
        let data = keys.join("..2026_01_01_00_00_00.000000000");
        fs::create_dir_all(&data).unwrap();
        fs::write(data.join("account-key"), azurite::KEY).unwrap();
        fs::set_permissions(data.join("account-key"), fs::Permissions::from_mode(0o400)).unwrap();
        std::os::unix::fs::symlink(data.file_name().unwrap(), keys.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/account-key", keys.join("account-key")).unwrap();

        // The emptyDir.
        fs::create_dir_all(root.join(&SCRATCH_MOUNT[1..])).unwrap();

        // Azurite instead of the real account; the key reference stays the YAML's.
        let container = azurite::unique_container("k8s");
        let store = &mut manifest["datastores"]["blobs"];
        assert_eq!(
            store["account_key"]["file"],
            format!("{}/account-key", keys.display()),
            "job.json must read the key from the Secret volume"
        );
        store["account_name"] = azurite::ACCOUNT.into();
        store["container_name"] = container.clone().into();
        store["endpoint"] = azurite::shared().endpoint().into();

        let command: Vec<String> = serde_json::from_str(&under_root(scalar(&yaml, "command")))
            .expect("the container's command is a JSON-style list");
        assert_eq!(command[0], "dataref");

        let pod = Self {
            cfg: tmp.path().join("cfg"),
            tmp,
            root,
            container,
            command,
            manifest,
        };
        pod.seed_input();
        pod
    }

    /// The test's own view of the container (a registry entry under a private config dir).
    fn dataref(&self, args: &[&str]) {
        let out = Command::new(DATAREF)
            .arg("--config-dir")
            .arg(&self.cfg)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "dataref {args:?}: {out:?}");
    }

    fn seed_input(&self) {
        let key = azurite::key_file(self.tmp.path());
        self.dataref(&[
            "datastore",
            "register",
            "azure-blob",
            "--name",
            "seed",
            "--account",
            azurite::ACCOUNT,
            "--container",
            &self.container,
            "--key-file",
            key.to_str().unwrap(),
            "--endpoint",
            &azurite::shared().endpoint(),
            "--create-if-not-exists",
        ]);
        let input = self.tmp.path().join("input");
        fs::create_dir_all(&input).unwrap();
        fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("examples/slurm/datastore/datasets/toy/points.csv"),
            input.join("points.csv"),
        )
        .unwrap();
        self.dataref(&[
            "upload",
            "--datastore",
            "seed",
            "--target-path",
            "datasets/toy",
            "--no-progress",
            input.to_str().unwrap(),
        ]);
    }

    /// Downloads what the job uploaded under `prefix`; returns the local directory.
    fn uploaded(&self, prefix: &str) -> PathBuf {
        let target = self.tmp.path().join("check");
        self.dataref(&[
            "download",
            "--datastore",
            "seed",
            "--prefix",
            prefix,
            "--target-path",
            target.to_str().unwrap(),
            "--no-progress",
        ]);
        target.join(prefix)
    }

    fn scratch(&self) -> PathBuf {
        self.root.join(&SCRATCH_MOUNT[1..])
    }

    fn write_manifest(&self) {
        let path = self.root.join(&JOB_MOUNT[1..]).join("job.json");
        fs::write(path, serde_json::to_string_pretty(&self.manifest).unwrap()).unwrap();
    }

    /// The container's command as PID 1 of a new pid namespace.
    fn spawn(&self, env: &[(&str, &str)]) -> Child {
        self.write_manifest();
        Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "--kill-child", DATAREF])
            .args(&self.command[1..])
            .env_remove("DATAREF_CONFIG_DIR")
            .env_remove("DATAREF_JOB_DIR")
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(fs::File::create(self.tmp.path().join("stdout")).unwrap())
            .stderr(fs::File::create(self.tmp.path().join("stderr")).unwrap())
            .spawn()
            .expect("unshare (util-linux) runs")
    }

    fn wait(&self, child: &mut Child) -> i32 {
        let deadline = Instant::now() + RUN_LIMIT;
        let status: ExitStatus = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the pod did not finish within {RUN_LIMIT:?}\n{}",
                    self.describe()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        status
            .code()
            .unwrap_or_else(|| panic!("killed by a signal: {status:?}\n{}", self.describe()))
    }

    fn result(&self) -> Value {
        let path = self.scratch().join(".dataref/result.json");
        let text = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", path.display(), self.describe()));
        serde_json::from_str(&text).unwrap()
    }

    fn describe(&self) -> String {
        let read = |p: PathBuf| fs::read_to_string(p).unwrap_or_default();
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}\n--- job.log ---\n{}",
            read(self.tmp.path().join("stdout")),
            read(self.tmp.path().join("stderr")),
            read(self.scratch().join(".dataref/job.log")),
        )
    }
}

// The pod as shipped: inputs downloaded with the key from the 0400 Secret file, the script
// trained, every output uploaded byte for byte, and the pod's exit code is the script's.
#[test]
fn pod_runs_the_job_and_uploads_its_outputs() {
    let pod = Pod::new();
    let mut dataref = pod.spawn(&[("EPOCH_SECONDS", "0")]);
    let code = pod.wait(&mut dataref);
    assert_eq!(code, 0, "{}", pod.describe());

    let outputs = pod.scratch().join("outputs");
    let names = sorted_names(&outputs);
    assert_eq!(
        names,
        [
            "checkpoint-1.txt",
            "checkpoint-2.txt",
            "checkpoint-3.txt",
            "model.txt"
        ]
    );
    let uploaded = pod.uploaded("runs/k8s-example");
    assert_eq!(sorted_names(&uploaded), names);
    for name in &names {
        assert_eq!(
            fs::read(uploaded.join(name)).unwrap(),
            fs::read(outputs.join(name)).unwrap(),
            "{name}"
        );
    }
    let result = pod.result();
    assert_eq!(result["end_reason"], "succeeded", "{result:#}");
    assert_eq!(result["references"]["data"]["files"], 1);
    assert_eq!(result["references"]["outputs"]["files"], 4);
    let stdout = fs::read_to_string(pod.tmp.path().join("stdout")).unwrap();
    assert!(stdout.contains("epoch 3:"), "{}", pod.describe());
}

// SIGTERM to the pod's PID 1 (what the kubelet sends on eviction or delete): forwarded to the
// script, whose trap writes a last checkpoint; outputs uploaded; exit 143. Meanwhile orphans
// reparented to PID 1 are reaped: none stays a zombie.
#[test]
fn sigterm_to_pid_1_is_forwarded_and_orphans_are_reaped() {
    let mut pod = Pod::new();
    // A long run, and ten orphans (`sleep 6` whose parent shell exits at once) before the
    // example's script starts: they are reparented to PID 1. They must still be alive when the
    // first checkpoint is seen, about 0.5 s after the start (2 s on a loaded 2-core machine):
    // 6 s is 3x that.
    pod.manifest["environment"]["EPOCHS"] = "1000".into();
    let orphans = "(sleep 6 &); ".repeat(10);
    let command = pod.manifest["command"].as_array().unwrap().clone();
    let mut wrapped: Vec<Value> = vec![
        "sh".into(),
        "-c".into(),
        format!("{orphans}exec \"$0\" \"$@\"").into(),
    ];
    wrapped.extend(command);
    pod.manifest["command"] = wrapped.into();

    let mut unshare = pod.spawn(&[("EPOCH_SECONDS", "0.2")]);
    let pid1 = poll_or(
        "the namespace's PID 1",
        Duration::from_secs(5),
        || pod.describe(),
        || children_of(unshare.id() as i32).first().map(|c| c.pid),
    );
    let status = fs::read_to_string(format!("/proc/{pid1}/status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(
        nspid.ends_with("\t1"),
        "dataref is not PID 1 in its namespace: {nspid}"
    );

    poll_or(
        "the first checkpoint",
        Duration::from_secs(20),
        || pod.describe(),
        || {
            pod.scratch()
                .join("outputs/checkpoint-1.txt")
                .exists()
                .then_some(())
        },
    );
    poll_or(
        "ten orphans reparented to PID 1",
        Duration::from_secs(5),
        || pod.describe(),
        || {
            let sleeps = children_of(pid1)
                .into_iter()
                .filter(|c| c.comm == "sleep")
                .count();
            (sleeps == 10).then_some(())
        },
    );
    // Once they exit (6 s after the start), PID 1 must reap them: a zombie stays its child
    // until reaped.
    poll_or(
        "the orphans to be reaped",
        Duration::from_secs(20),
        || pod.describe(),
        || {
            let children = children_of(pid1);
            let zombies = children.iter().filter(|c| c.state == 'Z').count();
            (children.len() == 1 && zombies == 0).then_some(())
        },
    );

    kill(Pid::from_raw(pid1), Signal::SIGTERM).unwrap();
    let code = pod.wait(&mut unshare);
    assert_eq!(code, 143, "{}", pod.describe());

    let uploaded = pod.uploaded("runs/k8s-example");
    let model = fs::read_to_string(uploaded.join("model.txt")).unwrap();
    assert!(model.contains("interrupted at epoch"), "{model}");
    assert!(uploaded.join("checkpoint-1.txt").exists());
    let result = pod.result();
    assert_eq!(result["end_reason"], "preempted", "{result:#}");
    assert_eq!(result["exit_code"], 143);
    assert_eq!(result["child"]["forwarded_signal"], "SIGTERM");
    assert_eq!(result["references"]["outputs"]["status"], "done");
}
