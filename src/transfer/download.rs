//! Downloads: a prefix (directory-aware) or a single object into a local directory.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use md5::Digest;

use super::progress::Progress;
use super::{
    Check, Engine, FileFailure, SkipReason, Skipped, TransferError, TransferReport, parts,
};
use crate::localfs::LocalFs;
use crate::model::ObjectPath;
use crate::store::checksum::{Crc64, crc64_of_parts};
use crate::store::local::partial_name;
use crate::store::{Breaker, ObjectMeta, RangeError, Store, StoreError, list_all, read_range};

mod check;
mod local_file;

use check::{
    Sink, Target, check_for, check_size, learned_by_all, may_learn, verify_crc64, verify_md5,
};
use local_file::{FileWriter, INLINE_WRITE, InOrderHasher, PartFile, PartialFile, write_small};

/// One object to fetch and where it goes.
#[derive(Clone)]
struct Planned {
    meta: ObjectMeta,
    dest: PathBuf,
}

/// Copies the data under `remote` into `local`. `remote` may name a single object (it becomes
/// the file `local`) or a directory (its contents go under `local`; `a/b` never matches
/// `a/b_v2`). With `overwrite` off, existing local files are kept and reported as skipped;
/// extra local files are never deleted. Fails with `NothingMatched` when `remote` matches
/// nothing.
pub async fn download(
    engine: &Engine,
    store: Arc<dyn Store>,
    remote: &ObjectPath,
    local: &Path,
    overwrite: bool,
) -> Result<TransferReport, TransferError> {
    let started = Instant::now();
    let mut report = TransferReport::default();
    let listing = list_all(store.as_ref(), remote, false)
        .await
        .map_err(|source| TransferError::List {
            store: store.describe(),
            remote: remote.to_string(),
            source,
        })?;
    let single = if remote.is_root() {
        None
    } else {
        match store.head(remote).await {
            Ok(meta) => Some(meta),
            Err(StoreError::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        }
    };
    for refused in listing.refused {
        report.skipped.push(Skipped {
            path: refused.name,
            reason: SkipReason::RefusedName,
            detail: Some(refused.reason),
        });
    }

    let mut planned = Vec::new();
    match single {
        // The blob `a/b` alone: it becomes the file `local`.
        Some(meta) if listing.objects.is_empty() => planned.push(Planned {
            dest: local.to_path_buf(),
            meta,
        }),
        other => {
            // Both `a/b` and `a/b/...` exist: the directory wins.
            if let Some(meta) = other {
                report.skipped.push(name_conflict(&meta.path));
            }
            plan_directory(remote, local, listing.objects, &mut planned, &mut report);
        }
    }
    if planned.is_empty() && report.skipped.is_empty() {
        return Err(TransferError::NothingMatched {
            store: store.describe(),
            remote: remote.to_string(),
        });
    }

    // Keep existing files unless asked to overwrite.
    let mut todo = Vec::with_capacity(planned.len());
    for item in planned {
        match engine.local.symlink_metadata(&item.dest) {
            Ok(meta) if meta.is_dir() => report.skipped.push(Skipped {
                path: item.meta.path.to_string(),
                reason: SkipReason::NameConflict,
                detail: Some(format!("{} is a directory", item.dest.display())),
            }),
            Ok(_) if !overwrite => report.skipped.push(Skipped {
                path: item.meta.path.to_string(),
                reason: SkipReason::Exists,
                detail: None,
            }),
            _ => todo.push(item),
        }
    }

    let needed: u64 = todo.iter().map(|i| i.meta.size).sum();
    check_free_space(
        &engine.local,
        local,
        needed,
        engine.reserved_free_disk_bytes,
    )?;

    let failed_dirs = create_parents(&engine.local, local, &todo).await;
    let progress = Progress::start(engine.progress, "download", todo.len() as u64, needed);
    // The files are fetched by a task of their own: polled where `download` is awaited (a
    // job's and the CLI's `block_on` thread, outside the runtime's workers), every response
    // and body chunk would cross threads, a wake-up each; on a worker, the connections' tasks
    // wake it in place. That halved the context switches of 2,000 small files.
    let fetching = tokio::spawn(fetch_all(
        engine.clone(),
        store,
        todo,
        failed_dirs,
        progress.clone(),
    ));
    let results = match AbortOnDrop(fetching).await {
        Ok(results) => results,
        // Only a panic: the task is cancelled by nothing but the guard's drop.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    progress.finish();
    for (path, result) in results {
        match result {
            Ok((bytes, check)) => {
                report.files += 1;
                report.bytes += bytes;
                report.verified.count(check);
            }
            Err(error) => report.errors.push(FileFailure {
                path: path.to_string(),
                error: error.message,
                local: error.kind == FileErrorKind::Local,
            }),
        }
    }
    report.skipped.sort_by(|a, b| a.path.cmp(&b.path));
    report.errors.sort_by(|a, b| a.path.cmp(&b.path));
    report.duration = started.elapsed();
    Ok(report)
}

/// Fetches every planned file, `file_concurrency` at a time; each one's outcome.
async fn fetch_all(
    engine: Engine,
    store: Arc<dyn Store>,
    todo: Vec<Planned>,
    failed_dirs: HashMap<PathBuf, String>,
    progress: Arc<Progress>,
) -> Vec<(ObjectPath, Result<Fetched, FileError>)> {
    // Tripped when storage failed for longer than the retry policy allows: files not started
    // yet fail at once instead of each waiting out the policy again, so a download of many
    // files gives up in the policy's bound, not in a multiple of it.
    let breaker = Breaker::default();
    let (engine, failed_dirs, breaker, progress) = (&engine, &failed_dirs, &breaker, &*progress);
    futures::stream::iter(todo)
        .map(|item| {
            let store = store.as_ref();
            async move {
                let result = match breaker.refusal() {
                    Some(refusal) => Err(FileError::store(refusal)),
                    None => download_file(engine, store, &item, failed_dirs, progress).await,
                };
                match &result {
                    Ok(_) => breaker.reset(),
                    Err(FileError {
                        kind: FileErrorKind::StoreGone,
                        ..
                    }) => breaker.trip(&item.meta.path),
                    Err(_) => {}
                }
                progress.file_done();
                (item.meta.path, result)
            }
        })
        .buffer_unordered(engine.file_concurrency.max(1))
        .collect()
        .await
}

/// A spawned task that is cancelled when whoever awaits it goes away (a cancelled job): its
/// files' guards then remove their temporary files.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

fn name_conflict(path: &ObjectPath) -> Skipped {
    Skipped {
        path: path.to_string(),
        reason: SkipReason::NameConflict,
        detail: Some("a directory of the same name exists; the directory wins".into()),
    }
}

/// Maps every object under `remote` to its place under `local`, skipping files whose name is
/// also a directory.
fn plan_directory(
    remote: &ObjectPath,
    local: &Path,
    objects: Vec<ObjectMeta>,
    planned: &mut Vec<Planned>,
    report: &mut TransferReport,
) {
    let relative: Vec<(ObjectMeta, ObjectPath)> = objects
        .into_iter()
        .filter_map(|meta| {
            let rel = meta.path.strip_prefix(remote)?;
            (!rel.is_root()).then_some((meta, rel))
        })
        .collect();
    let directories: HashSet<ObjectPath> = relative
        .iter()
        .flat_map(|(_, rel)| std::iter::successors(rel.parent(), |p| p.parent()))
        .filter(|p| !p.is_root())
        .collect();
    for (meta, rel) in relative {
        if directories.contains(&rel) {
            report.skipped.push(name_conflict(&meta.path));
            continue;
        }
        planned.push(Planned {
            dest: rel.to_local(local),
            meta,
        });
    }
}

/// Refuses to start a download that would leave less than `reserved` bytes free.
fn check_free_space(
    fs: &LocalFs,
    local: &Path,
    needed: u64,
    reserved: u64,
) -> Result<(), TransferError> {
    let Some((available, filesystem)) = free_space(fs, local) else {
        return Ok(());
    };
    if needed.saturating_add(reserved) > available {
        return Err(TransferError::DiskFull {
            path: local.to_path_buf(),
            needed,
            reserved,
            available,
            filesystem,
        });
    }
    Ok(())
}

/// Bytes an unprivileged writer can still use where `path` (or its nearest existing ancestor)
/// lives, and the mount point of that filesystem, for messages.
fn free_space(fs: &LocalFs, path: &Path) -> Option<(u64, PathBuf)> {
    use std::os::unix::fs::MetadataExt;
    let existing = path.ancestors().find(|p| fs.metadata(p).is_ok())?;
    let stat = fs.statvfs(existing).ok()?;
    let available = stat.blocks_available() * stat.fragment_size();
    let device = fs.metadata(existing).ok()?.dev();
    let filesystem = existing
        .ancestors()
        .take_while(|p| fs.metadata(p).is_ok_and(|m| m.dev() == device))
        .last()
        .unwrap_or(existing)
        .to_path_buf();
    Some((available, filesystem))
}

/// A file in place: its size and how it was checked.
type Fetched = (u64, Check);

/// Why one file failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileErrorKind {
    /// Local I/O on the compute node (a job exits 74).
    Local,
    /// The store answered with an error, or with the wrong bytes.
    Store,
    /// The store failed for longer than the retry policy allows.
    StoreGone,
    /// The object was replaced while it was being read.
    Changed,
}

#[derive(Debug)]
struct FileError {
    message: String,
    kind: FileErrorKind,
}

impl FileError {
    fn local(path: &Path, e: impl std::fmt::Display) -> Self {
        Self {
            message: format!("{}: {e}", path.display()),
            kind: FileErrorKind::Local,
        }
    }

    /// A write that failed: a full disk says what the file needed and what was free.
    fn write(fs: &LocalFs, item: &Planned, path: &Path, e: std::io::Error) -> Self {
        if e.raw_os_error() != Some(libc::ENOSPC) {
            return Self::local(path, e);
        }
        let free = match free_space(fs, &item.dest) {
            Some((available, filesystem)) => format!(
                "{} free on {}",
                super::progress::human_bytes(available),
                filesystem.display()
            ),
            None => "free space unknown".into(),
        };
        Self::local(
            &item.dest,
            format!(
                "disk full: the file needs {} ({} bytes), {free}; nothing kept",
                super::progress::human_bytes(item.meta.size),
                item.meta.size
            ),
        )
    }

    fn store(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            kind: FileErrorKind::Store,
        }
    }
}

