//! `dataref mount [--datastore N] [--path P] MOUNTPOINT`: a mount in the foreground, until
//! signalled or unmounted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::exit::CliError;
use crate::fs::cache::{CacheOptions, DEFAULT_BLOCK_SIZE};
use crate::fs::filesystem::FsOptions;
use crate::fs::fuse::MountConfig;
use crate::fs::mount::mount_into;
use crate::job::supervise::JobSignals;
use crate::model::ObjectPath;
use crate::model::budget::DEFAULT_MEMORY_BUDGET;
use crate::store::Resources;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Registered datastore [default: the registry's default].
    #[arg(long, value_name = "N")]
    pub datastore: Option<String>,
    /// What to mount: a directory, or one object [default: everything].
    #[arg(long, value_name = "P")]
    pub path: Option<String>,
    /// How long listings and attributes are cached.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub attribute_ttl: u64,
    /// Let other users read the mount (allow_other, default_permissions).
    #[arg(long)]
    pub allow_other: bool,
    /// Keep fetched blocks in this directory (created for the mount, deleted at unmount; a
    /// non-empty directory dataref did not create is refused) [default: no disk cache].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Cap on the disk cache, e.g. 20GiB; 0 turns it off [default: no cap, only the floor].
    #[arg(long, value_name = "BYTES", value_parser = parse_size, requires = "cache_dir")]
    pub cache_size: Option<u64>,
    /// Free space the disk cache never eats into, e.g. 10GB.
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "150MiB")]
    pub reserved_free_disk: u64,
    /// An existing (or creatable) empty directory.
    pub mountpoint: PathBuf,
}

pub fn run(config_dir: &Path, args: Args) -> Result<i32, CliError> {
    let remote = ObjectPath::normalize(args.path.as_deref().unwrap_or(""))
        .map_err(|e| CliError::bad_argument("--path", e))?;
    let resources = Resources::new(DEFAULT_MEMORY_BUDGET);
    let (name, store) = super::transfer::open(config_dir, args.datastore.as_deref(), &resources)?;
    let mountpoint = std::path::absolute(&args.mountpoint)
        .map_err(|e| CliError::bad_argument(&args.mountpoint.display().to_string(), e))?;
    let cache = args
        .cache_dir
        .as_deref()
        .filter(|_| args.cache_size != Some(0))
        .map(|dir| CacheOptions {
            dir: std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf()),
            max_bytes: args.cache_size,
            reserved_free_bytes: args.reserved_free_disk,
            block_size: DEFAULT_BLOCK_SIZE,
        });
    let options = FsOptions {
        attribute_ttl: Duration::from_secs(args.attribute_ttl),
        cache,
        ..FsOptions::new(resources.budget.clone())
    };
    let config = MountConfig {
        fsname: crate::fs::cleanup::fsname(&crate::fs::cleanup::job_label("mount"), &name),
        allow_other: args.allow_other,
        owner: None,
    };
    let runtime = super::runtime()?;
    runtime.block_on(async {
        let mut signals =
            JobSignals::install().map_err(|e| CliError::local("signal handlers", e))?;
        let mounted = mount_into(store, &remote, &mountpoint, options, &config).await?;
        eprintln!(
            "dataref: mounted {name}:{remote} at {} (read-only); stop with Ctrl-C or umount",
            mounted.local.display()
        );
        // Until a signal, or until someone unmounts it.
        loop {
            tokio::select! {
                _ = signals.recv() => break,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    if !is_mounted(&mountpoint) {
                        eprintln!("dataref: {} was unmounted", mountpoint.display());
                        break;
                    }
                }
            }
        }
        tokio::task::spawn_blocking(move || mounted.unmount())
            .await
            .map_err(|e| CliError::local("unmount", e.into()))?
            .map_err(|e| CliError::local("unmount", e))?;
        Ok(0)
    })
}

fn parse_size(text: &str) -> Result<u64, String> {
    crate::model::settings::parse_size(text)
}

/// Whether `path` is a mount point in this mount namespace.
pub(crate) fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let target = path.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .any(|line| line.split(' ').nth(4) == Some(target.as_str()))
}
