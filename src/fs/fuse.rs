//! The FUSE adapter: translates kernel requests into `FsCore` calls and errors into errno.
//! Every request is answered from a task on the tokio runtime, so slow storage never blocks
//! fuser's worker threads.

use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
    SessionACL,
};

use super::attach::{self, Attached};
use super::cache::DiskCache;
use super::filesystem::{Attr, DirEntry, FsCore, FsError, Kind, Listing};
use crate::model::metrics::FuseOp;
use crate::store::StoreError;

/// The largest read request we ask the kernel for. The kernel splits reads into requests of at
/// most `max_pages` pages (256 = 1 MiB unless an admin raised `fuse.max_pages_limit`), and
/// fewer, larger requests mean fewer round trips through /dev/fuse: 1 MiB is also the disk
/// cache's block size, so a request touches one cache block.
const MAX_REQUEST: u32 = 1024 * 1024;

/// How a filesystem is mounted.
#[derive(Debug, Clone)]
pub struct MountConfig {
    /// `dataref:<job>:<ref>`: how dataref recognises its own mounts.
    pub fsname: String,
    /// Let other users in (`allow_other,default_permissions`): the script runs as another uid.
    pub allow_other: bool,
    /// The user and group whose data this is (a job run as that user): entries are theirs,
    /// files 0400 and folders 0500, so the kernel lets in that user (and root) and no one else.
    /// `None`: entries are dataref's own user's, 0444/0555.
    pub owner: Option<(u32, u32)>,
}

struct Adapter {
    core: Arc<FsCore>,
    runtime: tokio::runtime::Handle,
    uid: u32,
    gid: u32,
    /// Entries only their owner may read (0400/0500), not everyone (0444/0555).
    private: bool,
    /// Requests that came from this very process (counted in test builds only).
    #[cfg_attr(not(any(test, feature = "test-support")), allow(dead_code))]
    self_requests: Arc<std::sync::atomic::AtomicU64>,
}

/// The one place a failure becomes an errno.
fn errno(e: &FsError) -> Errno {
    match e {
        FsError::NotFound | FsError::Store(StoreError::NotFound { .. }) => Errno::ENOENT,
        FsError::NotADirectory => Errno::ENOTDIR,
        FsError::IsADirectory => Errno::EISDIR,
        FsError::BadHandle => Errno::EBADF,
        FsError::ReadOnly => Errno::from_i32(libc::EROFS),
        // ENOSYS, not ENODATA: the kernel then remembers that this filesystem has no extended
        // attributes and stops asking (`ls -l` asks twice per entry otherwise).
        FsError::Unsupported => Errno::from_i32(libc::ENOSYS),
        FsError::Store(StoreError::PermissionDenied { .. }) => Errno::EACCES,
        FsError::Store(_) => {
            tracing::warn!(error = %e, "storage error in the mount");
            Errno::EIO
        }
    }
}

/// The kernel's view of an entry: read-only permissions, owned by `uid`/`gid`; readable by
/// everyone, or (`private`) by the owner only.
fn file_attr(attr: &Attr, uid: u32, gid: u32, private: bool) -> FileAttr {
    {
        let (kind, perm, nlink) = match (attr.kind, private) {
            (Kind::Directory, false) => (FileType::Directory, 0o555, 2),
            (Kind::Directory, true) => (FileType::Directory, 0o500, 2),
            (Kind::File, false) => (FileType::RegularFile, 0o444, 1),
            (Kind::File, true) => (FileType::RegularFile, 0o400, 1),
        };
        FileAttr {
            ino: INodeNo(attr.ino),
            size: attr.size,
            blocks: attr.size.div_ceil(512),
            atime: attr.mtime,
            mtime: attr.mtime,
            ctime: attr.mtime,
            crtime: attr.mtime,
            kind,
            perm,
            nlink,
            uid,
            gid,
            rdev: 0,
            blksize: 128 * 1024,
            flags: 0,
        }
    }
}

