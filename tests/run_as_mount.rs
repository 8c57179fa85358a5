//! A job run as another user (`dataref run --run-as`, as the daemon and Slurm prologs do) gets
//! mounts whose entries are that user's, files 0400 and folders 0500: the kernel lets that user
//! and root in, and every other local user gets EACCES.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use common::cli::{command, sh, write_file, write_manifest};
use common::fs::read;
use common::wait::poll;
use serde_json::json;

const NOBODY: u32 = 65534;
const STRANGER: u32 = 4242;

#[test]
fn a_mount_of_a_job_run_as_a_user_is_readable_by_that_user_only() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    write_file(&dir.path().join("store/in/a.txt"), "private", 0o600);
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    std::os::unix::fs::chown(&work, Some(NOBODY), Some(NOBODY)).unwrap();
    let manifest = write_manifest(
        &work.join("job.json"),
        &json!({
            "datastores": {"store": {"kind": "local", "root": dir.path().join("store")}},
            "data_references": {"data": {"datastore": "store", "path_on_datastore": "in"}},
            "command": sh("d=$AZUREML_DATAREFERENCE_data; stat -c '%u %g %a' $d/a.txt > seen; \
                           stat -c %a $d > dir_mode; cat $d/a.txt > copy; touch ready; \
                           while [ ! -e go ]; do sleep 0.1; done"),
        }),
    );
    let mut job = command();
    job.current_dir(&work)
        .arg("--config-dir")
        .arg(dir.path().join("config"))
        .args([
            "run",
            "--no-progress",
            "--run-as",
            "65534:65534",
            "--job-dir",
        ])
        .arg(dir.path().join("jobs/1"))
        .arg(&manifest);
    let mut child = job.spawn().unwrap();
    poll("the script to start", Duration::from_secs(60), || {
        work.join("ready").exists()
    });

    let mounted = work.join("store/in/a.txt");
    // Another local user: refused by the kernel.
    let stranger = Command::new("cat")
        .arg(&mounted)
        .uid(STRANGER)
        .gid(STRANGER)
        .output()
        .unwrap();
    assert!(
        !stranger.status.success(),
        "another user read the job's data"
    );
    assert!(
        String::from_utf8_lossy(&stranger.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&stranger.stderr)
    );
    // Root still can.
    assert_eq!(read(&mounted), "private");

    write_file(&work.join("go"), "", 0o644);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    // The job's user read it, and saw it as theirs, 0400 in a 0500 folder.
    assert_eq!(read(&work.join("seen")).trim(), "65534 65534 400");
    assert_eq!(read(&work.join("dir_mode")).trim(), "500");
    assert_eq!(read(&work.join("copy")), "private");

    // Root writes the job directory: with --run-as, never inside the user's own folder, where
    // the user could plant symlinks (the default `<working_dir>/.dataref` is theirs here).
    let mut job = command();
    job.current_dir(&work)
        .arg("--config-dir")
        .arg(dir.path().join("config"))
        .args(["run", "--no-progress", "--run-as", "65534:65534"])
        .arg(&manifest);
    let refused = common::cli::output(&mut job);
    assert_eq!(refused.code, 64, "{}", refused.all_output());
    assert!(
        refused.stderr.contains("owned by uid 65534"),
        "{}",
        refused.stderr
    );
    assert!(!work.join(".dataref/job.log").exists());
}
