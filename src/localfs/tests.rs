use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;

use std::os::fd::BorrowedFd;

use super::*;
use wire::Request;

impl LocalFs {
    /// A user-side "process" that is a thread of this one, over the real socket protocol
    /// (dropping rights needs root and the `dataref` binary: the integration tests do that).
    fn served_by_thread() -> Self {
        let (ours, theirs) = socket_pair();
        std::thread::spawn(move || broker::serve(theirs.as_fd()));
        Self {
            inner: Arc::new(Inner::AsUser(UserSide::over(ours))),
        }
    }

    /// A hostile user-side "process": `answer` is what it does with each request it receives
    /// (on its end of the socket), in place of the real one's.
    fn answered_by(answer: impl Fn(BorrowedFd, Request) + Send + 'static) -> Self {
        let (ours, theirs) = socket_pair();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            while let Ok(Some(_)) = wire::recv(theirs.as_fd(), &mut buf) {
                answer(theirs.as_fd(), serde_json::from_slice(&buf).unwrap());
            }
        });
        Self {
            inner: Arc::new(Inner::AsUser(UserSide::over(ours))),
        }
    }
}

fn socket_pair() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap()
}

fn reply(socket: BorrowedFd, reply: &wire::Reply, fd: Option<BorrowedFd>) {
    wire::send(socket, &serde_json::to_vec(reply).unwrap(), fd).unwrap();
}

#[test]
fn a_handle_only_or_a_write_only_descriptor_is_refused() {
    // A taken-over process answers every open with a descriptor of a folder the user could
    // only search, not read (`O_PATH`): root must not list or watch it.
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().to_path_buf();
    let fs = LocalFs::answered_by(move |socket, _| {
        let handle = broker::open(&target, Open::Path { follow: true }).unwrap();
        reply(socket, &wire::Reply::default(), Some(handle.as_fd()));
    });
    let refused = fs.open(dir.path(), Open::Directory).unwrap_err();
    assert!(
        refused.to_string().contains("not open as asked"),
        "{refused}"
    );
    // A file opened only for writing is no file to read.
    let file = dir.path().join("f");
    std::fs::write(&file, "x").unwrap();
    let written = file.clone();
    let fs = LocalFs::answered_by(move |socket, _| {
        let handle = std::fs::OpenOptions::new()
            .write(true)
            .open(&written)
            .unwrap();
        reply(socket, &wire::Reply::default(), Some(handle.as_fd()));
    });
    assert!(fs.open(&file, Open::Read).is_err());
    assert!(fs.open(&file, Open::CreateNew).is_err());
}

