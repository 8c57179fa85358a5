//! The `local` backend: a directory on local disk, NFS or Lustre.
//!
//! Writes never expose a partial file: data goes to a hidden temporary name in the destination
//! directory and is renamed into place when complete. Symbolic links inside the datastore are
//! not followed (a link could point anywhere on the machine, and the daemon reads as root);
//! they are reported as refused names. Every file operation goes through a `LocalFs`: an
//! inline datastore of a job run as another user is read and written with that user's rights.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use crate::localfs::{Kind, LocalFs, Open};

use super::support::{ListedItem, check_part, paginate, reject_root};
use super::{
    ByteStream, ListPage, ListRequest, ObjectMeta, ObjectPath, PartUpload, PutOptions, RefusedName,
    Result, Store, StoreError,
};

/// Marker in the names of in-progress writes; such files are hidden from listings.
pub(crate) const PARTIAL_MARKER: &str = ".dataref-partial.";
/// Chunk size of streamed reads.
const READ_CHUNK: usize = 256 * 1024;

#[derive(Debug, Clone)]
pub struct LocalStore {
    root: Arc<PathBuf>,
    page_size: Option<usize>,
    fs: LocalFs,
}

impl LocalStore {
    /// A store rooted at `root`, which must be an existing directory.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        Self::with_rights(root, LocalFs::direct())
    }

    /// A store rooted at `root` whose files are read and written through `fs` (a user's rights).
    pub fn with_rights(root: impl Into<PathBuf>, fs: LocalFs) -> Result<Self> {
        let root = root.into();
        let meta = fs
            .metadata(&root)
            .map_err(|e| StoreError::io(root.display(), e))?;
        if !meta.is_dir() {
            return Err(StoreError::InvalidInput {
                path: root.display().to_string(),
                reason: "not a directory".into(),
            });
        }
        Ok(Self {
            root: Arc::new(root),
            page_size: None,
            fs,
        })
    }

    /// Limits listing pages (tests use this to exercise pagination).
    pub fn with_page_size(mut self, page_size: usize) -> Self {
        self.page_size = Some(page_size.max(1));
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn local(&self, path: &ObjectPath) -> PathBuf {
        path.to_local(&self.root)
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Service {
            context: "local store".into(),
            message: format!("worker task failed: {e}"),
        })?
}

fn meta_of(path: ObjectPath, meta: &fs::Metadata) -> ObjectMeta {
    ObjectMeta {
        path,
        size: meta.len(),
        last_modified: meta.modified().ok(),
        version: Some(version_of(meta)),
        ..Default::default()
    }
}

/// A local file's version: its inode, size and change time. A replaced file (new inode) or
/// one rewritten in place (new ctime) is another version. A file rewritten *while* a range of
/// it is read cannot be caught here (no filesystem pins a version); that is stated in the
/// README.
fn version_of(meta: &fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "{:x}-{:x}-{:x}.{:x}",
        meta.ino(),
        meta.len(),
        meta.ctime(),
        meta.ctime_nsec()
    )
}

/// Reads one directory level, sorting entries into objects, directories and refusals.
fn read_level(
    fs: &LocalFs,
    root: &Path,
    dir: &ObjectPath,
    files: &mut Vec<ObjectMeta>,
    dirs: &mut Vec<ObjectPath>,
    refused: &mut Vec<RefusedName>,
) -> Result<()> {
    let local = dir.to_local(root);
    let entries = match fs.read_dir(&local) {
        Ok(entries) => entries,
        // A missing directory lists as empty, like a prefix that matches nothing.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => return Ok(()),
        Err(e) => return Err(StoreError::io(local.display(), e)),
    };
    for entry in entries {
        let Some(name) = entry.name.to_str() else {
            refused.push(RefusedName {
                name: format!("{}/{}", dir, entry.name.to_string_lossy()),
                reason: "name is not valid UTF-8".into(),
            });
            continue;
        };
        if name.contains(PARTIAL_MARKER) {
            continue;
        }
        let child = match dir.child(name) {
            Ok(child) => child,
            Err(reason) => {
                refused.push(RefusedName {
                    name: format!("{dir}/{name}"),
                    reason: reason.to_string(),
                });
                continue;
            }
        };
        if entry.kind == Kind::Dir {
            dirs.push(child);
            continue;
        }
        let path = local.join(&entry.name);
        // Not following links. A name gone since the listing is skipped, like a deleted blob.
        let meta = match fs.symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StoreError::io(path.display(), e)),
        };
        if meta.is_file() {
            files.push(meta_of(child, &meta));
        } else if meta.is_dir() {
            dirs.push(child);
        } else {
            refused.push(RefusedName {
                name: child.to_string(),
                reason: if meta.file_type().is_symlink() {
                    "symbolic link (not followed)".into()
                } else {
                    "not a regular file or directory".into()
                },
            });
        }
    }
    Ok(())
}

