//! A job from start to end (SPEC §3–§5): prepare inputs → run the script → stage out.
//!
//! Every phase writes what happened into `result.json` in the job directory, and `job.log`
//! holds dataref's lines and the script's output. The exit code follows SPEC §5.

pub mod env;
pub mod identity;
pub mod log;
pub mod result;
pub mod supervise;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::exit::ExitCode;
use crate::fs::cache::{CacheOptions, DiskCache};
use crate::fs::core::FsOptions;
use crate::fs::fuse::MountConfig;
use crate::fs::mount::{MountedPath, mount_reference};
use crate::manifest::{JobPlan, Mode, UploadPolicy};
use crate::store::{self, Store};
use crate::transfer::{self, Engine, ProgressMode, TransferError, UploadJournal, UploadSource};
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
}

impl RunOptions {
    pub fn default_job_dir(plan: &JobPlan) -> PathBuf {
        plan.working_dir.join(DEFAULT_JOB_DIR)
    }
}

/// Runs a validated job and returns the process exit code. Must be called from the thread that
/// runs the tokio runtime's `block_on` (see `supervise`).
pub async fn run(plan: &JobPlan, options: &RunOptions) -> i32 {
    // Signals first: a SIGTERM during downloads must be handled, not fatal.
    let mut signals = match JobSignals::install() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("dataref: error: cannot install signal handlers: {e}");
            return ExitCode::IoErr.code();
        }
    };
    supervise::become_subreaper();
    // A dataref killed earlier on this node may have left dead mounts (ENOTCONN) behind.
    if nix::unistd::geteuid().is_root() {
        let report = tokio::task::spawn_blocking(crate::fs::cleanup::cleanup_dead_mounts)
            .await
            .unwrap_or_default();
        for mount in &report.removed {
            eprintln!(
                "dataref: removed a dead mount at {} ({})",
                mount.mountpoint.display(),
                mount.fsname
            );
        }
    }

    let stores = match open_stores(plan) {
        Ok(stores) => stores,
        Err(message) => {
            eprintln!("dataref: error: {message}");
            return ExitCode::Unavailable.code();
        }
    };

    if let Err(e) = std::fs::create_dir_all(&options.job_dir) {
        eprintln!(
            "dataref: error: cannot create job directory {}: {e}",
            options.job_dir.display()
        );
        return ExitCode::IoErr.code();
    }
    let log_path = options.job_dir.join("job.log");
    let log = match if options.stage_out_only {
        JobLog::append(&log_path)
    } else {
        JobLog::create(&log_path)
    } {
        Ok(log) => log,
        Err(e) => {
            eprintln!("dataref: error: cannot create job.log: {e}");
            return ExitCode::IoErr.code();
        }
    };
    let mut result = JobResult::new(plan, &options.job_dir);
    result.save(&options.job_dir, &log);

    let engine = Engine::new(plan.memory_budget_bytes).with_progress(options.progress);
    let mut engine = engine;
    engine.reserved_free_disk_bytes = plan.mount.reserved_free_disk_bytes;

    if options.stage_out_only {
        return recover_outputs(
            plan,
            &stores,
            &engine,
            &log,
            result,
            &options.job_dir,
            options.identity.as_ref(),
        )
        .await;
    }

    // Phase 1: inputs, raced against termination signals. Mounts made so far stay in `mounts`
    // whatever happens, so that every exit path unmounts them.
    let mut mounts = Vec::new();
    let prepared = tokio::select! {
        prepared = prepare(plan, options, &stores, &engine, &log, &mut result, &mut mounts) => prepared,
        sig = signals.recv() => Err(Prepare::Signalled(sig)),
    };
    if let Err(failure) = prepared {
        let code = match failure {
            Prepare::Signalled(sig) => {
                log.line(&format!(
                    "received {sig} before the script started; stopping"
                ));
                result.end(EndReason::SignalBeforeStart, 128 + sig as i32);
                128 + sig as i32
            }
            Prepare::Failed(code) => {
                result.end(EndReason::InputFailed, code.code());
                code.code()
            }
        };
        result.mark_not_run();
        unmount_all(mounts, &log).await;
        result.save(&options.job_dir, &log);
        return code;
    }

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
        .map(|arg| {
            env::substitute(arg, |name| {
                env.get(std::ffi::OsStr::new(name))
                    .map(|v| v.to_string_lossy().into_owned())
            })
        })
        .collect();
    let spec = ChildSpec {
        argv,
        cwd: plan.working_dir.clone(),
        env,
        grace: plan.grace_period,
        identity: options.identity.clone(),
    };
    result.phase = Phase::Running;
    let on_start = |pid| {
        result.script_pid = Some(pid);
        result.save(&options.job_dir, &log);
    };
    let supervised = match supervise::run_child(&spec, &mut signals, &log, on_start).await {
        Ok(supervised) => supervised,
        Err(e) => {
            // Not even started (no such program): outputs cannot exist; report like a shell.
            log.line(&format!("cannot start {}: {e}", plan.command[0]));
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            result.end(EndReason::ScriptFailed, code);
            result.mark_not_run();
            unmount_all(std::mem::take(&mut mounts), &log).await;
            result.save(&options.job_dir, &log);
            return code;
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
    let stage_out_ok = if upload {
        let staging = stage_out(
            plan,
            &stores,
            &engine,
            &log,
            &mut result,
            &options.job_dir,
            options.identity.as_ref(),
        );
        let (ok, received) =
            supervise::finish_despite_signals(staging, &mut signals, &log, "stage-out").await;
        result.signals_during_stage_out = received.iter().map(|s| s.as_str().to_owned()).collect();
        ok
    } else {
        for r in plan.references.iter().filter(|r| r.mode == Mode::Upload) {
            log.line(&format!(
                "{}: not uploaded: the script failed and upload_policy is on_success",
                r.name
            ));
            result.outcome(&r.name).status = ReferenceStatus::SkippedByPolicy;
        }
        true
    };

    // A script that exited 0 (also after a forwarded SIGTERM) whose outputs did not all
    // arrive must not look like a success.
    let (reason, code) = if script_code == 0 && !stage_out_ok {
        (EndReason::StageOutFailed, ExitCode::TempFail.code())
    } else if supervised.forwarded.is_some() {
        (EndReason::Preempted, script_code)
    } else if script_code != 0 {
        (EndReason::ScriptFailed, script_code)
    } else {
        (EndReason::Succeeded, 0)
    };
    unmount_all(mounts, &log).await;
    result.end(reason, code);
    result.save(&options.job_dir, &log);
    code
}

fn open_stores(plan: &JobPlan) -> Result<BTreeMap<String, Arc<dyn Store>>, String> {
    let mut stores = BTreeMap::new();
    for r in &plan.references {
        if stores.contains_key(&r.datastore_name) {
            continue;
        }
        let store = store::open(&r.datastore)
            .map_err(|e| format!("datastore {:?}: {e}", r.datastore_name))?;
        stores.insert(r.datastore_name.clone(), store);
    }
    Ok(stores)
}

enum Prepare {
    Signalled(nix::sys::signal::Signal),
    Failed(ExitCode),
}

/// Downloads inputs and creates the parents of upload sources.
async fn prepare(
    plan: &JobPlan,
    options: &RunOptions,
    stores: &BTreeMap<String, Arc<dyn Store>>,
    engine: &Engine,
    log: &JobLog,
    result: &mut JobResult,
    mounts: &mut Vec<MountedPath>,
) -> Result<(), Prepare> {
    for r in plan.references.iter().filter(|r| r.mode == Mode::Upload) {
        if let Some(parent) = r.local.parent() {
            create_dirs_for(parent, options.identity.as_ref()).map_err(|e| {
                log.line(&format!(
                    "{}: cannot create {}: {e}",
                    r.name,
                    parent.display()
                ));
                Prepare::Failed(ExitCode::IoErr)
            })?;
        }
    }
    for r in plan.references.iter().filter(|r| r.mode == Mode::Download) {
        let store = stores[&r.datastore_name].clone();
        log.line(&format!(
            "{}: downloading {} from {} to {}",
            r.name,
            r.path_on_datastore,
            r.datastore_name,
            r.local.display()
        ));
        let started = Instant::now();
        let outcome =
            transfer::download(engine, store, &r.path_on_datastore, &r.local, r.overwrite).await;
        let entry = result.outcome(&r.name);
        match outcome {
            Ok(report) => {
                log.line(&format!("{}: downloaded {}", r.name, report.summary()));
                if let Some(identity) = &options.identity {
                    give_downloaded_tree(identity, &r.local, log)
                        .map_err(|()| Prepare::Failed(ExitCode::IoErr))?;
                }
                let failed = !report.errors.is_empty();
                // Only local I/O failures (the compute node's disk): 74; any store failure: 69.
                let code = if report.errors.iter().all(|e| e.local) {
                    ExitCode::IoErr
                } else {
                    ExitCode::Unavailable
                };
                for e in &report.errors {
                    log.line(&format!("{}: {}: {}", r.name, e.path, e.error));
                }
                entry.record(
                    report,
                    if failed {
                        ReferenceStatus::Failed
                    } else {
                        ReferenceStatus::Done
                    },
                );
                if failed {
                    return Err(Prepare::Failed(code));
                }
            }
            Err(TransferError::NothingMatched { .. }) if r.allow_empty => {
                create_dirs_for(&r.local, options.identity.as_ref())
                    .map_err(|_| Prepare::Failed(ExitCode::IoErr))?;
                log.line(&format!("{}: nothing to download (allow_empty)", r.name));
                entry.status = ReferenceStatus::Done;
                entry.duration_seconds = started.elapsed().as_secs_f64();
            }
            Err(e) => {
                let code = ExitCode::for_transfer(&e);
                log.line(&format!("{}: download failed: {e}", r.name));
                entry.fail(e.to_string(), started.elapsed());
                return Err(Prepare::Failed(code));
            }
        }
    }
    for r in plan.references.iter().filter(|r| r.mode == Mode::Mount) {
        let started = Instant::now();
        // SPEC §5: the default cache lives in the job directory (one folder per reference).
        let cache =
            CacheOptions::from_settings(&plan.mount, &options.job_dir.join("cache"), &r.name);
        let fs_options = FsOptions {
            attribute_ttl: plan.mount.attribute_ttl,
            memory_budget_bytes: plan.memory_budget_bytes,
            cache: cache.clone(),
        };
        let config = MountConfig {
            fsname: crate::fs::cleanup::fsname(&crate::fs::cleanup::job_label("run"), &r.name),
            // A script running as someone else must be let in (files 0444, dirs 0555).
            allow_other: options
                .identity
                .as_ref()
                .is_some_and(Identity::is_other_than_self),
        };
        let store = stores[&r.datastore_name].clone();
        match mount_reference(store, &r.path_on_datastore, &r.local, fs_options, &config).await {
            Ok(mounted) => {
                log.line(&format!(
                    "{}: mounted {}:{} at {} (read-only)",
                    r.name,
                    r.datastore_name,
                    r.path_on_datastore,
                    r.local.display()
                ));
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
                return Err(Prepare::Failed(ExitCode::Unavailable));
            }
        }
    }
    Ok(())
}

/// Creates `dir` and its missing parents; the ones created are given to `identity`.
fn create_dirs_for(dir: &Path, identity: Option<&Identity>) -> std::io::Result<()> {
    let Some(identity) = identity else {
        return std::fs::create_dir_all(dir);
    };
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|a| std::fs::symlink_metadata(a).is_err())
        .collect();
    std::fs::create_dir_all(dir)?;
    for created in missing.into_iter().rev() {
        identity.chown(created)?;
    }
    Ok(())
}

