//! Dead-mount cleanup: `dataref cleanup`, and what `dataref run` and the daemon do at start.
//!
//! dataref names every mount it makes `dataref:<job>:<ref>` (the mount *source*, shown by
//! `/proc/self/mountinfo`), where `<job>` always ends in `.<pid>` of the process serving the
//! mount. A mount is **dead** when that process is gone (no such pid, a zombie, or the pid now
//! runs a program that neither says "dataref" on its command line nor holds `/dev/fuse` open),
//! or when the kernel answers `ENOTCONN` for it (the connection to its server was lost). Dead
//! mounts are removed with a lazy unmount; a live mount — another running job's — is never
//! touched, and neither is anything whose source does not start with `dataref:`.
//!
//! Each unmount goes through a file descriptor opened on the mount point and checked against
//! the mount's id (`/proc/self/fdinfo`), so a mount point that was covered by another mount, or
//! a path that changed between reading the mount table and unmounting, can never make us
//! detach a different mount.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::MntFlags;
use nix::sys::stat::Mode;

/// First field of every dataref fsname.
pub const FSNAME_PREFIX: &str = "dataref";

/// Filesystem types a dataref mount can show: `fuse.dataref` (the new mount API, or
/// `fusermount3`), `fuse` when an older dataref mounted with the `mount` syscall (the subtype
/// is not applied then).
const FSTYPES: &[&str] = &["fuse", "fuse.dataref"];

/// How long the connection probe of a mount whose owner is alive may take. A server that is
/// alive but does not answer is busy, not dead: it is left alone.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The mount source dataref gives a reference's mount: `dataref:<job>:<ref>`.
pub fn fsname(job: &str, reference: &str) -> String {
    format!("{FSNAME_PREFIX}:{job}:{reference}")
}

/// A job label ending in this process's pid (`run.4242`), as [`fsname`] requires: the pid is
/// how a later cleanup tells whether the mount's server is still there.
pub fn job_label(prefix: &str) -> String {
    format!("{prefix}.{}", std::process::id())
}

/// The parts of a dataref fsname.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsName {
    /// `run.4242`, `jobid123.4242`.
    pub job: String,
    /// Everything after the job (may itself contain `:`).
    pub reference: String,
    /// The serving process, from the job's `.<pid>` suffix; `None` when the suffix is missing.
    pub pid: Option<u32>,
}

/// Parses `dataref:<job>:<ref>`; `None` for any other source (`other:thing`, `dataref-x:..`).
pub fn parse_fsname(source: &str) -> Option<FsName> {
    let rest = source.strip_prefix(FSNAME_PREFIX)?.strip_prefix(':')?;
    let (job, reference) = rest.split_once(':')?;
    if job.is_empty() {
        return None;
    }
    let pid = job
        .rsplit_once('.')
        .and_then(|(_, pid)| pid.parse::<u32>().ok())
        .filter(|&pid| pid > 0);
    Some(FsName {
        job: job.to_owned(),
        reference: reference.to_owned(),
        pid,
    })
}

/// One line of `/proc/<pid>/mountinfo` (the fields cleanup needs), unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_id: u64,
    pub parent_id: u64,
    pub mount_point: PathBuf,
    pub fstype: String,
    /// The mount source (for FUSE: the fsname).
    pub source: String,
}

/// Parses mountinfo text (proc(5)): `id parent major:minor root mount_point options
/// [optional fields...] - fstype source super_options`. Lines that do not fit are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_mountinfo_line).collect()
}

fn parse_mountinfo_line(line: &str) -> Option<MountEntry> {
    let (before, after) = line.split_once(" - ")?;
    let mut fields = before.split(' ');
    let mount_id = fields.next()?.parse().ok()?;
    let parent_id = fields.next()?.parse().ok()?;
    let _device = fields.next()?;
    let _root = fields.next()?;
    let mount_point = PathBuf::from(OsString::from_vec(unescape(fields.next()?)));
    let mut fields = after.split(' ');
    let fstype = String::from_utf8_lossy(&unescape(fields.next()?)).into_owned();
    let source = String::from_utf8_lossy(&unescape(fields.next()?)).into_owned();
    Some(MountEntry {
        mount_id,
        parent_id,
        mount_point,
        fstype,
        source,
    })
}

/// Undoes the kernel's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134`
/// backslash); anything else is kept as it is.
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..=i + 3]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = bytes[i + 1..=i + 3]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// This process's mount table.
pub fn read_mountinfo() -> io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&std::fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

