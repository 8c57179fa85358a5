//! The Slurm example (`examples/slurm/`) on a real single-node Slurm cluster.
//!
//! Each test starts its own cluster: munged, slurmctld and slurmd inside
//! `unshare --pid --fork --mount-proc --kill-child`, every file under a temp dir, private ports
//! (see TESTING-ON-THIS-MACHINE.md for the verified configuration). Killing `unshare` kills the
//! namespace's init and with it every daemon and job process; a guard does that also when a test
//! panics. Client commands (`sbatch`, `scontrol`, `scancel`) run outside the namespace and reach
//! the daemons over 127.0.0.1 with the test's own munge socket.
//!
//! The example files are used as shipped, copied to a temp dir. The only adaptations: `DATAREF`
//! (exported by sbatch to the job) names the test's binary, and `Epilog=` points at a wrapper
//! that sets the same variable and keeps the epilog's output (Slurm discards it).

mod common;

use common::fs::{read, sorted_names};
use common::mounts::has_mount_point;
use common::procs::children_of;
use common::wait::{exit_within, poll_or};

use std::collections::HashMap;
use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const DATAREF: &str = env!("CARGO_BIN_EXE_dataref");
const NODE: &str = "dataref-node";
/// Slurm's SIGTERM → SIGKILL window after a cancel. "Finished before KillWait" proves dataref
/// finished on its own: after scancel it needs the script's trap (it exits at once), two small
/// uploads, killing one leftover process and Slurm's bookkeeping, about 2 s, 5 s on a loaded
/// 2-core machine; 45 s is 9x that, and a failing test still ends within a minute.
const KILL_WAIT: Duration = Duration::from_secs(45);
/// Daemons and binaries the cluster needs; `scripts/test` installs them (slurm-wlm, munge).
const REQUIRED: &[&str] = &[
    "munged",
    "slurmctld",
    "slurmd",
    "sbatch",
    "srun",
    "scontrol",
    "scancel",
    "unshare",
    "nsenter",
];

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/slurm")
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

