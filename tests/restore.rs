//! `"restore": true` on an upload: before the script, its folder is filled with what an earlier
//! run of the job left under `path_on_datastore`, so a job started again (after a preemption,
//! on another node) resumes from its last checkpoint.

mod common;

use common::cli::sh;
use common::fs::read;
use common::job::{Job, upload_ref};
use serde_json::json;

#[test]
fn a_restarted_job_resumes_from_what_it_uploaded() {
    let job = Job::new();
    let mut checkpoints = upload_ref("runs/1/ckpt", "ckpt");
    checkpoints["restore"] = json!(true);
    checkpoints["overwrite"] = json!(true);
    let refs = json!({ "ckpt": checkpoints });

    // First run: nothing stored yet; the script finds an empty folder and saves step 1.
    let first = job.manifest(json!({
        "data_references": refs,
        "command": sh("test -d ckpt && test -z \"$(ls -A ckpt)\" && \
                       echo 1 > ckpt/step-1 && echo first > ckpt/latest"),
    }));
    job.expect_code(job.run(&first), 0);
    assert!(
        job.log().contains("nothing stored yet to restore"),
        "{}",
        job.log()
    );
    assert_eq!(read(&job.store.join("runs/1/ckpt/latest")), "first\n");

    // Started again elsewhere: the local folder is gone; the script finds step 1.
    std::fs::remove_dir_all(job.work.join("ckpt")).unwrap();
    let second = job.manifest(json!({
        "data_references": refs,
        "command": sh("test \"$(cat ckpt/latest)\" = first && test -e ckpt/step-1 && \
                       echo 2 > ckpt/step-2 && echo second > ckpt/latest"),
    }));
    job.expect_code(job.run(&second), 0);
    assert!(
        job.log().contains("ckpt: restored 2 files"),
        "{}",
        job.log()
    );
    assert_eq!(read(&job.store.join("runs/1/ckpt/latest")), "second\n");
    assert_eq!(read(&job.store.join("runs/1/ckpt/step-1")), "1\n");
    assert_eq!(read(&job.store.join("runs/1/ckpt/step-2")), "2\n");
}

#[test]
fn restore_is_only_for_uploads() {
    let job = Job::new();
    let manifest = job.manifest(json!({
        "data_references": {"data": {"datastore": "store", "path_on_datastore": "in",
                                      "mode": "download", "restore": true}},
        "command": ["true"],
    }));
    let out = common::cli::run_in(
        &job.work,
        &job.cfg,
        &["validate", manifest.to_str().unwrap()],
    );
    assert_eq!(out.code, 65, "{}", out.all_output());
    assert!(
        out.stderr.contains("data_references.data.restore"),
        "{}",
        out.stderr
    );
}

// A file already in the folder (this node's own, at least as new) is kept, not overwritten.
#[test]
fn a_restore_keeps_what_the_folder_already_holds() {
    let job = Job::new();
    job.put("runs/2/ckpt/latest", "stored");
    job.put("runs/2/ckpt/step-1", "1");
    let mut checkpoints = upload_ref("runs/2/ckpt", "ckpt");
    checkpoints["restore"] = json!(true);
    common::cli::write_file(&job.work.join("ckpt/latest"), "local", 0o644);
    let manifest = job.manifest(json!({
        "data_references": {"ckpt": checkpoints},
        "command": sh("test \"$(cat ckpt/latest)\" = local && test -e ckpt/step-1"),
    }));
    job.expect_code(job.run(&manifest), 0);
}
