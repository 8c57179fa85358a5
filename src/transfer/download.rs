//! Downloads: a prefix (directory-aware) or a single object into a local directory.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use md5::{Digest, Md5};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::progress::Progress;
use super::{Engine, FileFailure, SkipReason, Skipped, TransferError, TransferReport, parts};
use crate::store::local::partial_name;
use crate::store::{ObjectMeta, ObjectPath, Store, StoreError, list_all};

/// One object to fetch and where it goes.
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
    let listing = list_all(store.as_ref(), remote, false).await?;
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
        match std::fs::symlink_metadata(&item.dest) {
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
    check_free_space(local, needed, engine.reserved_free_disk_bytes)?;

    let progress = Progress::start(engine.progress, "download", todo.len() as u64, needed);
    let results: Vec<(ObjectPath, Result<u64, FileError>)> = futures::stream::iter(todo)
        .map(|item| {
            let store = store.clone();
            let progress = progress.clone();
            async move {
                let result = download_file(engine, store.as_ref(), &item, &progress).await;
                progress.file_done();
                (item.meta.path, result)
            }
        })
        .buffer_unordered(engine.file_concurrency.max(1))
        .collect()
        .await;
    progress.finish();
    for (path, result) in results {
        match result {
            Ok(bytes) => {
                report.files += 1;
                report.bytes += bytes;
            }
            Err(error) => report.errors.push(FileFailure {
                path: path.to_string(),
                error: error.message,
                local: error.local,
            }),
        }
    }
    report.skipped.sort_by(|a, b| a.path.cmp(&b.path));
    report.errors.sort_by(|a, b| a.path.cmp(&b.path));
    report.duration = started.elapsed();
    Ok(report)
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
fn check_free_space(local: &Path, needed: u64, reserved: u64) -> Result<(), TransferError> {
    // The nearest existing ancestor tells which filesystem the files land on.
    let Some(existing) = local.ancestors().find(|p| p.exists()) else {
        return Ok(());
    };
    let stat = nix::sys::statvfs::statvfs(existing)
        .map_err(|e| TransferError::local(existing, std::io::Error::from(e)))?;
    let available = stat.blocks_available() as u64 * stat.fragment_size() as u64;
    if needed.saturating_add(reserved) > available {
        return Err(TransferError::DiskFull {
            path: local.to_path_buf(),
            needed,
            reserved,
            available,
        });
    }
    Ok(())
}

/// Why one file failed: local I/O on the compute node (a job exits 74) or the store's side.
struct FileError {
    message: String,
    local: bool,
}

impl FileError {
    fn local(path: &Path, e: impl std::fmt::Display) -> Self {
        Self {
            message: format!("{}: {e}", path.display()),
            local: true,
        }
    }

    fn store(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            local: false,
        }
    }
}

/// Downloads one object to a temporary name, verifies it, and renames it into place.
async fn download_file(
    engine: &Engine,
    store: &dyn Store,
    item: &Planned,
    progress: &Progress,
) -> Result<u64, FileError> {
    if let Some(parent) = item.dest.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| FileError::local(parent, e))?;
    }
    // The guard removes the temporary file however this ends: error, or the future being
    // dropped because the job was cancelled.
    let mut partial = PartialFile::new(partial_name(&item.dest));
    partial.create(item.meta.size).await?;
    fetch_into(engine, store, item, &partial.path, progress).await?;
    tokio::fs::rename(&partial.path, &item.dest)
        .await
        .map_err(|e| FileError::local(&item.dest, e))?;
    partial.renamed = true;
    Ok(item.meta.size)
}

/// A temporary download file, deleted on drop unless it was renamed into place.
struct PartialFile {
    path: PathBuf,
    renamed: bool,
    /// Set on drop: a creation still running on a blocking thread when the download is
    /// abandoned removes what it created, so no temporary file outlives a cancelled job.
    abandoned: Arc<AtomicBool>,
}

