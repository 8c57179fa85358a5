//! A job run as another user (`dataref run --run-as`, as the daemon and Slurm prologs do): its
//! mounts' entries are that user's, files 0400 and folders 0500 (the kernel lets that user and
//! root in, every other local user gets EACCES); the job directory root writes is a place only
//! root controls; the secret files of the job's own datastores are read with the user's rights.

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
    // The job's own (inline) datastore is the user's, read with their rights: their files.
    write_file(&dir.path().join("store/in/a.txt"), "private", 0o600);
    for owned in ["store", "store/in", "store/in/a.txt"] {
        std::os::unix::fs::chown(dir.path().join(owned), Some(NOBODY), Some(NOBODY)).unwrap();
    }
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
    let mut child = KillOnDrop(job.spawn().unwrap());
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
    let status = child.0.wait().unwrap();
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

/// A job run with `--run-as` runs its user's manifest: what is the service's — the cache's
/// place, a lower free-space floor, a secret from the agent's own environment for a datastore
/// of the manifest's — is refused (65, each field named) before anything is done. Without
/// `--run-as` the same manifest is root's own and is accepted (control).
#[test]
fn a_run_as_manifest_may_not_set_what_is_the_services() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    std::os::unix::fs::chown(&work, Some(NOBODY), Some(NOBODY)).unwrap();
    let victim = dir.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    let manifest = write_manifest(
        &work.join("job.json"),
        &json!({
            "datastores": {"blob": {"kind": "azure_blob", "account_name": "acct",
                                    "container_name": "data", "endpoint": "http://127.0.0.1:9",
                                    "account_key": {"env": "ROOTS_KEY"}}},
            "data_references": {"out": {"datastore": "blob", "path_on_datastore": "o",
                                        "mode": "upload", "path_on_compute": "out"}},
            "mount": {"cache_dir": victim, "reserved_free_disk_bytes": 0},
            "command": ["true"],
        }),
    );
    let run = |args: &[&str]| {
        let mut job = command();
        job.current_dir(&work)
            .env("ROOTS_KEY", "cm9vdHMta2V5")
            .arg("--config-dir")
            .arg(dir.path().join("config"))
            .args(args)
            .arg(&manifest);
        common::cli::output(&mut job)
    };
    let jobs = dir.path().join("jobs/1");
    let run_as = [
        "run",
        "--no-progress",
        "--run-as",
        "65534:65534",
        "--job-dir",
    ];
    let refused = run(&[&run_as[..], &[jobs.to_str().unwrap()]].concat());
    assert_eq!(refused.code, 65, "{}", refused.all_output());
    for field in [
        "mount.cache_dir",
        "mount.reserved_free_disk_bytes",
        "ROOTS_KEY",
    ] {
        assert!(
            refused.stderr.contains(field),
            "{field}: {}",
            refused.stderr
        );
    }
    assert!(!jobs.exists(), "nothing is done");
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0);
    // Control: the same manifest, root's own, validates.
    run(&["validate"]).expect_code(0);
}

/// A job that must not outlive a failed test (it would hold the mount and the test's output).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Every request line and query a loopback "storage" endpoint received (it answers 403).
fn listener() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/devstoreaccount1", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut first = String::new();
            let _ = BufReader::new(stream.try_clone().unwrap()).read_line(&mut first);
            record.lock().unwrap().push(first);
            let _ = stream.write_all(
                b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    (url, seen)
}

// The secret file of a job's own (inline) datastore is read as the job's user: a link of theirs
// to root's SAS yields EACCES, and root's SAS never reaches the endpoint the user named.
#[test]
fn a_jobs_own_secret_file_is_read_with_its_users_rights() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    std::os::unix::fs::chown(&work, Some(NOBODY), Some(NOBODY)).unwrap();
    write_file(
        &dir.path().join("root/sas"),
        "sv=1&sig=ROOTSIGNATURE",
        0o600,
    );
    let theirs = work.join("their.sas");
    write_file(&theirs, "sv=1&sig=THEIRSIGNATURE", 0o600);
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
    let link = work.join("swapped.sas");
    std::os::unix::fs::symlink(dir.path().join("root/sas"), &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(NOBODY), Some(NOBODY)).unwrap();

    let run = |secret: &std::path::Path| {
        let (endpoint, seen) = listener();
        let manifest = write_manifest(
            &work.join("secret.json"),
            &json!({
                "datastores": {"theirs": {"kind": "azure_blob", "account_name": "devstoreaccount1",
                    "container_name": "data", "endpoint": endpoint,
                    "sas_token": {"file": secret}}},
                "data_references": {"d": {"datastore": "theirs", "path_on_datastore": "x",
                                          "mode": "download"}},
                "command": ["true"],
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
            .arg(dir.path().join(format!(
                "jobs/{}",
                secret.file_name().unwrap().to_string_lossy()
            )))
            .arg(&manifest);
        let outcome = common::cli::output(&mut job);
        let requests = seen.lock().unwrap().join("");
        (outcome, requests)
    };
    // Control: the user's own SAS file is read and used.
    let (_, requests) = run(&theirs);
    assert!(requests.contains("THEIRSIGNATURE"), "{requests}");
    // The attack: the job fails on the secret, and root's never leaves the node.
    let (outcome, requests) = run(&link);
    assert_ne!(outcome.code, 0);
    assert!(
        !requests.contains("ROOTSIGNATURE"),
        "root's SAS was sent: {requests}"
    );
    assert!(!outcome.all_output().contains("ROOTSIGNATURE"));
    assert!(
        outcome.all_output().contains("Permission denied"),
        "{}",
        outcome.all_output()
    );
}