/// Creates the parent directory of every planned file, once per directory (not once per
/// file). Returns the directories that could not be created, with the reason: their files fail.
async fn create_parents(fs: &LocalFs, local: &Path, todo: &[Planned]) -> HashMap<PathBuf, String> {
    let mut dirs: Vec<PathBuf> = todo
        .iter()
        .filter_map(|item| item.dest.parent().map(Path::to_path_buf))
        .collect();
    dirs.sort();
    dirs.dedup();
    let (fs, local) = (fs.clone(), local.to_path_buf());
    let created = tokio::task::spawn_blocking(move || {
        let mut failed = HashMap::new();
        for dir in dirs {
            if let Err(e) = create_dir_inside(&fs, &local, &dir) {
                failed.insert(dir, e.to_string());
            }
        }
        failed
    })
    .await;
    created.unwrap_or_else(|e| {
        // The thread panicked: every file fails rather than landing in an unchecked place.
        todo.iter()
            .filter_map(|item| item.dest.parent())
            .map(|dir| (dir.to_path_buf(), e.to_string()))
            .collect()
    })
}

/// Creates `dir` below the download root `local` one level at a time, never through a symlink:
/// a link planted inside the target (`a -> /etc`) must not carry a blob named `a/cron.d/x` out
/// of it. `local` itself is the user's choice and may be a link.
fn create_dir_inside(fs: &LocalFs, local: &Path, dir: &Path) -> std::io::Result<()> {
    let Ok(relative) = dir.strip_prefix(local) else {
        // A single object's parent: the user named that place.
        return fs.create_dir_all(dir);
    };
    fs.create_dir_all(local)?;
    let mut current = local.to_path_buf();
    for component in relative.components() {
        current.push(component);
        if let Err(e) = fs.create_dir(&current)
            && e.kind() != std::io::ErrorKind::AlreadyExists
        {
            return Err(e);
        }
        let meta = fs.symlink_metadata(&current)?;
        if meta.file_type().is_symlink() {
            return Err(std::io::Error::other(format!(
                "{} is a symbolic link; not followed",
                current.display()
            )));
        }
        if !meta.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                format!("{} is not a directory", current.display()),
            ));
        }
    }
    Ok(())
}

