//! A job from start to end: prepare inputs → run the script → stage out.
//!
//! Every phase writes what happened into `result.json` in the job directory, and `job.log`
//! holds dataref's lines and the script's output. The job reports how it ended as a typed
//! [`JobEnd`]; the command line decides the exit code from it and [`FinishedJob::close`] records
//! that code, so exit codes are decided in one place (`cli::exit`).

pub mod env;
pub mod figures;
pub mod identity;
pub mod log;
pub mod result;
mod stage_in;
mod stage_out;
pub mod supervise;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::fs::cache::{CacheOptions, DiskCache};
use crate::fs::filesystem::FsOptions;
use crate::fs::fuse::MountConfig;
use crate::fs::mount::{Direct, MountError, MountPlaces, MountedPath, mount_reference};
use crate::localfs::LocalFs;
use crate::manifest::{JobPlan, Mode};
use crate::model::UploadPolicy;
use crate::store::metered::Metered;
use crate::store::{self, Resources, Store};
use crate::transfer::{self, Engine, ProgressMode, TransferError};
use figures::JobFigures;
use identity::Identity;
use log::JobLog;
use result::{EndReason, JobResult, Phase, ReferenceOutcome, ReferenceStatus};
use supervise::{ChildSpec, JobSignals};

/// The job directory's name under `working_dir` when none is given.
pub const DEFAULT_JOB_DIR: &str = ".dataref";

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub job_dir: PathBuf,
    pub progress: ProgressMode,
    /// Run the script as this user (root only); what dataref creates for it becomes theirs.
    pub identity: Option<Identity>,
    /// Start the script's environment empty (login variables of its user only) instead of
    /// from dataref's own: the daemon's jobs must not inherit the daemon's environment.
    pub clean_env: bool,
    /// Only upload the outputs a previous, interrupted run left (daemon recovery).
    pub stage_out_only: bool,
    /// Where mount caches go when the manifest does not say (`<root>/<job>.<reference>`);
    /// `None`: `<job_dir>/cache/<reference>`.
    pub cache_root: Option<PathBuf>,
}

impl RunOptions {
    pub fn default_job_dir(plan: &JobPlan) -> PathBuf {
        plan.working_dir.join(DEFAULT_JOB_DIR)
    }
}

/// What stopped a job before it had a record (nothing was prepared or run).
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("datastore {datastore:?}: {source}")]
    OpenStore {
        datastore: String,
        #[source]
        source: store::StoreError,
    },
    #[error("cannot create job directory {}: {source}", path.display())]
    JobDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create {}: {source}", path.display())]
    JobLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the process that acts with uid {uid}'s rights: {source}")]
    UserSide {
        uid: u32,
        #[source]
        source: std::io::Error,
    },
}

/// How a job that ran (or tried to) ended: facts, from which `cli::exit` decides the code.
#[derive(Debug)]
pub enum JobEnd {
    Succeeded,
    /// The script failed on its own with this shell code (128+N for signal N; 126/127 when it
    /// could not be started).
    ScriptFailed {
        code: i32,
    },
    /// A termination signal was forwarded to the script, which then exited with `code`.
    Preempted {
        code: i32,
    },
    /// The script exited 0 but not every output arrived.
    StageOutFailed,
    /// A termination signal arrived before the script started.
    SignalledBeforeStart(nix::sys::signal::Signal),
    /// An input could not be made available; the script did not run.
    InputFailed(InputFailure),
    /// `--stage-out-only`: the outputs of an interrupted run were uploaded (or not all).
    Recovered {
        uploads_ok: bool,
    },
}

/// Why an input could not be made available.
#[derive(Debug)]
pub enum InputFailure {
    /// A whole transfer failed (nothing matched, storage gone, disk full...).
    Transfer(TransferError),
    /// Some files failed; `all_local` when every failure was this machine's (disk,
    /// permissions) rather than the store's.
    Files { all_local: bool },
    /// Creating a folder or giving files to the job's user failed.
    Local,
    /// The mount could not be made (nothing matched, storage gone, no FUSE...).
    Mount(MountError),
}

/// A job that ended, waiting for its exit code to be recorded.
#[must_use = "close() records the exit code in result.json"]
pub struct FinishedJob {
    pub end: JobEnd,
    reason: EndReason,
    result: JobResult,
    job_dir: PathBuf,
    log: JobLog,
    budget: crate::model::MemoryBudget,
    figures: JobFigures,
}