/// Why a dataref mount counts as dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    /// No process has the pid in the mount's job label.
    OwnerGone,
    /// The owner has exited and not been reaped yet.
    OwnerZombie,
    /// The pid now belongs to a process that is not dataref and serves no FUSE filesystem.
    PidReused,
    /// The kernel answers `ENOTCONN`: the connection to the server is gone.
    NotConnected,
}

impl fmt::Display for DeadReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OwnerGone => "its process is gone",
            Self::OwnerZombie => "its process has exited",
            Self::PidReused => "its pid now belongs to another program",
            Self::NotConnected => "it is not connected (ENOTCONN)",
        })
    }
}

/// A mount made by dataref (its source is `dataref:<job>:<ref>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatarefMount {
    pub mount_id: u64,
    pub mountpoint: PathBuf,
    /// The whole source, `dataref:<job>:<ref>`.
    pub fsname: String,
    pub job: String,
    pub reference: String,
    /// The serving process (from the job label).
    pub pid: Option<u32>,
    /// Dead mounts are what `cleanup` removes; `dead == reason.is_some()`.
    pub dead: bool,
    pub reason: Option<DeadReason>,
}

/// Every dataref mount in this mount namespace, each judged dead or live. An unreadable mount
/// table gives an empty list (logged); [`try_dataref_mounts`] reports the error instead.
pub fn dataref_mounts() -> Vec<DatarefMount> {
    try_dataref_mounts().unwrap_or_else(|e| {
        tracing::warn!("cannot read /proc/self/mountinfo: {e}");
        Vec::new()
    })
}

/// Every dataref mount in this mount namespace, each judged dead or live.
pub fn try_dataref_mounts() -> io::Result<Vec<DatarefMount>> {
    let table = read_mountinfo()?;
    Ok(judge(&table))
}

fn judge(table: &[MountEntry]) -> Vec<DatarefMount> {
    table
        .iter()
        .filter(|entry| FSTYPES.contains(&entry.fstype.as_str()))
        .filter_map(|entry| {
            let name = parse_fsname(&entry.source)?;
            // Our own mounts are live, and must never be probed: a request this process makes
            // to a mount it serves cannot end if the process is killed meanwhile (the kernel
            // waits for an answer the dead server never sends, and the process never exits).
            let ours = name.pid == Some(std::process::id());
            let reason = match ours {
                true => None,
                false => owner_verdict(name.pid).or_else(|| probe(entry)),
            };
            Some(DatarefMount {
                mount_id: entry.mount_id,
                mountpoint: entry.mount_point.clone(),
                fsname: entry.source.clone(),
                job: name.job,
                reference: name.reference,
                pid: name.pid,
                dead: reason.is_some(),
                reason,
            })
        })
        .collect()
}

/// Whether the mount's owner is gone. Anything uncertain (an unreadable `/proc` entry, no pid
/// in the label) counts as alive: a live mount must never be removed, and a dead mount wrongly
/// thought alive is still caught by its `ENOTCONN`.
fn owner_verdict(pid: Option<u32>) -> Option<DeadReason> {
    let pid = pid?;
    let raw = i32::try_from(pid).ok()?;
    // kill(0) tells "no such process" apart from "not ours to signal", also where /proc hides
    // other users' processes.
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) == Err(Errno::ESRCH) {
        return Some(DeadReason::OwnerGone);
    }
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    if let Some(stat) = crate::model::process::ProcStat::read(raw) {
        if stat.has_exited() {
            // A leader that exited while other threads still run (and may serve) shows Z too.
            let threads = std::fs::read_dir(proc_dir.join("task")).map(|d| d.count());
            return match threads {
                Ok(n) if n > 1 => None,
                _ => Some(DeadReason::OwnerZombie),
            };
        }
    }
    // The pid may have been reused. Its owner is still ours if it says "dataref" on its
    // command line or holds a /dev/fuse descriptor (a server embedded in another program, such
    // as a test binary); only a process doing neither counts as someone else.
    let is_dataref = std::fs::read(proc_dir.join("cmdline"))
        .map(|cmdline| contains(&cmdline, FSNAME_PREFIX.as_bytes()))
        .unwrap_or(true);
    if is_dataref || holds_dev_fuse(&proc_dir).unwrap_or(true) {
        None
    } else {
        Some(DeadReason::PidReused)
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether the process has `/dev/fuse` open; `None` when its descriptors cannot be listed.
fn holds_dev_fuse(proc_dir: &Path) -> Option<bool> {
    let fds = std::fs::read_dir(proc_dir.join("fd")).ok()?;
    Some(fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| target == Path::new("/dev/fuse"))
    }))
}