/// Downloads one object to a temporary name, verifies it, and renames it into place. Every
/// range is pinned to the version listed; an object replaced meanwhile is fetched again whole,
/// as its new version, once (a second change fails the file, naming it): never a mix.
async fn download_file(
    engine: &Engine,
    store: &dyn Store,
    item: &Planned,
    failed_dirs: &HashMap<PathBuf, String>,
    progress: &Progress,
) -> Result<Fetched, FileError> {
    if let Some(parent) = item.dest.parent() {
        if let Some(error) = failed_dirs.get(parent) {
            return Err(FileError::local(parent, error));
        }
    }
    match download_version(engine, store, item, progress).await {
        Err(e) if e.kind == FileErrorKind::Changed && item.meta.version.is_some() => {
            tracing::warn!(object = %item.meta.path, "replaced in storage during the download; \
                fetching its new version whole");
            let meta = store
                .head(&item.meta.path)
                .await
                .map_err(|e| FileError::store(e.to_string()))?;
            let again = Planned {
                meta,
                dest: item.dest.clone(),
            };
            download_version(engine, store, &again, progress)
                .await
                .map_err(|e| match e.kind {
                    FileErrorKind::Changed => FileError::store(format!(
                        "{}: replaced in storage twice while being downloaded; not kept",
                        item.meta.path
                    )),
                    _ => e,
                })
        }
        other => other,
    }
}

