//! Stage-out: the outputs uploaded after the script (`sync: on_exit`), and the ones uploaded
//! beside it (`sync: continuous`: started after restore, before the script, and drained when
//! it ends, within the same grace as the rest of the stage-out).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::identity::Identity;
use super::log::JobLog;
use super::result::{JobResult, Phase, ReferenceStatus, SyncReport};
use super::{JobEnd, References, note_transfer};
use crate::manifest::{JobPlan, Mode, Reference};
use crate::model::SyncMode;
use crate::model::durable::{SharedSyncState, SyncState};
use crate::transfer::continuous::{ContinuousUpload, End, SyncSpec};
use crate::transfer::{self, Engine, FileFailure, TransferReport, UploadJournal, UploadSource};

/// The job's upload journal. Without it an upload still works; it only cannot be resumed
/// after a crash.
pub(super) fn open_journal(job_dir: &Path, log: &JobLog) -> Option<UploadJournal> {
    match UploadJournal::open(job_dir) {
        Ok(journal) => Some(journal),
        Err(e) => {
            log.line(&format!(
                "warning: {e}; uploads cut short now cannot be resumed"
            ));
            None
        }
    }
}

/// Says whether the journal stopped being written along the way.
pub(super) fn close_journal(journal: Option<&UploadJournal>, log: &JobLog) {
    if let Some(failure) = journal.and_then(|j| j.failure()) {
        log.line(&format!(
            "warning: {failure}; the journal stopped there: uploads cut short now cannot be resumed"
        ));
    }
}

/// The job's engine for reference `r`: its retries counted, its rate bounded.
fn reference_engine(stores: &References, engine: &Engine, r: &Reference) -> Engine {
    let mut engine = stores.engine(engine, &r.name);
    engine.rate = r
        .sync
        .max_bytes_per_second
        .map(|rate| Arc::new(transfer::rate::RateLimit::new(rate)));
    engine
}

type Reports<'a> = Pin<Box<dyn Future<Output = Vec<TransferReport>> + 'a>>;

/// The continuous uploads of a job, from before its script starts to the end of stage-out.
pub(super) struct Syncs<'a> {
    names: Vec<String>,
    /// Each one's folder, and the user it is written by (checked again before the drain).
    roots: Vec<std::path::PathBuf>,
    identity: Option<Identity>,
    states: Vec<SharedSyncState>,
    running: Reports<'a>,
    /// Their reports, if they ended early (never, unless the script outlives them).
    done: Option<Vec<TransferReport>>,
    end: tokio::sync::watch::Sender<Option<End>>,
}

