//! The local filesystem with one user's rights: what a root agent does on the files of a job
//! that runs as another user (its downloads, upload sources, continuous outputs, an inline local
//! datastore, its mount points) goes through here.
//!
//! Checking a path and then acting on it as root is racy by nature (the user swaps a folder
//! for a link between the two), so for such a job no path of the user's is resolved by root at
//! all: a process started with the user's uid, gid and groups ([`broker`]) opens, creates,
//! lists, renames and removes, and passes what it opened back as a file descriptor. The kernel
//! checks the user's rights on every path; root reads and writes only descriptors, each checked
//! to be the kind of file asked for. (OpenSSH's privilege separation, turned around: the
//! unprivileged side touches the user's files, the privileged side the network and the mounts.)
//!
//! A job that runs as dataref's own user needs none of it: [`LocalFs::direct`] performs the same
//! operations in-process.

mod broker;
mod user_side;
mod wire;

use std::fs::{File, Metadata};
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use wire::{Kind, Open};

use crate::model::UserIds;
use broker::Done;
use user_side::UserSide;
use wire::Request;

/// The hidden first argument that makes `dataref` the user-side process.
pub const USER_SIDE_ARG: &str = "__user-side-files";

/// The user-side process's `main`: serves requests on standard input (root's socket) until
/// root closes it. Returns the process exit code.
pub fn user_side_main() -> i32 {
    match broker::serve(io::stdin().as_fd()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("dataref: user-side process: {e}");
            1
        }
    }
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: std::ffi::OsString,
    pub kind: Kind,
}

/// The local filesystem as one user sees it. Cheap to clone; the user-side process ends when
/// the last clone is dropped.
#[derive(Clone)]
pub struct LocalFs {
    inner: Arc<Inner>,
}

enum Inner {
    Direct,
    AsUser(UserSide),
}

impl std::fmt::Debug for LocalFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.inner {
            Inner::Direct => f.write_str("LocalFs::Direct"),
            Inner::AsUser(side) => write!(f, "LocalFs::AsUser({})", side.uid),
        }
    }
}

impl Default for LocalFs {
    fn default() -> Self {
        Self::direct()
    }
}

impl LocalFs {
    /// This process's own rights.
    pub fn direct() -> Self {
        Self {
            inner: Arc::new(Inner::Direct),
        }
    }

    /// `user`'s rights, through a user-side process started now (see the module's comment).
    pub fn as_user(user: &UserIds) -> io::Result<Self> {
        Ok(Self {
            inner: Arc::new(Inner::AsUser(UserSide::start(user)?)),
        })
    }

    /// `user`'s rights when it is someone else than this process, else the process's own.
    pub fn for_user(user: Option<&UserIds>) -> io::Result<Self> {
        match user {
            Some(user) if user.uid != nix::unistd::geteuid().as_raw() => Self::as_user(user),
            _ => Ok(Self::direct()),
        }
    }

    /// The uid whose rights are used, when it is not this process's own.
    pub fn user(&self) -> Option<u32> {
        match &*self.inner {
            Inner::Direct => None,
            Inner::AsUser(side) => Some(side.uid),
        }
    }

    /// The user-side process, when there is one: its pid and start time (which, with the pid,
    /// name it even after the pid is reused).
    pub fn process(&self) -> Option<(u32, u64)> {
        match &*self.inner {
            Inner::Direct => None,
            Inner::AsUser(side) => side.process(),
        }
    }

    fn call(&self, request: Request) -> io::Result<Done> {
        match &*self.inner {
            Inner::Direct => broker::perform(request),
            Inner::AsUser(side) => side.exchange(&request),
        }
    }

