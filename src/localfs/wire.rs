//! The messages between root and a job's user-side process, over a `SOCK_SEQPACKET` pair:
//! one request, one answer (a read_dir's answer in several pages), a file descriptor riding
//! on the answer as `SCM_RIGHTS`. Paths are raw bytes: a Linux name need not be UTF-8.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};

/// The largest message either side sends; pages of a listing stay below it.
pub(super) const MAX_MESSAGE: usize = 64 * 1024;

/// How a file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Open {
    /// Read, following links (a datastore's files).
    Read,
    /// Read, refusing a link at the last component (upload sources).
    ReadNoFollow,
    /// A directory, for reading its entries or watching it.
    Directory,
    /// A new regular file, never one that exists (`O_EXCL`: never through a link either).
    CreateNew,
    /// Only a handle on the name (`O_PATH`), for `fstat`/`fstatvfs`; `follow` the last link?
    Path { follow: bool },
}

/// The kind of a directory entry, as `readdir` tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Request {
    CreateDirAll(Vec<u8>),
    CreateDir(Vec<u8>),
    Open(Vec<u8>, Open),
    ReadDir(Vec<u8>),
    ReadLink(Vec<u8>),
    Rename(Vec<u8>, Vec<u8>),
    RemoveFile(Vec<u8>),
    RemoveDir(Vec<u8>),
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Reply {
    /// 0 for success, else the errno the operation failed with.
    pub errno: i32,
    /// What the failure said beyond its errno (rare: a malformed request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entries: Vec<(Vec<u8>, Kind)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<Vec<u8>>,
    /// More pages of entries follow.
    #[serde(default)]
    pub more: bool,
}

/// Sends one message, with `fd` attached when given.
pub(super) fn send(socket: BorrowedFd, body: &[u8], fd: Option<BorrowedFd>) -> std::io::Result<()> {
    let fds: Vec<RawFd> = fd.iter().map(|f| f.as_raw_fd()).collect();
    let control: Vec<ControlMessage> = match fds.is_empty() {
        true => Vec::new(),
        false => vec![ControlMessage::ScmRights(&fds)],
    };
    let iov = [IoSlice::new(body)];
    loop {
        match sendmsg::<()>(
            socket.as_raw_fd(),
            &iov,
            &control,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(_) => return Ok(()),
        }
    }
}

/// Receives one message into `buf` (resized to it) and the descriptor riding on it, if any.
/// `Ok(None)` when the other side has gone. Any descriptor beyond the first is closed.
pub(super) fn recv(
    socket: BorrowedFd,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Option<OwnedFd>>> {
    buf.resize(MAX_MESSAGE, 0);
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let (bytes, flags, mut fds) = loop {
        let mut iov = [IoSliceMut::new(buf)];
        match recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(message) => {
                let mut fds = Vec::new();
                if let Ok(controls) = message.cmsgs() {
                    for control in controls {
                        if let ControlMessageOwned::ScmRights(received) = control {
                            // SAFETY: the kernel just installed these descriptors for us.
                            fds.extend(
                                received
                                    .into_iter()
                                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                            );
                        }
                    }
                }
                break (message.bytes, message.flags, fds);
            }
        }
    };
    if flags.contains(MsgFlags::MSG_TRUNC) || flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "a message to or from the user-side process was too long",
        ));
    }
    if bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    buf.truncate(bytes);
    fds.truncate(1);
    Ok(Some(fds.pop()))
}

pub(super) fn path_bytes(path: &std::path::Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str().as_bytes().to_vec()
}

pub(super) fn bytes_path(bytes: Vec<u8>) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStringExt;
    std::ffi::OsString::from_vec(bytes).into()
}
