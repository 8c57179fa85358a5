//! Stage-in: the inputs downloaded before the script, and the upload folders a job restores
//! from what an earlier run of it left in storage.

use std::time::Instant;

use super::log::JobLog;
use super::result::{JobResult, ReferenceStatus};
use super::{InputFailure, Prepare, References, note_transfer};
use crate::manifest::{JobPlan, Mode};
use crate::transfer::{self, Engine, TransferError};

/// Downloads every `download` reference, one after another (each is parallel inside).
pub(super) async fn download_inputs(
    plan: &JobPlan,
    stores: &References,
    engine: &Engine,
    log: &JobLog,
    result: &mut JobResult,
) -> Result<(), Prepare> {
    for r in plan.references.iter().filter(|r| r.mode == Mode::Download) {
        let store = stores.store(&r.name);
        log.line(&format!(
            "{}: downloading {} from {} to {}",
            r.name,
            r.path_on_datastore,
            r.datastore_name,
            r.local.display()
        ));
        let started = Instant::now();
        let engine = stores
            .engine(engine, &r.name)
            .with_verify(r.verify.unwrap_or(plan.verify));
        let outcome =
            transfer::download(&engine, store, &r.path_on_datastore, &r.local, r.overwrite).await;
        note_transfer(&stores.figures, &r.name, started, &outcome);
        let entry = result.outcome(&r.name);
        match outcome {
            Ok(report) => {
                log.line(&format!("{}: downloaded {}", r.name, report.summary()));
                let all_local = report.errors.iter().all(|e| e.local);
                for e in &report.errors {
                    log.line(&format!("{}: {}: {}", r.name, e.path, e.error));
                }
                if entry.record(report) {
                    return Err(Prepare::Failed(InputFailure::Files { all_local }));
                }
            }
            Err(TransferError::NothingMatched { .. }) if r.allow_empty => {
                engine
                    .local
                    .create_dir_all(&r.local)
                    .map_err(|_| Prepare::Failed(InputFailure::Local))?;
                log.line(&format!("{}: nothing to download (allow_empty)", r.name));
                entry.status = ReferenceStatus::Done;
                entry.duration_seconds = started.elapsed().as_secs_f64();
            }
            Err(e) => {
                log.line(&format!("{}: download failed: {e}", r.name));
                entry.fail(e.to_string(), started.elapsed());
                return Err(Prepare::Failed(InputFailure::Transfer(e)));
            }
        }
    }
    Ok(())
}

/// Fills each `restore` upload's folder with what is stored under its `path_on_datastore`
/// (SageMaker's checkpoint restore): nothing stored yet is a first run, not an error; a file
/// already in the folder is kept (it is at least as new as what this job uploaded).
pub(super) async fn restore_outputs(
    plan: &JobPlan,
    stores: &References,
    engine: &Engine,
    log: &JobLog,
) -> Result<(), Prepare> {
    let restored = plan
        .references
        .iter()
        .filter(|r| r.mode == Mode::Upload && r.restore);
    for r in restored {
        let store = stores.store(&r.name);
        log.line(&format!(
            "{}: restoring {} from {} into {}",
            r.name,
            r.path_on_datastore,
            r.datastore_name,
            r.local.display()
        ));
        let engine = stores
            .engine(engine, &r.name)
            .with_verify(r.verify.unwrap_or(plan.verify));
        match transfer::download(&engine, store, &r.path_on_datastore, &r.local, false).await {
            Ok(report) if report.errors.is_empty() => {
                log.line(&format!("{}: restored {}", r.name, report.summary()));
            }
            Ok(report) => {
                for e in &report.errors {
                    log.line(&format!("{}: {}: {}", r.name, e.path, e.error));
                }
                let all_local = report.errors.iter().all(|e| e.local);
                return Err(Prepare::Failed(InputFailure::Files { all_local }));
            }
            Err(TransferError::NothingMatched { .. }) => {
                engine
                    .local
                    .create_dir_all(&r.local)
                    .map_err(|_| Prepare::Failed(InputFailure::Local))?;
                log.line(&format!("{}: nothing stored yet to restore", r.name));
            }
            Err(e) => {
                log.line(&format!("{}: restore failed: {e}", r.name));
                return Err(Prepare::Failed(InputFailure::Transfer(e)));
            }
        }
    }
    Ok(())
}
