//! `dataref upload` and `dataref download`: the seed's `ds.upload`, `ds.upload_files` and
//! `ds.download` as commands.

use std::path::{Path, PathBuf};

use crate::datastore::registry::Registry;
use crate::exit::{ExitCode, Failure};
use crate::store::{self, ObjectPath};
use crate::transfer::{self, Engine, ProgressMode, TransferError, TransferReport, UploadSource};

#[derive(Debug, clap::Args)]
pub struct UploadArgs {
    /// Registered datastore [default: the registry's default].
    #[arg(long, value_name = "N")]
    pub datastore: Option<String>,
    /// Where in the datastore [default: the root].
    #[arg(long, value_name = "P")]
    pub target_path: Option<String>,
    /// Replace existing objects of the same name (others are never deleted).
    #[arg(long)]
    pub overwrite: bool,
    /// No progress display (the summary line stays).
    #[arg(long)]
    pub no_progress: bool,
    /// One directory (its contents are uploaded) or one or more files.
    #[arg(required = true, value_name = "SRC")]
    pub sources: Vec<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct DownloadArgs {
    /// Registered datastore [default: the registry's default].
    #[arg(long, value_name = "N")]
    pub datastore: Option<String>,
    /// What to download: a directory or one object [default: everything].
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,
    /// Local directory; blob a/b/x lands at DIR/a/b/x.
    #[arg(long, value_name = "DIR")]
    pub target_path: PathBuf,
    /// Replace existing local files (others are never deleted).
    #[arg(long)]
    pub overwrite: bool,
    /// No progress display (the summary line stays).
    #[arg(long)]
    pub no_progress: bool,
}

fn progress(no_progress: bool) -> ProgressMode {
    if no_progress {
        ProgressMode::Off
    } else {
        ProgressMode::Auto
    }
}

pub(crate) fn open(
    config_dir: &Path,
    name: Option<&str>,
) -> Result<(String, std::sync::Arc<dyn store::Store>), Failure> {
    let registry: Registry = super::load_registry(config_dir)?;
    let name = match name.or(registry.default.as_deref()) {
        Some(name) => name.to_owned(),
        None => {
            return Err(Failure::new(
                ExitCode::Usage,
                "no --datastore given and the registry has no default",
            ));
        }
    };
    let spec = registry
        .datastores
        .get(&name)
        .ok_or_else(|| Failure::new(ExitCode::DataErr, format!("unknown datastore {name:?}")))?;
    let store = store::open(spec)
        .map_err(|e| Failure::new(ExitCode::Unavailable, format!("datastore {name:?}: {e}")))?;
    Ok((name, store))
}

fn remote_path(flag: &str, value: Option<&str>) -> Result<ObjectPath, Failure> {
    ObjectPath::normalize(value.unwrap_or(""))
        .map_err(|e| Failure::new(ExitCode::Usage, format!("{flag}: {e}")))
}

fn finish(verb: &str, report: TransferReport) -> Result<i32, Failure> {
    for skipped in &report.skipped {
        eprintln!("skipped {} ({:?})", skipped.path, skipped.reason);
    }
    for failure in &report.errors {
        eprintln!("failed {}: {}", failure.path, failure.error);
    }
    eprintln!("{verb} {}", report.summary());
    if report.errors.is_empty() {
        return Ok(0);
    }
    // Only local I/O failures (this machine's disk): 74; any store failure: 69 (SPEC §5).
    let code = if report.errors.iter().all(|e| e.local) {
        ExitCode::IoErr
    } else {
        ExitCode::Unavailable
    };
    Err(Failure::new(
        code,
        format!("{} file(s) failed", report.errors.len()),
    ))
}

fn transfer_failure(e: TransferError) -> Failure {
    let code = ExitCode::for_transfer(&e);
    Failure::new(code, e.to_string())
}

pub fn upload(config_dir: &Path, args: UploadArgs) -> Result<i32, Failure> {
    let target = remote_path("--target-path", args.target_path.as_deref())?;
    let dirs = args.sources.iter().filter(|s| s.is_dir()).count();
    let source = match (dirs, args.sources.len()) {
        (1, 1) => UploadSource::Directory(args.sources[0].clone()),
        (0, _) => {
            if let Some(missing) = args.sources.iter().find(|s| !s.exists()) {
                return Err(Failure::new(
                    ExitCode::NoInput,
                    format!("{}: no such file or directory", missing.display()),
                ));
            }
            UploadSource::Files(args.sources.clone())
        }
        _ => {
            return Err(Failure::new(
                ExitCode::Usage,
                "give one directory (its contents are uploaded) or only files, not both",
            ));
        }
    };
    let (_, store) = open(config_dir, args.datastore.as_deref())?;
    let engine = Engine::new(crate::manifest::DEFAULT_MEMORY_BUDGET)
        .with_progress(progress(args.no_progress));
    let runtime = super::runtime()?;
    let report = runtime
        .block_on(transfer::upload(
            &engine,
            store,
            &source,
            &target,
            args.overwrite,
            &[],
        ))
        .map_err(transfer_failure)?;
    finish("uploaded", report)
}

pub fn download(config_dir: &Path, args: DownloadArgs) -> Result<i32, Failure> {
    let prefix = remote_path("--prefix", args.prefix.as_deref())?;
    let (_, store) = open(config_dir, args.datastore.as_deref())?;
    let target = std::path::absolute(&args.target_path)
        .map_err(|e| Failure::new(ExitCode::Usage, format!("--target-path: {e}")))?;
    // The full name is kept under the target: blob a/b/x lands at DIR/a/b/x.
    let local = prefix.to_local(&target);
    let engine = Engine::new(crate::manifest::DEFAULT_MEMORY_BUDGET)
        .with_progress(progress(args.no_progress));
    let runtime = super::runtime()?;
    let report = runtime
        .block_on(transfer::download(
            &engine,
            store,
            &prefix,
            &local,
            args.overwrite,
        ))
        .map_err(transfer_failure)?;
    finish("downloaded", report)
}