/// One version of an object into place.
async fn download_version(
    engine: &Engine,
    store: &dyn Store,
    item: &Planned,
    progress: &Progress,
) -> Result<Fetched, FileError> {
    let check = check_for(engine.verify, &item.meta)?;
    if item.meta.size <= engine.part_size {
        let check = download_small(engine, store, item, check, progress).await?;
        return Ok((item.meta.size, check));
    }
    // The guard removes the temporary file however this ends: error, or the future being
    // dropped because the job was cancelled.
    let mut partial = PartialFile::new(&engine.local, partial_name(&item.dest));
    let file = partial.create(item.meta.size).await?;
    let parts = (engine, store, item, check);
    let check = fetch_parts(parts, file, &partial.path, progress).await?;
    let (fs, from, to) = (
        engine.local.clone(),
        partial.path.clone(),
        item.dest.clone(),
    );
    tokio::task::spawn_blocking(move || fs.rename(&from, &to))
        .await
        .map_err(|e| FileError::local(&item.dest, e))?
        .map_err(|e| FileError::local(&item.dest, e))?;
    partial.renamed = true;
    Ok((item.meta.size, check))
}

/// A file of at most one part: one GET into memory (within the budget), verified there, then
/// written and renamed into place. A file that fails verification is never created. Returns
/// the check it passed (a CRC64 the answer carried, when nothing was known before).
async fn download_small(
    engine: &Engine,
    store: &dyn Store,
    item: &Planned,
    check: Check,
    progress: &Progress,
) -> Result<Check, FileError> {
    let size = item.meta.size;
    let _permit = engine.budget.acquire(size).await;
    let partial = partial_name(&item.dest);
    // The body's chunks as they came (no copy): written with one vectored write.
    let mut chunks = Vec::new();
    let learn = may_learn(engine, check);
    let mut sink = Sink::new(Target::Memory(&mut chunks), check, learn, progress);
    let written = fetch_range(engine, store, item, &mut sink, &partial, 0..size).await?;
    check_size(item, written)?;
    let check = sink.learned(item)?.unwrap_or(check);
    match (check, sink.md5.take(), sink.crc.take()) {
        (Check::Md5(expected), Some(md5), _) => verify_md5(item, expected, md5.finalize().into())?,
        (Check::Crc64(expected), _, Some(crc)) => verify_crc64(item, expected, crc.value())?,
        _ => {}
    }
    let written = if size <= INLINE_WRITE && engine.local.user().is_none() {
        write_small(&engine.local, &partial, &item.dest, &chunks)
    } else {
        // A user's rights cost a round trip to their process per open and rename: not on a
        // runtime worker.
        let (fs, dest) = (engine.local.clone(), item.dest.clone());
        tokio::task::spawn_blocking(move || write_small(&fs, &partial, &dest, &chunks))
            .await
            .map_err(|e| FileError::local(&item.dest, e))?
    };
    written.map_err(|(path, e)| match path == item.dest {
        true => FileError::local(&path, e),
        false => FileError::write(&engine.local, item, &path, e),
    })?;
    Ok(check)
}

