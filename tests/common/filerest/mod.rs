//! A strict, in-memory Azure Files (FileREST) server for the tests: no Azure Files emulator
//! exists, so this one was written from the public REST reference. It verifies every
//! signature itself (its own canonicalisation, never the crate's), and answers with the
//! documented status codes and `<Error><Code>` bodies. See README.md beside this file.
//!
//! It listens on 127.0.0.1 (path-style, like Azurite: `http://127.0.0.1:PORT/ACCOUNT/SHARE/...`)
//! and runs on its own thread and runtime, so it serves sync tests, async tests and the
//! `dataref` binary alike, and dies with the test process.

pub mod auth;
pub mod http;
mod model;
mod ops;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// The account every server instance serves.
pub const ACCOUNT: &str = "filetestacct";
/// The initial account key (a test value, not a secret).
pub const KEY: &str = "ZmlsZXJlc3QtdGVzdC1rZXktMDEyMzQ1Njc4OWFiY2RlZg==";

/// What the tests can observe and change while the server runs.
pub struct Shared {
    pub(crate) account: String,
    key: Mutex<Vec<u8>>,
    /// The largest listing page the server hands out, whatever `maxresults` asks.
    max_page: AtomicUsize,
    pub(crate) state: Mutex<ops::State>,
    /// Largest Put Range body accepted so far (to show the client never sends more than 4 MiB).
    pub largest_range: AtomicUsize,
    /// Requests refused for authentication or authorisation.
    pub auth_failures: AtomicUsize,
}

impl Shared {
    pub(crate) fn key(&self) -> Vec<u8> {
        self.key.lock().unwrap().clone()
    }

    pub(crate) fn max_page(&self) -> usize {
        self.max_page.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
pub struct FileRest {
    pub port: u16,
    pub shared: Arc<Shared>,
}

impl FileRest {
    /// Starts a server with no shares and a listing page of at most `max_page` entries.
    pub fn start(max_page: usize) -> Self {
        let shared = Arc::new(Shared {
            account: ACCOUNT.to_owned(),
            key: Mutex::new(B64.decode(KEY).unwrap()),
            max_page: AtomicUsize::new(max_page.max(1)),
            state: Mutex::new(ops::State::default()),
            largest_range: AtomicUsize::new(0),
            auth_failures: AtomicUsize::new(0),
        });
        let server = shared.clone();
        let port = super::net::listen(move |stream| {
            let server = server.clone();
            async move { http::serve(stream, move |request| ops::handle(&server, request)).await }
        });
        Self { port, shared }
    }

    /// The service URL, e.g. `http://127.0.0.1:41234/filetestacct`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    /// Replaces the account key (a rotation): requests signed with the old one fail from now.
    pub fn rotate_key(&self, key_b64: &str) {
        *self.shared.key.lock().unwrap() = B64.decode(key_b64).unwrap();
    }

    /// Creates a share directly (test setup).
    pub fn create_share(&self, share: &str) {
        self.shared.state.lock().unwrap().create_share(share);
    }

    /// Every file of a share with its content, for checks that bypass the client.
    pub fn files(&self, share: &str) -> Vec<(String, Vec<u8>)> {
        self.shared.state.lock().unwrap().files(share)
    }

    /// The user metadata of a file, for checks that bypass the client (`None`: no such file).
    pub fn metadata(&self, share: &str, path: &str) -> Option<BTreeMap<String, String>> {
        let segments = segments(path);
        let mut state = self.shared.state.lock().unwrap();
        state.metadata(share, &segments).map(|m| m.clone())
    }

    /// Sets one metadata value of a file directly, bypassing the client (a damaged or foreign
    /// file); the file must exist.
    pub fn set_metadata(&self, share: &str, path: &str, name: &str, value: &str) {
        let segments = segments(path);
        let mut state = self.shared.state.lock().unwrap();
        let metadata = state.metadata(share, &segments).expect("the file exists");
        metadata.insert(name.to_owned(), value.to_owned());
    }

    /// Every directory of a share (`a`, `a/b`, ...).
    pub fn directories(&self, share: &str) -> Vec<String> {
        self.shared.state.lock().unwrap().directories(share)
    }

    /// A service SAS for `share` (signed resource `s`), with permissions `sp` (e.g. `rcwdl`)
    /// and expiry `se` (`2035-01-01T00:00:00Z` form), signed with the current key.
    pub fn share_sas(&self, share: &str, sp: &str, se: &str) -> String {
        let version = "2022-11-02";
        let resource = format!("/file/{ACCOUNT}/{share}");
        let string_to_sign =
            auth::service_sas_string_to_sign(sp, "", se, &resource, "", "", "", version);
        let signature = auth::hmac_b64(&self.shared.key(), &string_to_sign);
        let encode = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        format!(
            "sv={version}&sr=s&sp={sp}&se={}&sig={}",
            encode(se),
            encode(&signature)
        )
    }
}

/// `a/b/c` as the server's path segments.
fn segments(path: &str) -> Vec<String> {
    path.split('/').map(str::to_owned).collect()
}

/// A share name no other test of this run uses.
pub fn unique_share(prefix: &str) -> String {
    super::data::unique_name(prefix)
}
