//! `dataref run [--job-dir DIR] JOB.json`: the job entrypoint.

use std::path::{Path, PathBuf};

use super::exit::{self, CliError};
use crate::job::identity::Identity;
use crate::job::{self, RunOptions};
use crate::store::Resources;
use crate::transfer::ProgressMode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where result.json, job.log and temporary files go [default: <working_dir>/.dataref].
    #[arg(long, env = "DATAREF_JOB_DIR", value_name = "DIR")]
    pub job_dir: Option<PathBuf>,
    /// No progress display for transfers (the summary lines stay).
    #[arg(long)]
    pub no_progress: bool,
    /// Resolve the manifest's relative paths against DIR [default: the manifest's directory].
    #[arg(long, value_name = "DIR")]
    pub base_dir: Option<PathBuf>,
    /// Run the script as UID:GID[:GROUP,...] (needs root); dataref keeps root for mounts, and
    /// what it creates for the script (upload folders, downloads) is given to that user.
    #[arg(long, value_name = "UID:GID[:GROUPS]", value_parser = Identity::parse)]
    pub run_as: Option<Identity>,
    /// Start the script's environment empty (HOME, USER, LOGNAME, SHELL, PATH of its user, then
    /// the manifest's `environment`) instead of inheriting dataref's.
    #[arg(long)]
    pub clean_env: bool,
    /// Where mounts keep their disk caches when the manifest does not say
    /// (<DIR>/<job directory's name>.<reference>); default: the job directory.
    #[arg(long, value_name = "DIR")]
    pub cache_root: Option<PathBuf>,
    /// Do not prepare or run anything: upload the outputs an interrupted run of this job left
    /// behind (the daemon's recovery). Exits 0, or 75 when an upload failed.
    #[arg(long)]
    pub stage_out_only: bool,
    /// The job: dataref's manifest (JSON or YAML), an Azure ML v1 run configuration (JSON,
    /// submission body or .runconfig YAML) or an Azure ML v2 command-job YAML, told apart by
    /// content.
    #[arg(value_name = "JOB")]
    pub manifest: PathBuf,
}

pub fn run(config_dir: &Path, args: Args) -> Result<i32, CliError> {
    let registry = super::load_registry(config_dir)?;
    let base_dir = match &args.base_dir {
        Some(dir) => {
            Some(std::path::absolute(dir).map_err(|e| CliError::bad_argument("--base-dir", e))?)
        }
        None => None,
    };
    let plan =
        super::validate::load_plan_with_base(&args.manifest, base_dir.as_deref(), &registry)?;
    if args.run_as.is_some() && !nix::unistd::geteuid().is_root() {
        return Err(CliError::bad_argument(
            "--run-as",
            "needs root (dataref switches to that user for the script)",
        ));
    }
    // A job run as someone else runs their manifest: what is the service's is not theirs to
    // set (as for the daemon's non-root peers).
    if args
        .run_as
        .as_ref()
        .is_some_and(crate::job::identity::Identity::is_other_than_self)
    {
        let issues = crate::daemon::access::services_own(&plan);
        if !issues.is_empty() {
            return Err(CliError::Manifest(crate::manifest::LoadError::Invalid {
                path: args.manifest.clone(),
                issues,
            }));
        }
    }
    let job_dir = match args.job_dir {
        Some(dir) => {
            std::path::absolute(&dir).map_err(|e| CliError::bad_argument("--job-dir", e))?
        }
        None => RunOptions::default_job_dir(&plan),
    };
    // Root writes the job directory (result, log, journal, cache): never through a path the
    // script's user could swap for a symlink.
    if args
        .run_as
        .as_ref()
        .is_some_and(crate::job::identity::Identity::is_other_than_self)
    {
        crate::job::identity::check_root_only_path(&job_dir).map_err(|problem| {
            CliError::bad_argument(
                "--job-dir",
                format!(
                    "{}: {problem}; with --run-as the job directory must be a place only root \
                     controls (e.g. --job-dir /var/lib/dataref/jobs/$SLURM_JOB_ID)",
                    job_dir.display()
                ),
            )
        })?;
    }
    let cache_root = match &args.cache_root {
        Some(dir) => {
            Some(std::path::absolute(dir).map_err(|e| CliError::bad_argument("--cache-root", e))?)
        }
        None => None,
    };
    if let (Some(root), true) = (&cache_root, args.run_as.is_some()) {
        crate::job::identity::check_root_only_path(root).map_err(|problem| {
            CliError::bad_argument("--cache-root", format!("{}: {problem}", root.display()))
        })?;
    }
    let options = RunOptions {
        job_dir,
        progress: if args.no_progress {
            ProgressMode::Off
        } else {
            ProgressMode::Auto
        },
        identity: args.run_as,
        clean_env: args.clean_env,
        stage_out_only: args.stage_out_only,
        cache_root,
    };
    let runtime = super::runtime()?;
    // `block_on` runs the job on this (main) thread, which outlives the child: the child's
    // PDEATHSIG is tied to the thread that spawned it.
    let resources = Resources::new(plan.memory_budget_bytes);
    let finished = runtime.block_on(job::run(&plan, &options, &resources));
    // A transfer stuck in a blocking read (a hung NFS server) must not keep dataref alive
    // after the job has ended.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    let finished = finished?;
    let code = exit::for_job(&finished.end);
    Ok(finished.close(code))
}