impl<'a> Syncs<'a> {
    /// Starts watching every `sync: continuous` output (after restore: restored files are
    /// not uploaded again). Each failure is logged and recorded; `Err` if any.
    pub(super) async fn start(
        plan: &'a JobPlan,
        stores: &References,
        engine: &Engine,
        journal: Option<&'a UploadJournal>,
        log: &JobLog,
        job_dir: &Path,
        identity: Option<&Identity>,
    ) -> Result<Syncs<'a>, (String, String)> {
        let (end, _) = tokio::sync::watch::channel(None);
        let mut names = Vec::new();
        let mut roots = Vec::new();
        let mut states = Vec::new();
        let mut runs: Vec<Pin<Box<dyn Future<Output = TransferReport> + 'a>>> = Vec::new();
        let continuous = |r: &&Reference| r.sync.mode == SyncMode::Continuous;
        for r in plan.references.iter().filter(continuous) {
            let failed = |error: String| {
                log.line(&format!("{}: cannot upload continuously: {error}", r.name));
                Err((r.name.clone(), error))
            };
            if let Some(link) = identity.and_then(|user| user.own_symlink_on(&r.local)) {
                return failed(format!(
                    "{} is a symbolic link owned by the job's user; not followed",
                    link.display()
                ));
            }
            let spec = SyncSpec {
                reference: r.name.clone(),
                root: r.local.clone(),
                prefix: r.path_on_datastore.clone(),
                commit_files: r.sync.commit_files.clone(),
                exclude: vec![job_dir.to_path_buf()],
            };
            let state: SharedSyncState = Arc::new(Mutex::new(SyncState::default()));
            let notes_log = log.clone();
            let notes: transfer::continuous::Notes = Arc::new(move |line| notes_log.line(&line));
            let engine = reference_engine(stores, engine, r);
            let store = stores.store(&r.name);
            let resumes = journal.map(|j| j.for_reference(&r.name));
            let started =
                ContinuousUpload::start(spec, store, &engine, state.clone(), notes, resumes).await;
            let sync = match started {
                Ok(sync) => sync,
                Err(e) => return failed(e.to_string()),
            };
            log.line(&format!(
                "{}: uploading {} to {}:{} continuously (each file after it is closed)",
                r.name,
                r.local.display(),
                r.datastore_name,
                r.path_on_datastore
            ));
            stores.figures.add_sync(&r.name, state.clone());
            let mut ended = end.subscribe();
            let ended = async move {
                match ended.wait_for(Option::is_some).await {
                    Ok(how) => how.expect("waited for it"),
                    // Dropped without a word: upload what there is.
                    Err(_) => End::Drain,
                }
            };
            let journal = journal.map(|j| j.for_reference(&r.name));
            runs.push(Box::pin(sync.run(journal, ended)));
            names.push(r.name.clone());
            roots.push(r.local.clone());
            states.push(state);
        }
        Ok(Syncs {
            names,
            roots,
            identity: identity.cloned(),
            states,
            running: Box::pin(futures::future::join_all(runs)),
            done: None,
            end,
        })
    }

    /// Runs `work` (the script's supervision) while the uploads go on.
    pub(super) async fn beside<T>(&mut self, work: impl Future<Output = T>) -> T {
        let work = std::pin::pin!(work);
        match futures::future::select(work, self.running.as_mut()).await {
            futures::future::Either::Left((output, _)) => output,
            futures::future::Either::Right((reports, work)) => {
                self.done = Some(reports);
                work.await
            }
        }
    }

    /// Ends the uploads (`Drain`: the rest goes now; `Stop`: nothing more starts) and waits
    /// for them.
    pub(super) async fn finish(mut self, mut how: End) -> SyncsEnded {
        // The folder may have been replaced by a link of the user's while the script ran: the
        // drain would walk where it points, as root.
        let links: Vec<String> = self
            .roots
            .iter()
            .filter_map(|root| self.identity.as_ref()?.own_symlink_on(root))
            .map(|link| {
                format!(
                    "{} is a symbolic link owned by the job's user; not followed",
                    link.display()
                )
            })
            .collect();
        if !links.is_empty() {
            how = End::Stop;
        }
        let _ = self.end.send(Some(how));
        let reports = match self.done.take() {
            Some(reports) => reports,
            None => self.running.await,
        };
        SyncsEnded {
            names: self.names,
            states: self.states,
            reports,
            how,
            links,
        }
    }
}

/// Continuous uploads that ended, to be recorded.
pub(super) struct SyncsEnded {
    names: Vec<String>,
    states: Vec<SharedSyncState>,
    reports: Vec<TransferReport>,
    how: End,
    /// Why nothing more was uploaded, when a folder became a user's link.
    links: Vec<String>,
}