/// Asks the kernel about a mount whose owner looks alive: `ENOTCONN` from `stat` or `statfs`
/// means its server connection is gone. `statfs` is never answered from a cache, so it also
/// catches a mount whose attributes are still cached. Runs on a helper thread with a timeout:
/// a live server that is slow to answer must not stall the cleanup (the thread is abandoned).
fn probe(entry: &MountEntry) -> Option<DeadReason> {
    let entry = entry.clone();
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("dataref-mount-probe".into())
        .spawn(move || {
            let answer = open_mount(&entry).ok().and_then(|fd| {
                let statfs = nix::sys::statfs::fstatfs(&fd).err();
                let stat = nix::sys::stat::fstat(&fd).err();
                statfs.or(stat)
            });
            let _ = tx.send(answer == Some(Errno::ENOTCONN));
        });
    if spawned.is_err() {
        return None;
    }
    match rx.recv_timeout(PROBE_TIMEOUT) {
        Ok(true) => Some(DeadReason::NotConnected),
        _ => None,
    }
}

/// Why a mount could not be opened as itself.
#[derive(Debug)]
enum OpenError {
    Os(Errno),
    /// The path now leads to another mount (covered, or the path changed).
    Elsewhere,
}

/// Opens the root of `entry` by its mount point (`O_PATH`: no request reaches the filesystem)
/// and checks that the descriptor is on that very mount.
fn open_mount(entry: &MountEntry) -> Result<OwnedFd, OpenError> {
    let fd = nix::fcntl::open(
        &entry.mount_point,
        OFlag::O_PATH | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )
    .map_err(OpenError::Os)?;
    match fd_mount_id(&fd) {
        Some(id) if id == entry.mount_id => Ok(fd),
        Some(_) => Err(OpenError::Elsewhere),
        None => Err(OpenError::Os(Errno::EIO)),
    }
}

pub(super) fn fd_mount_id(fd: &impl std::os::fd::AsFd) -> Option<u64> {
    let raw = fd.as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{raw}")).ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix("mnt_id:"))
        .and_then(|id| id.trim().parse().ok())
}

/// Why a dead mount was not removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CleanupError {
    /// Unmounting needs root (CAP_SYS_ADMIN).
    NeedsRoot,
    /// Another mount now sits on the mount point (or the path changed): unmounting by path
    /// would hit that one instead.
    Covered,
    /// The system refused, with this errno.
    Os(Errno),
}

impl fmt::Display for CleanupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NeedsRoot => f.write_str("unmounting needs root"),
            Self::Covered => f.write_str("another mount covers its mount point"),
            Self::Os(errno) => write!(f, "{}", io::Error::from(*errno)),
        }
    }
}

/// A dead mount that is still there.
#[derive(Debug, Clone)]
pub struct CleanupFailure {
    pub mount: DatarefMount,
    pub error: CleanupError,
}

/// What [`cleanup_dead_mounts`] did.
#[derive(Debug, Clone, Default)]
pub struct CleanupReport {
    /// Dead mounts that were unmounted.
    pub removed: Vec<DatarefMount>,
    /// Dead mounts that could not be unmounted.
    pub failed: Vec<CleanupFailure>,
    /// Live dataref mounts, left alone.
    pub live: Vec<DatarefMount>,
    /// Set when the mount table itself could not be read (nothing was looked at).
    pub table_error: Option<String>,
}

impl CleanupReport {
    /// No dead mount is left behind (as far as could be seen).
    pub fn is_ok(&self) -> bool {
        self.failed.is_empty() && self.table_error.is_none()
    }
}

