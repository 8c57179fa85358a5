//! `mount` references in `dataref run`, and `dataref mount` with other users: real FUSE mounts
//! (as root), through the binary.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cli::{run, run_in};
use serde_json::json;

/// `dataref run` and `dataref cleanup` remove dead dataref mounts machine-wide: the tests of
/// this file run one at a time so that one test's cleanup never takes another's dead mount.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn mountinfo() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap()
}

/// Mount points of dataref mounts whose fsname contains `needle`.
fn dataref_mounts(needle: &str) -> Vec<String> {
    mountinfo()
        .lines()
        .filter(|l| l.contains(" - fuse") && l.contains("dataref:") && l.contains(needle))
        .map(|l| l.split(' ').nth(4).unwrap().to_owned())
        .collect()
}

fn poll(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let work = dir.path().join("work");
    std::fs::create_dir_all(store.join("data/sub")).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(store.join("data/a.txt"), "alpha\n").unwrap();
    std::fs::write(store.join("data/sub/b.txt"), "beta\n").unwrap();
    std::fs::write(store.join("model.pt"), "weights\n").unwrap();
    std::fs::write(store.join("other.txt"), "not shown\n").unwrap();
    (dir, store, work)
}

#[test]
fn a_job_reads_its_mounts_through_the_variables() {
    let _serial = serial();
    let (dir, store, work) = setup();
    let manifest = json!({
        "datastores": {"ds": {"kind": "local", "root": store}},
        "data_references": {
            "data": {"datastore": "ds", "path_on_datastore": "data"},
            "model": {"datastore": "ds", "path_on_datastore": "model.pt", "mode": "MOUNT",
                      "path_on_compute": "weights"},
            "out": {"datastore": "ds", "path_on_datastore": "results", "mode": "upload",
                    "path_on_compute": "outputs"}
        },
        "command": ["sh", "-c", r#"
            set -e
            mkdir -p outputs
            grep " $AZUREML_DATAREFERENCE_data " /proc/self/mountinfo | grep -c 'dataref:' > outputs/mounted.txt
            cat "$AZUREML_DATAREFERENCE_data/a.txt" "$AZUREML_DATAREFERENCE_data/sub/b.txt" > outputs/read.txt
            cat "$AZUREML_DATAREFERENCE_model" > outputs/model.txt
            ls "$(dirname "$AZUREML_DATAREFERENCE_model")" > outputs/single-dir.txt
            if touch "$AZUREML_DATAREFERENCE_data/new" 2> outputs/touch.err; then echo writable; fi
            echo "$AZUREML_DATAREFERENCE_data" > outputs/var.txt
            ls -A .dataref/cache/data > outputs/cache.txt
        "#]
    });
    std::fs::write(work.join("job.json"), manifest.to_string()).unwrap();
    let config = dir.path().join("config");
    let out = run_in(&work, &config, &["run", "--no-progress", "job.json"]);
    out.expect_code(0);

    let results = store.join("results");
    let read = |name: &str| std::fs::read_to_string(results.join(name)).unwrap();
    assert_eq!(read("mounted.txt"), "1\n");
    assert_eq!(read("read.txt"), "alpha\nbeta\n");
    assert_eq!(read("model.txt"), "weights\n");
    assert_eq!(
        read("single-dir.txt"),
        "model.pt\n",
        "a single-blob mount shows only it"
    );
    assert!(
        read("touch.err").contains("Read-only file system"),
        "{}",
        read("touch.err")
    );
    // SPEC §3: the variable is root/<path_on_datastore>, the same as a download would use.
    assert_eq!(
        read("var.txt").trim(),
        work.join("ds/data").to_str().unwrap()
    );

    // The default disk cache lives in the job directory while the job runs, and goes with it.
    assert!(
        read("cache.txt").contains(".dataref-cache.lock"),
        "{}",
        read("cache.txt")
    );
    assert!(
        !work.join(".dataref/cache/data").exists(),
        "cache left behind"
    );
    let log = std::fs::read_to_string(work.join(".dataref/job.log")).unwrap();
    assert!(log.contains("data: disk cache at"), "{log}");

    // Everything unmounted after the job.
    let leftover: Vec<String> = dataref_mounts("dataref:run.")
        .into_iter()
        .filter(|m| m.starts_with(dir.path().to_str().unwrap()))
        .collect();
    assert!(leftover.is_empty(), "mounts left behind: {leftover:?}");
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(work.join(".dataref/result.json")).unwrap())
            .unwrap();
    assert_eq!(result["references"]["data"]["status"], "done");
    assert_eq!(result["references"]["model"]["status"], "done");
}

#[test]
fn mounts_are_removed_after_preemption() {
    let _serial = serial();
    let (dir, store, work) = setup();
    let manifest = json!({
        "datastores": {"ds": {"kind": "local", "root": store}},
        "data_references": {"data": {"datastore": "ds", "path_on_datastore": "data"}},
        "command": ["sh", "-c", "touch ready; trap 'exit 143' TERM; while :; do sleep 0.05; done"],
        "grace_period_seconds": 5
    });
    std::fs::write(work.join("job.json"), manifest.to_string()).unwrap();
    let mut child = common::cli::command()
        .current_dir(&work)
        .args([
            "--config-dir",
            dir.path().join("config").to_str().unwrap(),
            "run",
            "--no-progress",
            "job.json",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mountpoint = work.join("ds/data");
    poll("the script to start", Duration::from_secs(20), || {
        work.join("ready").exists()
    });
    assert!(mountinfo().contains(mountpoint.to_str().unwrap()));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143));
    assert!(
        !mountinfo().contains(&format!(" {} ", mountpoint.display())),
        "the mount outlived the preempted job"
    );
}