impl Adapter {
    /// Counts a request from this process itself (test builds only: a probe per request).
    /// The server must never make one: if it is killed while it waits, the kernel waits for
    /// an answer the dead server never sends and the process can never exit.
    #[cfg(any(test, feature = "test-support"))]
    fn note_requester(&self, req: &Request) {
        if Path::new(&format!("/proc/self/task/{}", req.pid())).exists() {
            self.self_requests
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[cfg(not(any(test, feature = "test-support")))]
    fn note_requester(&self, _req: &Request) {}

    fn spawn(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        self.runtime.spawn(work);
    }
}

impl Filesystem for Adapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Kernel read-ahead up to 1 MiB: the kernel offers its block-device default (128 KiB
        // here) as the most it grants, so take the largest allowed. `max_pages` (the request
        // size limit) follows max(max_write, max_readahead): nothing is ever written, but
        // max_write states the 1 MiB request size we want.
        if let Err(granted) = config.set_max_readahead(MAX_REQUEST) {
            let _ = config.set_max_readahead(granted);
        }
        let _ = config.set_max_write(MAX_REQUEST);
        // Read-ahead requests are "background" requests: the default 16 in flight throttles
        // eight parallel readers; 64 as mountpoint-s3.
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        // Directory reads carry each entry's attributes (READDIRPLUS, always rather than the
        // kernel's heuristic): `ls -l` and `find` of a folder then cost one request per few
        // dozen entries instead of one lookup per entry.
        if config
            .add_capabilities(InitFlags::FUSE_DO_READDIRPLUS)
            .is_err()
        {
            tracing::debug!("the kernel does not offer READDIRPLUS; directory reads stay plain");
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.note_requester(req);
        let Some(name) = name.to_str().map(str::to_owned) else {
            return reply.error(errno(&FsError::NotFound));
        };
        let core = self.core.clone();
        let this = self.attr_maker();
        let timer = core.metrics().fuse_request(FuseOp::Lookup);
        self.spawn(async move {
            match core.lookup(parent.0, &name).await {
                Ok(attr) => reply.entry(&core.attribute_ttl(), &this(&attr), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
            drop(timer);
        });
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.note_requester(req);
        let core = self.core.clone();
        let this = self.attr_maker();
        let timer = core.metrics().fuse_request(FuseOp::Getattr);
        self.spawn(async move {
            match core.getattr(ino.0).await {
                Ok(attr) => reply.attr(&core.attribute_ttl(), &this(&attr)),
                Err(e) => reply.error(errno(&e)),
            }
            drop(timer);
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.note_requester(req);
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(errno(&FsError::ReadOnly));
        }
        let core = self.core.clone();
        let timer = core.metrics().fuse_request(FuseOp::Open);
        self.spawn(async move {
            match core.open(ino.0).await {
                // Objects do not change under a mount's TTL: keep the page cache across opens.
                Ok(fh) => {
                    reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
                    core.metrics().add_files(1);
                }
                Err(e) => reply.error(errno(&e)),
            }
            drop(timer);
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let core = self.core.clone();
        // From the request's arrival to its reply: what the reader was blocked on.
        let timer = core.metrics().fuse_request(FuseOp::Read);
        self.spawn(async move {
            match core.read(fh.0, offset, size).await {
                Ok(data) => {
                    reply.data(&data);
                    core.metrics().add_bytes(data.len() as u64);
                }
                Err(e) => reply.error(errno(&e)),
            }
            drop(timer);
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.core.release(fh.0);
        reply.ok();
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.note_requester(req);
        // The kernel caches what it reads of a directory (CACHE_DIR) and keeps that copy at the
        // next open (KEEP_CACHE) while our listing is unchanged and within the TTL: a warm
        // `ls` then never reaches us.
        match self.core.opendir(ino.0) {
            Ok(keep) => {
                let mut flags = FopenFlags::FOPEN_CACHE_DIR;
                if keep {
                    flags |= FopenFlags::FOPEN_KEEP_CACHE;
                }
                reply.opened(FileHandle(0), flags)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let core = self.core.clone();
        let timer = core.metrics().fuse_request(FuseOp::Readdir);
        self.spawn(async move {
            let _timer = timer;
            let listing = match core.read_listing(ino.0, offset).await {
                Ok(listing) => listing,
                Err(e) => return reply.error(errno(&e)),
            };
            for (next, entry) in entries_from(ino.0, &listing, offset) {
                if reply.add(INodeNo(entry.ino), next, file_type(entry.kind), &entry.name) {
                    break; // the kernel's buffer is full; it will ask again from here
                }
            }
            reply.ok();
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let core = self.core.clone();
        let this = self.attr_maker();
        let timer = core.metrics().fuse_request(FuseOp::Readdir);
        self.spawn(async move {
            let _timer = timer;
            let listing = match core.read_listing(ino.0, offset).await {
                Ok(listing) => listing,
                Err(e) => return reply.error(errno(&e)),
            };
            let ttl = core.attribute_ttl();
            for (next, entry) in entries_from(ino.0, &listing, offset) {
                let attr = this(&entry.attr());
                if reply.add(
                    INodeNo(entry.ino),
                    next,
                    &entry.name,
                    &ttl,
                    &attr,
                    Generation(0),
                ) {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok(); // nothing is ever written
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(errno(&FsError::Unsupported));
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(errno(&FsError::Unsupported));
    }

    fn statfs(&self, req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.note_requester(req);
        reply.statfs(0, 0, 0, 0, 0, 128 * 1024, 255, 128 * 1024);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        if mask.bits() & libc::W_OK != 0 {
            return reply.error(errno(&FsError::ReadOnly));
        }
        reply.ok();
    }
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::Directory => FileType::Directory,
        Kind::File => FileType::RegularFile,
    }
}

/// A directory's entries after `offset`, each with the offset the kernel resumes from after it:
/// 1 = ".", 2 = "..", 3.. = the listing in order.
fn entries_from(
    ino: u64,
    listing: &Listing,
    offset: u64,
) -> impl Iterator<Item = (u64, std::borrow::Cow<'_, DirEntry>)> {
    // The kernel takes no attributes from "." and ".." (it links neither), so theirs are nominal.
    let dot = |name: &str| DirEntry {
        ino,
        name: name.into(),
        kind: Kind::Directory,
        size: 0,
        mtime: std::time::SystemTime::UNIX_EPOCH,
    };
    [dot("."), dot("..")]
        .into_iter()
        .map(std::borrow::Cow::Owned)
        .chain(listing.entries.iter().map(std::borrow::Cow::Borrowed))
        .enumerate()
        .skip(offset as usize)
        .map(|(i, entry)| (i as u64 + 1, entry))
}

impl Adapter {
    fn attr_maker(&self) -> impl Fn(&Attr) -> FileAttr + Send + 'static {
        let (uid, gid, private) = (self.uid, self.gid, self.private);
        move |attr| file_attr(attr, uid, gid, private)
    }
}

/// Where a mount goes: the directory (or, for a single object, the file) to mount on, already
/// opened (and checked) by the caller, so that no path is resolved again when mounting.
#[derive(Debug)]
pub struct MountTarget {
    pub fd: OwnedFd,
    /// How the mount point is named in messages and by [`Mounted::mountpoint`].
    pub shown_as: PathBuf,
}

/// A live mount; unmounted when `unmount` is called or the value is dropped.
pub struct Mounted {
    session: Option<fuser::BackgroundSession>,
    attached: Option<Attached>,
    mountpoint: PathBuf,
    cache: Option<Arc<DiskCache>>,
    core: Arc<FsCore>,
    #[cfg_attr(not(any(test, feature = "test-support")), allow(dead_code))]
    self_requests: Arc<std::sync::atomic::AtomicU64>,
}

impl Mounted {
    /// Requests this process made to its own mount (test builds only; see `note_requester`).
    #[cfg(any(test, feature = "test-support"))]
    pub fn requests_from_this_process(&self) -> u64 {
        self.self_requests.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The filesystem behind the mount (what reached it: `FsCore::counters`).
    pub fn core(&self) -> &Arc<FsCore> {
        &self.core
    }

    /// The mount's disk cache, if it has one.
    pub fn cache(&self) -> Option<&Arc<DiskCache>> {
        self.cache.as_ref()
    }

    /// Unmounts, waits for the session to end, and deletes the disk cache. A mount another
    /// process still holds a file of (EBUSY) is detached lazily instead: it leaves the
    /// namespace at once, so that no dead mount outlives this process; the holder's reads fail
    /// once this process has gone.
    pub fn unmount(mut self) -> io::Result<()> {
        let unmounted = self.take_down();
        if let Some(cache) = self.cache.take() {
            cache.close();
        }
        unmounted
    }

    /// Unmounts exactly our mount (never by its path: see `attach`), then joins the session.
    fn take_down(&mut self) -> io::Result<()> {
        let session = self.session.take();
        let Some(attached) = self.attached.take() else {
            return Ok(());
        };
        match attached.unmount(false) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                tracing::warn!(mountpoint = %self.mountpoint.display(),
                    "busy (a file in it is still open): detached lazily");
                // The session keeps serving the open files until they are closed; it is left
                // to end on its own.
                attached.unmount(true).map(drop)
            }
            // Unmounted (by us or by someone else): the kernel ends the connection, and with
            // it the session.
            Ok(_) => session.map_or(Ok(()), fuser::BackgroundSession::join),
            Err(e) => Err(e),
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = self.take_down();
        if let Some(cache) = self.cache.take() {
            cache.close();
        }
    }
}

/// Why a mount failed, in words a user can act on.
fn explain(mountpoint: &Path, e: io::Error) -> io::Error {
    let reason = if !Path::new("/dev/fuse").exists() {
        "/dev/fuse does not exist (load the fuse module, or give the container the device)".into()
    } else if e.kind() == io::ErrorKind::PermissionDenied || e.raw_os_error() == Some(libc::EPERM) {
        "permission denied: mounting needs root (or CAP_SYS_ADMIN) and access to /dev/fuse".into()
    } else if e.raw_os_error() == Some(libc::EBUSY) {
        "the mount point is busy (something is mounted there already)".into()
    } else if e.raw_os_error() == Some(libc::ENOENT) || e.raw_os_error() == Some(libc::ENOTDIR) {
        "the mount point is not an existing directory".into()
    } else {
        e.to_string()
    };
    io::Error::new(
        e.kind(),
        format!("cannot mount at {}: {reason}", mountpoint.display()),
    )
}

/// Mounts `core` on `target` and returns once the kernel serves it.
///
/// The superblock is made first (the kernel queues its INIT request then), INIT is answered,
/// and only then is the mount attached on the target's descriptor: the mount never appears
/// anywhere unserved, and no path is resolved.
pub fn mount(
    core: Arc<FsCore>,
    target: MountTarget,
    config: &MountConfig,
    runtime: tokio::runtime::Handle,
) -> io::Result<Mounted> {
    let shown_as = target.shown_as.clone();
    let cache = core.cache().cloned();
    let self_requests = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let adapter = Adapter {
        core: core.clone(),
        runtime,
        uid: config
            .owner
            .map_or(nix::unistd::getuid().as_raw(), |(uid, _)| uid),
        gid: config
            .owner
            .map_or(nix::unistd::getgid().as_raw(), |(_, gid)| gid),
        private: config.owner.is_some(),
        self_requests: self_requests.clone(),
    };
    let acl = if config.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    let mut fuse_config = Config::default();
    fuse_config.acl = acl;
    fuse_config.n_threads = Some(4);
    fuse_config.clone_fd = true;
    let options = attach::Options {
        fsname: &config.fsname,
        allow_other: config.allow_other,
        // Caps each read request at what `init` negotiates (see MAX_REQUEST).
        max_read: MAX_REQUEST,
    };
    let (dev, created) = attach::create(&target.fd, &options).map_err(|e| explain(&shown_as, e))?;
    // The INIT handshake (`from_fd`) on a thread of its own, so that a kernel that never sends
    // INIT costs a timeout, not a hang; the session then serves from its own threads.
    let (session_tx, session_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("dataref-fuse-init".into())
        .spawn(move || {
            let session = fuser::Session::from_fd(adapter, dev, acl, fuse_config)
                .and_then(fuser::Session::spawn);
            let _ = session_tx.send(session);
        })?;
    // Serving once the kernel's INIT is answered (`from_fd` returns then). Never by a stat of
    // the mount point: a request from the serving process to its own mount cannot end if the
    // process is killed while it waits (the kernel waits for the dead server's answer and the
    // process never exits).
    let session = match session_rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(session)) => session,
        Ok(Err(e)) => return Err(explain(&shown_as, e)),
        Err(_) => {
            // Dropping the unattached superblock ends the connection, and the handshake with it.
            drop(created);
            return Err(io::Error::other(format!(
                "{}: the mount did not start serving within 10 s",
                shown_as.display()
            )));
        }
    };
    // If attaching fails, the superblock goes with `created` and the session ends by itself.
    let attached =
        attach::attach(created, target.fd, &config.fsname).map_err(|e| explain(&shown_as, e))?;
    Ok(Mounted {
        session: Some(session),
        attached: Some(attached),
        mountpoint: shown_as,
        cache,
        core,
        self_requests,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_has_one_errno() {
        let store_error = |e| FsError::Store(e);
        let cases = [
            (FsError::NotFound, libc::ENOENT),
            (
                store_error(StoreError::NotFound { path: "a".into() }),
                libc::ENOENT,
            ),
            (FsError::NotADirectory, libc::ENOTDIR),
            (FsError::IsADirectory, libc::EISDIR),
            (FsError::BadHandle, libc::EBADF),
            (FsError::ReadOnly, libc::EROFS),
            (FsError::Unsupported, libc::ENOSYS),
            (
                store_error(StoreError::PermissionDenied {
                    path: "a".into(),
                    reason: "403".into(),
                }),
                libc::EACCES,
            ),
            (
                store_error(StoreError::Network {
                    message: "reset".into(),
                }),
                libc::EIO,
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(errno(&error), Errno::from_i32(expected), "{error:?}");
        }
    }
}
