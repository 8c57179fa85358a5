//! Test servers on loopback: each on a thread and runtime of its own, so it serves sync tests,
//! async tests and the `dataref` binary alike, and dies with the test process.

use std::future::Future;

use tokio::net::{TcpListener, TcpStream};

/// Listens on a free 127.0.0.1 port and runs `handle` for every accepted connection (each on
/// its own task). Returns the port once it accepts connections.
pub fn listen<F, Fut>(handle: F) -> u16
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap().port()).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(handle(stream));
            }
        });
    });
    rx.recv().expect("the test server starts")
}

/// A loopback port that refuses every connection and that no other test can take while this
/// value lives: a socket bound to it that never listens (a connection to it gets a reset).
pub struct RefusingPort {
    fd: std::os::fd::OwnedFd,
    pub port: u16,
}

impl RefusingPort {
    pub fn new() -> Self {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket calls on a descriptor this function owns.
        unsafe {
            let raw = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(raw >= 0, "socket: {}", std::io::Error::last_os_error());
            let fd = std::os::fd::OwnedFd::from_raw_fd(raw);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let bound = libc::bind(raw, (&raw const addr).cast(), len);
            assert_eq!(bound, 0, "bind: {}", std::io::Error::last_os_error());
            let mut len = len;
            let named = libc::getsockname(raw, (&raw mut addr).cast(), &mut len);
            assert_eq!(named, 0, "getsockname: {}", std::io::Error::last_os_error());
            Self {
                fd,
                port: u16::from_be(addr.sin_port),
            }
        }
    }
}

impl std::fmt::Debug for RefusingPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::os::fd::AsRawFd;
        write!(
            f,
            "RefusingPort({} on fd {})",
            self.port,
            self.fd.as_raw_fd()
        )
    }
}
