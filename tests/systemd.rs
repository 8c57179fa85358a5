//! The systemd unit, checked by systemd itself: `systemd-analyze verify` must accept it without
//! a single warning, and a real systemd — booted as PID 1 of fresh pid/mount/cgroup namespaces,
//! as TESTING-ON-THIS-MACHINE.md describes — must start it, see it ready, let a job mount through
//! it (visible outside the service), and stop it cleanly after staging out.

mod common;

use common::mounts::has_mount_point;
use common::wait::poll;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use common::cli;

const UNIT: &str = include_str!("../systemd/dataref.service");
const INSTALLED_BINARY: &str = "/usr/local/bin/dataref";

fn require(program: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).exists()))
        .unwrap_or(false);
    assert!(
        found || Path::new(program).exists(),
        "{program} is required for this test (apt-get install systemd util-linux); \
         scripts/test installs it"
    );
}

/// The unit as shipped, with the binary path pointing at the one under test.
fn unit_for_test() -> String {
    UNIT.replace(INSTALLED_BINARY, env!("CARGO_BIN_EXE_dataref"))
}

#[test]
fn systemd_analyze_verify_accepts_the_unit_without_warnings() {
    require("systemd-analyze");
    assert!(
        UNIT.contains(&format!("ExecStart={INSTALLED_BINARY} daemon")),
        "the unit runs the daemon from {INSTALLED_BINARY}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dataref.service");
    std::fs::write(&path, unit_for_test()).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    // verify exits 0 on unknown keys and bad values: only an empty stderr means clean.
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify said:\n{stderr}"
    );
}

/// Units a booted systemd would run that change the machine outside the namespaces.
const HOST_CHANGING_UNITS: &[&str] = &[
    "sysinit.target",
    "basic.target",
    "sockets.target",
    "timers.target",
    "systemd-tmpfiles-setup.service",
    "systemd-tmpfiles-setup-dev.service",
    "systemd-tmpfiles-setup-dev-early.service",
    "systemd-tmpfiles-clean.service",
    "systemd-tmpfiles-clean.timer",
    "systemd-sysusers.service",
    "systemd-sysctl.service",
    "systemd-binfmt.service",
    "systemd-modules-load.service",
    "systemd-random-seed.service",
    "systemd-machine-id-commit.service",
    "systemd-firstboot.service",
    "systemd-repart.service",
    "systemd-update-utmp.service",
    "systemd-journal-flush.service",
    "systemd-pstore.service",
    "systemd-timesyncd.service",
    "kmod-static-nodes.service",
    "ldconfig.service",
];

/// The top directories under `/tmp` or `/var/tmp` (e.g. `/tmp/x` for `/tmp/x/target/...`) that
/// hold any of `paths`, once each: bound into the namespace's fresh `/tmp` and `/var/tmp`.
fn kept_under_tmp(paths: &[&Path]) -> Vec<String> {
    let mut kept: Vec<String> = Vec::new();
    for path in paths {
        let path = std::fs::canonicalize(path).unwrap();
        for tmp in ["/tmp", "/var/tmp"] {
            let Ok(rest) = path.strip_prefix(tmp) else {
                continue;
            };
            let top = Path::new(tmp).join(rest.components().next().unwrap());
            let top = top.to_str().expect("a UTF-8 path").to_owned();
            assert!(
                !top.contains(|c: char| c.is_whitespace() || "'\"$`\\".contains(c)),
                "{top}: a path the namespace's shell script cannot quote"
            );
            if !kept.contains(&top) {
                kept.push(top);
            }
        }
    }
    kept
}

/// A systemd booted as PID 1 of new namespaces; halted and killed on drop.
struct BootedSystemd {
    unshare: Child,
    pid: i32,
}

