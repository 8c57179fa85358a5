//! The user-side process: started by root with the job's uid, gid and groups (no way back), it
//! performs each file operation root asks for with those rights and hands back what it opened.
//! It holds no secret and no credential; a user who takes it over (it is theirs to `ptrace`)
//! can only make it open what they could open themselves, which is why root checks every
//! descriptor it receives (`super::checked`) and never acts on a path for the user itself.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::wire::{self, Kind, MAX_MESSAGE, Open, Reply, Request};

/// What an operation produced.
pub(super) enum Done {
    Nothing,
    Fd(OwnedFd),
    Entries(Vec<(Vec<u8>, Kind)>),
    Link(Vec<u8>),
}

/// Performs one operation with this process's own rights.
pub(super) fn perform(request: Request) -> std::io::Result<Done> {
    use std::fs;
    Ok(match request {
        Request::CreateDirAll(path) => {
            fs::create_dir_all(wire::bytes_path(path)).map(|()| Done::Nothing)?
        }
        Request::CreateDir(path) => {
            fs::create_dir(wire::bytes_path(path)).map(|()| Done::Nothing)?
        }
        Request::Open(path, how) => Done::Fd(open(&wire::bytes_path(path), how)?),
        Request::ReadDir(path) => Done::Entries(read_dir(&wire::bytes_path(path))?),
        Request::ReadLink(path) => {
            let target = fs::read_link(wire::bytes_path(path))?;
            Done::Link(target.as_os_str().as_bytes().to_vec())
        }
        Request::Rename(from, to) => {
            fs::rename(wire::bytes_path(from), wire::bytes_path(to)).map(|()| Done::Nothing)?
        }
        Request::RemoveFile(path) => {
            fs::remove_file(wire::bytes_path(path)).map(|()| Done::Nothing)?
        }
        Request::RemoveDir(path) => {
            fs::remove_dir(wire::bytes_path(path)).map(|()| Done::Nothing)?
        }
    })
}

pub(super) fn open(path: &Path, how: Open) -> std::io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    // O_NONBLOCK: opening a FIFO for reading must not wait for a writer (it is refused after).
    let flags = match how {
        Open::Read => {
            options.read(true);
            libc::O_NONBLOCK
        }
        Open::ReadNoFollow => {
            options.read(true);
            libc::O_NONBLOCK | libc::O_NOFOLLOW
        }
        Open::Directory => {
            options.read(true);
            libc::O_DIRECTORY
        }
        Open::CreateNew => {
            // Readable too: a download's MD5 re-reads what it wrote through this file.
            options.read(true).write(true).create_new(true);
            0
        }
        Open::Path { follow } => {
            options.read(true);
            libc::O_PATH | if follow { 0 } else { libc::O_NOFOLLOW }
        }
    };
    Ok(options.custom_flags(flags).open(path)?.into())
}

fn read_dir(path: &Path) -> std::io::Result<Vec<(Vec<u8>, Kind)>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let kind = match entry.file_type() {
            Ok(t) if t.is_symlink() => Kind::Symlink,
            Ok(t) if t.is_dir() => Kind::Dir,
            Ok(t) if t.is_file() => Kind::File,
            _ => Kind::Other,
        };
        entries.push((entry.file_name().as_bytes().to_vec(), kind));
    }
    Ok(entries)
}

/// The user-side process's loop: answers requests on `socket` until root closes it.
pub fn serve(socket: BorrowedFd) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(MAX_MESSAGE);
    while let Some(_ignored) = wire::recv(socket, &mut buf)? {
        let request: Request = match serde_json::from_slice(&buf) {
            Ok(request) => request,
            Err(e) => {
                let reply = Reply {
                    errno: libc::EINVAL,
                    message: Some(format!("malformed request: {e}")),
                    ..Reply::default()
                };
                answer(socket, &reply, None)?;
                continue;
            }
        };
        match perform(request) {
            Err(e) => {
                let reply = Reply {
                    errno: e.raw_os_error().unwrap_or(libc::EIO),
                    message: e.raw_os_error().is_none().then(|| e.to_string()),
                    ..Reply::default()
                };
                answer(socket, &reply, None)?;
            }
            Ok(Done::Nothing) => answer(socket, &Reply::default(), None)?,
            Ok(Done::Fd(fd)) => answer(socket, &Reply::default(), Some(fd.as_fd()))?,
            Ok(Done::Link(link)) => {
                let reply = Reply {
                    link: Some(link),
                    ..Reply::default()
                };
                answer(socket, &reply, None)?
            }
            Ok(Done::Entries(entries)) => send_pages(socket, entries)?,
        }
    }
    Ok(())
}

/// A listing in pages that each fit one message (JSON spells a byte as up to four); the last
/// page (perhaps empty) says `more: false`.
fn send_pages(socket: BorrowedFd, entries: Vec<(Vec<u8>, Kind)>) -> std::io::Result<()> {
    const PAGE_BYTES: usize = MAX_MESSAGE / 8;
    let mut page = Vec::new();
    let mut size = 0;
    let mut rest = entries.into_iter().peekable();
    while let Some(entry) = rest.next() {
        size += entry.0.len() + 16;
        page.push(entry);
        if size >= PAGE_BYTES && rest.peek().is_some() {
            let reply = Reply {
                entries: std::mem::take(&mut page),
                more: true,
                ..Reply::default()
            };
            answer(socket, &reply, None)?;
            size = 0;
        }
    }
    let last = Reply {
        entries: page,
        ..Reply::default()
    };
    answer(socket, &last, None)
}

fn answer(socket: BorrowedFd, reply: &Reply, fd: Option<BorrowedFd>) -> std::io::Result<()> {
    let body = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    wire::send(socket, &body, fd)
}