impl FinishedJob {
    /// Records `code` as the job's exit code in `result.json`, and returns it.
    pub fn close(mut self, code: i32) -> i32 {
        self.result.memory = Some(result::MemoryUse::of(&self.budget));
        let summary = self.figures.record(&mut self.result);
        self.log.line(&summary);
        self.figures.write_live(&self.job_dir);
        self.result.end(self.reason, code);
        self.result.save(&self.job_dir, &self.log);
        code
    }
}

/// Runs a validated job with the resources the caller built for it (one budget, one retry
/// policy, one HTTP client, shared by every reference). Must be called from the thread that
/// runs the tokio runtime's `block_on` (see `supervise`).
pub async fn run(
    plan: &JobPlan,
    options: &RunOptions,
    resources: &Resources,
) -> Result<FinishedJob, JobError> {
    // Signals first: a SIGTERM during downloads must be handled, not fatal.
    let mut signals = JobSignals::install().map_err(JobError::Signals)?;
    supervise::become_subreaper();
    // A dataref killed earlier on this node may have left dead mounts (ENOTCONN) behind.
    let removed = match nix::unistd::geteuid().is_root() {
        true => {
            tokio::task::spawn_blocking(crate::fs::cleanup::cleanup_dead_mounts)
                .await
                .unwrap_or_default()
                .removed
        }
        false => Vec::new(),
    };

    let figures = JobFigures::new(plan, &resources.budget);
    // Everything done on the files of a job run as someone else is done with their rights.
    let user = options
        .identity
        .as_ref()
        .filter(|identity| identity.is_other_than_self())
        .map(Identity::user_ids);
    let local_fs = LocalFs::for_user(user.as_ref()).map_err(|source| JobError::UserSide {
        uid: user.as_ref().map_or(0, |u| u.uid),
        source,
    })?;
    let stores = open_stores(plan, resources, &figures, user.as_ref(), &local_fs)?;
    std::fs::create_dir_all(&options.job_dir).map_err(|source| JobError::JobDir {
        path: options.job_dir.clone(),
        source,
    })?;
    let log_path = options.job_dir.join("job.log");
    let log = if options.stage_out_only {
        JobLog::append(&log_path)
    } else {
        JobLog::create(&log_path)
    }
    .map_err(|source| JobError::JobLog {
        path: log_path.clone(),
        source,
    })?;
    for mount in &removed {
        log.line(&format!(
            "removed a dead mount at {} ({})",
            mount.mountpoint.display(),
            mount.fsname
        ));
    }
    if !options.stage_out_only {
        log.line(&format!("job: {}", plan.dialect.describe()));
        for note in &plan.notes {
            log.line(note);
        }
    }
    let mut result = JobResult::new(plan, &options.job_dir);
    result.save(&options.job_dir, &log);
    let _live = figures.keep_live(options.job_dir.clone());

    let mut engine = Engine::new(resources)
        .with_progress(options.progress)
        .with_verify(plan.verify);
    engine.reserved_free_disk_bytes = plan.mount.reserved_free_disk_bytes;
    engine.local = local_fs;

    let finished = |end: JobEnd, reason: EndReason, result: JobResult, log: JobLog| FinishedJob {
        end,
        reason,
        result,
        job_dir: options.job_dir.clone(),
        log,
        budget: resources.budget.clone(),
        figures: figures.clone(),
    };
    if options.stage_out_only {
        let (end, result) = stage_out::recover_outputs(
            plan,
            &stores,
            &engine,
            &log,
            result,
            &options.job_dir,
            options.identity.as_ref(),
        )
        .await;
        return Ok(finished(end, EndReason::Interrupted, result, log));
    }

    // Phase 1: inputs, raced against termination signals. Mounts made so far stay in `mounts`
    // whatever happens, so that every exit path unmounts them.
    let mut mounts = Vec::new();
    let prepared = tokio::select! {
        prepared = prepare(plan, options, &stores, &engine, &log, &mut result, &mut mounts) => prepared,
        sig = signals.recv() => Err(Prepare::Signalled(sig)),
    };
    if let Err(failure) = prepared {
        let (end, reason) = match failure {
            Prepare::Signalled(sig) => {
                log.line(&format!(
                    "received {sig} before the script started; stopping"
                ));
                (
                    JobEnd::SignalledBeforeStart(sig),
                    EndReason::SignalBeforeStart,
                )
            }
            Prepare::Failed(why) => (JobEnd::InputFailed(why), EndReason::InputFailed),
        };
        result.mark_not_run();
        unmount_all(mounts, &log).await;
        return Ok(finished(end, reason, result, log));
    }

    // Continuous outputs are watched from here on (after restore, before the script).
    let journal = stage_out::open_journal(&options.job_dir, &log);
    let syncs = stage_out::Syncs::start(
        plan,
        &stores,
        &engine,
        journal.as_ref(),
        &log,
        &options.job_dir,
        options.identity.as_ref(),
    )
    .await;
    let mut syncs = match syncs {
        Ok(syncs) => syncs,
        Err((name, error)) => {
            result.outcome(&name).fail(error, std::time::Duration::ZERO);
            result.mark_not_run();
            unmount_all(mounts, &log).await;
            let (end, reason) = (
                JobEnd::InputFailed(InputFailure::Local),
                EndReason::InputFailed,
            );
            return Ok(finished(end, reason, result, log));
        }
    };

    // Phase 2: the script.
    let base_env: Vec<(std::ffi::OsString, std::ffi::OsString)> = match &options.identity {
        _ if !options.clean_env => std::env::vars_os().collect(),
        Some(identity) => identity.login_environment(),
        None => Identity {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            groups: Vec::new(),
        }
        .login_environment(),
    };
    let env = env::child_environment(plan, base_env);
    let argv: Vec<String> = plan
        .command
        .iter()
        .map(|arg| match plan.substitute_variables {
            true => env::substitute(arg, |name| {
                env.get(std::ffi::OsStr::new(name))
                    .map(|v| v.to_string_lossy().into_owned())
            }),
            false => arg.clone(),
        })
        .collect();
    let spec = ChildSpec {
        argv,
        cwd: plan.working_dir.clone(),
        env,
        grace: plan.grace_period,
        identity: options.identity.clone(),
        spare: engine.local.process().into_iter().collect(),
    };
    result.phase = Phase::Running;
    let on_start = |pid| {
        result.script_pid = Some(pid);
        result.save(&options.job_dir, &log);
    };
    let child = supervise::run_child(&spec, &mut signals, &log, on_start);
    let supervised = match syncs.beside(child).await {
        Ok(supervised) => supervised,
        Err(e) => {
            // Not even started (no such program): outputs cannot exist; report like a shell.
            log.line(&format!("cannot start {}: {e}", plan.command[0]));
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            result.mark_not_run();
            unmount_all(std::mem::take(&mut mounts), &log).await;
            return Ok(finished(
                JobEnd::ScriptFailed { code },
                EndReason::ScriptFailed,
                result,
                log,
            ));
        }
    };
    result.child = Some(result::ChildResult::from(&supervised));
    let script_code = supervised.exit.shell_code();
    log.line(&format!("script exited with code {script_code}"));

    // Phase 3: outputs, per policy. A signal from outside always uploads.
    let failed_on_its_own = script_code != 0 && supervised.forwarded.is_none();
    let upload = match plan.upload_policy {
        UploadPolicy::Always => true,
        UploadPolicy::OnSuccess => !failed_on_its_own,
    };
    result.script_pid = None;
    result.phase = Phase::StagingOut;
    result.save(&options.job_dir, &log);
    let staging = async {
        let on_exit = async {
            match upload {
                true => {
                    stage_out::stage_out(
                        plan,
                        &stores,
                        &engine,
                        &log,
                        &mut result,
                        stage_out::Outputs {
                            job_dir: &options.job_dir,
                            identity: options.identity.as_ref(),
                            journal: journal.as_ref(),
                        },
                    )
                    .await
                }
                false => {
                    let skipped = |r: &&crate::manifest::Reference| {
                        r.mode == Mode::Upload && r.sync.mode == crate::model::SyncMode::OnExit
                    };
                    for r in plan.references.iter().filter(skipped) {
                        log.line(&format!(
                            "{}: not uploaded: the script failed and upload_policy is on_success",
                            r.name
                        ));
                        result.outcome(&r.name).status = ReferenceStatus::SkippedByPolicy;
                    }
                    true
                }
            }
        };
        let how = match upload {
            true => transfer::continuous::End::Drain,
            false => transfer::continuous::End::Stop,
        };
        let (on_exit_ok, syncs) = futures::join!(on_exit, syncs.finish(how));
        on_exit_ok & syncs.record(&log, &mut result)
    };
    let (stage_out_ok, received) =
        supervise::finish_despite_signals(staging, &mut signals, &log, "stage-out").await;
    result.signals_during_stage_out = received.iter().map(|s| s.as_str().to_owned()).collect();
    stage_out::close_journal(journal.as_ref(), &log);

    // A script that exited 0 (also after a forwarded SIGTERM) whose outputs did not all
    // arrive must not look like a success.
    let (end, reason) = if script_code == 0 && !stage_out_ok {
        (JobEnd::StageOutFailed, EndReason::StageOutFailed)
    } else if supervised.forwarded.is_some() {
        (
            JobEnd::Preempted { code: script_code },
            EndReason::Preempted,
        )
    } else if script_code != 0 {
        (
            JobEnd::ScriptFailed { code: script_code },
            EndReason::ScriptFailed,
        )
    } else {
        (JobEnd::Succeeded, EndReason::Succeeded)
    };
    unmount_all(mounts, &log).await;
    Ok(finished(end, reason, result, log))
}

