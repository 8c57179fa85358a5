//! Uploads: a directory's contents, or a list of files, under a prefix of a store.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use md5::{Digest, Md5};

use super::journal::ReferenceJournal;
use super::progress::Progress;
use super::{Engine, FileFailure, SkipReason, Skipped, TransferError, TransferReport, parts};
use crate::localfs::{LocalFs, Open};
use crate::model::ObjectPath;
use crate::store::checksum::{crc64, crc64_combine};
use crate::store::{Breaker, Checksums, PutOptions, ResumedUpload, Store, StoreError};

/// What to upload.
#[derive(Debug, Clone)]
pub enum UploadSource {
    /// The directory's *contents* go under the prefix (`ds.upload(src_dir, ...)`).
    Directory(PathBuf),
    /// Each file lands at `<prefix>/<file name>` (`ds.upload_files(files, ...)`).
    Files(Vec<PathBuf>),
}

struct Planned {
    source: PathBuf,
    dest: ObjectPath,
    size: u64,
    /// Abort rather than commit when the file changed while it was read (continuous upload:
    /// the script may rewrite a file at any moment; its next close uploads it again).
    abort_if_changed: bool,
}

/// Uploads `source` under `prefix`. With `overwrite` off, existing objects are kept and
/// reported as skipped; other objects under the prefix are never deleted. Paths in `exclude`
/// (the job directory) are not uploaded. Symbolic links inside a directory are not followed.
pub async fn upload(
    engine: &Engine,
    store: Arc<dyn Store>,
    source: &UploadSource,
    prefix: &ObjectPath,
    overwrite: bool,
    exclude: &[PathBuf],
) -> Result<TransferReport, TransferError> {
    upload_journaled(engine, store, source, prefix, overwrite, exclude, None).await
}

/// `upload`, recording multi-part uploads in a job's journal and finishing those an earlier,
/// interrupted run left unfinished (only the parts the store does not hold yet are sent).
pub async fn upload_journaled(
    engine: &Engine,
    store: Arc<dyn Store>,
    source: &UploadSource,
    prefix: &ObjectPath,
    overwrite: bool,
    exclude: &[PathBuf],
    journal: Option<ReferenceJournal<'_>>,
) -> Result<TransferReport, TransferError> {
    let started = Instant::now();
    let mut report = TransferReport::default();
    let planned = {
        let source = source.clone();
        let prefix = prefix.clone();
        let exclude = exclude.to_vec();
        let fs = engine.local.clone();
        tokio::task::spawn_blocking(move || plan(&fs, &source, &prefix, &exclude))
            .await
            .map_err(|e| TransferError::local("upload planning", std::io::Error::other(e)))??
    };
    let (planned, skipped) = planned;
    report.skipped = skipped;

    let total: u64 = planned.iter().map(|p| p.size).sum();
    let progress = Progress::start(engine.progress, "upload", planned.len() as u64, total);
    // Tripped when storage failed for longer than the retry policy allows: files not started
    // yet fail at once, so an upload of many files gives up in the policy's bound, not a
    // multiple.
    let breaker = Breaker::default();
    let results: Vec<(ObjectPath, Result<Outcome, String>)> = futures::stream::iter(planned)
        .map(|item| {
            let store = store.clone();
            let progress = progress.clone();
            let breaker = &breaker;
            async move {
                let outcome = match breaker.refusal() {
                    Some(refusal) => Err(refusal),
                    None => {
                        let file = FileUpload {
                            engine,
                            store: store.as_ref(),
                            item: &item,
                            breaker,
                        };
                        upload_file(&file, overwrite, &progress, journal).await
                    }
                };
                if let Ok(Outcome::Uploaded { .. }) = outcome {
                    breaker.reset();
                }
                match outcome {
                    Ok(Outcome::Skipped) => progress.forget_file(item.size),
                    _ => progress.file_done(),
                }
                (item.dest, outcome)
            }
        })
        .buffer_unordered(engine.file_concurrency.max(1))
        .collect()
        .await;
    progress.finish();
    for (dest, result) in results {
        match result {
            Ok(Outcome::Uploaded {
                bytes,
                parts_resumed,
            }) => {
                report.files += 1;
                report.bytes += bytes;
                report.parts_resumed += parts_resumed;
            }
            Ok(Outcome::Skipped) => report.skipped.push(Skipped {
                path: dest.to_string(),
                reason: SkipReason::Exists,
                detail: None,
            }),
            Ok(Outcome::Changed) => report.errors.push(FileFailure {
                path: dest.to_string(),
                error: "changed while being uploaded".into(),
                local: true,
            }),
            Err(error) => report.errors.push(FileFailure {
                path: dest.to_string(),
                error,
                local: false,
            }),
        }
    }
    report.skipped.sort_by(|a, b| a.path.cmp(&b.path));
    report.errors.sort_by(|a, b| a.path.cmp(&b.path));
    if let Some(journal) = journal
        && report.errors.is_empty()
    {
        journal.done().await;
    }
    report.duration = started.elapsed();
    Ok(report)
}

