//! The kernel side of continuous upload: inotify on every folder of the synced tree, turned
//! into the few changes the queue understands.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use tokio::io::unix::AsyncFd;

use super::queue::{RelPath, is_under};
use crate::localfs::{Kind, LocalFs, Open};

/// What happened in the folder, as the queue needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Closed after writing, or renamed into place.
    Closed(RelPath),
    /// Removed or moved away (a file, or a folder and what was below it).
    Removed(RelPath),
    /// Files found at once: a folder created, or moved or renamed into place.
    Appeared(Vec<RelPath>),
    /// The kernel dropped events: the whole folder must be compared with what is in storage.
    Overflow,
    /// The folder itself was removed (or moved away): nothing more is seen until the end.
    RootGone,
}

/// One raw event, owned.
struct Raw {
    wd: WatchDescriptor,
    mask: EventMask,
    cookie: u32,
    name: Option<OsString>,
}

pub struct Watcher {
    inotify: AsyncFd<Inotify>,
    /// Whose rights the folders are opened and listed with.
    fs: LocalFs,
    root: PathBuf,
    /// Never watched nor reported (the job directory when it is inside the folder).
    exclude: Vec<PathBuf>,
    dirs: HashMap<WatchDescriptor, RelPath>,
    buffer: Vec<u8>,
    /// Folders that could not be watched (the inotify watch limit): their files are only
    /// found by the final scan.
    pub unwatched: Vec<(RelPath, String)>,
}

fn mask() -> WatchMask {
    WatchMask::CLOSE_WRITE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::ONLYDIR
        | WatchMask::DONT_FOLLOW
}

impl Watcher {
    /// Watches `root` and every folder below it. Must be called from a tokio runtime.
    pub fn new(fs: &LocalFs, root: &Path, exclude: Vec<PathBuf>) -> io::Result<Self> {
        let inotify = Inotify::init()?;
        // SAFETY: `Inotify` owns its descriptor and closes it only when dropped (or consumed by
        // `close`), so it stays the same open descriptor for the AsyncFd's whole life.
        let inotify = unsafe {
            AsyncFd::register_with_interest(inotify, tokio::io::Interest::READABLE)
                .map_err(|e| e.into_parts().1)?
        };
        let mut watcher = Self {
            inotify,
            fs: fs.clone(),
            root: root.to_path_buf(),
            exclude,
            dirs: HashMap::new(),
            buffer: vec![0; 64 * 1024],
            unwatched: Vec::new(),
        };
        let wd = watcher.add_watch(root)?;
        watcher.dirs.insert(wd, RelPath::new());
        watcher.watch_tree("")?;
        Ok(watcher)
    }

    fn absolute(&self, rel: &str) -> PathBuf {
        match rel {
            "" => self.root.clone(),
            rel => self.root.join(rel),
        }
    }

    /// Watches the folders below `rel` (itself already watched) and returns their files.
    fn watch_tree(&mut self, rel: &str) -> io::Result<Vec<RelPath>> {
        let mut watched = Vec::new();
        let mut unwatched = Vec::new();
        let files = self.walk(rel, |path| match self.add_watch(&self.absolute(path)) {
            Ok(wd) => watched.push((wd, path.to_owned())),
            Err(e) => unwatched.push((path.to_owned(), e.to_string())),
        })?;
        self.dirs.extend(watched);
        self.unwatched.extend(unwatched);
        Ok(files)
    }

    /// Watches the folder `path`. With a user's rights, the user's process opens it and the
    /// watch is added on what it opened (`/proc/self/fd/N` leads to that very folder): no
    /// path of the user's is resolved by root.
    fn add_watch(&self, path: &Path) -> io::Result<WatchDescriptor> {
        if self.fs.user().is_none() {
            return self.inotify.get_ref().watches().add(path, mask());
        }
        use std::os::fd::AsRawFd;
        let folder = self.fs.open(path, Open::Directory)?;
        let opened = PathBuf::from(format!("/proc/self/fd/{}", folder.as_raw_fd()));
        // The magic link must be followed to reach the folder (so not DONT_FOLLOW).
        let watched = mask() & !WatchMask::DONT_FOLLOW;
        self.inotify.get_ref().watches().add(opened, watched)
    }

    /// Watches the folders made while events were lost (after an overflow).
    pub fn rewatch(&mut self) -> io::Result<()> {
        self.watch_tree("").map(drop)
    }

    /// Every file below the folder now, without changing the watches (the final scan).
    pub fn scan(&self) -> io::Result<Vec<RelPath>> {
        self.walk("", |_| {})
    }

