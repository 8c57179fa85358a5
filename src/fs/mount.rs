//! Mounting a datastore path: resolving whether it names a directory or a single object, and
//! building the filesystem for it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::cache::DiskCache;
use super::filesystem::{FsCore, FsOptions};
use super::fuse::{MountConfig, Mounted, mount};
use crate::model::ObjectPath;
use crate::store::{ListRequest, Store, StoreError};

/// A mounted reference: where the data appears, and the live mount behind it.
pub struct MountedPath {
    /// The directory (or, for a single object, the file) the user reads.
    pub local: PathBuf,
    pub mount: Mounted,
}

/// Mounts `remote` of `store` so that it appears at `local`: a directory prefix is
/// mounted at `local`; a single object is shown as the file `local`, inside a mount of its
/// parent directory that shows only it.
pub async fn mount_reference(
    store: Arc<dyn Store>,
    remote: &ObjectPath,
    local: &Path,
    options: FsOptions,
    config: &MountConfig,
) -> Result<MountedPath, MountError> {
    let single = single_object_name(store.as_ref(), remote).await?;
    let mountpoint = match &single {
        Some(_) => local
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/")),
        None => local.to_path_buf(),
    };
    let mount = mount_at(store, remote, single, &mountpoint, options, config).await?;
    Ok(MountedPath {
        local: local.to_path_buf(),
        mount,
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
    let single = single_object_name(store.as_ref(), remote).await?;
    let local = match &single {
        Some(name) => mountpoint.join(name),
        None => mountpoint.to_path_buf(),
    };
    let mount = mount_at(store, remote, single, mountpoint, options, config).await?;
    Ok(MountedPath { local, mount })
}

async fn single_object_name(
    store: &dyn Store,
    remote: &ObjectPath,
) -> Result<Option<String>, MountError> {
    match remote.file_name() {
        Some(name) if is_single_object(store, remote).await? => Ok(Some(name.to_owned())),
        _ => Ok(None),
    }
}

async fn mount_at(
    store: Arc<dyn Store>,
    remote: &ObjectPath,
    single: Option<String>,
    mountpoint: &Path,
    options: FsOptions,
    config: &MountConfig,
) -> Result<Mounted, MountError> {
    let root = match &single {
        Some(_) => remote.parent().unwrap_or_default(),
        None => remote.clone(),
    };
    std::fs::create_dir_all(mountpoint).map_err(|e| MountError::Mountpoint {
        path: mountpoint.to_path_buf(),
        source: e,
    })?;
    let cache_options = options.cache.clone();
    let budget = options.budget.clone();
    let mut core = FsCore::new(store, root, options);
    if let Some(name) = &single {
        core = core.single_file(name);
    }
    // A cache that cannot be set up costs speed, not the mount.
    if let Some(cache_options) = cache_options {
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

/// True when `path` is an object and nothing lies under `path/` (a directory wins).
async fn is_single_object(store: &dyn Store, path: &ObjectPath) -> Result<bool, MountError> {
    match store.head(path).await {
        Ok(_) => {}
        Err(StoreError::NotFound { .. }) => return Ok(false),
        Err(e) => return Err(MountError::Store(e)),
    }
    let children = store
        .list(&ListRequest {
            dir: path.clone(),
            delimited: true,
            continuation: None,
        })
        .await
        .map_err(MountError::Store)?;
    Ok(children.objects.is_empty() && children.directories.is_empty())
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("storage: {0}")]
    Store(StoreError),
    #[error("cannot create the mount point {path}: {source}")]
    Mountpoint {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Mount(std::io::Error),
}