impl SyncsEnded {
    /// Records each in `result`. Returns false when a file could not be uploaded.
    pub(super) fn record(self, log: &JobLog, result: &mut JobResult) -> bool {
        let (how, reports) = (self.how, self.reports);
        let mut ok = self.links.is_empty();
        for link in &self.links {
            log.line(&format!("not uploaded further: {link}"));
        }
        for ((name, state), report) in self.names.iter().zip(&self.states).zip(reports) {
            let state = state.lock().unwrap().clone();
            let checkpoints = match state.checkpoints.last() {
                Some(last) => format!(
                    "; {} checkpoint(s), the last {} ({})",
                    state.checkpoints.len(),
                    last.checkpoint,
                    last.marker
                ),
                None => String::new(),
            };
            log.line(&format!(
                "{name}: {} file(s) durable{checkpoints}",
                state.files.len()
            ));
            for e in &report.errors {
                log.line(&format!("{name}: {}: {}", e.path, e.error));
            }
            let outcome = result.outcome(name);
            ok &= !outcome.record(report);
            // The stage-out's report counts what it sent; the durable list is the whole run's.
            outcome.files = state.files.len() as u64;
            outcome.bytes = state.files.iter().map(|f| f.size).sum();
            if !self.links.is_empty() {
                outcome.status = ReferenceStatus::Failed;
                outcome
                    .errors
                    .extend(self.links.iter().map(|link| FileFailure {
                        path: outcome.path_on_datastore.clone(),
                        error: link.clone(),
                        local: true,
                    }));
            } else if how == End::Stop {
                outcome.status = ReferenceStatus::SkippedByPolicy;
                outcome.warnings.push(
                    "the script failed and upload_policy is on_success: files not durable when \
                     it ended were not uploaded"
                        .into(),
                );
            }
            outcome.sync = Some(SyncReport {
                mode: SyncMode::Continuous,
                state,
            });
        }
        ok
    }
}

/// `--stage-out-only`: the previous run was interrupted (its agent died); upload what its script
/// left, as a preempted job's outputs would have been.
pub(super) async fn recover_outputs(
    plan: &JobPlan,
    stores: &References,
    engine: &Engine,
    log: &JobLog,
    mut result: JobResult,
    job_dir: &Path,
    identity: Option<&Identity>,
) -> (JobEnd, JobResult) {
    log.line("recovering: uploading the outputs of an interrupted run");
    result.phase = Phase::StagingOut;
    result.save(job_dir, log);
    let journal = open_journal(job_dir, log);
    let journal = journal.as_ref();
    let outputs = Outputs {
        job_dir,
        identity,
        journal,
    };
    let mut ok = stage_out(plan, stores, engine, log, &mut result, outputs).await;
    // Continuous outputs left by the dead run: what storage lacks, markers after their data.
    match Syncs::start(plan, stores, engine, journal, log, job_dir, identity).await {
        Ok(syncs) => ok &= syncs.finish(End::Drain).await.record(log, &mut result),
        Err((name, error)) => {
            result.outcome(&name).fail(error, std::time::Duration::ZERO);
            ok = false;
        }
    }
    close_journal(journal, log);
    for outcome in result.references.values_mut() {
        if outcome.status == ReferenceStatus::Pending {
            outcome.status = ReferenceStatus::NotRun;
        }
    }
    (JobEnd::Recovered { uploads_ok: ok }, result)
}

/// Where a job's outputs are staged from: its job directory (never uploaded), the user it runs
/// as, and its upload journal.
#[derive(Clone, Copy)]
pub(super) struct Outputs<'a> {
    pub job_dir: &'a Path,
    pub identity: Option<&'a Identity>,
    pub journal: Option<&'a UploadJournal>,
}

/// Uploads the outputs sent after the script (`sync: on_exit`). Returns false when any upload
/// failed (a missing source is only a warning).
pub(super) async fn stage_out(
    plan: &JobPlan,
    stores: &References,
    engine: &Engine,
    log: &JobLog,
    result: &mut JobResult,
    outputs: Outputs<'_>,
) -> bool {
    let Outputs {
        job_dir,
        identity,
        journal,
    } = outputs;
    let mut ok = true;
    let on_exit = |r: &&Reference| r.mode == Mode::Upload && r.sync.mode == SyncMode::OnExit;
    for r in plan.references.iter().filter(on_exit) {
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
        let source = match engine.local.metadata(&r.local) {
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
        let store = stores.store(&r.name);
        let engine = reference_engine(stores, engine, r);
        let outcome = transfer::upload_journaled(
            &engine,
            store,
            &source,
            &r.path_on_datastore,
            r.overwrite,
            &exclude,
            journal.as_ref().map(|j| j.for_reference(&r.name)),
        )
        .await;
        note_transfer(&stores.figures, &r.name, started, &outcome);
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
                ok &= !entry.record(report);
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
