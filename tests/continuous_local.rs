//! `sync: continuous` on a local datastore: what is not durable when the script ends goes in
//! the stage-out, removed files are not uploaded under their old names, deletions are not
//! mirrored, rewrites are uploaded again, `commit_files`, the live record, the rate bound, and
//! the fields' validation. (The checkpoint patterns against Azurite: `continuous_sync.rs`.)

mod common;

use common::cli::sh;
use common::fs::read;
use common::job::{Job, upload_ref};
use serde_json::{Value, json};

fn continuous(path_on_datastore: &str, path_on_compute: &str) -> Value {
    let mut reference = upload_ref(path_on_datastore, path_on_compute);
    reference["sync"] = json!("continuous");
    reference["overwrite"] = json!(true);
    reference
}

/// Shell: wait (at most 30 s) until `path` exists.
fn wait_for(path: &str) -> String {
    format!("i=0; until test -e {path}; do i=$((i+1)); test $i -lt 600 || exit 9; sleep 0.05; done")
}

#[test]
fn what_is_not_durable_when_the_script_ends_is_uploaded_then() {
    let job = Job::new();
    let manifest = job.manifest(json!({
        "data_references": {"ckpt": continuous("runs/1", "out")},
        // Exits at once: everything goes in the stage-out, in order; a temporary name never
        // renamed into place is reported, not uploaded (it is not a complete file).
        "command": sh("mkdir -p out/step-1 && echo shard > out/step-1/__0_0.distcp && \
                       echo meta > out/step-1/.metadata.tmp && \
                       mv out/step-1/.metadata.tmp out/step-1/.metadata && \
                       echo scratch > out/notes.tmp"),
    }));
    job.expect_code(job.run(&manifest), 0);
    assert_eq!(
        read(&job.store.join("runs/1/step-1/__0_0.distcp")),
        "shard\n"
    );
    assert_eq!(read(&job.store.join("runs/1/step-1/.metadata")), "meta\n");
    assert!(!job.store.join("runs/1/notes.tmp").exists());
    assert!(!job.store.join("runs/1/step-1/.metadata.tmp").exists());
    let result = job.result();
    let sync = &result["references"]["ckpt"]["sync"];
    assert_eq!(sync["checkpoints"][0]["checkpoint"], "step-1", "{result:#}");
    assert_eq!(sync["checkpoints"][0]["files"], 2, "{result:#}");
    assert_eq!(result["references"]["ckpt"]["files"], 2, "{result:#}");
    let skipped = &result["references"]["ckpt"]["skipped"];
    assert_eq!(skipped[0]["reason"], "temporary", "{result:#}");
    assert!(
        skipped[0]["path"]
            .as_str()
            .unwrap()
            .ends_with("out/notes.tmp"),
        "{result:#}"
    );
    assert_eq!(result["references"]["ckpt"]["status"], "done", "{result:#}");
}

#[test]
fn removed_before_upload_is_not_uploaded_and_deletions_are_not_mirrored() {
    let job = Job::new();
    let kept = job.store.join("runs/2/kept.txt");
    let manifest = job.manifest(json!({
        "data_references": {"out": continuous("runs/2", "out")},
        "command": sh(&format!(
            "echo gone > out/scratch.bin && rm out/scratch.bin && \
             echo v1 > out/kept.txt && {} && rm out/kept.txt",
            wait_for(kept.to_str().unwrap())
        )),
    }));
    job.expect_code(job.run(&manifest), 0);
    assert!(!job.store.join("runs/2/scratch.bin").exists());
    // Uploaded while the script ran, then deleted locally: storage keeps it (a copy).
    assert_eq!(read(&kept), "v1\n");
}

#[test]
fn a_file_written_again_is_uploaded_again() {
    let job = Job::new();
    let model = job.store.join("runs/3/model.pt");
    let manifest = job.manifest(json!({
        "data_references": {"out": continuous("runs/3", "out")},
        "command": sh(&format!(
            "echo v1 > out/model.pt && {} && echo v2 > out/model.pt && touch out/late",
            wait_for(model.to_str().unwrap())
        )),
    }));
    job.expect_code(job.run(&manifest), 0);
    assert_eq!(read(&model), "v2\n");
}

