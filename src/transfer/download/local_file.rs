//! The local side of a download: the hidden temporary file a large download lands in, the
//! batched writer of its ranges, and the in-order MD5 of a file written out of order.

use std::io::IoSlice;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use md5::{Digest, Md5};

use super::FileError;
use crate::localfs::LocalFs;
use crate::store::local::create_partial;

/// A temporary download file, deleted on drop unless it was renamed into place.
pub(super) struct PartialFile {
    fs: LocalFs,
    pub(super) path: PathBuf,
    pub(super) renamed: bool,
    /// Set on drop: a creation still running on a blocking thread when the download is
    /// abandoned removes what it created, so no temporary file outlives a cancelled job.
    abandoned: Arc<AtomicBool>,
}

impl PartialFile {
    pub(super) fn new(fs: &LocalFs, path: PathBuf) -> Self {
        Self {
            fs: fs.clone(),
            path,
            renamed: false,
            abandoned: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Creates the file at its full size, so ranges can land at their offsets in any order.
    pub(super) async fn create(&self, size: u64) -> Result<std::fs::File, FileError> {
        let (fs, path) = (self.fs.clone(), self.path.clone());
        let abandoned = self.abandoned.clone();
        tokio::task::spawn_blocking(move || {
            let created = create_partial(&fs, &path).and_then(|file| {
                file.set_len(size)?;
                Ok(file)
            });
            // Either this sees the flag, or the guard's drop comes later and sees the file.
            if abandoned.load(Ordering::SeqCst) {
                let _ = fs.remove_file(&path);
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
            let _ = self.fs.remove_file(&self.path);
        }
    }
}

/// Bytes a `FileWriter` collects before handing them to a blocking thread.
const WRITE_BATCH: usize = 1024 * 1024;

/// A file being downloaded in parts, and the lock its writers take turns with. Buffered writes
/// to one file serialize on its inode lock in the kernel anyway; 16 parts' writers contending
/// for it spun there (`rwsem_spin_on_owner`: a fifth of a 1 GiB download's CPU, and 2–4 s of
/// system time). Waiting here sleeps instead.
pub(super) struct PartFile {
    file: std::fs::File,
    writes: std::sync::Mutex<()>,
}

impl PartFile {
    pub(super) fn new(file: std::fs::File) -> Self {
        Self {
            file,
            writes: std::sync::Mutex::new(()),
        }
    }

    /// Writes `batch` at `at` with as few system calls as it takes (one `pwritev` per batch,
    /// not one write per network chunk).
    fn write_batch_at(&self, batch: &[Bytes], at: u64) -> std::io::Result<()> {
        let _turn = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        write_chunks(batch, |slices, written| {
            nix::sys::uio::pwritev(&self.file, slices, (at + written) as libc::off_t)
                .map_err(Into::into)
        })
    }
}

/// Writes every byte of `chunks` through `write` (a vectored write: all the chunks in one
/// system call when it takes them), which is given the slices still to write and the bytes
/// written so far.
fn write_chunks(
    chunks: &[Bytes],
    mut write: impl FnMut(&[IoSlice<'_>], u64) -> std::io::Result<usize>,
) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = chunks.iter().map(|chunk| IoSlice::new(chunk)).collect();
    let mut left = &mut slices[..];
    let mut written = 0u64;
    while !left.is_empty() {
        let n = write(left, written)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        written += n as u64;
        IoSlice::advance_slices(&mut left, n);
    }
    Ok(())
}

/// Files up to this size are written and renamed on the task that fetched them: three system
/// calls of a few microseconds, where a hand-off to a blocking thread and back cost two thread
/// wake-ups per file (the largest client cost of a download of many small files).
pub(super) const INLINE_WRITE: u64 = 256 * 1024;

/// Writes a verified small file, received as `chunks`, under its temporary name `partial` and
/// renames it to `dest`; nothing is left behind when either fails.
pub(super) fn write_small(
    fs: &LocalFs,
    partial: &Path,
    dest: &Path,
    chunks: &[Bytes],
) -> Result<(), (PathBuf, std::io::Error)> {
    use std::io::Write;
    let written = create_partial(fs, partial)
        .and_then(|mut file| write_chunks(chunks, |slices, _| file.write_vectored(slices)));
    if let Err(e) = written {
        let _ = fs.remove_file(partial);
        return Err((partial.to_path_buf(), e));
    }
    fs.rename(partial, dest).map_err(|e| {
        let _ = fs.remove_file(partial);
        (dest.to_path_buf(), e)
    })
}

/// Writes a range's chunks at their offsets in batches of about 1 MiB on a blocking thread,
/// one batch being written while the next fills. (`tokio::fs::File` would copy every network
/// chunk, of a few KiB, and hand each to a blocking thread of its own.) Holds at most two
/// batches: well within the part's share of the budget.
pub(super) struct FileWriter {
    file: Arc<PartFile>,
    /// Where the next batch goes.
    offset: u64,
    batch: Vec<Bytes>,
    batched: usize,
    writing: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl FileWriter {
    pub(super) fn new(file: Arc<PartFile>, offset: u64) -> Self {
        Self {
            file,
            offset,
            batch: Vec::new(),
            batched: 0,
            writing: None,
        }
    }

    pub(super) async fn write(&mut self, chunk: Bytes) -> std::io::Result<()> {
        self.batched += chunk.len();
        self.batch.push(chunk);
        if self.batched >= WRITE_BATCH {
            self.submit().await?;
        }
        Ok(())
    }

    /// Waits for the previous batch, then starts writing the current one.
    async fn submit(&mut self) -> std::io::Result<()> {
        self.wait().await?;
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let at = self.offset;
        self.offset += self.batched as u64;
        self.batched = 0;
        let file = self.file.clone();
        self.writing = Some(tokio::task::spawn_blocking(move || {
            file.write_batch_at(&batch, at)
        }));
        Ok(())
    }

    async fn wait(&mut self) -> std::io::Result<()> {
        if let Some(writing) = self.writing.take() {
            writing.await.map_err(std::io::Error::other)??;
        }
        Ok(())
    }

    /// Everything written so far is in the file.
    pub(super) async fn finish(&mut self) -> std::io::Result<()> {
        self.submit().await?;
        self.wait().await
    }
}

/// Hashes a file being written out of order, in order: completed ranges are reported with
/// `done`, and a blocking thread hashes each as soon as everything before it is complete
/// (re-reading it from the page cache). How far it got is published for `hashed_up_to`.
pub(super) struct InOrderHasher {
    ranges: std::sync::mpsc::Sender<(u64, u64)>,
    hashed: tokio::sync::watch::Receiver<u64>,
    thread: tokio::task::JoinHandle<Result<[u8; 16], String>>,
}

impl InOrderHasher {
    pub(super) fn start(file: std::fs::File, path: &Path) -> Self {
        let (ranges, received) = std::sync::mpsc::channel::<(u64, u64)>();
        let (progress, hashed) = tokio::sync::watch::channel(0u64);
        let path = path.to_path_buf();
        let thread = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
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
                    progress.send_replace(next);
                }
            }
            Ok(hasher.finalize().into())
        });
        Self {
            ranges,
            hashed,
            thread,
        }
    }

    pub(super) fn done(&self, offset: u64, len: u64) {
        let _ = self.ranges.send((offset, len));
    }

    /// Waits until the first `offset` bytes are hashed (or hashing stopped: `finish` says why).
    pub(super) async fn hashed_up_to(&self, offset: u64) {
        if offset == 0 {
            return;
        }
        let _ = self
            .hashed
            .clone()
            .wait_for(|hashed| *hashed >= offset)
            .await;
    }

    pub(super) async fn finish(self) -> Result<[u8; 16], String> {
        drop(self.ranges);
        self.thread.await.map_err(|e| e.to_string())?
    }
}