/// Each reference's store, and its figures.
struct References {
    /// By reference name: each reference has a store of its own (sharing the job's budget and
    /// HTTP client), whose requests and retries count into that reference's figures.
    stores: BTreeMap<String, Arc<dyn Store>>,
    figures: JobFigures,
}

impl References {
    fn store(&self, name: &str) -> Arc<dyn Store> {
        self.stores[name].clone()
    }

    /// The job's engine, retrying under a policy that counts into reference `name`'s figures.
    fn engine(&self, engine: &Engine, name: &str) -> Engine {
        let mut engine = engine.clone();
        engine.retry = engine
            .retry
            .clone()
            .counting(self.figures.of(name).retry_counter());
        engine
    }
}

/// Opens each reference's store. The job's own (inline) datastores are the user's: their secret
/// files are read, and a local one's files read and written, with the user's rights; the
/// registry's are the administrator's grant, used with the service's.
fn open_stores(
    plan: &JobPlan,
    resources: &Resources,
    figures: &JobFigures,
    user: Option<&crate::model::UserIds>,
    local_fs: &LocalFs,
) -> Result<References, JobError> {
    let mut stores = BTreeMap::new();
    for r in &plan.references {
        let metrics = figures.of(&r.name);
        let mut counted = resources.clone();
        counted.retry = counted.retry.clone().counting(metrics.retry_counter());
        let users = plan.inline_datastores.contains(&r.datastore_name);
        let (spec, rights) = match user {
            Some(user) if users => (r.datastore.with_secret_read_by(user), local_fs.clone()),
            _ => (r.datastore.clone(), LocalFs::direct()),
        };
        let opened = store::open_with_rights(&spec, &counted, &rights);
        let store = opened.map_err(|source| JobError::OpenStore {
            datastore: r.datastore_name.clone(),
            source,
        })?;
        stores.insert(r.name.clone(), Metered::wrap(store, metrics));
    }
    Ok(References {
        stores,
        figures: figures.clone(),
    })
}

