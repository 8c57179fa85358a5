//! `mount` references in `dataref run`, and `dataref mount` with other users: real FUSE mounts
//! (as root), through the binary.

mod common;

use common::mounts::is_mounted;
use common::serial;
use common::wait::poll;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::cli::{run, sh};
use common::fs::{read, sorted_names, write};
use common::job::Job;
use serde_json::{Value, json};

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

/// A process outside the job still holds a file of the mount open when the job ends: the mount
/// is detached anyway (lazily), so no dead mount is left behind the agent and the folder is
/// usable at once.
#[test]
fn a_mount_still_in_use_by_another_process_is_detached_when_the_job_ends() {
    let _serial = serial::lock();
    let (dir, store, _work) = setup();
    let (mut agent, mountpoint, work) = waiting_job(dir.path(), &store, "busy");
    let held = std::fs::File::open(mountpoint.join("a.txt")).unwrap();
    std::fs::write(work.join("release"), "").unwrap();
    assert_eq!(agent.wait().unwrap().code(), Some(0));
    assert!(!is_mounted(&mountpoint), "a mount outlived its agent");
    let log = std::fs::read_to_string(work.join(".dataref/job.log")).unwrap();
    assert!(!log.contains("warning: unmounting"), "{log}");
    std::fs::write(mountpoint.join("probe"), "x").unwrap();
    drop(held);
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

fn mount_ref(path_on_datastore: &str, path_on_compute: Option<&str>) -> Value {
    let mut reference = json!({"datastore": "ds", "path_on_datastore": path_on_datastore});
    if let Some(local) = path_on_compute {
        reference["path_on_compute"] = json!(local);
    }
    reference
}

/// The first error recorded for a reference in result.json.
fn first_error(result: &Value, reference: &str) -> String {
    result["references"][reference]["errors"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

// A mount whose prefix matches nothing is a missing input, as for a download: 66, and the
// script never starts.
#[test]
fn a_mount_of_a_prefix_that_matches_nothing_exits_66() {
    let _serial = serial::lock();
    let job = Job::new();
    job.put("a/b_v2.csv", "x"); // `a/b` is directory-aware: it never matches a/b_v2.csv
    let manifest = job.manifest(json!({
        "data_references": {"inp": mount_ref("a/b", None)},
        "command": sh("touch script-started"),
    }));
    let result = job.run_failing_input(&manifest, 66, "inp");
    let error = first_error(&result, "inp");
    assert!(error.starts_with("nothing matches a/b in "), "{error}");
    assert!(job.log().contains("inp: mount failed: nothing matches a/b"));
    assert!(!is_mounted(&job.work.join("ds/a/b")));
}

// With `allow_empty` the script runs on an empty mounted folder.
#[test]
fn allow_empty_mounts_an_empty_folder() {
    let _serial = serial::lock();
    let job = Job::new();
    let mut reference = mount_ref("a/b", None);
    reference["allow_empty"] = json!(true);
    let manifest = job.manifest(json!({
        "data_references": {"inp": reference},
        "command": sh(r#"set -e
            test -z "$(ls -A "$AZUREML_DATAREFERENCE_inp")"
            grep -c " $AZUREML_DATAREFERENCE_inp " /proc/self/mountinfo > mounted.txt"#),
    }));
    let code = job.run(&manifest);
    job.expect_code(code, 0);
    assert_eq!(read(&job.work.join("mounted.txt")), "1\n");
    assert!(job.log().contains("inp: nothing to mount (allow_empty)"));
    assert_eq!(job.result()["references"]["inp"]["status"], "done");
}

// A single-blob mount is that file and nothing more: the other entries of its folder (a
// sibling download, a sibling mount, a file already there) stay visible, and the file dataref
// made to mount on is gone after the job.
#[test]
fn a_single_blob_mount_leaves_its_folder_to_its_siblings() {
    let _serial = serial::lock();
    let job = Job::new();
    job.put("a/x.csv", "x-data\n");
    job.put("a/y.csv", "y-data\n");
    job.put("a/sub/z.txt", "z-data\n");
    job.put("a/unreferenced.csv", "not shown\n");
    let folder = job.work.join("ds/shared/a");
    write(&folder.join("note.txt"), "already here\n");
    let mut download = mount_ref("a/y.csv", Some("shared"));
    download["mode"] = json!("download");
    let manifest = job.manifest(json!({
        "data_references": {
            "x": mount_ref("a/x.csv", Some("shared")),
            "y": download,
            "sub": mount_ref("a/sub", Some("shared")),
        },
        "command": sh(r#"set -e
            cat "$AZUREML_DATAREFERENCE_x" "$AZUREML_DATAREFERENCE_y" "$AZUREML_DATAREFERENCE_sub/z.txt" > seen.txt
            ls "$(dirname "$AZUREML_DATAREFERENCE_x")" > listed.txt
            grep -c " $AZUREML_DATAREFERENCE_x " /proc/self/mountinfo > mounted.txt
            if (echo more >> "$AZUREML_DATAREFERENCE_x") 2> write.err; then echo writable > write.err; fi"#),
    }));
    let code = job.run(&manifest);
    job.expect_code(code, 0);
    let text = |name: &str| read(&job.work.join(name));
    assert_eq!(text("seen.txt"), "x-data\ny-data\nz-data\n");
    assert_eq!(text("listed.txt"), "note.txt\nsub\nx.csv\ny.csv\n");
    assert_eq!(text("mounted.txt"), "1\n", "the file itself is the mount");
    assert!(
        text("write.err").contains("Read-only file system"),
        "{}",
        text("write.err")
    );
    assert!(!is_mounted(&folder.join("x.csv")));
    assert!(!is_mounted(&folder.join("sub")));
    assert_eq!(sorted_names(&folder), ["note.txt", "sub", "y.csv"]);
    assert_eq!(read(&folder.join("note.txt")), "already here\n");
}

// A file already where a single blob appears is covered while the script runs, and left as
// it was.
#[test]
fn a_file_where_a_single_blob_is_mounted_is_covered_not_changed() {
    let _serial = serial::lock();
    let job = Job::new();
    job.put("a/x.csv", "x-data\n");
    let local = job.work.join("ds/a/x.csv");
    write(&local, "an older copy\n");
    let manifest = job.manifest(json!({
        "data_references": {"x": mount_ref("a/x.csv", None)},
        "command": sh(r#"cat "$AZUREML_DATAREFERENCE_x" > seen.txt"#),
    }));
    let code = job.run(&manifest);
    job.expect_code(code, 0);
    assert_eq!(read(&job.work.join("seen.txt")), "x-data\n");
    assert_eq!(read(&local), "an older copy\n");
}

// A folder where a single blob must appear cannot be mounted on (a file mounts only on a
// file): a mount failure, 69, named in the result.
#[test]
fn a_folder_where_a_single_blob_must_appear_exits_69() {
    let _serial = serial::lock();
    let job = Job::new();
    job.put("a/x.csv", "x-data\n");
    std::fs::create_dir_all(job.work.join("ds/a/x.csv")).unwrap();
    let manifest = job.manifest(json!({
        "data_references": {"x": mount_ref("a/x.csv", None)},
        "command": sh("touch script-started"),
    }));
    let code = job.run(&manifest);
    job.expect_code(code, 69);
    assert!(!job.work.join("script-started").exists());
    let error = first_error(&job.result(), "x");
    assert!(error.contains("a directory is there"), "{error}");
}

// A single-blob mount left by a SIGKILLed agent is a dead mount on a file: `cleanup` finds and
// removes it like a folder's.
#[test]
fn a_killed_agents_single_blob_mount_is_removed_by_cleanup() {
    let _serial = serial::lock();
    let job = Job::new();
    job.put("a/x.csv", "x-data\n");
    let manifest = job.manifest(json!({
        "data_references": {"x": mount_ref("a/x.csv", None)},
        "command": sh(r#"cat "$AZUREML_DATAREFERENCE_x" > /dev/null; touch ready; exec sleep 60"#),
    }));
    let mut agent = job.spawn_until_ready(&manifest);
    let local = job.work.join("ds/a/x.csv");
    assert!(is_mounted(&local));
    agent.kill().unwrap(); // SIGKILL: no unmount happens
    agent.wait().unwrap();
    poll("the mount to die", Duration::from_secs(10), || {
        std::fs::metadata(&local)
            .err()
            .and_then(|e| e.raw_os_error())
            == Some(libc::ENOTCONN)
    });
    let out = run(&job.cfg, &["cleanup"]);
    out.expect_code(0);
    assert!(
        out.stdout.contains(local.to_str().unwrap()),
        "{}",
        out.stdout
    );
    assert!(!is_mounted(&local));
}