fn list_blocking(
    fs: &LocalFs,
    root: &Path,
    request: &ListRequest,
    page_size: Option<usize>,
) -> Result<ListPage> {
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    let mut refused = Vec::new();
    read_level(fs, root, &request.dir, &mut files, &mut dirs, &mut refused)?;
    let mut entries: Vec<(String, bool, ListedItem)> = Vec::new();
    if request.delimited {
        for dir in dirs {
            entries.push((dir.as_str().to_owned(), true, ListedItem::Directory(dir)));
        }
    } else {
        let mut pending = dirs;
        while let Some(dir) = pending.pop() {
            read_level(fs, root, &dir, &mut files, &mut pending, &mut refused)?;
        }
    }
    for file in files {
        entries.push((
            file.path.as_str().to_owned(),
            false,
            ListedItem::Object(file),
        ));
    }
    let mut page = paginate(entries, request.continuation.as_deref(), page_size);
    // Refusals are reported with the first page only, so a paging caller sees each once.
    if request.continuation.is_none() {
        refused.sort_by(|a, b| a.name.cmp(&b.name));
        page.refused = refused;
    }
    Ok(page)
}

/// A hidden sibling name for an in-progress write of `final_path`.
pub(crate) fn partial_name(final_path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = final_path
        .file_name()
        .unwrap_or(OsStr::new("object"))
        .to_string_lossy();
    let unique = format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    // Keep the temporary name within NAME_MAX even for a 255-byte final name.
    let stem: String = name.chars().take(120).collect();
    final_path.with_file_name(format!(".{stem}{PARTIAL_MARKER}{unique}"))
}

/// Creates the temporary file for an in-progress write. Whatever already sits at that name (a
/// partial left by a killed process that had the same pid, or a symlink planted there) is
/// removed, never followed: `create_new` (O_EXCL) refuses it, and after its removal refuses
/// anything that reappears meanwhile. (Removing first would cost every file a system call.)
pub(crate) fn create_partial(fs: &LocalFs, path: &Path) -> std::io::Result<fs::File> {
    match fs.open(path, Open::CreateNew) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            fs.remove_file(path)?;
            fs.open(path, Open::CreateNew)
        }
        other => other,
    }
}

fn create_parent(fs: &LocalFs, path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs.create_dir_all(parent)
            .map_err(|e| StoreError::io(parent.display(), e))?;
    }
    Ok(())
}

/// Refuses to replace a directory with a file (an object name can't be both).
fn check_not_directory(fs: &LocalFs, path: &Path) -> Result<()> {
    match fs.symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Err(StoreError::AlreadyExists {
            path: format!("{} (a directory)", path.display()),
        }),
        _ => Ok(()),
    }
}

#[async_trait]
impl Store for LocalStore {
    fn describe(&self) -> String {
        format!("local:{}", self.root.display())
    }

    fn max_part_size(&self) -> u64 {
        256 * 1024 * 1024
    }

    async fn list(&self, request: &ListRequest) -> Result<ListPage> {
        let root = self.root.clone();
        let request = request.clone();
        let page_size = self.page_size;
        let fs = self.fs.clone();
        blocking(move || list_blocking(&fs, &root, &request, page_size)).await
    }

    async fn head(&self, path: &ObjectPath) -> Result<ObjectMeta> {
        let local = self.local(path);
        let path = path.clone();
        let fs = self.fs.clone();
        blocking(move || {
            let meta = fs
                .symlink_metadata(&local)
                .map_err(|e| StoreError::io(&path, e))?;
            if !meta.is_file() || path.is_root() {
                return Err(StoreError::NotFound {
                    path: path.to_string(),
                });
            }
            Ok(meta_of(path, &meta))
        })
        .await
    }

    async fn get_range(
        &self,
        path: &ObjectPath,
        range: Range<u64>,
        version: Option<&str>,
    ) -> Result<ByteStream> {
        let local = self.local(path);
        let display = path.to_string();
        let version = version.map(str::to_owned);
        let fs = self.fs.clone();
        let file = blocking(move || {
            let meta = fs
                .symlink_metadata(&local)
                .map_err(|e| StoreError::io(&display, e))?;
            if !meta.is_file() {
                return Err(StoreError::NotFound { path: display });
            }
            let mut file = fs
                .open(&local, Open::Read)
                .map_err(|e| StoreError::io(&display, e))?;
            // The file opened, not the name looked up: a rename over it in between is caught.
            let opened = file.metadata().map_err(|e| StoreError::io(&display, e))?;
            if version.is_some_and(|v| v != version_of(&opened)) {
                return Err(StoreError::Changed { path: display });
            }
            file.seek(SeekFrom::Start(range.start))
                .map_err(|e| StoreError::io(&display, e))?;
            let len = meta.len();
            let remaining = range.end.min(len).saturating_sub(range.start);
            Ok((file, remaining, display))
        })
        .await?;
        let stream =
            futures::stream::try_unfold(file, |(mut file, remaining, display)| async move {
                if remaining == 0 {
                    return Ok(None);
                }
                let want = remaining.min(READ_CHUNK as u64) as usize;
                let (file, chunk) = blocking(move || {
                    let mut buf = BytesMut::zeroed(want);
                    let mut filled = 0;
                    while filled < want {
                        match file.read(&mut buf[filled..]) {
                            Ok(0) => break,
                            Ok(n) => filled += n,
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(StoreError::io(&display, e)),
                        }
                    }
                    if filled == 0 {
                        return Err(StoreError::Io {
                            path: display,
                            source: std::io::Error::new(
                                std::io::ErrorKind::UnexpectedEof,
                                "file shrank while being read",
                            ),
                        });
                    }
                    buf.truncate(filled);
                    Ok(((file, display), buf.freeze()))
                })
                .await?;
                let remaining = remaining - chunk.len() as u64;
                Ok(Some((chunk, (file.0, remaining, file.1))))
            });
        Ok(Box::pin(stream))
    }

