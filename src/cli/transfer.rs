//! `dataref upload` and `dataref download`: the seed's `ds.upload`, `ds.upload_files` and
//! `ds.download` as commands.

use std::path::{Path, PathBuf};

use super::exit::CliError;
use crate::model::budget::DEFAULT_MEMORY_BUDGET;
use crate::model::{ObjectPath, Verify};
use crate::registry::Registry;
use crate::store::{self, Resources};
use crate::transfer::{self, Engine, ProgressMode, TransferReport, UploadSource};

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
    /// Check each file against its stored CRC64 (else its MD5) [auto], require an MD5 [md5],
    /// or check nothing [off].
    #[arg(long, value_name = "CHECK", default_value = "auto",
          value_parser = clap::builder::PossibleValuesParser::new(Verify::NAMES))]
    pub verify: String,
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
    resources: &Resources,
) -> Result<(String, std::sync::Arc<dyn store::Store>), CliError> {
    let registry: Registry = super::load_registry(config_dir)?;
    let name = match name.or(registry.default.as_deref()) {
        Some(name) => name.to_owned(),
        None => {
            return Err(CliError::Usage(
                "no --datastore given and the registry has no default".into(),
            ));
        }
    };
    let spec = registry
        .datastores
        .get(&name)
        .ok_or_else(|| CliError::UnknownDatastore {
            name: name.clone(),
            hint: String::new(),
        })?;
    let store = store::open(spec, resources).map_err(|source| CliError::OpenStore {
        name: name.clone(),
        source,
    })?;
    Ok((name, store))
}

fn remote_path(flag: &str, value: Option<&str>) -> Result<ObjectPath, CliError> {
    ObjectPath::normalize(value.unwrap_or("")).map_err(|e| CliError::bad_argument(flag, e))
}

fn finish(verb: &str, report: TransferReport) -> Result<i32, CliError> {
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
    Err(CliError::FilesFailed {
        failed: report.errors.len(),
        all_local: report.errors.iter().all(|e| e.local),
    })
}

pub fn upload(config_dir: &Path, args: UploadArgs) -> Result<i32, CliError> {
    let target = remote_path("--target-path", args.target_path.as_deref())?;
    let dirs = args.sources.iter().filter(|s| s.is_dir()).count();
    let source = match (dirs, args.sources.len()) {
        (1, 1) => UploadSource::Directory(args.sources[0].clone()),
        (0, _) => {
            if let Some(missing) = args.sources.iter().find(|s| !s.exists()) {
                return Err(CliError::MissingSource {
                    path: missing.clone(),
                });
            }
            UploadSource::Files(args.sources.clone())
        }
        _ => {
            return Err(CliError::Usage(
                "give one directory (its contents are uploaded) or only files, not both".into(),
            ));
        }
    };
    let resources = Resources::new(DEFAULT_MEMORY_BUDGET);
    let (_, store) = open(config_dir, args.datastore.as_deref(), &resources)?;
    let engine = Engine::new(&resources).with_progress(progress(args.no_progress));
    let runtime = super::runtime()?;
    let report = runtime.block_on(transfer::upload(
        &engine,
        store,
        &source,
        &target,
        args.overwrite,
        &[],
    ))?;
    finish("uploaded", report)
}

pub fn download(config_dir: &Path, args: DownloadArgs) -> Result<i32, CliError> {
    let prefix = remote_path("--prefix", args.prefix.as_deref())?;
    let resources = Resources::new(DEFAULT_MEMORY_BUDGET);
    let (_, store) = open(config_dir, args.datastore.as_deref(), &resources)?;
    let target = std::path::absolute(&args.target_path)
        .map_err(|e| CliError::bad_argument("--target-path", e))?;
    // The full name is kept under the target: blob a/b/x lands at DIR/a/b/x.
    let local = prefix.to_local(&target);
    let verify = Verify::from_name(&args.verify).expect("clap checked the name");
    let engine = Engine::new(&resources)
        .with_progress(progress(args.no_progress))
        .with_verify(verify);
    let runtime = super::runtime()?;
    let report = runtime.block_on(transfer::download(
        &engine,
        store,
        &prefix,
        &local,
        args.overwrite,
    ))?;
    finish("downloaded", report)
}