#[test]
fn a_silent_or_babbling_process_is_cut_off_not_waited_for() {
    // Silent (stopped, say): the call fails within the bound, and every later one at once.
    let fs = LocalFs::answered_by(|_, _| {});
    let started = std::time::Instant::now();
    let silent = fs.metadata(Path::new("/")).unwrap_err();
    assert_eq!(silent.kind(), io::ErrorKind::Other, "{silent}");
    assert!(silent.to_string().contains("no answer within"), "{silent}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let after = fs.metadata(Path::new("/")).unwrap_err();
    assert!(after.to_string().contains("has ended"), "{after}");
    // Endless pages of a listing: cut off at the bound, not held in memory without end.
    let fs = LocalFs::answered_by(|socket, _| {
        loop {
            let page = wire::Reply {
                entries: vec![(vec![b'x'; 8], Kind::File); 1000],
                more: true,
                ..wire::Reply::default()
            };
            if wire::send(socket, &serde_json::to_vec(&page).unwrap(), None).is_err() {
                return;
            }
        }
    });
    let endless = fs.read_dir(Path::new("/")).unwrap_err();
    assert!(endless.to_string().contains("more than"), "{endless}");
    // Garbage: out of step, cut off.
    let fs = LocalFs::answered_by(|socket, _| {
        wire::send(socket, b"not json", None).unwrap();
    });
    assert!(fs.create_dir(Path::new("/x")).is_err());
    assert!(
        fs.create_dir(Path::new("/x"))
            .unwrap_err()
            .to_string()
            .contains("has ended")
    );
}

fn both() -> [LocalFs; 2] {
    [LocalFs::direct(), LocalFs::served_by_thread()]
}

#[test]
fn files_are_created_written_renamed_listed_and_removed() {
    for fs in both() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        fs.create_dir_all(&nested).unwrap();
        let temp = nested.join(".part");
        let mut file = fs.open(&temp, Open::CreateNew).unwrap();
        file.write_all(b"hello").unwrap();
        // O_EXCL: an existing name is never opened again.
        let again = fs.open(&temp, Open::CreateNew).unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::AlreadyExists, "{fs:?}");
        fs.rename(&temp, &nested.join("final")).unwrap();
        let mut text = String::new();
        fs.open(&nested.join("final"), Open::Read)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "hello");
        assert_eq!(fs.metadata(&nested.join("final")).unwrap().len(), 5);
        std::os::unix::fs::symlink("final", nested.join("link")).unwrap();
        assert!(
            fs.symlink_metadata(&nested.join("link"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            fs.read_link(&nested.join("link")).unwrap(),
            Path::new("final")
        );
        let refused = fs
            .open(&nested.join("link"), Open::ReadNoFollow)
            .unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::ELOOP), "{fs:?}");
        let mut listed: Vec<(String, Kind)> = fs
            .read_dir(&nested)
            .unwrap()
            .into_iter()
            .map(|e| (e.name.to_string_lossy().into_owned(), e.kind))
            .collect();
        listed.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            listed,
            [("final".into(), Kind::File), ("link".into(), Kind::Symlink)]
        );
        fs.remove_file(&nested.join("link")).unwrap();
        fs.remove_file(&nested.join("final")).unwrap();
        fs.remove_dir(&nested).unwrap();
        let gone = fs.metadata(&nested).unwrap_err();
        assert_eq!(gone.kind(), io::ErrorKind::NotFound, "{fs:?}");
        assert!(fs.statvfs(dir.path()).unwrap().blocks() > 0);
    }
}

#[test]
fn a_fifo_or_a_folder_is_never_opened_as_a_file() {
    for fs in both() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // Without O_NONBLOCK and the check, this open (or the read after it) would hang.
        assert!(fs.open(&fifo, Open::Read).is_err(), "{fs:?}");
        assert!(fs.open(dir.path(), Open::Read).is_err(), "{fs:?}");
        let not_dir = fs.open(&fifo, Open::Directory).unwrap_err();
        assert_eq!(not_dir.raw_os_error(), Some(libc::ENOTDIR), "{fs:?}");
        assert!(fs.open(dir.path(), Open::Directory).is_ok());
    }
}

#[test]
fn long_listings_come_in_pages_and_odd_names_survive() {
    let fs = LocalFs::served_by_thread();
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    for i in 0..3000 {
        // Long names, so the listing spans many messages.
        let name = format!("{i:04}-{}", "x".repeat(120));
        std::fs::write(dir.path().join(&name), "").unwrap();
        expected.push(name.into_bytes());
    }
    let odd = std::ffi::OsStr::from_bytes(b"not-utf8-\xff");
    std::fs::write(dir.path().join(odd), "").unwrap();
    expected.push(odd.as_bytes().to_vec());
    let mut listed: Vec<Vec<u8>> = fs
        .read_dir(dir.path())
        .unwrap()
        .into_iter()
        .map(|e| e.name.as_bytes().to_vec())
        .collect();
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected);
    // An empty folder answers (an empty last page), and the socket is still in step.
    let empty = dir.path().join("empty");
    fs.create_dir(&empty).unwrap();
    assert!(fs.read_dir(&empty).unwrap().is_empty());
    assert!(fs.metadata(&empty).unwrap().is_dir());
}

#[test]
fn errors_keep_their_errno_and_a_closed_side_fails_cleanly() {
    let fs = LocalFs::served_by_thread();
    let dir = tempfile::tempdir().unwrap();
    let missing = fs.open(&dir.path().join("nope"), Open::Read).unwrap_err();
    assert_eq!(missing.raw_os_error(), Some(libc::ENOENT));
    let exists = fs.create_dir(dir.path()).unwrap_err();
    assert_eq!(exists.raw_os_error(), Some(libc::EEXIST));
    if let Inner::AsUser(side) = &*fs.inner {
        drop(side.socket.lock().unwrap().take());
    }
    let gone = fs.metadata(dir.path()).unwrap_err();
    assert!(gone.to_string().contains("has ended"), "{gone}");
}