    async fn put(&self, path: &ObjectPath, data: Bytes, _options: &PutOptions) -> Result<()> {
        reject_root(path)?;
        let local = self.local(path);
        let fs = self.fs.clone();
        blocking(move || {
            create_parent(&fs, &local)?;
            check_not_directory(&fs, &local)?;
            let partial = partial_name(&local);
            let written = (|| {
                let mut file = create_partial(&fs, &partial)?;
                file.write_all(&data)?;
                file.sync_all()?;
                fs.rename(&partial, &local)
            })();
            if let Err(e) = written {
                let _ = fs.remove_file(&partial);
                return Err(StoreError::io(local.display(), e));
            }
            Ok(())
        })
        .await
    }

    async fn start_upload(
        &self,
        path: &ObjectPath,
        total_size: u64,
    ) -> Result<Box<dyn PartUpload>> {
        reject_root(path)?;
        let local = self.local(path);
        let path = path.clone();
        let max_part_size = self.max_part_size();
        let fs = self.fs.clone();
        blocking(move || {
            create_parent(&fs, &local)?;
            check_not_directory(&fs, &local)?;
            let partial = partial_name(&local);
            let file = create_partial(&fs, &partial).map_err(|e| StoreError::io(&path, e))?;
            // Declaring the size up front lets parts land at their offsets in any order.
            file.set_len(total_size)
                .map_err(|e| StoreError::io(&path, e))?;
            Ok(Box::new(LocalUpload {
                file: Arc::new(file),
                partial,
                local,
                path,
                total_size,
                max_part_size,
                written: AtomicU64::new(0),
                fs,
            }) as Box<dyn PartUpload>)
        })
        .await
    }

    async fn delete(&self, path: &ObjectPath) -> Result<()> {
        let local = self.local(path);
        let path = path.clone();
        let fs = self.fs.clone();
        blocking(move || {
            let meta = fs
                .symlink_metadata(&local)
                .map_err(|e| StoreError::io(&path, e))?;
            if !meta.is_file() {
                return Err(StoreError::NotFound {
                    path: path.to_string(),
                });
            }
            fs.remove_file(&local).map_err(|e| StoreError::io(&path, e))
        })
        .await
    }
}

struct LocalUpload {
    file: Arc<fs::File>,
    partial: PathBuf,
    local: PathBuf,
    path: ObjectPath,
    total_size: u64,
    max_part_size: u64,
    written: AtomicU64,
    fs: LocalFs,
}

#[async_trait]
impl PartUpload for LocalUpload {
    async fn put_part(&self, _index: u64, offset: u64, data: Bytes) -> Result<()> {
        check_part(
            &self.path,
            self.total_size,
            self.max_part_size,
            offset,
            &data,
        )?;
        let file = self.file.clone();
        let display = self.path.to_string();
        let len = data.len() as u64;
        blocking(move || {
            file.write_all_at(&data, offset)
                .map_err(|e| StoreError::io(&display, e))
        })
        .await?;
        self.written.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    async fn complete(self: Box<Self>, _checksums: crate::store::Checksums) -> Result<()> {
        let written = self.written.load(Ordering::Relaxed);
        if written != self.total_size {
            let reason = format!("{written} bytes written of {}", self.total_size);
            let _ = self.fs.remove_file(&self.partial);
            return Err(StoreError::InvalidInput {
                path: self.path.to_string(),
                reason,
            });
        }
        blocking(move || {
            let done = self
                .file
                .sync_all()
                .and_then(|()| self.fs.rename(&self.partial, &self.local));
            if let Err(e) = done {
                let _ = self.fs.remove_file(&self.partial);
                return Err(StoreError::io(&self.path, e));
            }
            Ok(())
        })
        .await
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        blocking(move || match self.fs.remove_file(&self.partial) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(&self.path, e)),
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A symlink waiting at a temporary name is replaced, never written through.
    #[test]
    fn create_partial_never_follows_what_sits_at_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        let partial = dir.path().join(".x.dataref-partial.1-0");
        std::os::unix::fs::symlink(&victim, &partial).unwrap();
        create_partial(&LocalFs::direct(), &partial)
            .unwrap()
            .write_all(b"new data")
            .unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        assert!(fs::symlink_metadata(&partial).unwrap().is_file());
        assert_eq!(fs::read_to_string(&partial).unwrap(), "new data");
    }
}