type Plan = (Vec<Planned>, Vec<Skipped>);

fn plan(
    fs: &LocalFs,
    source: &UploadSource,
    prefix: &ObjectPath,
    exclude: &[PathBuf],
) -> Result<Plan, TransferError> {
    let mut planned = Vec::new();
    let mut skipped = Vec::new();
    match source {
        UploadSource::Files(files) => {
            for file in files {
                // A file named explicitly is followed if it is a link, like `cp`.
                let meta = fs.metadata(file).map_err(|e| missing(file, e))?;
                if !meta.is_file() {
                    skipped.push(skip(file, SkipReason::NotAFile, None));
                    continue;
                }
                let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
                match prefix.child(name) {
                    Ok(dest) => planned.push(Planned {
                        source: file.clone(),
                        dest,
                        size: meta.len(),
                        abort_if_changed: false,
                    }),
                    Err(e) => {
                        skipped.push(skip(file, SkipReason::RefusedName, Some(e.to_string())))
                    }
                }
            }
        }
        UploadSource::Directory(dir) => {
            let meta = fs.metadata(dir).map_err(|e| missing(dir, e))?;
            if !meta.is_dir() {
                return Err(TransferError::local(
                    dir,
                    std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
                ));
            }
            walk(fs, dir, prefix, exclude, &mut planned, &mut skipped)?;
        }
    }
    Ok((planned, skipped))
}

fn missing(path: &Path, e: std::io::Error) -> TransferError {
    if e.kind() == std::io::ErrorKind::NotFound {
        TransferError::SourceMissing {
            path: path.to_path_buf(),
        }
    } else {
        TransferError::local(path, e)
    }
}

fn skip(path: &Path, reason: SkipReason, detail: Option<String>) -> Skipped {
    Skipped {
        path: path.display().to_string(),
        reason,
        detail,
    }
}

/// Depth-first walk without following symbolic links.
fn walk(
    fs: &LocalFs,
    dir: &Path,
    prefix: &ObjectPath,
    exclude: &[PathBuf],
    planned: &mut Vec<Planned>,
    skipped: &mut Vec<Skipped>,
) -> Result<(), TransferError> {
    let mut entries = fs.read_dir(dir).map_err(|e| TransferError::local(dir, e))?;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    for entry in entries {
        let path = dir.join(&entry.name);
        if exclude.contains(&path) {
            continue;
        }
        let Some(name) = entry.name.to_str().map(str::to_owned) else {
            skipped.push(skip(
                &path,
                SkipReason::RefusedName,
                Some("not valid UTF-8".into()),
            ));
            continue;
        };
        if name.contains(crate::store::local::PARTIAL_MARKER) {
            continue;
        }
        let dest = match prefix.child(&name) {
            Ok(dest) => dest,
            Err(e) => {
                skipped.push(skip(&path, SkipReason::RefusedName, Some(e.to_string())));
                continue;
            }
        };
        let meta = fs
            .symlink_metadata(&path)
            .map_err(|e| TransferError::local(&path, e))?;
        if meta.is_dir() {
            walk(fs, &path, &dest, exclude, planned, skipped)?;
        } else if meta.is_file() {
            planned.push(Planned {
                source: path,
                dest,
                size: meta.len(),
                abort_if_changed: false,
            });
        } else if meta.file_type().is_symlink() {
            let target = fs
                .read_link(&path)
                .map(|t| format!("points to {}; not followed", t.display()))
                .ok();
            skipped.push(skip(&path, SkipReason::Symlink, target));
        } else {
            skipped.push(skip(&path, SkipReason::NotAFile, None));
        }
    }
    Ok(())
}