enum Prepare {
    Signalled(nix::sys::signal::Signal),
    Failed(InputFailure),
}

/// Creates the parents of upload sources, mounts, then downloads inputs.
async fn prepare(
    plan: &JobPlan,
    options: &RunOptions,
    stores: &References,
    engine: &Engine,
    log: &JobLog,
    result: &mut JobResult,
    mounts: &mut Vec<MountedPath>,
) -> Result<(), Prepare> {
    for r in plan.references.iter().filter(|r| r.mode == Mode::Upload) {
        let dir = match r.create_dir {
            true => Some(r.local.as_path()),
            false => r.local.parent(),
        };
        if let Some(dir) = dir {
            engine.local.create_dir_all(dir).map_err(|e| {
                log.line(&format!("{}: cannot create {}: {e}", r.name, dir.display()));
                Prepare::Failed(InputFailure::Local)
            })?;
        }
    }
    // Mounts first: they are quick to fail, and they stay usable while downloads run.
    for r in plan.references.iter().filter(|r| r.mode == Mode::Mount) {
        let started = Instant::now();
        // The default cache lives in the job directory (one folder per reference), or under the
        // service's cache root, named after the job directory (unique per job).
        let cache = match &options.cache_root {
            Some(root) => {
                let job = options
                    .job_dir
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy();
                CacheOptions::from_settings(&plan.mount, root, &format!("{job}.{}", r.name))
            }
            None => {
                CacheOptions::from_settings(&plan.mount, &options.job_dir.join("cache"), &r.name)
            }
        };
        let fs_options = FsOptions {
            attribute_ttl: plan.mount.attribute_ttl,
            budget: engine.budget.clone(),
            cache: cache.clone(),
            metrics: stores.figures.of(&r.name),
        };
        // A script running as someone else is let in, and only them: the entries are that
        // user's, 0400/0500, and the kernel checks them (default_permissions).
        let script_user = options
            .identity
            .as_ref()
            .filter(|identity| identity.is_other_than_self());
        let config = MountConfig {
            fsname: crate::fs::cleanup::fsname(&crate::fs::cleanup::job_label("run"), &r.name),
            allow_other: script_user.is_some(),
            owner: script_user.map(|identity| (identity.uid, identity.gid)),
        };
        let store = stores.store(&r.name);
        let local = &r.local;
        let remote = &r.path_on_datastore;
        // A job run as someone else has its mount points made and opened by its user's
        // process: root mounts on what that process opened, checked to be the user's.
        let places: Arc<dyn MountPlaces> = match engine.local.user() {
            Some(_) => Arc::new(engine.local.clone()),
            None => Direct::for_owner(config.owner),
        };
        match mount_reference(
            store,
            remote,
            local,
            r.allow_empty,
            fs_options,
            &config,
            places,
        )
        .await
        {
            Ok(mounted) => {
                if mounted.matched_nothing {
                    log.line(&format!("{}: nothing to mount (allow_empty)", r.name));
                }
                log.line(&format!(
                    "{}: mounted {}:{remote} at {} (read-only)",
                    r.name,
                    r.datastore_name,
                    local.display()
                ));
                if let Some(c) = mounted.mount.cache() {
                    stores.figures.add_cache(&r.name, c.clone());
                }
                match (mounted.mount.cache(), &cache) {
                    (Some(c), _) => log.line(&format!("{}: {}", r.name, describe_cache(c))),
                    (None, Some(wanted)) => log.line(&format!(
                        "{}: warning: no disk cache (could not use {}; see the log above)",
                        r.name,
                        wanted.dir.display()
                    )),
                    (None, None) => log.line(&format!("{}: disk cache off", r.name)),
                }
                let entry = result.outcome(&r.name);
                entry.status = ReferenceStatus::Done;
                entry.duration_seconds = started.elapsed().as_secs_f64();
                mounts.push(mounted);
            }
            Err(e) => {
                log.line(&format!("{}: mount failed: {e}", r.name));
                result
                    .outcome(&r.name)
                    .fail(e.to_string(), started.elapsed());
                return Err(Prepare::Failed(InputFailure::Mount(e)));
            }
        }
    }
    stage_in::download_inputs(plan, stores, engine, log, result).await?;
    stage_in::restore_outputs(plan, stores, engine, log).await?;
    Ok(())
}