/// Finds the dead dataref mounts of this mount namespace and removes each with a lazy unmount
/// (`MNT_DETACH`: processes still inside get `ENOTCONN`/`ENOENT` instead of blocking the
/// unmount). Live mounts and other filesystems are never touched.
pub fn cleanup_dead_mounts() -> CleanupReport {
    let mut report = CleanupReport::default();
    let mounts = match try_dataref_mounts() {
        Ok(mounts) => mounts,
        Err(e) => {
            report.table_error = Some(format!("cannot read /proc/self/mountinfo: {e}"));
            return report;
        }
    };
    for mount in mounts {
        if !mount.dead {
            report.live.push(mount);
            continue;
        }
        match unmount(&mount) {
            Ok(()) => {
                tracing::info!(
                    mountpoint = %mount.mountpoint.display(),
                    fsname = %mount.fsname,
                    reason = ?mount.reason,
                    "removed dead mount"
                );
                report.removed.push(mount);
            }
            // Gone in the meantime (another cleanup, or its owner unmounted it).
            Err(CleanupError::Os(Errno::ENOENT | Errno::EINVAL)) if !still_mounted(&mount) => {}
            Err(error) => {
                tracing::warn!(
                    mountpoint = %mount.mountpoint.display(),
                    fsname = %mount.fsname,
                    "cannot remove dead mount: {error}"
                );
                report.failed.push(CleanupFailure { mount, error });
            }
        }
    }
    report
}

fn still_mounted(mount: &DatarefMount) -> bool {
    read_mountinfo()
        .map(|table| table.iter().any(|e| e.mount_id == mount.mount_id))
        .unwrap_or(true)
}

