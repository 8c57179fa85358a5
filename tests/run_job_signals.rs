//! `dataref run JOB.json` and signals, the real binary with a `local` datastore: SIGTERM
//! forwarded and trapped (before, during and after the script), SIGKILL after the grace period,
//! leftover and orphaned processes, the terminal's foreground group.

mod common;

use common::cli::sh;
use common::fs::{read, tree};
use common::job::{Job, download_ref, signal, upload_ref};
use common::procs::process_state;
use common::wait::poll;

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
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
    let mut child = job.spawn_until_ready(&manifest);
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
    let mut child = job.spawn_until_ready(&manifest);
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
    poll("a partial download file", Duration::from_secs(10), || {
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
    poll("the staging_out phase", Duration::from_secs(10), || {
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
    let mut child = job.spawn_until_ready(&manifest);
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
    let mut child = job.spawn_until_ready(&manifest);
    signal(&child, Signal::SIGTERM);
    let code = job.code(&mut child);
    job.expect_code(code, 75);
    let result = job.result();
    assert_eq!(result["end_reason"], "stage_out_failed", "{result:#}");
    assert_eq!(result["child"]["exit_code"], 0);
    assert_eq!(result["child"]["forwarded_signal"], "SIGTERM");
    assert_eq!(result["references"]["out"]["status"], "failed");
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