#[test]
fn commit_files_mark_checkpoints_and_the_live_record_shows_them() {
    let job = Job::new();
    let mut reference = continuous("runs/4", "out");
    reference["commit_files"] = json!(["COMMIT"]);
    let manifest = job.manifest(json!({
        "data_references": {"out": reference},
        // Waits until dataref's live record (live.json, what `dataref status` shows) names the
        // checkpoint: it was durable before the script ended.
        "command": sh("mkdir -p out/step-7 && echo data > out/step-7/data.bin && \
                       touch out/step-7/COMMIT && i=0; \
                       until grep -q '\"checkpoint\":\"step-7\"' .dataref/live.json; do \
                         i=$((i+1)); test $i -lt 600 || exit 9; sleep 0.05; done"),
    }));
    job.expect_code(job.run(&manifest), 0);
    let result = job.result();
    let checkpoint = &result["references"]["out"]["sync"]["checkpoints"][0];
    assert_eq!(checkpoint["marker"], "runs/4/step-7/COMMIT", "{result:#}");
    assert_eq!(checkpoint["files"], 2, "{result:#}");
    assert!(
        job.log().contains("out: checkpoint step-7 durable"),
        "{}",
        job.describe()
    );
}

#[test]
fn max_bytes_per_second_bounds_an_upload() {
    let job = Job::new();
    let mut reference = upload_ref("runs/5", "out");
    reference["max_bytes_per_second"] = json!(1 << 20);
    let manifest = job.manifest(json!({
        "data_references": {"out": reference},
        "command": sh("mkdir -p out && for i in 1 2 3; do head -c 1048576 /dev/zero > out/f$i; done"),
    }));
    job.expect_code(job.run(&manifest), 0);
    // Three MiB at one MiB/s: the third may start only two seconds after the first (a lower
    // bound the bound itself sets; unbounded this takes milliseconds).
    let seconds = job.result()["references"]["out"]["duration_seconds"]
        .as_f64()
        .unwrap();
    assert!(seconds >= 1.9, "took {seconds} s");
    assert_eq!(
        std::fs::metadata(job.store.join("runs/5/f3"))
            .unwrap()
            .len(),
        1 << 20
    );
}

#[test]
fn the_sync_fields_are_validated() {
    let job = Job::new();
    let cases = [
        (
            json!({"datastore": "ds", "path_on_datastore": "in", "mode": "download",
                   "sync": "continuous"}),
            "data_references.r.sync",
        ),
        (
            json!({"datastore": "ds", "path_on_datastore": "o", "mode": "upload",
                   "path_on_compute": "o", "sync": "always"}),
            "data_references.r.sync",
        ),
        (
            json!({"datastore": "ds", "path_on_datastore": "o", "mode": "upload",
                   "path_on_compute": "o", "commit_files": ["DONE"]}),
            "data_references.r.commit_files",
        ),
        (
            json!({"datastore": "ds", "path_on_datastore": "o", "mode": "upload",
                   "path_on_compute": "o", "sync": "continuous", "commit_files": ["a[b"]}),
            "data_references.r.commit_files[0]",
        ),
        (
            json!({"datastore": "ds", "path_on_datastore": "o", "mode": "upload",
                   "path_on_compute": "o", "max_bytes_per_second": 0}),
            "data_references.r.max_bytes_per_second",
        ),
        (
            json!({"datastore": "ds", "path_on_datastore": "o", "mode": "upload",
                   "path_on_compute": "o", "sync": "continuous", "overwrite": false}),
            "data_references.r.overwrite",
        ),
    ];
    for (reference, field) in cases {
        let manifest = job.manifest(json!({
            "data_references": {"r": reference},
            "command": ["true"],
        }));
        let out = common::cli::run_in(
            &job.work,
            &job.cfg,
            &["validate", manifest.to_str().unwrap()],
        );
        assert_eq!(out.code, 65, "{field}: {}", out.all_output());
        assert!(out.stderr.contains(field), "{field}: {}", out.stderr);
    }
}