    /// The files below `from`, sorted; `on_folder` sees each folder before its entries are read
    /// (so a watch added there misses nothing created after the listing).
    fn walk(&self, from: &str, mut on_folder: impl FnMut(&str)) -> io::Result<Vec<RelPath>> {
        let mut files = Vec::new();
        let mut folders = vec![from.to_owned()];
        while let Some(folder) = folders.pop() {
            let entries = match self.fs.read_dir(&self.absolute(&folder)) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                let Ok(name) = entry.name.into_string() else {
                    continue; // not UTF-8: never an object name
                };
                let path = join(&folder, &name);
                if self.skipped(&path) {
                    continue;
                } else if entry.kind == Kind::Dir {
                    on_folder(&path);
                    folders.push(path);
                } else if entry.kind == Kind::File {
                    files.push(path);
                }
            }
        }
        files.sort();
        Ok(files)
    }

    fn skipped(&self, rel: &str) -> bool {
        rel.contains(crate::store::local::PARTIAL_MARKER)
            || self.exclude.iter().any(|e| *e == self.absolute(rel))
    }

    /// Waits for events and returns what they mean.
    pub async fn next(&mut self) -> io::Result<Vec<Change>> {
        loop {
            let raw = {
                let mut guard = self.inotify.readable_mut().await?;
                let buffer = &mut self.buffer;
                match guard.try_io(|inotify| read(inotify.get_mut(), buffer)) {
                    Ok(raw) => raw?,
                    Err(_would_block) => continue,
                }
            };
            if !raw.is_empty() {
                return Ok(self.translate(raw));
            }
        }
    }

    /// The events already queued, without waiting (before the final scan).
    pub fn ready_now(&mut self) -> io::Result<Vec<Change>> {
        let raw = match read(self.inotify.get_mut(), &mut self.buffer) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Vec::new(),
            other => other?,
        };
        Ok(self.translate(raw))
    }

    fn translate(&mut self, raw: Vec<Raw>) -> Vec<Change> {
        let mut changes = Vec::new();
        // Renames within the folder come as MOVED_FROM and MOVED_TO with one cookie.
        let mut moved_from: HashMap<u32, (RelPath, bool)> = HashMap::new();
        for event in raw {
            if event.mask.contains(EventMask::Q_OVERFLOW) {
                changes.push(Change::Overflow);
                continue;
            }
            if event.mask.contains(EventMask::IGNORED) {
                if self.dirs.remove(&event.wd).is_some_and(|p| p.is_empty()) {
                    changes.push(Change::RootGone);
                }
                continue;
            }
            let (Some(dir), Some(name)) = (self.dirs.get(&event.wd), &event.name) else {
                continue;
            };
            let Some(name) = name.to_str() else { continue };
            let path = join(dir, name);
            if self.skipped(&path) {
                continue;
            }
            let is_dir = event.mask.contains(EventMask::ISDIR);
            if event.mask.contains(EventMask::CLOSE_WRITE) {
                changes.push(Change::Closed(path));
            } else if event.mask.contains(EventMask::MOVED_FROM) {
                moved_from.insert(event.cookie, (path, is_dir));
            } else if event.mask.contains(EventMask::MOVED_TO) {
                if let Some((from, _)) = moved_from.remove(&event.cookie) {
                    changes.push(Change::Removed(from.clone()));
                    if is_dir {
                        self.rename_watches(&from, &path);
                    }
                }
                changes.push(self.arrived(path, is_dir));
            } else if event.mask.contains(EventMask::CREATE) && is_dir {
                changes.push(self.arrived(path, true));
            } else if event.mask.contains(EventMask::DELETE) {
                changes.push(Change::Removed(path));
            }
        }
        // Moved out of the folder: gone, and no longer watched.
        for (_, (from, is_dir)) in moved_from {
            if is_dir {
                self.unwatch(&from);
            }
            changes.push(Change::Removed(from));
        }
        changes
    }

    /// A file or folder that appeared under `path` (created, or moved in or renamed).
    fn arrived(&mut self, path: RelPath, is_dir: bool) -> Change {
        if !is_dir {
            return Change::Closed(path);
        }
        if !self.dirs.values().any(|p| *p == path) {
            match self
                .inotify
                .get_ref()
                .watches()
                .add(self.absolute(&path), mask())
            {
                Ok(wd) => {
                    self.dirs.insert(wd, path.clone());
                }
                Err(e) => self.unwatched.push((path.clone(), e.to_string())),
            }
        }
        match self.watch_tree(&path) {
            Ok(files) => Change::Appeared(files),
            Err(_) => Change::Appeared(Vec::new()),
        }
    }

    fn rename_watches(&mut self, from: &str, to: &str) {
        for path in self.dirs.values_mut() {
            if is_under(path, from) {
                *path = format!("{to}{}", &path[from.len()..]);
            }
        }
    }

    fn unwatch(&mut self, dir: &str) {
        let gone: Vec<WatchDescriptor> = self
            .dirs
            .iter()
            .filter(|(_, p)| is_under(p, dir))
            .map(|(wd, _)| wd.clone())
            .collect();
        for wd in gone {
            self.dirs.remove(&wd);
            let _ = self.inotify.get_ref().watches().remove(wd);
        }
    }
}

fn join(dir: &str, name: &str) -> RelPath {
    match dir {
        "" => name.to_owned(),
        dir => format!("{dir}/{name}"),
    }
}

/// Reads what is queued; `WouldBlock` when nothing is (so the runtime waits for readiness).
fn read(inotify: &mut Inotify, buffer: &mut [u8]) -> io::Result<Vec<Raw>> {
    Ok(inotify
        .read_events(buffer)?
        .map(|e| Raw {
            wd: e.wd,
            mask: e.mask,
            cookie: e.cookie,
            name: e.name.map(|n| n.to_os_string()),
        })
        .collect())
}