impl BootedSystemd {
    fn boot(root: &Path) -> Self {
        let units = root.join("units");
        cli::mkdir(&units);
        std::fs::write(units.join("dataref.service"), unit_for_test()).unwrap();
        std::fs::write(
            units.join("dataref-test.target"),
            "[Unit]\nDescription=dataref test target\nDefaultDependencies=no\n",
        )
        .unwrap();
        // This systemd shares the machine's filesystems: nothing of a real boot may run. The
        // service's default dependencies would pull sysinit.target, whose tmpfiles-setup
        // empties /tmp and whose sysusers, sysctl, binfmt... change the host. A drop-in turns
        // them off for the test (the unit file itself is the shipped one), and the units that
        // touch host state are masked besides.
        let drop_in = units.join("dataref.service.d");
        cli::mkdir(&drop_in);
        std::fs::write(
            drop_in.join("test.conf"),
            "[Unit]\nDefaultDependencies=no\n",
        )
        .unwrap();
        for unit in HOST_CHANGING_UNITS {
            std::os::unix::fs::symlink("/dev/null", units.join(unit)).unwrap();
        }
        cli::mkdir(&root.join("config"));
        // What must stay visible under the fresh /tmp and /var/tmp: this test's directory and
        // the binary under test live there when the checkout does (`git clone ... /tmp/x`).
        let keep = kept_under_tmp(&[root, Path::new(env!("CARGO_BIN_EXE_dataref"))]);
        // Inside the new mount namespace: a private /run, /tmp and /var/tmp (with the kept
        // directories bound back in from the old ones), state and config directories, the
        // test's units in place of the machine's, cgroup2 for systemd.
        let setup = format!(
            "set -e
             # FUSE mounts of other processes, copied into this namespace, would look dead here
             # (their pids are in another pid namespace) and sit under the /tmp hidden below.
             findmnt -rn -t fuse,fuse.dataref -o TARGET | xargs -r -n1 umount -l
             mount -t tmpfs tmpfs /run
             for tmp in /tmp /var/tmp; do
                 old=/run/dataref-test-old$(echo $tmp | tr / -)
                 mkdir -p $old
                 mount --bind $tmp $old
                 mount -t tmpfs tmpfs $tmp
                 for kept in {keep}; do
                     case $kept in $tmp/*)
                         mkdir -p $kept
                         mount --bind $old${{kept#$tmp}} $kept ;;
                     esac
                 done
                 umount -l $old
                 rmdir $old
             done
             mkdir -p /var/lib/dataref /etc/dataref
             mount -t tmpfs tmpfs /var/lib/dataref
             mount --bind {config} /etc/dataref
             mount -t cgroup2 none /sys/fs/cgroup
             mount --bind {units} /etc/systemd/system
             exec /lib/systemd/systemd --system --unit=dataref-test.target --log-target=console",
            config = root.join("config").display(),
            units = units.display(),
            keep = keep.join(" "),
        );
        let unshare = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--"])
            .args([
                "unshare", "--pid", "--fork", "--cgroup", "--uts", "--ipc", "--net",
            ])
            .args(["--mount-proc", "sh", "-c", &setup])
            .env("container", "other")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(root.join("systemd.log")).unwrap())
            .stderr(std::fs::File::create(root.join("systemd.err")).unwrap())
            .spawn()
            .unwrap();
        let parent = unshare.id();
        let children = format!("/proc/{parent}/task/{parent}/children");
        let start = Instant::now();
        let pid = loop {
            let found = std::fs::read_to_string(&children)
                .ok()
                .and_then(|s| s.split_whitespace().next().map(str::to_owned))
                .and_then(|pid| pid.parse::<i32>().ok());
            let is_systemd = found.is_some_and(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "systemd")
            });
            if is_systemd {
                break found.unwrap();
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "systemd did not start: {}",
                std::fs::read_to_string(root.join("systemd.err")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let booted = Self { unshare, pid };
        let start = Instant::now();
        loop {
            let state = booted.run(&["systemctl", "is-system-running"]);
            if ["running", "degraded"].contains(&state.stdout.trim()) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "systemd is not up: {state:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        booted
    }

    /// Runs a command inside the namespaces (mount and pid), outside any service.
    fn run(&self, argv: &[&str]) -> cli::Outcome {
        let mut command = Command::new("nsenter");
        command
            .args(["-t", &self.pid.to_string(), "-m", "-p", "--"])
            .args(argv)
            .env_remove("NOTIFY_SOCKET");
        cli::output(&mut command)
    }

    fn property(&self, unit: &str, name: &str) -> String {
        let out = self.run(&["systemctl", "show", unit, "-p", name, "--value"]);
        out.stdout.trim().to_owned()
    }
}

impl Drop for BootedSystemd {
    fn drop(&mut self) {
        // SIGRTMIN+3 halts systemd; killing the namespace's init then ends everything in it.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::try_from(libc::SIGRTMIN() + 3).ok(),
        );
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if self.unshare.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

#[test]
fn a_real_systemd_runs_the_service_and_its_job_mounts_are_visible_outside_it() {
    for program in ["unshare", "nsenter", "systemctl", "/lib/systemd/systemd"] {
        require(program);
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "booting systemd in namespaces needs root"
    );
    // Not under /tmp (the namespace gets its own /tmp) unless the checkout is there: then the
    // namespace's /tmp gets this directory bound back in.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let root = dir.path().to_path_buf();
    let booted = BootedSystemd::boot(&root);

    let started = booted.run(&["systemctl", "start", "dataref.service"]);
    assert_eq!(
        started.code,
        0,
        "start failed: {started:?}\n{}",
        booted
            .run(&["systemctl", "status", "dataref", "--no-pager"])
            .stdout
    );
    let status = booted.run(&["systemctl", "status", "dataref.service", "--no-pager"]);
    assert!(
        status.stdout.contains("active (running)"),
        "{}",
        status.stdout
    );
    assert_eq!(booted.property("dataref.service", "Type"), "notify");

    // A job with a mount, submitted through the service's socket.
    let store = root.join("store");
    cli::write_file(&store.join("in/a.txt"), "through-systemd", 0o644);
    let work = root.join("work");
    cli::mkdir(&work);
    let manifest = cli::write_manifest(
        &work.join("job.json"),
        &json!({
            "datastores": {"store": {"kind": "local", "root": store}},
            "data_references": {
                "data": {"datastore": "store", "path_on_datastore": "in", "mode": "mount"},
                "out": {"datastore": "store", "path_on_datastore": "results", "mode": "upload",
                        "path_on_compute": "outputs"}
            },
            "command": ["sh", "-c", "mkdir -p outputs; cp $AZUREML_DATAREFERENCE_data/a.txt outputs/copy.txt; \
                trap 'echo stopped > outputs/term.txt; exit 0' TERM; \
                echo ready > outputs/ready; while true; do sleep 0.1; done"],
            "grace_period_seconds": 10,
        }),
    );
    let binary = env!("CARGO_BIN_EXE_dataref");
    let socket = "/run/dataref/dataref.sock";
    let submitted = booted.run(&[
        binary,
        "submit",
        "--socket",
        socket,
        manifest.to_str().unwrap(),
    ]);
    assert_eq!(submitted.code, 0, "{submitted:?}");
    let id = submitted.stdout.trim().to_owned();
    poll("the job's script", Duration::from_secs(60), || {
        work.join("outputs/ready").exists()
    });
    let job = booted.run(&[binary, "status", "--socket", socket, "--json", &id]);
    let job: serde_json::Value = serde_json::from_str(&job.stdout).unwrap();
    assert_eq!(job["state"], "running", "{job:#}");
    let mountpoint = PathBuf::from(
        job["result"]["references"]["data"]["local"]
            .as_str()
            .unwrap(),
    );

    // Seen from a process outside the service: the mount is not private to it.
    let mountinfo = booted.run(&["cat", "/proc/self/mountinfo"]).stdout;
    assert!(
        has_mount_point(&mountinfo, &mountpoint),
        "mount {} not visible outside the service:\n{mountinfo}",
        mountpoint.display()
    );

    // Stopping the service: the job is signalled, stages out, the daemon exits 0.
    let stopped = booted.run(&["systemctl", "stop", "dataref.service"]);
    assert_eq!(stopped.code, 0, "{stopped:?}");
    assert_eq!(
        booted.property("dataref.service", "ActiveState"),
        "inactive"
    );
    assert_eq!(booted.property("dataref.service", "Result"), "success");
    assert_eq!(booted.property("dataref.service", "ExecMainStatus"), "0");
    assert_eq!(
        std::fs::read_to_string(store.join("results/term.txt")).unwrap(),
        "stopped\n"
    );
    assert_eq!(
        std::fs::read_to_string(store.join("results/copy.txt")).unwrap(),
        "through-systemd"
    );
    let mountinfo = booted.run(&["cat", "/proc/self/mountinfo"]).stdout;
    assert!(
        !has_mount_point(&mountinfo, &mountpoint),
        "the mount was removed"
    );
}