enum Outcome {
    Uploaded {
        bytes: u64,
        parts_resumed: u64,
    },
    Skipped,
    /// Read while it changed (only with `abort_if_changed`): nothing was committed.
    Changed,
}

/// How the upload of one file to one name ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OneFile {
    Uploaded {
        size: u64,
    },
    /// Not there any more, or not a regular file (links are not followed).
    Gone,
    /// It changed while it was read: nothing was committed.
    Changed,
    /// Open for writing by some process (asked for): its next close will say when it is done.
    OpenForWriting,
}

/// Uploads `source` to exactly `dest` (overwriting), through the journal: continuous upload's
/// unit of work. A file that changes while it is read is not committed.
pub async fn upload_one(
    engine: &Engine,
    store: &dyn Store,
    source: &Path,
    dest: &ObjectPath,
    journal: Option<ReferenceJournal<'_>>,
    unless_open_for_writing: bool,
) -> Result<OneFile, String> {
    let meta = match engine.local.symlink_metadata(source) {
        Ok(meta) if meta.is_file() => meta,
        Ok(_) => return Ok(OneFile::Gone),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(OneFile::Gone),
        Err(e) => return Err(format!("{}: {e}", source.display())),
    };
    let item = Planned {
        source: source.to_path_buf(),
        dest: dest.clone(),
        size: meta.len(),
        abort_if_changed: true,
    };
    if unless_open_for_writing && open_for_writing(&engine.local, source) {
        return Ok(OneFile::OpenForWriting);
    }
    let breaker = Breaker::default();
    let file = FileUpload {
        engine,
        store,
        item: &item,
        breaker: &breaker,
    };
    let progress = Progress::start(super::ProgressMode::Off, "upload", 1, item.size);
    match upload_file(&file, true, &progress, journal).await? {
        Outcome::Uploaded { bytes, .. } => Ok(OneFile::Uploaded { size: bytes }),
        Outcome::Changed => Ok(OneFile::Changed),
        Outcome::Skipped => unreachable!("overwrite is on"),
    }
}

/// Whether some process has `path` open for writing: the kernel grants no read lease then
/// (`fcntl(F_SETLEASE, F_RDLCK)`: EAGAIN). The lease is given back at once. A filesystem
/// without leases answers otherwise, and the file counts as closed.
fn open_for_writing(fs: &LocalFs, path: &Path) -> bool {
    let Ok(file) = fs.open(path, Open::ReadNoFollow) else {
        return false;
    };
    match take_read_lease(&file) {
        Ok(true) => {
            give_back_lease(&file);
            false
        }
        Ok(false) => true,
        Err(_) => false,
    }
}

/// Takes a read lease on `file`: `Ok(false)` when a writer has it open. A writer opening it
/// while the lease is held makes the kernel signal the holder, by default with SIGIO, which
/// would end this process; SIGURG, asked for instead, is ignored by default.
fn take_read_lease(file: &std::fs::File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a descriptor the caller owns, with integer arguments.
    const F_SETSIG: libc::c_int = 10; // fcntl.h (GNU); the libc crate lacks it
    if unsafe { libc::fcntl(file.as_raw_fd(), F_SETSIG, libc::SIGURG) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    match unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLEASE, libc::F_RDLCK) } {
        0 => Ok(true),
        _ if std::io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN) => Ok(false),
        _ => Err(std::io::Error::last_os_error()),
    }
}

fn give_back_lease(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a descriptor the caller owns, with integer arguments.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
}

/// What says a file was not written to: its size, modification and change times.
fn stamp(meta: &std::fs::Metadata) -> (u64, i64, i64, i64, i64) {
    use std::os::unix::fs::MetadataExt;
    (
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
    )
}

/// One file's upload, and the breaker where a give-up of the store is noted for the files
/// after it.
struct FileUpload<'a> {
    engine: &'a Engine,
    store: &'a dyn Store,
    item: &'a Planned,
    breaker: &'a Breaker,
}

impl FileUpload<'_> {
    /// A store error as the file's failure; an outage trips the breaker so no new file waits
    /// it out.
    fn store_error(&self, e: StoreError) -> String {
        if e.is_outage() {
            self.breaker.trip(&self.item.dest);
        }
        e.to_string()
    }
}

