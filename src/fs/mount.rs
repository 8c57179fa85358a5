//! Mounting a datastore path: resolving whether it names a directory or a single object, and
//! building the filesystem for it. The mount point is made and opened in one place
//! ([`MountPlaces`]); root checks the descriptor it gets and mounts on that, never on a path.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::cache::{CacheOptions, DiskCache};
use super::filesystem::{FsCore, FsOptions};
use super::fuse::{MountConfig, MountTarget, Mounted, mount};
use crate::localfs::{LocalFs, Open};
use crate::model::{MemoryBudget, ObjectPath};
use crate::store::{ListRequest, ObjectMeta, Store, StoreError};

/// A mounted reference: where the data appears, and the live mount behind it.
pub struct MountedPath {
    /// The directory (or, for a single object, the file) the user reads.
    pub local: PathBuf,
    pub mount: Mounted,
    /// The prefix matched nothing (allowed by `allow_empty`): the mount is an empty folder.
    pub matched_nothing: bool,
    /// The empty file dataref created to mount a single object on; removed after the unmount.
    placeholder: Option<FileId>,
    places: Arc<dyn MountPlaces>,
}

impl MountedPath {
    /// Unmounts (see [`Mounted::unmount`]) and removes the file dataref made to mount on.
    pub fn unmount(self) -> std::io::Result<()> {
        self.mount.unmount()?;
        if let Some(made) = self.placeholder {
            self.places.remove_placeholder(&self.local, made)?;
        }
        Ok(())
    }
}

/// Which file a placeholder is (its device and inode), so that only that file is ever removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    #[allow(clippy::unnecessary_cast)] // the field types differ between architectures
    pub fn of(stat: &rustix::fs::Stat) -> Self {
        Self {
            dev: stat.st_dev as u64,
            ino: stat.st_ino as u64,
        }
    }
}

/// How mount points are made and opened: the one place a mount point's path is resolved. Root
/// then only checks the descriptor it gets (type, and owner for another user's mount) and
/// mounts on it, so a caller can have the opening done with the job's user's rights.
pub trait MountPlaces: Send + Sync {
    /// Creates `path` (and missing parents) as a directory if needed and opens it.
    fn directory(&self, path: &Path) -> std::io::Result<OwnedFd>;
    /// Creates `path` as an empty regular file if missing (its folder too), and opens what is
    /// there (without following a symbolic link); says whether it created it.
    fn file(&self, path: &Path) -> std::io::Result<(OwnedFd, bool)>;
    /// Removes the placeholder file `made` that `file` created at `path`, only while it is
    /// still that empty regular file.
    fn remove_placeholder(&self, path: &Path, made: FileId) -> std::io::Result<()>;
}

/// Mount points made and opened with this process's own rights (`dataref mount`, a job run as
/// oneself). For a job run as another user (`owner`), until their own process does it: a
/// missing folder or placeholder is created only inside a folder that user owns, and given to
/// them through its descriptor.
#[derive(Debug, Clone, Copy, Default)]
pub struct Direct {
    pub owner: Option<(u32, u32)>,
}

impl Direct {
    pub fn for_owner(owner: Option<(u32, u32)>) -> Arc<dyn MountPlaces> {
        Arc::new(Self { owner })
    }