    pub fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.call(Request::CreateDirAll(self.wire_path(path)?))
            .map(drop)
    }

    pub fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.call(Request::CreateDir(self.wire_path(path)?))
            .map(drop)
    }

    /// Opens `path` as `how` says, checked to be what was asked for: a regular file (for
    /// reading or a new file), a directory; never a FIFO or device a read would hang on.
    pub fn open(&self, path: &Path, how: Open) -> io::Result<File> {
        let fd = match &*self.inner {
            Inner::Direct => broker::open(path, how)?,
            Inner::AsUser(_) => match self.call(Request::Open(self.wire_path(path)?, how))? {
                Done::Fd(fd) => fd,
                _ => return Err(unexpected("a file")),
            },
        };
        checked(File::from(fd), how)
    }

    /// The metadata of `path` itself (a link is not followed).
    pub fn symlink_metadata(&self, path: &Path) -> io::Result<Metadata> {
        match &*self.inner {
            Inner::Direct => std::fs::symlink_metadata(path),
            Inner::AsUser(_) => self.open(path, Open::Path { follow: false })?.metadata(),
        }
    }

    /// The metadata of what `path` leads to.
    pub fn metadata(&self, path: &Path) -> io::Result<Metadata> {
        match &*self.inner {
            Inner::Direct => std::fs::metadata(path),
            Inner::AsUser(_) => self.open(path, Open::Path { follow: true })?.metadata(),
        }
    }

    /// The filesystem statistics of where `path` lies.
    pub fn statvfs(&self, path: &Path) -> io::Result<nix::sys::statvfs::Statvfs> {
        let handle = self.open(path, Open::Path { follow: true })?;
        Ok(nix::sys::statvfs::fstatvfs(&handle)?)
    }

    /// The entries of a directory (not `.` and `..`), unsorted.
    pub fn read_dir(&self, path: &Path) -> io::Result<Vec<Entry>> {
        match self.call(Request::ReadDir(self.wire_path(path)?))? {
            Done::Entries(entries) => Ok(entries
                .into_iter()
                .map(|(name, kind)| Entry {
                    name: wire::bytes_path(name).into_os_string(),
                    kind,
                })
                .collect()),
            _ => Err(unexpected("a listing")),
        }
    }

    pub fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        match self.call(Request::ReadLink(self.wire_path(path)?))? {
            Done::Link(target) => Ok(wire::bytes_path(target)),
            _ => Err(unexpected("a link's target")),
        }
    }

    pub fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.call(Request::Rename(self.wire_path(from)?, self.wire_path(to)?))
            .map(drop)
    }

    pub fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.call(Request::RemoveFile(self.wire_path(path)?))
            .map(drop)
    }

    pub fn remove_dir(&self, path: &Path) -> io::Result<()> {
        self.call(Request::RemoveDir(self.wire_path(path)?))
            .map(drop)
    }

    /// A path as the user-side process must get it: absolute (its working directory is `/`).
    fn wire_path(&self, path: &Path) -> io::Result<Vec<u8>> {
        match path.is_absolute() {
            true => Ok(wire::path_bytes(path)),
            false => Ok(wire::path_bytes(&std::path::absolute(path)?)),
        }
    }
}

/// A descriptor from an open, refused unless it is what was asked for: the kind of file
/// (`fstat`) and how it is open (`F_GETFL`: a handle only, `O_PATH`, never passes for an open
/// file, since opening one needs only search rights on the way to it). The user-side process is
/// the user's to take over, so what it sends is checked here.
fn checked(file: File, how: Open) -> io::Result<File> {
    use std::os::fd::AsRawFd;
    let kind = file.metadata()?.file_type();
    // SAFETY: fcntl on a descriptor `file` owns, with no pointer argument.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let handle_only = flags & libc::O_PATH != 0;
    let readable = !handle_only && matches!(flags & libc::O_ACCMODE, libc::O_RDONLY | libc::O_RDWR);
    let read_write = !handle_only && flags & libc::O_ACCMODE == libc::O_RDWR;
    let fine = match how {
        Open::Read | Open::ReadNoFollow => kind.is_file() && readable,
        Open::CreateNew => kind.is_file() && read_write,
        Open::Directory => kind.is_dir() && readable,
        Open::Path { .. } => true,
    };
    match fine {
        true => Ok(file),
        false if how == Open::Directory && !kind.is_dir() => {
            Err(io::Error::from_raw_os_error(libc::ENOTDIR))
        }
        false if !kind.is_file() && how != Open::Directory => {
            Err(io::Error::other("not a regular file"))
        }
        false => Err(io::Error::other(
            "the user-side process answered with a file not open as asked",
        )),
    }
}

fn unexpected(what: &str) -> io::Error {
    io::Error::other(format!("the user-side process answered without {what}"))
}

#[cfg(test)]
mod tests;
