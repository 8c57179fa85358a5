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