/// Fetches a file of several parts into `file` (created at its full size), parts in parallel.
/// With a CRC64 to verify, each part's CRC is computed as its bytes arrive, by the task that
/// fetched it, and the parts' CRCs are combined at the end: no pass over the file. With an MD5
/// (which can only be computed in order), a hashing thread follows the contiguous prefix of the
/// file, and parts are requested lowest offset first, at most `hash_window` parts ahead of the
/// hash cursor: hashing overlaps the network instead of waiting for the lowest of many parts.
/// Returns the check the file passed (with nothing known before, a CRC64 that every part's
/// answer carried).
async fn fetch_parts(
    (engine, store, item, check): (&Engine, &dyn Store, &Planned, Check),
    file: std::fs::File,
    partial: &Path,
    progress: &Progress,
) -> Result<Check, FileError> {
    let part_size = engine.part_size.max(1);
    let ranges = parts(item.meta.size, part_size);
    // The hasher re-reads what was written through the same open file (never by its name).
    let hashing = match check {
        Check::Md5(_) => Some(InOrderHasher::start(
            file.try_clone().map_err(|e| FileError::local(partial, e))?,
            partial,
        )),
        _ => None,
    };
    let file = Arc::new(PartFile::new(file));
    let window = engine.hash_window.max(1) as u64 * part_size;
    // With hashing, parts take turns: part `i` is requested right after part `i - 1`, never
    // before (two parts released by the same hashing step would otherwise race).
    let (turn, turns) = tokio::sync::watch::channel(0u64);
    let mut fetched: Vec<(u64, u64, u64, Option<u64>)> = futures::stream::iter(ranges)
        .map(|(index, offset, len)| {
            let hashing = hashing.as_ref();
            let file = file.clone();
            let (turn, mut turns) = (&turn, turns.clone());
            async move {
                if let Some(hashing) = hashing {
                    let _ = turns.wait_for(|next| *next >= index).await;
                    hashing
                        .hashed_up_to((offset + part_size).saturating_sub(window))
                        .await;
                }
                let _permit = engine.budget.acquire(len.min(part_size)).await;
                turn.send_replace(index + 1);
                let mut writer = FileWriter::new(file, offset);
                // The MD5 is the hashing thread's; a CRC is this part's own.
                let part_check = match check {
                    Check::Md5(_) => Check::Nothing,
                    other => other,
                };
                let learn = may_learn(engine, check);
                let mut sink = Sink::new(Target::File(&mut writer), part_check, learn, progress);
                let n = fetch_range(
                    engine,
                    store,
                    item,
                    &mut sink,
                    partial,
                    offset..offset + len,
                )
                .await?;
                if let Some(hashing) = hashing {
                    hashing.done(offset, n);
                }
                let crc = sink.crc.as_ref().map_or(0, Crc64::value);
                let learned = match sink.learned(item)? {
                    Some(Check::Crc64(stored)) => Some(stored),
                    _ => None,
                };
                Ok::<_, FileError>((index, crc, n, learned))
            }
        })
        .buffer_unordered(engine.part_concurrency.max(1))
        .try_collect()
        .await?;
    check_size(item, fetched.iter().map(|(_, _, n, _)| n).sum())?;
    if let Some(hashing) = hashing {
        let digest = hashing.finish().await.map_err(|message| FileError {
            message,
            kind: FileErrorKind::Local,
        })?;
        if let Check::Md5(expected) = check {
            verify_md5(item, expected, digest)?;
        }
    }
    let check = match learned_by_all(item, &fetched)? {
        Some(stored) => Check::Crc64(stored),
        None => check,
    };
    if let Check::Crc64(expected) = check {
        fetched.sort_unstable_by_key(|(index, ..)| *index);
        let whole = crc64_of_parts(fetched.iter().map(|(_, crc, n, _)| (*crc, *n)));
        verify_crc64(item, expected, whole)?;
    }
    Ok(check)
}

/// Streams bytes `range` into `sink` through the store's resumable read (`read_range`): a
/// body that breaks, ends early or stalls is resumed from its first missing byte under the
/// engine's retry policy, so only this range's remainder is fetched again. The caller holds the
/// range's budget share.
async fn fetch_range(
    engine: &Engine,
    store: &dyn Store,
    item: &Planned,
    sink: &mut Sink<'_>,
    local_path: &Path,
    range: std::ops::Range<u64>,
) -> Result<u64, FileError> {
    let read = read_range(
        store,
        &item.meta.path,
        item.meta.version.as_deref(),
        range,
        &engine.retry,
        engine.stall_timeout,
        sink,
    )
    .await;
    let written = match read {
        Ok(written) => written,
        Err(RangeError::Store(e)) => {
            let kind = match &e {
                StoreError::Changed { .. } => FileErrorKind::Changed,
                e if e.is_outage() => FileErrorKind::StoreGone,
                _ => FileErrorKind::Store,
            };
            return Err(FileError {
                message: e.to_string(),
                kind,
            });
        }
        Err(RangeError::Sink(e)) => {
            return Err(FileError::write(&engine.local, item, local_path, e));
        }
    };
    sink.finish()
        .await
        .map_err(|e| FileError::write(&engine.local, item, local_path, e))?;
    Ok(written)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
