//! `dataref daemon` and its clients, run for real: a daemon process on a private socket and
//! state directory, `dataref submit | status | cancel | logs` as clients, jobs on a local
//! datastore. sd_notify is checked on a real datagram socket.

mod common;

use common::cli::sh;
use common::fs::read;
use common::mounts::is_mounted;
use common::serial;
use common::wait::poll;

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use common::cli;
use common::daemon::{Area, Daemon};
use common::procs::{alive, children_of, process_state};

#[test]
fn sd_notify_ready_after_the_socket_accepts_then_watchdog_and_stopping() {
    let area = Area::new();
    let notify_path = area.path("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut command = area.daemon_command(&[]);
    command
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "400000");
    let mut daemon = Daemon {
        child: Some(command.spawn().unwrap()),
    };
    let mut buf = [0u8; 256];
    let mut recv = || {
        let n = notify.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut before_ready = Vec::new();
    loop {
        let message = recv();
        if message == "READY=1" {
            break;
        }
        before_ready.push(message);
    }
    // READY means the API answers now, not soon.
    std::os::unix::net::UnixStream::connect(area.socket()).expect("socket accepts at READY");
    assert!(
        before_ready.iter().all(|m| m == "WATCHDOG=1"),
        "{before_ready:?}"
    );
    // Watchdog every 200 ms (half of 400 ms): 15 pings in 3 s. Not a rate check (a loaded
    // machine delays timers): pings keep coming (at least 2, a 7x margin), and do not flood
    // (at most 3x the nominal count, plus one).
    let start = Instant::now();
    let mut pings = 0;
    while start.elapsed() < Duration::from_secs(3) {
        if recv() == "WATCHDOG=1" {
            pings += 1;
        }
    }
    assert!((2..=46).contains(&pings), "{pings} watchdog pings in 3 s");

    // A job that takes 1.5 s to stop keeps the daemon draining: the pings must go on.
    let manifest = area.manifest(
        "slow-stop.json",
        json!({"command": sh("trap 'sleep 1.5; exit 0' TERM; touch started; \
                              while true; do sleep 0.1; done")}),
    );
    area.submit(&manifest);
    poll("the job to start", Duration::from_secs(60), || {
        area.path("work/started").exists()
    });
    daemon.signal(Signal::SIGTERM);
    while recv() != "STOPPING=1" {}
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut pings_while_draining = 0;
    let status = loop {
        if let Some(status) = daemon.child.as_mut().unwrap().try_wait().unwrap() {
            break status;
        }
        let mut buf = [0u8; 256];
        if let Ok(n) = notify.recv(&mut buf) {
            if &buf[..n] == b"WATCHDOG=1" {
                pings_while_draining += 1;
            }
        }
    };
    daemon.child = None;
    assert_eq!(status.code(), Some(0), "exit 0 after SIGTERM");
    // Nominally 7 (every 200 ms for 1.5 s); at least one shows the pings go on while
    // draining, with a 7x margin for a loaded machine.
    assert!(
        pings_while_draining >= 1,
        "{pings_while_draining} watchdog pings while draining for 1.5 s"
    );
}

#[test]
fn no_watchdog_pings_when_watchdog_pid_names_another_process() {
    let area = Area::new();
    let notify_path = area.path("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let _daemon = area.daemon(
        &[],
        &[
            ("NOTIFY_SOCKET", notify_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
            ("WATCHDOG_PID", "1"),
        ],
    );
    // READY first (however long a loaded machine takes to start the daemon), then 2 s in
    // which a pinging daemon would send 10 pings (every 100 ms).
    let mut messages = Vec::new();
    let mut buf = [0u8; 256];
    let mut receive = |messages: &mut Vec<String>| {
        if let Ok(n) = notify.recv(&mut buf) {
            messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    };
    poll("READY=1", Duration::from_secs(30), || {
        receive(&mut messages);
        messages.iter().any(|m| m == "READY=1")
    });
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        receive(&mut messages);
    }
    assert!(
        !messages.iter().any(|m| m == "WATCHDOG=1"),
        "watchdog meant for pid 1 must be ignored: {messages:?}"
    );
}

#[test]
fn submit_wait_follows_the_log_and_exits_with_the_jobs_code() {
    let area = Area::new();
    let _daemon = area.daemon(&[], &[("LEAKY_VAR", "from-daemon")]);
    cli::write_file(&area.path("store/in/a.txt"), "input-a", 0o644);
    let manifest = area.manifest(
        "job.json",
        json!({
            "data_references": {
                "data": {"datastore": "store", "path_on_datastore": "in", "mode": "download"},
                "out": {"datastore": "store", "path_on_datastore": "results", "mode": "upload",
                        "path_on_compute": "outputs"}
            },
            "command": sh("cat $AZUREML_DATAREFERENCE_data/a.txt; echo; mkdir outputs; \
                           echo saved > outputs/m.txt; \
                           echo \"leak=${LEAKY_VAR:-none}\"; exit 3"),
        }),
    );
    let out = area.client(&["submit", "--wait", manifest.to_str().unwrap()]);
    out.expect_code(3);
    assert!(out.stdout.contains("input-a"), "{}", out.stdout);
    // A clean environment: the daemon's own variables do not reach the script.
    assert!(out.stdout.contains("leak=none"), "{}", out.stdout);
    // Relative paths resolved against the manifest's directory, as with `dataref run`.
    assert_eq!(read(&area.path("store/results/m.txt")), "saved\n");

    let list = area.client(&["status", "--json"]).expect_code(0).json();
    let jobs = list["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1);
    let id = jobs[0]["id"].as_str().unwrap();
    let status = area.status(id);
    assert_eq!(status["state"], "failed");
    assert_eq!(status["exit_code"], 3);
    assert_eq!(status["result"]["end_reason"], "script_failed");
    assert_eq!(status["result"]["references"]["out"]["status"], "done");
    let logs = area.client(&["logs", id]);
    logs.expect_code(0);
    assert!(logs.stdout.contains("input-a"), "{}", logs.stdout);
    let table = area.client(&["status"]);
    table.expect_code(0);
    assert!(
        table.stdout.contains(id) && table.stdout.contains("failed"),
        "{}",
        table.stdout
    );
}

#[test]
fn invalid_manifest_is_refused_with_every_problem_and_nothing_stored() {
    let area = Area::new();
    let _daemon = area.daemon(&[], &[]);
    let manifest = area.manifest(
        "bad.json",
        json!({
            "data_references": {"x": {"datastore": "nope", "mode": "download"}},
            "command": [],
        }),
    );
    let out = area.client(&["submit", manifest.to_str().unwrap()]);
    out.expect_code(65);
    assert!(out.stderr.contains("data_references.x"), "{}", out.stderr);
    assert!(out.stderr.contains("command"), "{}", out.stderr);
    assert!(area.job_dirs().is_empty(), "{:?}", area.job_dirs());
    // Unknown job ids: 66; the daemon unreachable: 69.
    area.client(&["status", "no-such-job"]).expect_code(66);
    let out = cli::output(
        cli::command()
            .args(["status", "--socket"])
            .arg(area.path("missing.sock")),
    );
    out.expect_code(69);
    assert!(
        out.stderr.contains("is `dataref daemon` running"),
        "{}",
        out.stderr
    );
}

#[test]
fn cancel_stops_a_running_job_like_a_preemption_and_outputs_are_uploaded() {
    let _serial = serial::lock();
    let area = Area::new();
    let _daemon = area.daemon(&["--max-jobs", "1"], &[]);
    let manifest = area.trapping_job("got-term");
    let first = area.submit(&manifest);
    let second = area.submit(&manifest);
    area.wait_state(&first, &["running"], Duration::from_secs(60));
    poll("the script to start", Duration::from_secs(30), || {
        area.path("work/outputs/started.txt").exists()
    });
    // --max-jobs 1: the second waits.
    assert_eq!(area.status(&second)["state"], "queued");
    area.client(&["cancel", &second]).expect_code(0);
    assert_eq!(area.status(&second)["state"], "cancelled");

    area.client(&["cancel", &first]).expect_code(0);
    let status = area.wait_state(&first, &["cancelled"], Duration::from_secs(60));
    assert_eq!(status["result"]["end_reason"], "preempted", "{status:#}");
    assert_eq!(read(&area.path("store/results/term.txt")), "got-term\n");
    // A finished job cannot be cancelled again.
    let again = area.client(&["cancel", &first]);
    assert_ne!(again.code, 0);
    assert!(again.stderr.contains("already ended"), "{}", again.stderr);
}

#[test]
fn sigterm_drains_running_jobs_uploads_and_exits_0() {
    let _serial = serial::lock();
    let area = Area::new();
    let mut daemon = area.daemon(&[], &[]);
    let manifest = area.trapping_job("drained");
    let id = area.submit(&manifest);
    poll("the script to start", Duration::from_secs(60), || {
        area.path("work/outputs/started.txt").exists()
    });
    daemon.signal(Signal::SIGTERM);
    let status = daemon.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0));
    assert_eq!(read(&area.path("store/results/term.txt")), "drained\n");
    let record: Value =
        serde_json::from_str(&read(&area.path(&format!("state/jobs/{id}/record.json")))).unwrap();
    assert_eq!(record["state"], "interrupted", "{record:#}");
    assert!(!area.socket().exists(), "the socket is removed at exit");
}

/// The daemon is SIGKILLed while a job with a mount and an output runs; a new daemon marks the
/// job interrupted, kills what survived, removes the dead mount, and uploads the outputs.
#[test]
fn daemon_killed_mid_job_is_recovered_at_the_next_start() {
    let _serial = serial::lock();
    let area = Area::new();
    cli::write_file(&area.path("store/in/a.txt"), "mounted-a", 0o644);
    let mut daemon = area.daemon(&[], &[]);
    let manifest = area.manifest(
        "job.json",
        json!({
            "data_references": {
                "data": {"datastore": "store", "path_on_datastore": "in", "mode": "mount"},
                "out": {"datastore": "store", "path_on_datastore": "results", "mode": "upload",
                        "path_on_compute": "outputs"}
            },
            "command": sh("mkdir -p outputs; cp $AZUREML_DATAREFERENCE_data/a.txt outputs/copy.txt; \
                           echo $$ > outputs/pid; while true; do sleep 0.1; done"),
        }),
    );
    let id = area.submit(&manifest);
    let pid_file = area.path("work/outputs/pid");
    poll("the script to start", Duration::from_secs(60), || {
        std::fs::read_to_string(&pid_file).is_ok_and(|s| s.ends_with('\n'))
    });
    let script: i32 = read(&pid_file).trim().parse().unwrap();
    let mountpoint = PathBuf::from(
        area.status(&id)["result"]["references"]["data"]["local"]
            .as_str()
            .unwrap(),
    );
    assert!(is_mounted(&mountpoint));

    daemon.signal(Signal::SIGKILL);
    daemon.wait(Duration::from_secs(10));
    // The job's own supervisor outlives the daemon; the restart must deal with it.
    assert!(alive(script), "the script survives the daemon alone");

    let _daemon = area.daemon(&[], &[]);
    let status = area.status(&id);
    assert_eq!(status["state"], "interrupted", "{status:#}");
    assert!(!alive(script), "the script was killed at restart");
    assert!(!is_mounted(&mountpoint), "the dead mount was removed");
    let status = {
        let mut last = Value::Null;
        poll("the recovery upload", Duration::from_secs(60), || {
            last = area.status(&id);
            last["recovery"] != "uploading"
        });
        last
    };
    assert_eq!(status["recovery"], "done", "{status:#}");
    assert_eq!(read(&area.path("store/results/copy.txt")), "mounted-a");
    assert_eq!(status["result"]["end_reason"], "interrupted");
    // Nothing half-written under a final name: only the two outputs, complete.
    let mut names: Vec<String> = std::fs::read_dir(area.path("store/results"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["copy.txt", "pid"]);
}

/// The daemon dies again while it uploads the outputs of a job a first crash interrupted
/// (`recovery: uploading`): the next daemon kills the recovery upload the dead one left and
/// runs it again to the end.
#[test]
fn an_interrupted_recovery_is_run_again_at_the_next_start() {
    let _serial = serial::lock();
    let area = Area::new();
    let config = area.path("config");
    cli::register_local(&config, "out", &area.path("store"));
    let mut daemon = area.daemon(&[], &[]);
    let manifest = area.manifest(
        "job.json",
        json!({
            "data_references": {
                "out": {"datastore": "out", "path_on_datastore": "results", "mode": "upload",
                        "path_on_compute": "outputs"}
            },
            "command": sh("mkdir -p outputs; echo result > outputs/r.txt; echo $$ > outputs/pid; \
                           while true; do sleep 0.1; done"),
        }),
    );
    let id = area.submit(&manifest);
    poll("the script to start", Duration::from_secs(60), || {
        std::fs::read_to_string(area.path("work/outputs/pid")).is_ok_and(|s| s.ends_with('\n'))
    });
    daemon.signal(Signal::SIGKILL);
    daemon.wait(Duration::from_secs(10));

    // The recovery's storage now accepts connections and never answers, so the recovery
    // upload is under way, stuck, when the second daemon is killed.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!(
        "http://127.0.0.1:{}/{}",
        silent.local_addr().unwrap().port(),
        common::azurite::ACCOUNT
    );
    let (connected, connections) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().flatten() {
            held.push(stream);
            let _ = connected.send(());
        }
    });
    let key = common::azurite::key_file(&area.path("config"));
    let register = [
        "datastore",
        "register",
        "azure-blob",
        "--name",
        "out",
        "--overwrite",
        "--account",
        common::azurite::ACCOUNT,
        "--container",
        "results",
        "--endpoint",
        &endpoint,
        "--key-file",
        key.to_str().unwrap(),
    ];
    cli::run(&config, &register).expect_code(0);
    let mut daemon = area.daemon(&[], &[]);
    connections
        .recv_timeout(Duration::from_secs(60))
        .expect("the recovery upload reached the storage");
    let status = area.status(&id);
    assert_eq!(status["recovery"], "uploading", "{status:#}");
    let recovery = status["runner"]["pid"]
        .as_i64()
        .expect("the recovery's runner is recorded");
    daemon.signal(Signal::SIGKILL);
    daemon.wait(Duration::from_secs(10));
    assert!(alive(recovery as i32), "the recovery outlives its daemon");

    let overwrite = [
        "datastore",
        "register",
        "local",
        "--name",
        "out",
        "--overwrite",
    ];
    let root = area.path("store");
    cli::run(
        &config,
        &[&overwrite[..], &["--root", root.to_str().unwrap()]].concat(),
    )
    .expect_code(0);
    let _daemon = area.daemon(&[], &[]);
    poll(
        "the stale recovery to be killed",
        Duration::from_secs(10),
        || !alive(recovery as i32),
    );
    let status = {
        let mut last = Value::Null;
        poll(
            "the recovery upload, run again",
            Duration::from_secs(60),
            || {
                last = area.status(&id);
                last["recovery"] != "uploading"
            },
        );
        last
    };
    assert_eq!(status["recovery"], "done", "{status:#}");
    assert_eq!(read(&area.path("store/results/r.txt")), "result\n");
}

