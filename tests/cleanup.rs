//! Dead-mount cleanup against real FUSE mounts (root only: `/dev/fuse` is 0600 here).
//!
//! Each mount is served by a child process so that a test can `kill -9` it: the test binary
//! re-invokes itself (`current_exe()`, filtered to `mounter_process`) with
//! `DATAREF_TEST_MOUNTER` set to the mount point and `DATAREF_TEST_MOUNTER_FSNAME` to the
//! fsname (`{pid}` in it becomes the child's own pid). The child's argv[0] is
//! `dataref-test-mounter`, so its command line says "dataref" as a real job's would.
//!
//! The tests hold one lock: `dataref cleanup` acts on the whole machine, so one test's dead
//! mount must not be removed by another test's cleanup before it looks. Every mount is undone
//! by a guard (lazy unmount, then the server is killed), also when a test fails.

mod common;

use common::serial;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, UNIX_EPOCH};

use common::cli::{Outcome, command, output};
use dataref::fs::cleanup::{self, DatarefMount, DeadReason};
use nix::mount::MntFlags;

const MOUNTER_ENV: &str = "DATAREF_TEST_MOUNTER";
const MOUNTER_FSNAME_ENV: &str = "DATAREF_TEST_MOUNTER_FSNAME";
const DEADLINE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// The serving child.

/// An empty read-only directory: `stat` of the root needs `getattr`; every name is absent.
/// Attributes are never cached (TTL 0) so every `stat` reaches the server.
struct EmptyDir;

impl fuser::Filesystem for EmptyDir {
    fn lookup(
        &self,
        _req: &fuser::Request,
        _parent: fuser::INodeNo,
        _name: &std::ffi::OsStr,
        reply: fuser::ReplyEntry,
    ) {
        reply.error(fuser::Errno::ENOENT);
    }

    fn getattr(
        &self,
        _req: &fuser::Request,
        ino: fuser::INodeNo,
        _fh: Option<fuser::FileHandle>,
        reply: fuser::ReplyAttr,
    ) {
        if ino != fuser::INodeNo::ROOT {
            reply.error(fuser::Errno::ENOENT);
            return;
        }
        let attr = fuser::FileAttr {
            ino,
            size: 0,
            blocks: 0,
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind: fuser::FileType::Directory,
            perm: 0o555,
            nlink: 2,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        };
        reply.attr(&Duration::ZERO, &attr);
    }
}

/// Not a test of its own: with `DATAREF_TEST_MOUNTER` set (only in the re-invoked child) it
/// mounts [`EmptyDir`] and serves it until unmounted or killed; otherwise it returns at once.
#[test]
fn mounter_process() {
    let Ok(point) = std::env::var(MOUNTER_ENV) else {
        return;
    };
    let fsname = std::env::var(MOUNTER_FSNAME_ENV)
        .unwrap()
        .replace("{pid}", &std::process::id().to_string());
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(fsname),
        fuser::MountOption::RO,
        fuser::MountOption::NoSuid,
        fuser::MountOption::NoDev,
    ];
    fuser::mount(EmptyDir, &point, &config).expect("mount");
}

// ---------------------------------------------------------------------------------------------
// Mounts made by a child, undone by a guard.

struct Mount {
    point: PathBuf,
    fsname: String,
    server: Option<Child>,
    /// Holds the mount point; removed after the guard has unmounted.
    _dir: tempfile::TempDir,
}

impl Mount {
    /// Mounts at a fresh `<tmp>/mnt`, served by a child; `{pid}` in `fsname` becomes the
    /// child's pid. Returns once the mount is in this process's mount table.
    fn new(fsname: &str) -> Self {
        Self::served_by(fsname, "dataref-test-mounter")
    }