    /// Checks that the folder `dir` may receive something made for the owner (it is theirs).
    fn may_create_in(&self, dir: &OwnedFd, path: &Path) -> std::io::Result<()> {
        match self.owner {
            Some((uid, _)) if rustix::fs::fstat(dir)?.st_uid != uid => Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "not creating {}: its folder is not owned by uid {uid}",
                    path.display()
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Gives what was just made to the owner, through its descriptor.
    fn give(&self, made: &OwnedFd) -> std::io::Result<()> {
        match self.owner {
            Some((uid, gid)) => rustix::fs::fchown(
                made,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )
            .map_err(Into::into),
            None => Ok(()),
        }
    }

    /// The folder of `path`, and its last component.
    fn parent_of<'a>(&self, path: &'a Path) -> std::io::Result<(OwnedFd, &'a OsStr)> {
        let invalid = || std::io::Error::from(std::io::ErrorKind::InvalidInput);
        let name = path.file_name().ok_or_else(invalid)?;
        let parent = match path.parent().ok_or_else(invalid)? {
            p if p.as_os_str().is_empty() => Path::new("."),
            p => p,
        };
        Ok((self.directory(parent)?, name))
    }
}

impl MountPlaces for Direct {
    fn directory(&self, path: &Path) -> std::io::Result<OwnedFd> {
        use rustix::fs::{Mode, OFlags};
        match rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Err(rustix::io::Errno::NOENT) => {}
            other => return other.map_err(Into::into),
        }
        // Missing: made one folder at a time, each inside its parent's descriptor.
        let (parent, name) = self.parent_of(path)?;
        self.may_create_in(&parent, path)?;
        let created = match rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o777)) {
            Ok(()) => true,
            Err(rustix::io::Errno::EXIST) => false,
            Err(e) => return Err(e.into()),
        };
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let dir = rustix::fs::openat(&parent, name, flags, Mode::empty())?;
        if created {
            self.give(&dir)?;
        }
        Ok(dir)
    }

    fn file(&self, path: &Path) -> std::io::Result<(OwnedFd, bool)> {
        use rustix::fs::{Mode, OFlags};
        let (parent, name) = self.parent_of(path)?;
        let create = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW;
        let made = self.may_create_in(&parent, path).and_then(|()| {
            rustix::fs::openat(
                &parent,
                name,
                create | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o666),
            )
            .map_err(Into::into)
        });
        match made {
            Ok(file) => {
                self.give(&file)?;
                Ok((file, true))
            }
            // A file already there (an earlier run's, or the user's) is only covered, not
            // changed: opened as it is, a symbolic link included (the caller refuses that).
            Err(e)
                if e.kind() == std::io::ErrorKind::AlreadyExists
                    || rustix::fs::statat(&parent, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                        .is_ok() =>
            {
                let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                Ok((
                    rustix::fs::openat(&parent, name, flags, Mode::empty())?,
                    false,
                ))
            }
            Err(e) => Err(e),
        }
    }

    fn remove_placeholder(&self, path: &Path, made: FileId) -> std::io::Result<()> {
        use rustix::fs::{Mode, OFlags};
        let (Some(folder), Some(name)) = (path.parent(), path.file_name()) else {
            return Ok(());
        };
        let folder = match folder.as_os_str().is_empty() {
            true => Path::new("."),
            false => folder,
        };
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let parent = match rustix::fs::open(folder, flags, Mode::empty()) {
            Ok(parent) => parent,
            Err(rustix::io::Errno::NOENT) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let is_ours = rustix::fs::statat(&parent, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|stat| {
                rustix::fs::FileType::from_raw_mode(stat.st_mode)
                    == rustix::fs::FileType::RegularFile
                    && stat.st_size == 0
                    && FileId::of(&stat) == made
            });
        match is_ours {
            true => rustix::fs::unlinkat(&parent, name, rustix::fs::AtFlags::empty())
                .map_err(Into::into),
            false => Ok(()),
        }
    }
}

/// Mount points made and opened with a job's user's rights: their process creates and opens,
/// root only gets the descriptor (and still checks it).
impl MountPlaces for LocalFs {
    fn directory(&self, path: &Path) -> std::io::Result<OwnedFd> {
        self.create_dir_all(path)?;
        Ok(self.open(path, Open::Directory)?.into())
    }