/// Runs `dataref mount` in the background until the returned guard is dropped.
struct ForegroundMount {
    child: std::process::Child,
    mountpoint: PathBuf,
}

impl Drop for ForegroundMount {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn foreground_mount(config: &Path, mountpoint: &Path, extra: &[&str]) -> ForegroundMount {
    let mut args = vec![
        "--config-dir",
        config.to_str().unwrap(),
        "mount",
        "--datastore",
        "ds",
        "--path",
        "data",
    ];
    args.extend_from_slice(extra);
    args.push(mountpoint.to_str().unwrap());
    let child = common::cli::command()
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = ForegroundMount {
        child,
        mountpoint: mountpoint.to_path_buf(),
    };
    poll("the mount", Duration::from_secs(20), || {
        mountinfo().contains(&format!(" {} ", mountpoint.display()))
    });
    guard
}

/// `nobody` runs `sh -c script`; returns (exit code, stderr).
fn as_nobody(script: &str) -> (i32, String) {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn other_users_read_only_with_allow_other() {
    let _serial = serial();
    let (dir, store, _work) = setup();
    let config = dir.path().join("config");
    run(
        &config,
        &[
            "datastore",
            "register",
            "local",
            "--name",
            "ds",
            "--root",
            store.to_str().unwrap(),
        ],
    )
    .expect_code(0);
    // The mount points live where `nobody` can reach them.
    let base = tempfile::Builder::new()
        .prefix("dataref-mnt")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(
        base.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();

    let shared = base.path().join("shared");
    let mount = foreground_mount(&config, &shared, &["--allow-other"]);
    let (code, err) = as_nobody(&format!(
        "cat {}/a.txt {}/sub/b.txt > /dev/null",
        shared.display(),
        shared.display()
    ));
    assert_eq!(code, 0, "nobody cannot read an allow_other mount: {err}");
    let (code, err) = as_nobody(&format!("touch {}/x", shared.display()));
    assert_ne!(code, 0);
    assert!(
        err.contains("Read-only") || err.contains("Permission denied"),
        "{err}"
    );
    drop(mount);

    let private = base.path().join("private");
    let mount = foreground_mount(&config, &private, &[]);
    let (code, _) = as_nobody(&format!("cat {}/a.txt", private.display()));
    assert_ne!(
        code, 0,
        "a mount without allow_other must refuse other users"
    );
    drop(mount);
}

/// A job whose script waits for `release` in its working dir; returns (child, mountpoint).
fn waiting_job(dir: &Path, store: &Path, name: &str) -> (std::process::Child, PathBuf, PathBuf) {
    let work = dir.join(name);
    std::fs::create_dir_all(&work).unwrap();
    let manifest = json!({
        "datastores": {"ds": {"kind": "local", "root": store}},
        "data_references": {"data": {"datastore": "ds", "path_on_datastore": "data"}},
        "command": ["sh", "-c", "cat \"$AZUREML_DATAREFERENCE_data/a.txt\" > seen; touch ready; \
                     while [ ! -e release ]; do sleep 0.05; done; cat \"$AZUREML_DATAREFERENCE_data/a.txt\" > seen2"]
    });
    std::fs::write(work.join("job.json"), manifest.to_string()).unwrap();
    let child = common::cli::command()
        .current_dir(&work)
        .args([
            "--config-dir",
            dir.join("config").to_str().unwrap(),
            "run",
            "--no-progress",
            "job.json",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    poll("the job's script", Duration::from_secs(20), || {
        work.join("ready").exists()
    });
    (child, work.join("ds/data"), work)
}

#[test]
fn cleanup_never_removes_live_jobs_mounts() {
    let _serial = serial();
    let (dir, store, _work) = setup();
    let (mut first, first_mount, first_work) = waiting_job(dir.path(), &store, "one");
    let (mut second, second_mount, second_work) = waiting_job(dir.path(), &store, "two");
    let out = run(&dir.path().join("config"), &["cleanup"]);
    out.expect_code(0);
    for mountpoint in [&first_mount, &second_mount] {
        assert!(
            mountinfo().contains(&format!(" {} ", mountpoint.display())),
            "cleanup removed a live job's mount: {}",
            out.stdout
        );
    }
    for work in [&first_work, &second_work] {
        std::fs::write(work.join("release"), "").unwrap();
    }
    assert_eq!(first.wait().unwrap().code(), Some(0));
    assert_eq!(second.wait().unwrap().code(), Some(0));
    for work in [&first_work, &second_work] {
        assert_eq!(
            std::fs::read_to_string(work.join("seen2")).unwrap(),
            "alpha\n"
        );
    }
}

#[test]
fn a_killed_agents_mount_is_usable_again_after_cleanup() {
    let _serial = serial();
    let (dir, store, _work) = setup();
    let (mut agent, mountpoint, _work) = waiting_job(dir.path(), &store, "killed");
    agent.kill().unwrap(); // SIGKILL: no unmount happens
    agent.wait().unwrap();
    // The mount is now dead: the kernel answers ENOTCONN.
    poll("the mount to die", Duration::from_secs(10), || {
        std::fs::read_dir(&mountpoint)
            .err()
            .and_then(|e| e.raw_os_error())
            == Some(libc::ENOTCONN)
    });
    let out = run(&dir.path().join("config"), &["cleanup"]);
    out.expect_code(0);
    assert!(
        out.stdout.contains(mountpoint.to_str().unwrap()),
        "{}",
        out.stdout
    );
    assert!(!mountinfo().contains(&format!(" {} ", mountpoint.display())));
    // A plain directory again: usable by the next job.
    std::fs::write(mountpoint.join("probe"), "x").unwrap();
}