    /// As [`Mount::new`], with the server's argv[0] (its command line) chosen.
    fn served_by(fsname: &str, argv0: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let point = dir.path().join("mnt");
        fs::create_dir(&point).unwrap();
        let mut server = Command::new(std::env::current_exe().unwrap());
        server
            .arg0(argv0)
            .args(["--exact", "mounter_process", "--nocapture", "--quiet"])
            .args(["--test-threads", "1"])
            .env(MOUNTER_ENV, &point)
            .env(MOUNTER_FSNAME_ENV, fsname)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // SAFETY: prctl only, between fork and exec. The server dies with the test thread.
        unsafe {
            server.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                Ok(())
            });
        }
        let server = server.spawn().expect("the test binary re-runs itself");
        let fsname = fsname.replace("{pid}", &server.id().to_string());
        let mut mount = Self {
            point,
            fsname,
            server: Some(server),
            _dir: dir,
        };
        mount.wait_mounted();
        mount
    }

    fn pid(&self) -> u32 {
        self.server.as_ref().unwrap().id()
    }

    fn wait_mounted(&mut self) {
        let start = Instant::now();
        while !in_mount_table(&self.point, &self.fsname) {
            if let Some(status) = self.server.as_mut().unwrap().try_wait().unwrap() {
                panic!("the mount server exited ({status}) before mounting {self:?}");
            }
            assert!(start.elapsed() < DEADLINE, "{self:?} never appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `kill -9` of the server, reaped.
    fn kill_server(&mut self) {
        let mut server = self.server.take().unwrap();
        server.kill().unwrap();
        server.wait().unwrap();
    }

    fn is_mounted(&self) -> bool {
        in_mount_table(&self.point, &self.fsname)
    }

    /// This mount as `dataref_mounts()` sees it.
    fn listed(&self) -> Option<DatarefMount> {
        cleanup::dataref_mounts()
            .into_iter()
            .find(|m| m.mountpoint == self.point && m.fsname == self.fsname)
    }

    fn removed_line(&self) -> String {
        format!(
            "removed dead mount {} ({})",
            self.point.display(),
            self.fsname
        )
    }
}

impl std::fmt::Debug for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at {}", self.fsname, self.point.display())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // No assertions here: this also runs while a failed test unwinds.
        let table = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mounted = cleanup::parse_mountinfo(&table)
            .iter()
            .any(|e| e.mount_point == self.point && e.source == self.fsname);
        if mounted {
            let _ = nix::mount::umount2(&self.point, MntFlags::MNT_DETACH);
        }
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

/// Whether `/proc/self/mountinfo` has a mount of `fsname` at `point`. The fsname holds a pid,
/// so it is unique on the machine; the raw text is checked too, independently of the parser.
fn in_mount_table(point: &Path, fsname: &str) -> bool {
    let raw = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let parsed = cleanup::parse_mountinfo(&raw)
        .iter()
        .any(|e| e.mount_point == point && e.source == fsname);
    assert_eq!(
        parsed,
        raw.lines()
            .any(|l| l.contains(&format!(" - fuse {fsname} "))),
        "parser and raw text disagree about {fsname}"
    );
    parsed
}

fn errno_of_stat(path: &Path) -> Option<i32> {
    fs::metadata(path).err().map(|e| e.raw_os_error().unwrap())
}

/// Polls until `stat(path)` fails with ENOTCONN (a killed server's connection is aborted when
/// its last `/dev/fuse` descriptor closes).
fn wait_not_connected(path: &Path) {
    let start = Instant::now();
    while errno_of_stat(path) != Some(libc::ENOTCONN) {
        assert!(
            start.elapsed() < DEADLINE,
            "{} never answered ENOTCONN (stat: {:?})",
            path.display(),
            errno_of_stat(path)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A live, served mount: stat works and shows the FUSE root, not the directory beneath.
fn assert_served(mount: &Mount) {
    let meta = fs::metadata(&mount.point).unwrap_or_else(|e| panic!("stat {mount:?}: {e}"));
    let parent = fs::metadata(mount.point.parent().unwrap()).unwrap();
    assert_ne!(meta.dev(), parent.dev(), "{mount:?} is not mounted");
    assert_eq!(meta.ino(), 1);
    assert_eq!(meta.mode() & 0o7777, 0o555);
}

/// The mount point is a plain directory again: on its parent's device, writable, gone from the
/// mount table.
fn assert_plain_directory(mount: &Mount) {
    assert!(!mount.is_mounted(), "{mount:?} still in the mount table");
    let meta = fs::metadata(&mount.point).unwrap_or_else(|e| panic!("stat {mount:?}: {e}"));
    let parent = fs::metadata(mount.point.parent().unwrap()).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.dev(), parent.dev(), "{mount:?} still mounted");
    let probe = mount.point.join("usable");
    fs::write(&probe, b"ok").unwrap();
    assert_eq!(fs::read(&probe).unwrap(), b"ok");
    fs::remove_file(&probe).unwrap();
}

fn dataref_cleanup() -> Outcome {
    let config = tempfile::tempdir().unwrap();
    output(
        command()
            .arg("--config-dir")
            .arg(config.path())
            .arg("cleanup"),
    )
}

/// A process whose command line says "dataref" (argv[0]) without serving anything: the owner
/// a job label can name while the mount itself is served by someone else.
fn idle_process(argv0: &str) -> Child {
    let mut sleeper = Command::new("sleep");
    sleeper.arg0(argv0).arg("300");
    // SAFETY: prctl only, between fork and exec.
    unsafe {
        sleeper.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            Ok(())
        });
    }
    sleeper.spawn().unwrap()
}

struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------------------------

#[test]
fn a_live_mount_of_another_job_survives_cleanup() {
    let _serial = serial::lock();
    let mount = Mount::new("dataref:jobid123.{pid}:train");
    assert_served(&mount);

    let listed = mount.listed().expect("dataref_mounts lists the mount");
    assert_eq!(listed.job, format!("jobid123.{}", mount.pid()));
    assert_eq!(listed.reference, "train");
    assert_eq!(listed.pid, Some(mount.pid()));
    assert!(!listed.dead, "{listed:?}");
    assert_eq!(listed.reason, None);

    let report = cleanup::cleanup_dead_mounts();
    assert!(report.is_ok(), "{report:?}");
    assert!(report.live.iter().any(|m| m.fsname == mount.fsname));
    assert!(!report.removed.iter().any(|m| m.fsname == mount.fsname));
    assert!(mount.is_mounted());
    assert_served(&mount);

    let out = dataref_cleanup();
    out.expect_code(0);
    assert!(!out.stdout.contains(&mount.fsname), "{out:?}");
    assert!(out.stdout.contains("live dataref mount"), "{out:?}");
    assert!(mount.is_mounted());
    assert_served(&mount);
}

#[test]
fn a_live_server_that_does_not_say_dataref_is_recognised_by_its_dev_fuse() {
    let _serial = serial::lock();
    // A filesystem served from inside another program (a test binary, say): its command line
    // does not mention dataref, but it holds /dev/fuse open, so its pid was not reused.
    let mount = Mount::served_by("dataref:embedded.{pid}:data", "fuse-server");
    let cmdline = fs::read(format!("/proc/{}/cmdline", mount.pid())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains("dataref"));
    let listed = mount.listed().unwrap();
    assert!(!listed.dead, "{listed:?}");

    let out = dataref_cleanup();
    out.expect_code(0);
    assert!(!out.stdout.contains(&mount.fsname), "{out:?}");
    assert!(mount.is_mounted());
    assert_served(&mount);
}

#[test]
fn a_killed_jobs_mount_is_removed_and_the_directory_usable_again() {
    let _serial = serial::lock();
    let mut mount = Mount::new("dataref:run.{pid}:train");
    assert_served(&mount);
    mount.kill_server();
    wait_not_connected(&mount.point);

    let listed = mount.listed().expect("dataref_mounts lists the dead mount");
    assert!(listed.dead);
    assert_eq!(listed.reason, Some(DeadReason::OwnerGone));

    let out = dataref_cleanup();
    out.expect_code(0);
    assert!(
        out.stdout.lines().any(|l| l == mount.removed_line()),
        "{out:?}"
    );
    assert!(out.stdout.contains("removed "), "{out:?}");
    assert_plain_directory(&mount);

    // Nothing left to do: still exit 0.
    let again = dataref_cleanup();
    again.expect_code(0);
    assert!(!again.stdout.contains(&mount.fsname), "{again:?}");
}

#[test]
fn mounts_that_are_not_datarefs_are_never_touched() {
    let _serial = serial::lock();
    // Dead (server killed) and live, with sources that only look like dataref's.
    let mut dead = Mount::new("other:thing.{pid}:x");
    let lookalike = Mount::new("dataref-other:run.{pid}:x");
    dead.kill_server();
    wait_not_connected(&dead.point);

    assert!(dead.listed().is_none());
    assert!(lookalike.listed().is_none());
    let report = cleanup::cleanup_dead_mounts();
    assert!(report.is_ok(), "{report:?}");
    let out = dataref_cleanup();
    out.expect_code(0);
    assert!(!out.stdout.contains("thing"), "{out:?}");
    assert!(!out.stdout.contains("dataref-other"), "{out:?}");
    assert!(dead.is_mounted());
    assert_eq!(errno_of_stat(&dead.point), Some(libc::ENOTCONN));
    assert!(lookalike.is_mounted());
    assert_served(&lookalike);
}

#[test]
fn a_pid_now_running_another_program_means_the_owner_is_gone() {
    let _serial = serial::lock();
    // The label names a live `sleep`, as when the kernel has reused a dead job's pid.
    let sleeper = Reaped(idle_process("sleep"));
    let mut mount = Mount::new(&format!("dataref:reused.{}:data", sleeper.0.id()));
    assert_served(&mount);
    let listed = mount.listed().unwrap();
    assert_eq!(listed.reason, Some(DeadReason::PidReused), "{listed:?}");

    let report = cleanup::cleanup_dead_mounts();
    assert!(report.is_ok(), "{report:?}");
    assert!(report.removed.iter().any(|m| m.fsname == mount.fsname));
    assert_plain_directory(&mount);
    // The detached mount's server sees its connection end and exits by itself.
    let server = mount.server.as_mut().unwrap();
    let start = Instant::now();
    while server.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < DEADLINE, "the server outlived its mount");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_mount_answering_enotconn_is_removed_even_if_its_owner_lives() {
    let _serial = serial::lock();
    let owner = Reaped(idle_process("dataref-idle-owner"));
    let mut mount = Mount::new(&format!("dataref:idle.{}:data", owner.0.id()));
    assert!(!mount.listed().unwrap().dead);

    mount.kill_server();
    wait_not_connected(&mount.point);
    let listed = mount.listed().unwrap();
    assert_eq!(listed.reason, Some(DeadReason::NotConnected), "{listed:?}");

    let report = cleanup::cleanup_dead_mounts();
    assert!(report.is_ok(), "{report:?}");
    assert!(report.removed.iter().any(|m| m.fsname == mount.fsname));
    assert_plain_directory(&mount);
}

#[test]
fn a_covered_dead_mount_is_reported_and_what_covers_it_is_kept() {
    let _serial = serial::lock();
    let mut mount = Mount::new("dataref:covered.{pid}:data");
    // A tmpfs on top of the same mount point: unmounting by path would remove it instead.
    nix::mount::mount(
        Some("tmpfs"),
        &mount.point,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )
    .unwrap();
    let cover = TmpfsGuard(mount.point.clone());
    fs::write(mount.point.join("marker"), b"cover").unwrap();
    mount.kill_server();

    let listed = mount.listed().unwrap();
    assert_eq!(listed.reason, Some(DeadReason::OwnerGone));
    let out = dataref_cleanup();
    out.expect_code(74);
    assert!(out.stderr.contains(&mount.fsname), "{out:?}");
    assert!(out.stderr.contains("covers"), "{out:?}");
    assert_eq!(fs::read(mount.point.join("marker")).unwrap(), b"cover");
    assert!(mount.is_mounted());

    // Once uncovered, it goes.
    drop(cover);
    let out = dataref_cleanup();
    out.expect_code(0);
    assert!(
        out.stdout.lines().any(|l| l == mount.removed_line()),
        "{out:?}"
    );
    assert_plain_directory(&mount);
}

struct TmpfsGuard(PathBuf);

impl Drop for TmpfsGuard {
    fn drop(&mut self) {
        let table = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let tmpfs = cleanup::parse_mountinfo(&table)
            .iter()
            .any(|e| e.mount_point == self.0 && e.fstype == "tmpfs");
        if tmpfs {
            nix::mount::umount2(&self.0, MntFlags::MNT_DETACH).unwrap();
        }
    }
}

#[test]
fn a_non_root_caller_with_dead_mounts_gets_a_clear_error() {
    let _serial = serial::lock();
    let mut mount = Mount::new("dataref:run.{pid}:data");
    mount.kill_server();
    wait_not_connected(&mount.point);

    let out = output(&mut dataref_cleanup_as(65534));
    out.expect_code(74);
    assert!(out.stderr.contains("needs root"), "{out:?}");
    assert!(out.stderr.contains(&mount.fsname), "{out:?}");
    assert!(mount.is_mounted());

    // As root it goes.
    let out = dataref_cleanup();
    out.expect_code(0);
    assert!(
        out.stdout.lines().any(|l| l == mount.removed_line()),
        "{out:?}"
    );
    assert_plain_directory(&mount);
}

fn dataref_cleanup_as(uid: u32) -> Command {
    let mut cmd = command();
    cmd.arg("--config-dir")
        .arg("/nonexistent")
        .arg("cleanup")
        .uid(uid)
        .gid(uid);
    cmd
}
