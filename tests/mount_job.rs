//! `mount` references in `dataref run`, and `dataref mount` with other users: real FUSE mounts
//! (as root), through the binary.

mod common;

use common::mounts::is_mounted;
use common::serial;
use common::wait::poll;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::cli::run;
use serde_json::json;

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
fn mounts_are_removed_after_preemption() {
    let _serial = serial::lock();
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
    assert!(is_mounted(&mountpoint));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143));
    assert!(
        !is_mounted(&mountpoint),
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
        is_mounted(mountpoint)
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
    let _serial = serial::lock();
    let (dir, store, _work) = setup();
    let config = dir.path().join("config");
    common::cli::register_local(&config, "ds", &store);
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
    let _serial = serial::lock();
    let (dir, store, _work) = setup();
    let (mut first, first_mount, first_work) = waiting_job(dir.path(), &store, "one");
    let (mut second, second_mount, second_work) = waiting_job(dir.path(), &store, "two");
    let out = run(&dir.path().join("config"), &["cleanup"]);
    out.expect_code(0);
    for mountpoint in [&first_mount, &second_mount] {
        assert!(
            is_mounted(mountpoint),
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
    let _serial = serial::lock();
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
    assert!(!is_mounted(&mountpoint));
    // A plain directory again: usable by the next job.
    std::fs::write(mountpoint.join("probe"), "x").unwrap();
}