/// Downloads are written by dataref (root); the script must own what it received.
fn give_downloaded_tree(identity: &Identity, local: &Path, log: &JobLog) -> Result<(), ()> {
    identity.chown_tree(local).map_err(|e| {
        log.line(&format!(
            "cannot give {} to uid {}: {e}",
            local.display(),
            identity.uid
        ));
    })
}

/// `--stage-out-only`: the previous run was interrupted (its agent died); upload what its script
/// left, as a preempted job's outputs would have been.
async fn recover_outputs(
    plan: &JobPlan,
    stores: &BTreeMap<String, Arc<dyn Store>>,
    engine: &Engine,
    log: &JobLog,
    mut result: JobResult,
    job_dir: &Path,
    identity: Option<&Identity>,
) -> i32 {
    log.line("recovering: uploading the outputs of an interrupted run");
    result.phase = Phase::StagingOut;
    result.save(job_dir, log);
    let ok = stage_out(plan, stores, engine, log, &mut result, job_dir, identity).await;
    for outcome in result.references.values_mut() {
        if outcome.status == ReferenceStatus::Pending {
            outcome.status = ReferenceStatus::NotRun;
        }
    }
    let code = if ok { 0 } else { ExitCode::TempFail.code() };
    result.end(EndReason::Interrupted, code);
    result.save(job_dir, log);
    code
}