    fn file(&self, path: &Path) -> std::io::Result<(OwnedFd, bool)> {
        if let Some(parent) = path.parent() {
            self.create_dir_all(parent)?;
        }
        match self.open(path, Open::CreateNew) {
            Ok(file) => Ok((file.into(), true)),
            // One already there is covered as it is (a link too: the caller refuses that).
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let there = self.open(path, Open::Path { follow: false })?;
                Ok((there.into(), false))
            }
            Err(e) => Err(e),
        }
    }

    fn remove_placeholder(&self, path: &Path, made: FileId) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let is_ours = self.symlink_metadata(path).is_ok_and(|meta| {
            meta.is_file() && meta.len() == 0 && (meta.dev(), meta.ino()) == (made.dev, made.ino)
        });
        match is_ours {
            true => self.remove_file(path),
            false => Ok(()),
        }
    }
}

/// Opens (making it if needed) the folder `path` through `places` and checks the descriptor.
fn directory_target(
    places: &dyn MountPlaces,
    path: &Path,
    config: &MountConfig,
) -> Result<MountTarget, MountError> {
    let fd = places
        .directory(path)
        .map_err(|source| MountError::Mountpoint {
            path: path.to_path_buf(),
            source,
        })?;
    check_target(&fd, path, rustix::fs::FileType::Directory, config)?;
    Ok(MountTarget {
        fd,
        shown_as: path.to_path_buf(),
    })
}

/// Makes `local` a file a single object can be mounted on (the kernel mounts a file only on a
/// file), creating its folder, through `places`. Returns the placeholder when dataref made it.
fn file_target(
    places: &dyn MountPlaces,
    local: &Path,
    config: &MountConfig,
) -> Result<(MountTarget, Option<FileId>), MountError> {
    let (fd, created) = places
        .file(local)
        .map_err(|source| MountError::Mountpoint {
            path: local.to_path_buf(),
            source,
        })?;
    let checked = check_target(&fd, local, rustix::fs::FileType::RegularFile, config);
    let made = match rustix::fs::fstat(&fd) {
        Ok(stat) if created => Some(FileId::of(&stat)),
        _ => None,
    };
    if let Err(e) = checked {
        if let Some(made) = made {
            let _ = places.remove_placeholder(local, made);
        }
        return Err(e);
    }
    let target = MountTarget {
        fd,
        shown_as: local.to_path_buf(),
    };
    Ok((target, made))
}

/// Root's check of a mount point's descriptor, whoever opened it: it is the kind of file the
/// mount needs and, for another user's mount, that user's (a link to someone else's folder,
/// swapped in at any moment, is refused here).
fn check_target(
    fd: &OwnedFd,
    path: &Path,
    wanted: rustix::fs::FileType,
    config: &MountConfig,
) -> Result<(), MountError> {
    let failed = |source| MountError::Mountpoint {
        path: path.to_path_buf(),
        source,
    };
    let stat = rustix::fs::fstat(fd).map_err(|e| failed(e.into()))?;
    let kind = rustix::fs::FileType::from_raw_mode(stat.st_mode);
    if kind != wanted {
        return Err(match (wanted, kind) {
            (rustix::fs::FileType::RegularFile, rustix::fs::FileType::Directory) => {
                MountError::DirectoryInTheWay {
                    path: path.to_path_buf(),
                }
            }
            (rustix::fs::FileType::Directory, _) => {
                failed(std::io::Error::from_raw_os_error(libc::ENOTDIR))
            }
            _ => failed(std::io::Error::other("not a regular file")),
        });
    }
    match config.owner {
        Some((uid, _)) if stat.st_uid != uid => Err(MountError::MountPointNotTheirs {
            path: path.to_path_buf(),
            owner: uid,
            found: stat.st_uid,
        }),
        // A user may own a folder in a kernel filesystem (a delegated cgroup); fusermount3
        // mounts only on ordinary filesystems, and so does this.
        Some(_) if on_kernel_filesystem(fd) => Err(failed(std::io::Error::other(
            "the mount point is in a kernel filesystem (proc, sys, cgroup, ...)",
        ))),
        _ => Ok(()),
    }
}