fn free_ports() -> (u16, u16) {
    // Both listeners are open at once, so the two ports differ.
    let a = TcpListener::bind("127.0.0.1:0").unwrap();
    let b = TcpListener::bind("127.0.0.1:0").unwrap();
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

fn write_executable(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A running single-node cluster; dropping it kills the whole pid namespace.
struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
    unshare: Child,
    /// Host pid of the namespace's init (its PID 1).
    init: i32,
    _tmp: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // --kill-child: unshare's death SIGKILLs the namespace's init, which takes every
        // process of the namespace with it.
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

impl Cluster {
    fn start() -> Self {
        assert_eq!(
            nix::unistd::geteuid().as_raw(),
            0,
            "the Slurm tests run slurmd as root: run them as root"
        );
        for program in REQUIRED {
            assert!(
                find_program(program).is_some(),
                "{program} is not installed: the Slurm tests need slurm-wlm and munge \
                 (scripts/test installs them: apt-get install slurm-wlm munge)"
            );
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        for sub in ["munge", "ctld", "spool", "work"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        // munged refuses a key readable by others.
        let mut key = vec![0u8; 1024];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key))
            .unwrap();
        fs::write(dir.join("munge/key"), key).unwrap();
        fs::set_permissions(dir.join("munge/key"), fs::Permissions::from_mode(0o400)).unwrap();

        // Slurm runs the epilog with its own environment (no DATAREF), and keeps no output.
        write_executable(
            &dir.join("epilog"),
            &format!(
                "#!/bin/sh\nexport DATAREF={DATAREF}\nexec {} >> {} 2>&1\n",
                example_dir().join("epilog.sh").display(),
                dir.join("epilog.log").display()
            ),
        );

        let host = fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim()
            .to_string();
        let (ctld_port, slurmd_port) = free_ports();
        let d = dir.display();
        let conf = dir.join("slurm.conf");
        fs::write(
            &conf,
            format!(
                "ClusterName=dataref-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={d}/munge/socket
CredType=cred/munge
StateSaveLocation={d}/ctld
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MailProg=/bin/true
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
KillWait={kill_wait}
Epilog={d}/epilog
NodeName={NODE} NodeAddr=127.0.0.1 NodeHostname={host} CPUs=2 RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
",
                kill_wait = KILL_WAIT.as_secs()
            ),
        )
        .unwrap();

        let init_script = format!(
            "munged -F --force --key-file={d}/munge/key --socket={d}/munge/socket \
               --pid-file={d}/munge/pid --log-file={d}/munge/log --seed-file={d}/munge/seed &
             while [ ! -S {d}/munge/socket ]; do sleep 0.02; done
             slurmctld -D -i -f {conf} &
             slurmd -D -f {conf} -N {NODE} &
             wait",
            conf = conf.display()
        );
        let unshare = Command::new("unshare")
            .args([
                "--pid",
                "--fork",
                "--mount-proc",
                "--kill-child",
                "sh",
                "-c",
            ])
            .arg(init_script)
            .env("SLURM_CONF", &conf)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.join("daemons.log")).unwrap())
            .stderr(fs::File::create(dir.join("daemons.err")).unwrap())
            .spawn()
            .expect("unshare starts");
        let mut cluster = Self {
            dir,
            conf,
            init: 0,
            unshare,
            _tmp: tmp,
        };
        let unshare_pid = cluster.unshare.id() as i32;
        cluster.init = poll_or(
            "the namespace's init",
            Duration::from_secs(5),
            || cluster.describe(),
            || children_of(unshare_pid).first().map(|c| c.pid),
        );
        poll_or(
            "the node to become idle",
            Duration::from_secs(20),
            || cluster.describe(),
            || {
                let out = cluster
                    .client("scontrol")
                    .args(["show", "node", "-o", NODE])
                    .output()
                    .ok()?;
                String::from_utf8_lossy(&out.stdout)
                    .contains("State=IDLE")
                    .then_some(())
            },
        );
        cluster
    }

    /// A Slurm client command aimed at this cluster.
    fn client(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.env("SLURM_CONF", &self.conf).stdin(Stdio::null());
        command
    }

    /// A copy of the example (without anything a previous run left in the checkout).
    fn work_dir(&self) -> PathBuf {
        let work = self.dir.join("work");
        copy_example(&example_dir(), &work);
        work
    }

    /// `sbatch dataref.sbatch ARGS` from `work`, with `DATAREF` naming the test's binary.
    fn sbatch(&self, work: &Path, args: &[&str], env: &[(&str, &str)]) -> u32 {
        let out = self
            .client("sbatch")
            .args(["--parsable", "--chdir"])
            .arg(work)
            .arg(work.join("dataref.sbatch"))
            .args(args)
            .env("DATAREF", DATAREF)
            .envs(env.iter().copied())
            .output()
            .expect("sbatch runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "sbatch failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.describe()
        );
        stdout
            .trim()
            .split(';')
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("sbatch printed no job id: {stdout:?}"))
    }

    /// `scontrol show job -o ID` as key=value pairs.
    fn job(&self, id: u32) -> HashMap<String, String> {
        let out = self
            .client("scontrol")
            .args(["show", "job", "-o", &id.to_string()])
            .output()
            .expect("scontrol runs");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Waits until the job has ended and its epilog has run (COMPLETING is cleared only then).
    fn wait_finished(&self, id: u32, limit: Duration) -> HashMap<String, String> {
        const ENDED: &[&str] = &[
            "COMPLETED",
            "FAILED",
            "CANCELLED",
            "TIMEOUT",
            "NODE_FAIL",
            "OUT_OF_MEMORY",
            "PREEMPTED",
        ];
        poll_or(
            &format!("job {id} to end"),
            limit,
            || self.describe(),
            || {
                let job = self.job(id);
                let state = job.get("JobState")?;
                ENDED.contains(&state.as_str()).then_some(job)
            },
        )
    }

    /// The path of a namespace pid in the namespace's own /proc.
    fn ns_proc(&self, pid: i32) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root/proc/{pid}", self.init))
    }

    fn epilog_log(&self) -> String {
        fs::read_to_string(self.dir.join("epilog.log")).unwrap_or_default()
    }

    fn describe(&self) -> String {
        let mut text = String::new();
        for log in [
            "daemons.log",
            "daemons.err",
            "slurmctld.log",
            "slurmd.log",
            "epilog.log",
        ] {
            let content = fs::read_to_string(self.dir.join(log)).unwrap_or_default();
            let tail: Vec<&str> = content.lines().rev().take(40).collect();
            text.push_str(&format!("--- {log} (tail) ---\n"));
            for line in tail.into_iter().rev() {
                text.push_str(line);
                text.push('\n');
            }
        }
        let work = self.dir.join("work");
        for entry in fs::read_dir(&work).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("slurm-") {
                let content = fs::read_to_string(entry.path()).unwrap_or_default();
                text.push_str(&format!("--- {name} ---\n{content}\n"));
            }
        }
        for log in glob_job_files(&work.join(".dataref"), "job.log") {
            let content = fs::read_to_string(&log).unwrap_or_default();
            text.push_str(&format!("--- {} ---\n{content}\n", log.display()));
        }
        text
    }
}