/// Lazily unmounts exactly `mount` (by mount id, through `/proc/self/fd/N`).
fn unmount(mount: &DatarefMount) -> Result<(), CleanupError> {
    let as_root = nix::unistd::geteuid().is_root();
    let denied = |errno: Errno| match errno {
        Errno::EPERM | Errno::EACCES if !as_root => CleanupError::NeedsRoot,
        other => CleanupError::Os(other),
    };
    let entry = MountEntry {
        mount_id: mount.mount_id,
        parent_id: 0,
        mount_point: mount.mountpoint.clone(),
        fstype: String::new(),
        source: mount.fsname.clone(),
    };
    let fd = match open_mount(&entry) {
        Ok(fd) => fd,
        Err(OpenError::Os(errno)) => return Err(denied(errno)),
        Err(OpenError::Elsewhere) => {
            return Err(if still_mounted(mount) {
                CleanupError::Covered
            } else {
                CleanupError::Os(Errno::EINVAL)
            });
        }
    };
    // Through the descriptor, never the path: `/proc/self/fd/N` is a "magic link" to the very
    // mount root the id check saw. (`UMOUNT_NOFOLLOW` is therefore not used: it would stop at
    // the link itself and fail with EINVAL; no user-controlled symlink is ever followed here.)
    // What remains racy: the mount point's parent components are resolved when it is opened,
    // so a user who swaps one for a link makes the open land elsewhere; the id check then
    // refuses (`Covered`), so such a swap can make cleanup skip a dead mount but never unmount
    // another one. And the kernel unmounts the topmost mount on that root: a mount stacked on
    // it between the id check and the unmount (only root can mount here) would go instead.
    let via_fd = Path::new("/proc/self/fd").join(fd.as_raw_fd().to_string());
    nix::mount::umount2(&via_fd, MntFlags::MNT_DETACH).map_err(denied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsname_and_job_label() {
        assert_eq!(fsname("run.42", "train"), "dataref:run.42:train");
        let label = job_label("mount");
        assert_eq!(label, format!("mount.{}", std::process::id()));
        let parsed = parse_fsname(&fsname(&label, "data")).unwrap();
        assert_eq!(parsed.pid, Some(std::process::id()));
        assert_eq!(parsed.job, label);
        assert_eq!(parsed.reference, "data");
    }

    #[test]
    fn fsname_parsing() {
        assert_eq!(
            parse_fsname("dataref:jobid123.4242:train"),
            Some(FsName {
                job: "jobid123.4242".into(),
                reference: "train".into(),
                pid: Some(4242)
            })
        );
        // Extra colons belong to the reference part.
        let parsed = parse_fsname("dataref:run.7:a:b:c").unwrap();
        assert_eq!(parsed.job, "run.7");
        assert_eq!(parsed.reference, "a:b:c");
        assert_eq!(parsed.pid, Some(7));
        // A job without a pid suffix is still ours, with no owner to check.
        assert_eq!(parse_fsname("dataref:run:x").unwrap().pid, None);
        assert_eq!(parse_fsname("dataref:run.abc:x").unwrap().pid, None);
        assert_eq!(parse_fsname("dataref:run.0:x").unwrap().pid, None);
        assert_eq!(parse_fsname("dataref:a.b.12:x").unwrap().pid, Some(12));
        assert_eq!(parse_fsname("dataref:run.1:").unwrap().reference, "");
        // Not ours.
        for other in [
            "other:thing",
            "dataref",
            "dataref:",
            "dataref:run.1",
            "dataref::x",
            "datarefs:run.1:x",
            "dataref-x:run.1:x",
            "xdataref:run.1:x",
            "/dev/fuse",
            "DATAREF:run.1:x",
        ] {
            assert_eq!(parse_fsname(other), None, "{other}");
        }
    }

    const SAMPLE: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
100 27 0:55 / /tmp/job\\040dir/data rw,nosuid,nodev,relatime shared:7 master:2 - fuse dataref:run.4242:train ro,user_id=0,group_id=0
101 100 0:56 / /tmp/a\\011b\\012c\\134d rw - fuse.dataref dataref:jobid123.77:ref:with:colons rw
102 27 0:57 / /tmp/other rw - fuse other:thing rw
103 27 0:58 / /tmp/sp rw - fuse dataref:run\\0401.5:x\\040y rw
garbage line
104 27 0:59 / /tmp/no-separator rw fuse dataref:run.1:x rw
";

    #[test]
    fn mountinfo_parsing() {
        let table = parse_mountinfo(SAMPLE);
        assert_eq!(table.len(), 6, "{table:#?}");
        assert_eq!(
            table[1],
            MountEntry {
                mount_id: 36,
                parent_id: 35,
                mount_point: PathBuf::from("/mnt2"),
                fstype: "ext3".into(),
                source: "/dev/root".into(),
            }
        );
        // Optional fields (`shared:7 master:2`) before the separator are skipped.
        assert_eq!(table[2].mount_point, Path::new("/tmp/job dir/data"));
        assert_eq!(table[2].fstype, "fuse");
        assert_eq!(table[2].source, "dataref:run.4242:train");
        assert_eq!(table[3].mount_point, Path::new("/tmp/a\tb\nc\\d"));
        assert_eq!(table[3].parent_id, 100);
        assert_eq!(table[3].fstype, "fuse.dataref");
        assert_eq!(table[3].source, "dataref:jobid123.77:ref:with:colons");
        assert_eq!(table[5].source, "dataref:run 1.5:x y");
    }

    #[test]
    fn unescaping() {
        assert_eq!(unescape(r"a\040b"), b"a b");
        assert_eq!(unescape(r"\134"), b"\\");
        // Not an escape: kept as it is.
        assert_eq!(unescape(r"a\04"), br"a\04");
        assert_eq!(unescape(r"a\x41"), br"a\x41");
        assert_eq!(unescape(r"\400"), br"\400");
        assert_eq!(unescape("trailing\\"), b"trailing\\");
        // Non-UTF-8 bytes survive into the path.
        assert_eq!(unescape(r"\377"), [0xff]);
    }

    #[test]
    fn only_dataref_fuse_mounts_are_judged() {
        // A dataref source on a filesystem that is not FUSE is not a dataref mount.
        let table = parse_mountinfo(
            "1 0 0:1 / /a rw - ext4 dataref:run.1:x rw\n\
             2 0 0:2 / /b rw - fuse other:thing rw\n\
             3 0 0:3 / /c rw - fuseblk dataref:run.1:x rw\n",
        );
        assert!(judge(&table).is_empty());
    }

    #[test]
    fn owner_checks() {
        // This process is alive; whether it counts as dataref depends on its command line
        // (the unit-test binary's name is `dataref-<hash>`).
        assert_eq!(owner_verdict(Some(std::process::id())), None);
        assert_eq!(owner_verdict(None), None);
        // A pid that cannot exist (above pid_max's hard limit of 2^22).
        assert_eq!(owner_verdict(Some(5_000_000)), Some(DeadReason::OwnerGone));
        // A live process that is not dataref.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        assert_eq!(owner_verdict(Some(child.id())), Some(DeadReason::PidReused));
        child.kill().unwrap();
        // Killed but not reaped yet: a zombie (poll: the kill is asynchronous).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match owner_verdict(Some(child.id())) {
                Some(DeadReason::OwnerZombie) => break,
                other => assert!(
                    std::time::Instant::now() < deadline,
                    "still {other:?} after kill"
                ),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        child.wait().unwrap();
        assert_eq!(owner_verdict(Some(child.id())), Some(DeadReason::OwnerGone));
    }
}