/// Whether `fd` lies in a pseudo-filesystem of the kernel's, where no job's data belongs.
#[allow(clippy::unnecessary_cast)] // the field's type differs between architectures
fn on_kernel_filesystem(fd: &OwnedFd) -> bool {
    const KERNEL: [i64; 10] = [
        0x9fa0,      // proc
        0x6265_6572, // sysfs
        0x6367_7270, // cgroup2
        0x0027_e0eb, // cgroup
        0x1cd1,      // devpts
        0x7363_6673, // securityfs
        0x6462_6720, // debugfs
        0x7472_6163, // tracefs
        0xcafe_4a11, // bpf
        0x4250_494e, // binfmt_misc
    ];
    nix::sys::statfs::fstatfs(fd).is_ok_and(|fs| KERNEL.contains(&(fs.filesystem_type().0 as i64)))
}

/// Mounts `remote` of `store` so that it appears at `local` (a job's reference): a directory
/// prefix is mounted on the folder `local`; a single object is mounted on the file `local`
/// itself, so that whatever else lies in its folder (other references' data) stays visible.
/// A prefix that matches nothing fails with [`MountError::NothingMatched`], unless
/// `allow_empty`: then `local` is an empty mounted folder. The mount point is made and opened
/// through `places`.
pub async fn mount_reference(
    store: Arc<dyn Store>,
    remote: &ObjectPath,
    local: &Path,
    allow_empty: bool,
    options: FsOptions,
    config: &MountConfig,
    places: Arc<dyn MountPlaces>,
) -> Result<MountedPath, MountError> {
    if let Some(meta) = single_object(store.as_ref(), remote).await? {
        let (target, placeholder) = file_target(places.as_ref(), local, config)?;
        let (cache, budget) = (options.cache.clone(), options.budget.clone());
        let core = FsCore::of_object(store, meta, options);
        let mount = match serve(core, cache, budget, target, config).await {
            Ok(mount) => mount,
            Err(e) => {
                if let Some(made) = placeholder {
                    let _ = places.remove_placeholder(local, made);
                }
                return Err(e);
            }
        };
        return Ok(MountedPath {
            local: local.to_path_buf(),
            mount,
            matched_nothing: false,
            placeholder,
            places,
        });
    }
    let children = children(store.as_ref(), remote).await?;
    let matched_nothing = !children.entries && !children.refused;
    if matched_nothing && !allow_empty {
        return Err(MountError::NothingMatched {
            store: store.describe(),
            remote: remote.to_string(),
        });
    }
    let target = directory_target(places.as_ref(), local, config)?;
    let mount = mount_directory(store, remote.clone(), None, target, options, config).await?;
    Ok(MountedPath {
        local: local.to_path_buf(),
        mount,
        matched_nothing,
        placeholder: None,
        places,
    })
}

/// Mounts `remote` at `mountpoint` (`dataref mount`, with this process's own rights): a
/// directory's contents, or a single object as the only file in it.
pub async fn mount_into(
    store: Arc<dyn Store>,
    remote: &ObjectPath,
    mountpoint: &Path,
    options: FsOptions,
    config: &MountConfig,
) -> Result<MountedPath, MountError> {
    let single = single_object(store.as_ref(), remote).await?;
    let (root, only, local) = match single.and(remote.file_name()) {
        Some(name) => (
            remote.parent().unwrap_or_default(),
            Some(name.to_owned()),
            mountpoint.join(name),
        ),
        None => (remote.clone(), None, mountpoint.to_path_buf()),
    };
    let places = Direct::for_owner(config.owner);
    let target = directory_target(places.as_ref(), mountpoint, config)?;
    let mount = mount_directory(store, root, only, target, options, config).await?;
    Ok(MountedPath {
        local,
        mount,
        matched_nothing: false,
        placeholder: None,
        places,
    })
}