/// `<dir>/*/<name>`.
fn glob_job_files(dir: &Path, name: &str) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join(name))
        .filter(|p| p.exists())
        .collect()
}

/// What running the example leaves beside its files (git-ignored); never copied.
const RUN_OUTPUTS: &[&str] = &[".dataref", "outputs", "shared", "runs"];

fn copy_example(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if RUN_OUTPUTS.contains(&name.as_str()) || name.starts_with("slurm-") {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type().unwrap().is_dir() {
            copy_example(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn result_json(work: &Path, id: u32) -> Value {
    let path = work.join(format!(".dataref/slurm-{id}/result.json"));
    serde_json::from_str(&read(&path)).unwrap()
}

/// Whether a mount point is in the namespace's mount table.
fn ns_mounted(cluster: &Cluster, mountpoint: &Path) -> bool {
    let table = read(Path::new(&format!("/proc/{}/mountinfo", cluster.init)));
    has_mount_point(&table, mountpoint)
}

/// Leaves a dead dataref FUSE mount in the cluster's mount namespace: `dataref mount` entered
/// into that namespace, then SIGKILLed (what KillWait's SIGKILL does to a job's agent).
fn dead_mount_in_namespace(cluster: &Cluster) -> PathBuf {
    let cfg = cluster.dir.join("cfg");
    let data = cluster.dir.join("mounted-data");
    let mountpoint = cluster.dir.join("dead-mount");
    fs::create_dir_all(&data).unwrap();
    fs::create_dir_all(&mountpoint).unwrap();
    let register = Command::new(DATAREF)
        .arg("--config-dir")
        .arg(&cfg)
        .args(["datastore", "register", "local", "--name", "ds", "--root"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(register.status.success(), "{register:?}");
    // nsenter with only --mount execs the binary in place: the child is the mount's server.
    let mut server = Command::new("nsenter")
        .arg("-t")
        .arg(cluster.init.to_string())
        .args(["--mount", "--"])
        .arg(DATAREF)
        .arg("--config-dir")
        .arg(&cfg)
        .args(["mount", "--datastore", "ds"])
        .arg(&mountpoint)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(cluster.dir.join("mount.err")).unwrap())
        .spawn()
        .unwrap();
    poll_or(
        "the FUSE mount in the cluster's namespace",
        Duration::from_secs(10),
        || read_or_empty(&cluster.dir.join("mount.err")),
        || ns_mounted(cluster, &mountpoint).then_some(()),
    );
    server.kill().unwrap();
    // A killed server always exits (it never waits on a request to its own mount).
    exit_within(&mut server, Duration::from_secs(20), || {
        read_or_empty(&cluster.dir.join("mount.err"))
    });
    mountpoint
}

fn read_or_empty(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

// The example job as shipped: inputs downloaded, the script's outputs uploaded file by file,
// the job COMPLETED with the script's exit code, and the epilog removed a dead dataref mount
// that a (simulated) SIGKILLed agent left on the node.
#[test]
fn example_batch_job_uploads_outputs_and_epilog_cleans_dead_mounts() {
    let cluster = Cluster::start();
    let work = cluster.work_dir();
    let id = cluster.sbatch(&work, &[], &[("EPOCH_SECONDS", "1")]);

    // While the job trains (dataref's own start-up cleanup is over once the script runs),
    // another agent dies and leaves its mount behind.
    poll_or(
        "the first checkpoint",
        Duration::from_secs(30),
        || cluster.describe(),
        || work.join("outputs/checkpoint-1.txt").exists().then_some(()),
    );
    let dead = dead_mount_in_namespace(&cluster);

    let job = cluster.wait_finished(id, Duration::from_secs(30));
    let state = (job["JobState"].as_str(), job["ExitCode"].as_str());
    assert_eq!(
        state,
        ("COMPLETED", "0:0"),
        "{job:?}\n{}",
        cluster.describe()
    );

    let stdout = read(&work.join(format!("slurm-{id}.out")));
    assert!(stdout.contains("epoch 3/3"), "{stdout}");

    // Every output file arrived in the datastore, byte for byte.
    let outputs = work.join("outputs");
    let uploaded = work.join("datastore/runs/slurm-example");
    let names = sorted_names(&outputs);
    assert_eq!(
        names,
        [
            "checkpoint-1.txt",
            "checkpoint-2.txt",
            "checkpoint-3.txt",
            "metrics.json",
            "model.txt"
        ]
    );
    assert_eq!(sorted_names(&uploaded), names);
    for name in &names {
        assert_eq!(
            read(&uploaded.join(name)),
            read(&outputs.join(name)),
            "{name}"
        );
    }

    let result = result_json(&work, id);
    assert_eq!(result["end_reason"], "succeeded", "{result:#}");
    assert_eq!(result["exit_code"], 0);
    assert_eq!(result["references"]["outputs"]["files"], 5);
    assert_eq!(result["references"]["data"]["files"], 1);

    // The epilog ran after this job and removed exactly the dead mount.
    let epilog = cluster.epilog_log();
    assert!(
        epilog.contains(&format!("job {id}: "))
            && epilog.contains(&format!("removed dead mount {} ", dead.display()))
            && epilog.contains("(exit 0)"),
        "{}",
        cluster.describe()
    );
    assert!(
        !ns_mounted(&cluster, &dead),
        "the dead mount is still there"
    );
}

// scancel of a running job: Slurm's SIGTERM reaches dataref, which forwards it to the script
// (its trap runs), uploads what the script wrote, records the preemption, kills a `setsid`
// grandchild that ignores SIGTERM, and exits 143 — all well before Slurm's SIGKILL (KillWait).
#[test]
fn scancel_forwards_sigterm_uploads_outputs_and_leaves_no_process() {
    let cluster = Cluster::start();
    let work = cluster.work_dir();
    write_executable(
        &work.join("long.sh"),
        "#!/bin/sh
trap 'echo got SIGTERM > outputs/term.txt; exit 143' TERM
mkdir -p outputs
# A helper that escapes the process group and ignores SIGTERM: only a SIGKILL ends it.
setsid sh -c 'trap \"\" TERM; echo $$ > grandchild.pid; exec sleep 1000' &
echo working > outputs/progress.txt
touch running
while :; do sleep 0.1; done
",
    );
    let manifest = json!({
        "datastores": {"shared": {"kind": "local", "root": "datastore"}},
        "data_references": {
            "outputs": {"datastore": "shared", "path_on_datastore": "runs/cancelled",
                        "mode": "upload", "path_on_compute": "outputs"}
        },
        "command": ["sh", "long.sh"],
        "grace_period_seconds": 5
    });
    fs::write(work.join("long.json"), manifest.to_string()).unwrap();
    let id = cluster.sbatch(&work, &["long.json"], &[]);

    let grandchild: i32 = poll_or(
        "the long job to start",
        Duration::from_secs(30),
        || cluster.describe(),
        || {
            let pid = fs::read_to_string(work.join("grandchild.pid")).ok()?;
            work.join("running").exists().then_some(())?;
            pid.trim().parse().ok()
        },
    );
    assert!(
        cluster.ns_proc(grandchild).exists(),
        "the grandchild {grandchild} is not running before the cancel"
    );

    let cancelled = Instant::now();
    let out = cluster
        .client("scancel")
        .arg(id.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "scancel: {out:?}");
    let job = cluster.wait_finished(id, KILL_WAIT + Duration::from_secs(15));
    let elapsed = cancelled.elapsed();
    assert_eq!(job["JobState"], "CANCELLED", "{job:?}");
    assert!(
        elapsed < KILL_WAIT,
        "the job took {elapsed:?} to end after scancel: Slurm's SIGKILL (KillWait {KILL_WAIT:?}) \
         ended it, not dataref\n{}",
        cluster.describe()
    );

    // The trap ran and what the script wrote, before and in it, was uploaded.
    let uploaded = work.join("datastore/runs/cancelled");
    assert_eq!(read(&uploaded.join("term.txt")), "got SIGTERM\n");
    assert_eq!(read(&uploaded.join("progress.txt")), "working\n");

    let result = result_json(&work, id);
    assert_eq!(result["end_reason"], "preempted", "{result:#}");
    assert_eq!(result["exit_code"], 143);
    assert_eq!(result["child"]["forwarded_signal"], "SIGTERM");
    assert_eq!(result["child"]["killed_after_grace"], false);
    assert_eq!(result["references"]["outputs"]["status"], "done");
    assert_eq!(result["references"]["outputs"]["files"], 2);

    // dataref itself killed the grandchild (Slurm would have needed KillWait), and it is gone.
    let log = read(&work.join(format!(".dataref/slurm-{id}/job.log")));
    assert!(log.contains("killed 1 leftover process"), "{log}");
    assert!(
        !cluster.ns_proc(grandchild).exists(),
        "the setsid grandchild {grandchild} outlived the job"
    );
}
