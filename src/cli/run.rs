//! `dataref run [--job-dir DIR] JOB.json`: the job entrypoint.

use std::path::{Path, PathBuf};

use crate::exit::{ExitCode, Failure};
use crate::job::{self, RunOptions};
use crate::transfer::ProgressMode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where result.json, job.log and temporary files go [default: <working_dir>/.dataref].
    #[arg(long, env = "DATAREF_JOB_DIR", value_name = "DIR")]
    pub job_dir: Option<PathBuf>,
    /// No progress display for transfers (the summary lines stay).
    #[arg(long)]
    pub no_progress: bool,
    /// The job manifest.
    #[arg(value_name = "JOB.json")]
    pub manifest: PathBuf,
}

pub fn run(config_dir: &Path, args: Args) -> Result<i32, Failure> {
    let registry = super::load_registry(config_dir)?;
    let plan = super::validate::load_plan(&args.manifest, &registry)?;
    let job_dir = match args.job_dir {
        Some(dir) => std::path::absolute(&dir)
            .map_err(|e| Failure::new(ExitCode::Usage, format!("--job-dir: {e}")))?,
        None => RunOptions::default_job_dir(&plan),
    };
    let options = RunOptions {
        job_dir,
        progress: if args.no_progress {
            ProgressMode::Off
        } else {
            ProgressMode::Auto
        },
    };
    let runtime = super::runtime()?;
    // `block_on` runs the job on this (main) thread, which outlives the child: the child's
    // PDEATHSIG is tied to the thread that spawned it.
    let code = runtime.block_on(job::run(&plan, &options));
    // A transfer stuck in a blocking read (a hung NFS server) must not keep dataref alive
    // after the job has ended.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    Ok(code)
}