/// Outcome lookups by reference name, used while phases fill in the result.
impl JobResult {
    fn outcome(&mut self, name: &str) -> &mut ReferenceOutcome {
        self.references
            .get_mut(name)
            .expect("every reference has an outcome")
    }

    /// References the job ended before reaching.
    fn mark_not_run(&mut self) {
        for outcome in self.references.values_mut() {
            if outcome.status == ReferenceStatus::Pending {
                outcome.status = ReferenceStatus::NotRun;
            }
        }
    }
}

/// A transfer's figures: what it moved, and its whole time as time the job waited on data
/// (staging before the script, stage-out after it).
fn note_transfer(
    figures: &JobFigures,
    name: &str,
    started: Instant,
    outcome: &Result<transfer::TransferReport, TransferError>,
) {
    let metrics = figures.of(name);
    metrics.add_transfer_wait(started.elapsed());
    if let Ok(report) = outcome {
        metrics.set_transferred(report.files, report.bytes);
    }
}

fn describe_cache(cache: &DiskCache) -> String {
    let cap = match cache.max_bytes() {
        Some(bytes) => format!("at most {bytes} bytes"),
        None => "no size cap".to_owned(),
    };
    format!(
        "disk cache at {} ({cap}, keeping {} bytes free; removed at unmount)",
        cache.dir().display(),
        cache.reserved_free_bytes()
    )
}

/// Unmounts every mount of the job (after stage-out, or when the job stops early).
async fn unmount_all(mounts: Vec<MountedPath>, log: &JobLog) {
    for mounted in mounts {
        let local = mounted.local.clone();
        match tokio::task::spawn_blocking(move || mounted.unmount()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log.line(&format!("warning: unmounting {}: {e}", local.display())),
            Err(e) => log.line(&format!("warning: unmounting {}: {e}", local.display())),
        }
    }
}