/// A job's runner dies (SIGKILL) before a helper its script left behind (`setsid`, in the
/// background): the helper is reparented to the daemon, a subreaper, which must reap it when it
/// exits instead of keeping a zombie for its whole life.
#[test]
fn orphans_the_daemon_adopts_are_reaped() {
    let _serial = serial::lock();
    let area = Area::new();
    let daemon = area.daemon(&[], &[]);
    let manifest = area.manifest(
        "orphan.json",
        json!({
            "command": sh("(setsid sh -c 'echo $$ > helper.pid; exec sleep 3' &); \
                           while true; do sleep 0.1; done"),
        }),
    );
    let id = area.submit(&manifest);
    let pid_file = area.path("work/helper.pid");
    poll("the helper to start", Duration::from_secs(60), || {
        std::fs::read_to_string(&pid_file).is_ok_and(|s| s.ends_with('\n'))
    });
    let helper: i32 = read(&pid_file).trim().parse().unwrap();
    let runner = area.status(&id)["runner"]["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(runner), Signal::SIGKILL).unwrap();
    poll(
        "the helper to be adopted by the daemon",
        Duration::from_secs(10),
        || children_of(daemon.pid()).iter().any(|p| p.pid == helper),
    );
    poll(
        "the helper, exited, to be reaped",
        Duration::from_secs(20),
        || process_state(helper).is_none(),
    );
    area.wait_state(&id, &["failed"], Duration::from_secs(10));
    let zombies: Vec<_> = children_of(daemon.pid())
        .into_iter()
        .filter(|p| p.has_exited())
        .collect();
    assert!(zombies.is_empty(), "zombies under the daemon: {zombies:?}");
}

// The daemon takes the Azure ML documents as `dataref run` does: a v2 command-job YAML and a
// v1 `.runconfig`, both on the registry's datastore, submitted as they are.
#[test]
fn the_daemon_runs_azure_ml_v1_and_v2_documents() {
    let area = Area::new();
    cli::register_local(&area.path("config"), "store", &area.path("store"));
    let _daemon = area.daemon(&[], &[]);
    cli::write_file(&area.path("store/in/a.txt"), "input-a", 0o644);
    let v2 = area.path("work/v2/job.yml");
    cli::write_file(
        &v2,
        "type: command
command: cat ${{inputs.data}}/a.txt > ${{outputs.out}}/copy.txt
inputs:
  data: {type: uri_folder, path: 'azureml://datastores/store/paths/in', mode: download}
outputs:
  out: {type: uri_folder, path: 'azureml://datastores/store/paths/results/v2', mode: upload}
",
        0o644,
    );
    area.client(&["submit", "--wait", v2.to_str().unwrap()])
        .expect_code(0);
    assert_eq!(read(&area.path("store/results/v2/copy.txt")), "input-a");

    let v1 = area.path("work/v1/job.runconfig");
    cli::write_file(
        &area.path("work/v1/train.sh"),
        "cat \"$1\"/a.txt > \"$2\"\n",
        0o644,
    );
    cli::write_file(
        &v1,
        "script: train.sh
arguments: [$AZUREML_DATAREFERENCE_data, ./copy.txt]
target: cpu-cluster
environment:
  python: {interpreterPath: /bin/sh}
dataReferences:
  data: {dataStoreName: store, pathOnDataStore: in, mode: download, pathOnCompute: }
  out: {dataStoreName: store, pathOnDataStore: results/v1, mode: upload, pathOnCompute: ./copy.txt}
",
        0o644,
    );
    area.client(&["submit", "--wait", v1.to_str().unwrap()])
        .expect_code(0);
    assert_eq!(read(&area.path("store/results/v1/copy.txt")), "input-a");
}

// `--cache-root`: the service's place for mount caches (local NVMe); each job's cache is
// named after its job directory, and removed when the mount ends.
#[test]
fn mount_caches_go_under_the_services_cache_root() {
    let area = Area::new();
    let cache_root = area.path("nvme");
    cli::mkdir(&cache_root);
    let _daemon = area.daemon(&["--cache-root", cache_root.to_str().unwrap()], &[]);
    cli::write_file(&area.path("store/in/a.txt"), "cached", 0o644);
    let manifest = area.manifest(
        "mount.json",
        json!({
            "data_references": {"data": {"datastore": "store", "path_on_datastore": "in"}},
            "command": sh("cat $AZUREML_DATAREFERENCE_data/a.txt"),
        }),
    );
    let out = area.client(&["submit", "--wait", manifest.to_str().unwrap()]);
    out.expect_code(0);
    let list = area.client(&["status", "--json"]).expect_code(0).json();
    let id = list["jobs"][0]["id"].as_str().unwrap().to_owned();
    let logs = area.client(&["logs", &id]);
    let expected = format!(
        "disk cache at {}",
        cache_root.join(format!("{id}.data")).display()
    );
    assert!(
        logs.stdout.contains(&expected),
        "{expected}\n{}",
        logs.stdout
    );
    let left: Vec<_> = std::fs::read_dir(&cache_root).unwrap().collect();
    assert!(left.is_empty(), "the cache outlived the job: {left:?}");
}