// Preempted: the script's last checkpoint, written in its SIGTERM trap, is uploaded in the
// stage-out after what was durable already, marker last.
#[test]
fn a_preempted_scripts_last_checkpoint_is_uploaded_in_the_stage_out() {
    let job = Job::new();
    let first = job.store.join("runs/6/step-1/.metadata");
    let manifest = job.manifest(json!({
        "data_references": {"ckpt": continuous("runs/6", "ckpt")},
        "command": sh(&format!(
            "trap 'mkdir -p ckpt/step-2 && echo w2 > ckpt/step-2/w.bin && \
                   echo m2 > ckpt/step-2/.metadata.tmp && \
                   mv ckpt/step-2/.metadata.tmp ckpt/step-2/.metadata; exit 143' TERM
             mkdir -p ckpt/step-1 && echo w1 > ckpt/step-1/w.bin && echo m1 > ckpt/step-1/.metadata
             {}
             touch ready
             while :; do sleep 0.05; done",
            wait_for(first.to_str().unwrap())
        )),
    }));
    let mut child = job.spawn_until_ready(&manifest);
    common::job::signal(&child, nix::sys::signal::Signal::SIGTERM);
    job.expect_code(job.code(&mut child), 143);
    assert_eq!(read(&job.store.join("runs/6/step-2/w.bin")), "w2\n");
    assert_eq!(read(&job.store.join("runs/6/step-2/.metadata")), "m2\n");
    let result = job.result();
    assert_eq!(result["end_reason"], "preempted", "{result:#}");
    let checkpoints: Vec<&str> = result["references"]["ckpt"]["sync"]["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["checkpoint"].as_str().unwrap())
        .collect();
    assert_eq!(checkpoints, ["step-1", "step-2"], "{result:#}");
}

// Several large files at once under a small budget: every upload finishes (the parts in flight
// are driven while more budget is awaited), on exit and while the script runs.
#[test]
fn several_large_outputs_at_once_share_a_small_budget() {
    let job = Job::new();
    let write = "for i in 1 2 3 4 5 6; do head -c 41943040 /dev/urandom > $1/f$i; done";
    let manifest = job.manifest(json!({
        "memory_budget_bytes": 32 << 20,
        "data_references": {
            "exit": upload_ref("runs/7", "exit"),
            "live": continuous("runs/8", "live"),
        },
        "command": sh(&format!("w() {{ {write}; }}; mkdir -p exit && w exit && w live")),
    }));
    job.expect_code(job.run(&manifest), 0);
    for (folder, prefix) in [("exit", "runs/7"), ("live", "runs/8")] {
        for i in 1..=6 {
            let local = std::fs::read(job.work.join(format!("{folder}/f{i}"))).unwrap();
            let stored = std::fs::read(job.store.join(format!("{prefix}/f{i}"))).unwrap();
            assert!(local == stored, "{prefix}/f{i} differs");
        }
    }
}

// A file found while still open for writing (a folder moved in, a rescan) is left to its
// close: storage never gets the half-written version.
#[test]
fn a_file_still_open_for_writing_waits_for_its_close() {
    let job = Job::new();
    let manifest = job.manifest(json!({
        "data_references": {"out": continuous("runs/9", "out")},
        // A folder whose file is open (its header written) is moved in; the file stays open
        // for 3 s (a compute step), then the rest is written and it is closed.
        "command": sh("mkdir staging && exec 3> staging/model.h5 && printf header >&3 && \
                       mv staging out/run && sleep 3 && \
                       if test -e ../store/runs/9/run/model.h5; then exit 7; fi && \
                       printf -- '-body' >&3 && exec 3>&- && \
                       i=0; until test -e ../store/runs/9/run/model.h5; do \
                         i=$((i+1)); test $i -lt 600 || exit 9; sleep 0.05; done"),
    }));
    job.expect_code(job.run(&manifest), 0);
    assert_eq!(read(&job.store.join("runs/9/run/model.h5")), "header-body");
}