impl PartialFile {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            renamed: false,
            abandoned: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Creates the file at its full size, so ranges can land at their offsets in any order.
    async fn create(&self, size: u64) -> Result<(), FileError> {
        let path = self.path.clone();
        let abandoned = self.abandoned.clone();
        tokio::task::spawn_blocking(move || {
            let created = std::fs::File::create(&path).and_then(|file| file.set_len(size));
            // Either this sees the flag, or the guard's drop comes later and sees the file.
            if abandoned.load(Ordering::SeqCst) {
                let _ = std::fs::remove_file(&path);
            }
            created.map_err(|e| FileError::local(&path, e))
        })
        .await
        .map_err(|e| FileError::local(&self.path, e))?
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.renamed {
            self.abandoned.store(true, Ordering::SeqCst);
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

async fn fetch_into(
    engine: &Engine,
    store: &dyn Store,
    item: &Planned,
    partial: &Path,
    progress: &Progress,
) -> Result<(), FileError> {
    let size = item.meta.size;
    let ranges = parts(size, engine.part_size);
    let digest = if ranges.len() <= 1 {
        // One stream: hash while writing.
        let mut hasher = Md5::new();
        let written = fetch_range(
            engine,
            store,
            item,
            partial,
            0,
            size,
            progress,
            Some(&mut hasher),
        )
        .await?;
        check_size(item, written)?;
        hasher.finalize().into()
    } else {
        // Parts complete out of order; a hashing thread follows the contiguous prefix of the
        // file (re-read from the page cache) so that verification overlaps the download
        // instead of following it.
        let hashing = item.meta.content_md5.map(|_| InOrderHasher::start(partial));
        let written: u64 = futures::stream::iter(ranges)
            .map(|(_, offset, len)| {
                let hashing = hashing.as_ref();
                async move {
                    let n = fetch_range(engine, store, item, partial, offset, len, progress, None)
                        .await?;
                    if let Some(hashing) = hashing {
                        hashing.done(offset, n);
                    }
                    Ok::<u64, FileError>(n)
                }
            })
            .buffer_unordered(engine.part_concurrency.max(1))
            .try_fold(0u64, |sum, n| async move { Ok(sum + n) })
            .await?;
        check_size(item, written)?;
        match hashing {
            None => return Ok(()),
            Some(hashing) => hashing.finish().await.map_err(|message| FileError {
                message,
                local: true,
            })?,
        }
    };
    if let Some(expected) = item.meta.content_md5 {
        if expected != digest {
            return Err(FileError::store(format!(
                "{}: Content-MD5 mismatch (stored {}, received {}); file not kept",
                item.meta.path,
                hex(&expected),
                hex(&digest)
            )));
        }
    }
    Ok(())
}

fn check_size(item: &Planned, written: u64) -> Result<(), FileError> {
    if written != item.meta.size {
        return Err(FileError::store(format!(
            "{}: received {written} bytes, expected {}",
            item.meta.path, item.meta.size
        )));
    }
    Ok(())
}

/// Streams bytes `offset..offset+len` into the file at the same offset. A stream that breaks
/// mid-body (reset, timeout, 5xx) is resumed from the first missing byte under the engine's
/// retry policy: only this range's remainder is fetched again. Memory held: one budget share
/// for the range while it streams.
#[allow(clippy::too_many_arguments)]
async fn fetch_range(
    engine: &Engine,
    store: &dyn Store,
    item: &Planned,
    partial: &Path,
    offset: u64,
    len: u64,
    progress: &Progress,
    mut hasher: Option<&mut Md5>,
) -> Result<u64, FileError> {
    let _permit = engine.budget.acquire(len.min(engine.part_size)).await;
    let local_error = |e: std::io::Error| FileError::local(partial, e);
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .open(partial)
        .await
        .map_err(local_error)?;
    let mut written = 0u64;
    let started = std::time::Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let attempt = stream_range(
            store,
            engine.stall_timeout,
            item,
            &mut file,
            offset + written..offset + len,
            &mut written,
            progress,
            hasher.as_deref_mut(),
        )
        .await;
        match attempt {
            Ok(()) => break,
            Err(RangeError::Store(e)) if engine.retry.allows(attempts, started, &e) => {
                let delay = engine.retry.backoff(attempts - 1, e.retry_after());
                tracing::info!(path = %item.meta.path, offset = offset + written, error = %e,
                    "range broke; resuming after {delay:?}");
                tokio::time::sleep(delay).await;
            }
            Err(RangeError::Store(e)) => return Err(FileError::store(e.to_string())),
            Err(RangeError::Local(e)) => return Err(local_error(e)),
            Err(RangeError::TooLong) => {
                return Err(FileError::store(format!(
                    "{}: the store sent more bytes than requested",
                    item.meta.path
                )));
            }
        }
    }
    file.flush().await.map_err(local_error)?;
    Ok(written)
}

enum RangeError {
    Store(StoreError),
    Local(std::io::Error),
    TooLong,
}

/// One attempt at `range`, appending to `written` as bytes land.
#[allow(clippy::too_many_arguments)]
async fn stream_range(
    store: &dyn Store,
    stall_timeout: std::time::Duration,
    item: &Planned,
    file: &mut tokio::fs::File,
    range: std::ops::Range<u64>,
    written: &mut u64,
    progress: &Progress,
    mut hasher: Option<&mut Md5>,
) -> Result<(), RangeError> {
    let wanted = range.end - range.start;
    file.seek(std::io::SeekFrom::Start(range.start))
        .await
        .map_err(RangeError::Local)?;
    let stalled = |what: &str| {
        RangeError::Store(StoreError::Network {
            message: format!(
                "{}: no data for {} s {what}",
                item.meta.path,
                stall_timeout.as_secs()
            ),
        })
    };
    let mut stream = tokio::time::timeout(stall_timeout, store.get_range(&item.meta.path, range))
        .await
        .map_err(|_| stalled("waiting for the response"))?
        .map_err(RangeError::Store)?;
    let mut received = 0u64;
    loop {
        let next = tokio::time::timeout(stall_timeout, stream.try_next())
            .await
            .map_err(|_| stalled("in the body"))?;
        let Some(chunk) = next.map_err(RangeError::Store)? else {
            break;
        };
        if received + chunk.len() as u64 > wanted {
            return Err(RangeError::TooLong);
        }
        file.write_all(&chunk).await.map_err(RangeError::Local)?;
        if let Some(hasher) = hasher.as_deref_mut() {
            hasher.update(&chunk);
        }
        received += chunk.len() as u64;
        *written += chunk.len() as u64;
        progress.add_bytes(chunk.len() as u64);
    }
    if received < wanted {
        // A body that ends early without an error is a truncated response: resume it.
        return Err(RangeError::Store(StoreError::Network {
            message: format!(
                "{}: body ended after {received} of {wanted} bytes",
                item.meta.path
            ),
        }));
    }
    Ok(())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hashes a file being written out of order, in order: completed ranges are reported with
/// `done`, and a blocking thread hashes each as soon as everything before it is complete.
struct InOrderHasher {
    ranges: std::sync::mpsc::Sender<(u64, u64)>,
    thread: tokio::task::JoinHandle<Result<[u8; 16], String>>,
}

impl InOrderHasher {
    fn start(path: &Path) -> Self {
        let (ranges, received) = std::sync::mpsc::channel::<(u64, u64)>();
        let path = path.to_path_buf();
        let thread = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let file =
                std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut hasher = Md5::new();
            let mut pending = std::collections::BTreeMap::new();
            let mut next = 0u64;
            let mut buf = vec![0u8; 1024 * 1024];
            for (offset, len) in received {
                pending.insert(offset, len);
                while let Some(len) = pending.remove(&next) {
                    let end = next + len;
                    while next < end {
                        let want = ((end - next) as usize).min(buf.len());
                        file.read_exact_at(&mut buf[..want], next)
                            .map_err(|e| format!("{}: {e}", path.display()))?;
                        hasher.update(&buf[..want]);
                        next += want as u64;
                    }
                }
            }
            Ok(hasher.finalize().into())
        });
        Self { ranges, thread }
    }

    fn done(&self, offset: u64, len: u64) {
        let _ = self.ranges.send((offset, len));
    }

    async fn finish(self) -> Result<[u8; 16], String> {
        drop(self.ranges);
        self.thread.await.map_err(|e| e.to_string())?
    }
}