/// Mounts the directory `root` of `store` on the folder `target`, showing only the object
/// `only` of it when given.
async fn mount_directory(
    store: Arc<dyn Store>,
    root: ObjectPath,
    only: Option<String>,
    target: MountTarget,
    options: FsOptions,
    config: &MountConfig,
) -> Result<Mounted, MountError> {
    let (cache, budget) = (options.cache.clone(), options.budget.clone());
    let mut core = FsCore::new(store, root, options);
    if let Some(name) = &only {
        core = core.single_file(name);
    }
    serve(core, cache, budget, target, config).await
}

/// Opens the disk cache (if one is wanted) and mounts `core` on `target`.
async fn serve(
    mut core: FsCore,
    cache: Option<CacheOptions>,
    budget: MemoryBudget,
    target: MountTarget,
    config: &MountConfig,
) -> Result<Mounted, MountError> {
    // A cache that cannot be set up costs speed, not the mount.
    if let Some(cache_options) = cache {
        let dir = cache_options.dir.clone();
        match tokio::task::spawn_blocking(move || DiskCache::open(cache_options, budget)).await {
            Ok(Ok(cache)) => core = core.with_cache(cache),
            Ok(Err(e)) => tracing::warn!(error = %e, "mounting without a disk cache"),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "mounting without a disk cache")
            }
        }
    }
    let runtime = tokio::runtime::Handle::current();
    let config = config.clone();
    tokio::task::spawn_blocking(move || mount(Arc::new(core), target, &config, runtime))
        .await
        .map_err(|e| MountError::Mount(std::io::Error::other(e)))?
        .map_err(MountError::Mount)
}

/// The object `path` names, when it is one and nothing lies under `path/` (a directory wins).
async fn single_object(
    store: &dyn Store,
    path: &ObjectPath,
) -> Result<Option<ObjectMeta>, MountError> {
    if path.is_root() {
        return Ok(None);
    }
    let meta = match store.head(path).await {
        Ok(meta) => meta,
        Err(StoreError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(MountError::Store(e)),
    };
    Ok((!children(store, path).await?.entries).then_some(meta))
}

/// What lies directly under a directory of the store.
struct Children {
    /// Files or sub-directories.
    entries: bool,
    /// Names the store refused to show (a download reports them as skipped: not nothing).
    refused: bool,
}

/// Lists `dir` one level deep, page by page only until something turns up (a service may
/// answer an empty page with a continuation).
async fn children(store: &dyn Store, dir: &ObjectPath) -> Result<Children, MountError> {
    let mut request = ListRequest {
        dir: dir.clone(),
        delimited: true,
        continuation: None,
    };
    loop {
        let page = store.list(&request).await.map_err(MountError::Store)?;
        let found = Children {
            entries: !page.objects.is_empty() || !page.directories.is_empty(),
            refused: !page.refused.is_empty(),
        };
        match page.continuation {
            Some(next) if !found.entries && !found.refused => request.continuation = Some(next),
            _ => return Ok(found),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The reference's prefix names no object and nothing under it (as a download's
    /// `TransferError::NothingMatched`).
    #[error("nothing matches {remote} in {store}")]
    NothingMatched { store: String, remote: String },
    #[error("storage: {0}")]
    Store(StoreError),
    #[error("cannot create the mount point {path}: {source}")]
    Mountpoint {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot mount a single object on {path}: a directory is there")]
    DirectoryInTheWay { path: PathBuf },
    /// The mount point of another user's mount is not theirs (for instance a symbolic link to
    /// someone else's folder): nothing is mounted.
    #[error(
        "refusing to mount on {path}: it is owned by uid {found}, not by the job's user (uid {owner})"
    )]
    MountPointNotTheirs {
        path: PathBuf,
        owner: u32,
        found: u32,
    },
    #[error("{0}")]
    Mount(std::io::Error),
}