async fn upload_file(
    this: &FileUpload<'_>,
    overwrite: bool,
    progress: &Progress,
    journal: Option<ReferenceJournal<'_>>,
) -> Result<Outcome, String> {
    let (engine, store, item) = (this.engine, this.store, this.item);
    let store_error = |e: StoreError| this.store_error(e);
    if !overwrite {
        match store.head(&item.dest).await {
            Ok(_) => return Ok(Outcome::Skipped),
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(store_error(e)),
        }
    }
    let part_size = engine.part_size.min(store.max_part_size()).max(1);
    let local_error = |e: std::io::Error| format!("{}: {e}", item.source.display());
    // Continuous upload reads a folder the script is still changing: a name swapped for a link
    // since it was listed is not followed.
    let how = match item.abort_if_changed {
        true => Open::ReadNoFollow,
        false => Open::Read,
    };
    let file = engine.local.open(&item.source, how).map_err(local_error)?;
    let opened = stamp(&file.metadata().map_err(local_error)?);
    let changed = |file: &std::fs::File| {
        item.abort_if_changed
            && file.metadata().map_or(true, |meta| {
                stamp(&meta) != opened || meta.len() != item.size
            })
    };
    if item.size <= part_size {
        // Small file: one request.
        let file = Arc::new(file);
        if let Some(rate) = &engine.rate {
            rate.take(item.size).await;
        }
        let _permit = engine.budget.acquire(item.size).await;
        let (data, hasher, crc) = read_at(&file, &item.source, 0, item.size, Md5::new()).await?;
        if changed(&file) {
            return Ok(Outcome::Changed);
        }
        let checksums = Checksums {
            md5: Some(hasher.finalize().into()),
            crc64: Some(crc),
        };
        store
            .put(&item.dest, data, &PutOptions { checksums })
            .await
            .map_err(store_error)?;
        progress.add_bytes(item.size);
        return Ok(Outcome::Uploaded {
            bytes: item.size,
            parts_resumed: 0,
        });
    }

    let (upload, staged) = match journal {
        Some(journal) => {
            use std::os::unix::fs::MetadataExt;
            let meta = file.metadata().map_err(local_error)?;
            let mtime_ns = meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec());
            let mut start = journal.start(&item.dest, &item.source, item.size, mtime_ns, part_size);
            // A changed source (or a new upload) starts over under a new upload id: the blocks
            // staged for the earlier content are never counted as this one's, nor committed.
            let resumed = match journal.unfinished_id(&start) {
                Some(id) => store
                    .resume_upload(&item.dest, item.size, part_size, &id)
                    .await
                    .map_err(store_error)?,
                None => ResumedUpload {
                    upload: store
                        .start_upload(&item.dest, item.size)
                        .await
                        .map_err(store_error)?,
                    staged: BTreeSet::new(),
                },
            };
            start.upload_id = resumed.upload.upload_id();
            if !journal.is_unfinished(&start) {
                journal.started(start).await;
            }
            (resumed.upload, resumed.staged)
        }
        None => {
            let upload = store
                .start_upload(&item.dest, item.size)
                .await
                .map_err(store_error)?;
            (upload, BTreeSet::new())
        }
    };
    let file = Arc::new(file);
    // Parts are read in order (the MD5 needs every byte in sequence, and is computed by the
    // blocking call that reads them, while the bytes are hot in the cache) and sent
    // concurrently. Each part's CRC64 is computed by the same read and combined into the
    // whole object's. Parts already staged are read for the checksums only.
    let mut hasher = Some(Md5::new());
    let mut whole_crc = 0u64;
    let mut in_flight = FuturesUnordered::new();
    let mut failure = None;
    for (index, offset, len) in parts(item.size, part_size) {
        // Parts in flight are driven while the rate bound and the budget are awaited: they
        // hold bytes of the budget, and other files' parts may hold the rest (several large
        // files at once).
        // Free budget and no rate bound: straight on, the parts in flight are sent together
        // when the window is full (as before).
        let rate = engine.rate.as_ref().filter(|_| !staged.contains(&index));
        let ready = match rate {
            None => engine.budget.try_acquire(len),
            Some(_) => None,
        };
        let wait = async {
            if let Some(permit) = ready {
                return permit;
            }
            if let Some(rate) = rate {
                rate.take(len).await;
            }
            engine.budget.acquire(len).await
        };
        let mut wait = std::pin::pin!(wait);
        let permit = loop {
            tokio::select! {
                biased;
                permit = &mut wait => break Some(permit),
                settled = settle(&mut in_flight, progress), if !in_flight.is_empty() => {
                    if let Err(e) = settled {
                        failure = Some(e);
                        break None;
                    }
                }
            }
        };
        let Some(permit) = permit else { break };
        let running = hasher
            .take()
            .expect("the hasher comes back with every read");
        let data = match read_at(&file, &item.source, offset, len, running).await {
            Ok((data, running, crc)) => {
                hasher = Some(running);
                whole_crc = crc64_combine(whole_crc, crc, len);
                data
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        if staged.contains(&index) {
            progress.add_bytes(len);
            continue;
        }
        let upload = &upload;
        let dest = &item.dest;
        in_flight.push(async move {
            let result = upload.put_part(index, offset, data).await;
            drop(permit);
            result.map_err(store_error)?;
            if let Some(journal) = journal {
                journal.staged(dest, index).await;
            }
            Ok(len)
        });
        while in_flight.len() >= engine.part_concurrency.max(1) {
            if let Err(e) = settle(&mut in_flight, progress).await {
                failure = Some(e);
                break;
            }
        }
        if failure.is_some() {
            break;
        }
    }
    while failure.is_none() && !in_flight.is_empty() {
        if let Err(e) = settle(&mut in_flight, progress).await {
            failure = Some(e);
        }
    }
    drop(in_flight);
    if let Some(error) = failure {
        let _ = upload.abort().await;
        return Err(error);
    }
    if changed(&file) {
        let _ = upload.abort().await;
        return Ok(Outcome::Changed);
    }
    let md5: [u8; 16] = hasher
        .expect("the hasher comes back with every read")
        .finalize()
        .into();
    let checksums = Checksums {
        md5: Some(md5),
        crc64: Some(whole_crc),
    };
    upload.complete(checksums).await.map_err(store_error)?;
    if let Some(journal) = journal {
        journal.committed(&item.dest, md5).await;
    }
    Ok(Outcome::Uploaded {
        bytes: item.size,
        parts_resumed: staged.len() as u64,
    })
}

async fn settle<F>(in_flight: &mut FuturesUnordered<F>, progress: &Progress) -> Result<(), String>
where
    F: std::future::Future<Output = Result<u64, String>>,
{
    match in_flight.next().await {
        Some(Ok(len)) => {
            progress.add_bytes(len);
            Ok(())
        }
        Some(Err(e)) => Err(e),
        None => Ok(()),
    }
}

/// Reads exactly `len` bytes at `offset` and adds them to `hasher`, on a blocking thread; a
/// short read means the file changed under us. Also returns the bytes' CRC64.
async fn read_at(
    file: &Arc<std::fs::File>,
    path: &Path,
    offset: u64,
    len: u64,
    mut hasher: Md5,
) -> Result<(Bytes, Md5, u64), String> {
    let file = file.clone();
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len as usize];
        let mut filled = 0usize;
        while filled < buf.len() {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => {
                    return Err(format!(
                        "{}: file shrank while being uploaded (read {} of {len} bytes at offset {offset})",
                        path.display(),
                        filled
                    ));
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
        }
        hasher.update(&buf);
        let crc = crc64(&buf);
        Ok((Bytes::from(buf), hasher, crc))
    })
    .await
    .map_err(|e| e.to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer opening the file while the lease is held (the script, between the check and
    /// the give-back) must not end the agent: the kernel's lease-break signal is one ignored
    /// by default. (With SIGIO, the default, this test's process dies.)
    #[test]
    fn a_lease_broken_by_a_writer_does_not_kill_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "x").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        assert!(take_read_lease(&file).unwrap(), "no writer yet: leased");
        let writer = {
            let path = path.clone();
            // Blocks until the lease is given back (the kernel signals the holder first).
            std::thread::spawn(move || std::fs::OpenOptions::new().write(true).open(path))
        };
        // The kernel has signalled this process once it shows the lease as breaking.
        let me = std::process::id().to_string();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !std::fs::read_to_string("/proc/locks")
            .unwrap()
            .lines()
            .any(|l| {
                l.contains("LEASE")
                    && l.contains("BREAKING")
                    && l.split_whitespace().any(|f| f == me)
            })
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the lease never broke"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        give_back_lease(&file);
        let opened = writer.join().unwrap().unwrap();
        // Now a writer has it open: no lease.
        let again = std::fs::File::open(&path).unwrap();
        assert!(!take_read_lease(&again).unwrap());
        drop(opened);
    }
}