/// Uploads every output. Returns false when any upload failed (a missing source is only a
/// warning).
async fn stage_out(
    plan: &JobPlan,
    stores: &BTreeMap<String, Arc<dyn Store>>,
    engine: &Engine,
    log: &JobLog,
    result: &mut JobResult,
    job_dir: &Path,
    identity: Option<&Identity>,
) -> bool {
    let mut ok = true;
    // Without its journal an upload still works; it only cannot be resumed after a crash.
    let journal = match UploadJournal::open(job_dir) {
        Ok(journal) => Some(journal),
        Err(e) => {
            log.line(&format!(
                "warning: {e}; uploads cut short now cannot be resumed"
            ));
            None
        }
    };
    for r in plan.references.iter().filter(|r| r.mode == Mode::Upload) {
        let started = Instant::now();
        if let Some(link) = identity.and_then(|user| user.own_symlink_on(&r.local)) {
            let error = format!(
                "{} is a symbolic link owned by the job's user; not followed",
                link.display()
            );
            log.line(&format!("{}: not uploaded: {error}", r.name));
            result.outcome(&r.name).fail(error, started.elapsed());
            ok = false;
            continue;
        }
        let source = match std::fs::metadata(&r.local) {
            Ok(meta) if meta.is_dir() => UploadSource::Directory(r.local.clone()),
            Ok(_) => UploadSource::Files(vec![r.local.clone()]),
            Err(_) => {
                let warning = format!("{} does not exist; nothing uploaded", r.local.display());
                log.line(&format!("{}: warning: {warning}", r.name));
                let entry = result.outcome(&r.name);
                entry.status = ReferenceStatus::SourceMissing;
                entry.warnings.push(warning);
                continue;
            }
        };
        log.line(&format!(
            "{}: uploading {} to {}:{}",
            r.name,
            r.local.display(),
            r.datastore_name,
            r.path_on_datastore
        ));
        let exclude = vec![job_dir.to_path_buf()];
        let store = stores[&r.datastore_name].clone();
        let outcome = transfer::upload_journaled(
            engine,
            store,
            &source,
            &r.path_on_datastore,
            r.overwrite,
            &exclude,
            journal.as_ref().map(|j| j.for_reference(&r.name)),
        )
        .await;
        let entry = result.outcome(&r.name);
        match outcome {
            Ok(report) => {
                log.line(&format!("{}: uploaded {}", r.name, report.summary()));
                for s in &report.skipped {
                    log.line(&format!("{}: skipped {} ({:?})", r.name, s.path, s.reason));
                }
                for e in &report.errors {
                    log.line(&format!("{}: {}: {}", r.name, e.path, e.error));
                }
                let failed = !report.errors.is_empty();
                ok &= !failed;
                entry.record(
                    report,
                    if failed {
                        ReferenceStatus::Failed
                    } else {
                        ReferenceStatus::Done
                    },
                );
            }
            Err(e) => {
                log.line(&format!("{}: upload failed: {e}", r.name));
                entry.fail(e.to_string(), started.elapsed());
                ok = false;
            }
        }
    }
    ok
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
        let mount = mounted.mount;
        match tokio::task::spawn_blocking(move || mount.unmount()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log.line(&format!("warning: unmounting {}: {e}", local.display())),
            Err(e) => log.line(&format!("warning: unmounting {}: {e}", local.display())),
        }
    }
}
