//! Mounting a datastore path: resolving whether it names a directory or a single object, and
//! building the filesystem for it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::cache::{CacheOptions, DiskCache};
use super::filesystem::{FsCore, FsOptions};
use super::fuse::{MountConfig, Mounted, mount};
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
    placeholder: Option<PathBuf>,
}

impl MountedPath {
    /// Unmounts (see [`Mounted::unmount`]) and removes the file dataref made to mount on.
    pub fn unmount(self) -> std::io::Result<()> {
        self.mount.unmount()?;
        if let Some(file) = self.placeholder {
            // Only while it is still the empty file dataref made.
            if std::fs::symlink_metadata(&file).is_ok_and(|m| m.is_file() && m.len() == 0) {
                std::fs::remove_file(&file)?;
            }
        }
        Ok(())
    }
}

/// Mounts `remote` of `store` so that it appears at `local` (a job's reference): a directory
/// prefix is mounted on the folder `local`; a single object is mounted on the file `local`
/// itself, so that whatever else lies in its folder (other references' data) stays visible.
/// A prefix that matches nothing fails with [`MountError::NothingMatched`], unless
/// `allow_empty`: then `local` is an empty mounted folder.
pub async fn mount_reference(
    store: Arc<dyn Store>,
    remote: &ObjectPath,
    local: &Path,
    allow_empty: bool,
    options: FsOptions,
    config: &MountConfig,
) -> Result<MountedPath, MountError> {
    if let Some(meta) = single_object(store.as_ref(), remote).await? {
        let placeholder = file_to_mount_on(local)?;
        let (cache, budget) = (options.cache.clone(), options.budget.clone());
        let core = FsCore::of_object(store, meta, options);
        let mount = match serve(core, cache, budget, local, config).await {
            Ok(mount) => mount,
            Err(e) => {
                if let Some(file) = &placeholder {
                    let _ = std::fs::remove_file(file);
                }
                return Err(e);
            }
        };
        return Ok(MountedPath {
            local: local.to_path_buf(),
            mount,
            matched_nothing: false,
            placeholder,
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
    let mount = mount_directory(store, remote.clone(), None, local, options, config).await?;
    Ok(MountedPath {
        local: local.to_path_buf(),
        mount,
        matched_nothing,
        placeholder: None,
    })
}

/// Mounts `remote` at `mountpoint` (`dataref mount`): a directory's contents, or a single
/// object as the only file in it.
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
    let mount = mount_directory(store, root, only, mountpoint, options, config).await?;
    Ok(MountedPath {
        local,
        mount,
        matched_nothing: false,
        placeholder: None,
    })
}

/// Mounts the directory `root` of `store` on the folder `mountpoint` (created if missing),
/// showing only the object `only` of it when given.
async fn mount_directory(
    store: Arc<dyn Store>,
    root: ObjectPath,
    only: Option<String>,
    mountpoint: &Path,
    options: FsOptions,
    config: &MountConfig,
) -> Result<Mounted, MountError> {
    std::fs::create_dir_all(mountpoint).map_err(|e| MountError::Mountpoint {
        path: mountpoint.to_path_buf(),
        source: e,
    })?;
    let (cache, budget) = (options.cache.clone(), options.budget.clone());
    let mut core = FsCore::new(store, root, options);
    if let Some(name) = &only {
        core = core.single_file(name);
    }
    serve(core, cache, budget, mountpoint, config).await
}

/// Opens the disk cache (if one is wanted) and mounts `core` at `mountpoint`.
async fn serve(
    mut core: FsCore,
    cache: Option<CacheOptions>,
    budget: MemoryBudget,
    mountpoint: &Path,
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
    let target = mountpoint.to_path_buf();
    tokio::task::spawn_blocking(move || mount(Arc::new(core), &target, &config, runtime))
        .await
        .map_err(|e| MountError::Mount(std::io::Error::other(e)))?
        .map_err(MountError::Mount)
}

/// Makes `local` a file a single object can be mounted on (the kernel mounts a file only on a
/// file), creating its folder. Returns the file when dataref created it.
fn file_to_mount_on(local: &Path) -> Result<Option<PathBuf>, MountError> {
    let failed = |source| MountError::Mountpoint {
        path: local.to_path_buf(),
        source,
    };
    if let Some(parent) = local.parent() {
        std::fs::create_dir_all(parent).map_err(failed)?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(local)
    {
        Ok(_) => Ok(Some(local.to_path_buf())),
        // A file already there (an earlier run's, or the user's) is only covered, not changed.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match local.is_dir() {
            true => Err(MountError::DirectoryInTheWay {
                path: local.to_path_buf(),
            }),
            false => Ok(None),
        },
        Err(e) => Err(failed(e)),
    }
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
    #[error("{0}")]
    Mount(std::io::Error),
}
