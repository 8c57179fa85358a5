//! The `azure_file` backend against the strict FileREST test server (tests/common/filerest):
//! the conformance suite with an account key and with a SAS, the server's own strictness
//! (signatures, limits, parents), and secret rotation.

mod common;

use common::checksums::{LARGE, crc64_round_trip};
use common::data::{p, pattern};
use common::engines::small_parts;
use common::secrets::{sas_expiry, secret_file};

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use common::filerest::http::HttpRequest;
use common::filerest::{self, FileRest, auth};
use dataref::model::{AzureLocation, Credential, SecretRef};
use dataref::store::azure::file::{FileStore, MAX_RANGE, is_temp_name};
use dataref::store::checksum::{crc64, crc64_hex};
use dataref::store::{ListRequest, PutOptions, Store, StoreError, list_all};
use dataref::transfer;
use md5::{Digest, Md5};

fn store(server: &FileRest, share: &str, credential: Credential) -> FileStore {
    let location = AzureLocation {
        account_name: filerest::ACCOUNT.into(),
        container: share.into(),
        endpoint: Some(server.endpoint()),
        credential,
    };
    FileStore::new(
        &location,
        &server.endpoint(),
        &dataref::store::Resources::new(64 * 1024 * 1024),
    )
    .unwrap()
}

fn key_store(server: &FileRest, dir: &Path, share: &str) -> FileStore {
    let key = secret_file(dir, "account.key", filerest::KEY);
    store(server, share, Credential::AccountKey(SecretRef::File(key)))
}

/// No temporary upload file is left on the server.
fn assert_no_temp_files(server: &FileRest, share: &str) {
    let left: Vec<String> = server
        .files(share)
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| is_temp_name(name.rsplit('/').next().unwrap()))
        .collect();
    assert!(left.is_empty(), "temporary files left behind: {left:?}");
}

#[tokio::test]
async fn file_store_conforms_with_an_account_key() {
    let server = FileRest::start(5000);
    let dir = tempfile::tempdir().unwrap();
    let share = filerest::unique_share("conf");
    let store = key_store(&server, dir.path(), &share).with_page_size(3);
    store.create_share().await.unwrap();
    store.create_share().await.unwrap(); // an existing share is fine
    common::conformance::run_all(&store, "suite").await;

    // The 5 MiB put went out as ranges of at most 4 MiB, and aborted or failed uploads left
    // no temporary file behind.
    let largest = server.shared.largest_range.load(Ordering::SeqCst) as u64;
    assert_eq!(largest, MAX_RANGE);
    assert_no_temp_files(&server, &share);
}

#[tokio::test]
async fn file_store_conforms_with_a_sas_and_server_side_paging() {
    // The client asks for 5000 entries a page; the server hands out 3 at most.
    let server = FileRest::start(3);
    let dir = tempfile::tempdir().unwrap();
    let share = filerest::unique_share("sas");
    server.create_share(&share);
    let sas = server.share_sas(&share, "rcwdl", &sas_expiry(3600));
    let sas_file = secret_file(dir.path(), "share.sas", &sas);
    let store = store(
        &server,
        &share,
        Credential::SasToken(SecretRef::File(sas_file)),
    );
    common::conformance::run_all(&store, "suite").await;
    assert_no_temp_files(&server, &share);
    assert_eq!(server.shared.auth_failures.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn uploads_create_directories_level_by_level_and_hide_their_temporary_file() {
    let server = FileRest::start(5000);
    let dir = tempfile::tempdir().unwrap();
    let share = filerest::unique_share("dirs");
    server.create_share(&share);
    let store = key_store(&server, dir.path(), &share);

    let data = Bytes::from_static(b"0123456789");
    let upload = store.start_upload(&p("a/b/c/x.bin"), 10).await.unwrap();
    let mut dirs = server.directories(&share);
    dirs.sort();
    assert_eq!(dirs, ["a", "a/b", "a/b/c"]);
    upload.put_part(0, 0, data.slice(0..4)).await.unwrap();
    // On the server: only a temporary name, which no listing shows.
    let files = server.files(&share);
    assert_eq!(files.len(), 1);
    assert!(
        is_temp_name(files[0].0.strip_prefix("a/b/c/").unwrap()),
        "{files:?}"
    );
    let listed = list_all(&store, &p("a"), false).await.unwrap();
    assert!(listed.objects.is_empty(), "{listed:?}");
    let delimited = list_all(&store, &p("a/b/c"), true).await.unwrap();
    assert!(delimited.objects.is_empty() && delimited.directories.is_empty());
    upload.put_part(1, 4, data.slice(4..10)).await.unwrap();
    let md5: [u8; 16] = Md5::digest(&data).into();
    upload
        .complete(dataref::store::Checksums::md5_only(md5))
        .await
        .unwrap();
    assert_eq!(
        server.files(&share),
        [("a/b/c/x.bin".to_owned(), data.to_vec())]
    );
    // The whole-file MD5 is recorded (Set File Properties) and read back by head.
    assert_eq!(
        store.head(&p("a/b/c/x.bin")).await.unwrap().content_md5,
        Some(md5)
    );

    // A put records the MD5 it was given, or computes one.
    store
        .put(
            &p("a/y.txt"),
            Bytes::from_static(b"y"),
            &PutOptions::default(),
        )
        .await
        .unwrap();
    let expected: [u8; 16] = Md5::digest(b"y").into();
    assert_eq!(
        store.head(&p("a/y.txt")).await.unwrap().content_md5,
        Some(expected)
    );

    // Concurrent uploads into one new directory race to create it: all succeed.
    let puts = (0..8).map(|i| {
        let store = store.clone();
        async move {
            store
                .put(
                    &p(&format!("race/deep/f{i}")),
                    Bytes::from(vec![i as u8; 10]),
                    &PutOptions::default(),
                )
                .await
        }
    });
    for result in futures::future::join_all(puts).await {
        result.unwrap();
    }
    assert_eq!(
        list_all(&store, &p("race"), false)
            .await
            .unwrap()
            .objects
            .len(),
        8
    );
    assert_no_temp_files(&server, &share);
}

#[tokio::test]
async fn a_missing_share_is_an_error_not_an_empty_listing() {
    let server = FileRest::start(5000);
    let dir = tempfile::tempdir().unwrap();
    let store = key_store(&server, dir.path(), "no-such-share");
    let err = store.list(&ListRequest::default()).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

/// A request signed by the test itself, with the server's canonicalisation (so the check below
/// is about the server, independently of the crate's signing code).
struct Raw {
    method: &'static str,
    /// After the account, e.g. `/share/dir/file?comp=range`.
    target: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn new(method: &'static str, target: &str) -> Self {
        Self {
            method,
            target: target.to_owned(),
            headers: vec![
                ("x-ms-version", "2022-11-02".to_owned()),
                (
                    "x-ms-date",
                    azure_core::time::to_rfc7231(&azure_core::time::OffsetDateTime::now_utc()),
                ),
            ],
            body: Vec::new(),
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, value.into()));
        self
    }

    fn without(mut self, name: &str) -> Self {
        self.headers.retain(|(n, _)| *n != name);
        self
    }

    fn body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }

    fn signature(&self) -> String {
        let target = format!("/{}{}", filerest::ACCOUNT, self.target);
        let (raw_path, raw_query) = target.split_once('?').unwrap_or((&target, ""));
        let mut headers: Vec<(String, String)> = self
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect();
        headers.push(("content-length".into(), self.body.len().to_string()));
        let request = HttpRequest {
            method: self.method.to_owned(),
            raw_path: raw_path.to_owned(),
            query: url::form_urlencoded::parse(raw_query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
            headers,
            body: Vec::new(),
        };
        let key = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, filerest::KEY)
            .unwrap();
        auth::hmac_b64(
            &key,
            &auth::shared_key_string_to_sign(filerest::ACCOUNT, &request),
        )
    }

    /// Sends it signed, with `tamper` applied to the signature first.
    async fn send_with(
        self,
        server: &FileRest,
        tamper: impl Fn(String) -> String,
    ) -> (u16, String) {
        let signature = tamper(self.signature());
        let url = format!("{}{}", server.endpoint(), self.target);
        let client = reqwest::Client::new();
        let mut request = client
            .request(self.method.parse().unwrap(), url)
            .header(
                "authorization",
                format!("SharedKey {}:{signature}", filerest::ACCOUNT),
            )
            .body(self.body);
        for (name, value) in self.headers {
            request = request.header(name, value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let code = response
            .headers()
            .get("x-ms-error-code")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, code)
    }

    async fn send(self, server: &FileRest) -> (u16, String) {
        self.send_with(server, |s| s).await
    }
}

#[tokio::test]
async fn the_server_refuses_a_signature_off_by_one_byte() {
    let server = FileRest::start(5000);
    server.create_share("sig");
    let list = || Raw::new("GET", "/sig?restype=directory&comp=list");
    assert_eq!(list().send(&server).await, (200, String::new()));
    // The same request with one byte of the signature changed.
    let off_by_one = |s: String| {
        let mut bytes = s.into_bytes();
        bytes[5] = if bytes[5] == b'A' { b'B' } else { b'A' };
        String::from_utf8(bytes).unwrap()
    };
    assert_eq!(
        list().send_with(&server, off_by_one).await,
        (403, "AuthenticationFailed".to_owned())
    );
    // Every signed part counts: a header the signature did not cover changes the answer.
    let signed = list();
    let signature = signed.signature();
    let moved = list().header("x-ms-client-request-id", "added-after-signing");
    assert_eq!(
        moved.send_with(&server, |_| signature.clone()).await,
        (403, "AuthenticationFailed".to_owned())
    );
    // x-ms-version and a date are required.
    assert_eq!(
        list().without("x-ms-version").send(&server).await,
        (400, "MissingRequiredHeader".to_owned())
    );
    assert_eq!(
        list().without("x-ms-date").send(&server).await,
        (403, "AuthenticationFailed".to_owned())
    );
    let stale = azure_core::time::OffsetDateTime::now_utc() - azure_core::time::Duration::hours(1);
    assert_eq!(
        list()
            .header("x-ms-date", azure_core::time::to_rfc7231(&stale))
            .send(&server)
            .await,
        (403, "AuthenticationFailed".to_owned())
    );
}

#[tokio::test]
async fn the_server_enforces_ranges_parents_and_versions() {
    let server = FileRest::start(5000);
    server.create_share("strict");
    let create = |target: &str, size: u64| {
        Raw::new("PUT", target)
            .header("x-ms-type", "file")
            .header("x-ms-content-length", size.to_string())
    };
    // Files need their parent directory.
    assert_eq!(
        create("/strict/missing/f", 10).send(&server).await,
        (404, "ParentNotFound".to_owned())
    );
    assert_eq!(
        create("/strict/f", 5 * 1024 * 1024).send(&server).await.0,
        201
    );
    let range = |start: u64, len: usize| {
        Raw::new("PUT", "/strict/f?comp=range")
            .header("x-ms-write", "update")
            .header(
                "x-ms-range",
                format!("bytes={start}-{}", start + len as u64 - 1),
            )
            .body(vec![7; len])
    };
    assert_eq!(range(0, 4 * 1024 * 1024).send(&server).await.0, 201);
    assert_eq!(
        range(0, 4 * 1024 * 1024 + 1).send(&server).await,
        (413, "RequestBodyTooLarge".to_owned())
    );
    // Writes past the size the file was created with.
    assert_eq!(
        range(5 * 1024 * 1024 - 2, 3).send(&server).await,
        (416, "InvalidRange".to_owned())
    );
    // A read starting past the end.
    assert_eq!(
        Raw::new("GET", "/strict/f")
            .header("x-ms-range", format!("bytes={}-", 5 * 1024 * 1024))
            .send(&server)
            .await,
        (416, "InvalidRange".to_owned())
    );
    // Create File needs its size; Rename File needs 2021-04-10.
    assert_eq!(
        Raw::new("PUT", "/strict/g")
            .header("x-ms-type", "file")
            .send(&server)
            .await,
        (400, "MissingRequiredHeader".to_owned())
    );
    let source = format!("{}/strict/f", server.endpoint());
    assert_eq!(
        Raw::new("PUT", "/strict/h?comp=rename")
            .header("x-ms-version", "2020-10-02")
            .header("x-ms-file-rename-source", source.clone())
            .send(&server)
            .await,
        (400, "InvalidHeaderValue".to_owned())
    );
    // Between 2019-02-02 and 2021-06-08 the SMB properties are required.
    assert_eq!(
        create("/strict/old", 1)
            .header("x-ms-version", "2020-10-02")
            .send(&server)
            .await,
        (400, "MissingRequiredHeader".to_owned())
    );
    // A rename onto an existing file needs replace-if-exists.
    assert_eq!(create("/strict/dest", 1).send(&server).await.0, 201);
    assert_eq!(
        Raw::new("PUT", "/strict/dest?comp=rename")
            .header("x-ms-file-rename-source", source)
            .send(&server)
            .await,
        (409, "ResourceAlreadyExists".to_owned())
    );
}

#[tokio::test]
async fn a_bad_or_expired_sas_is_refused_and_a_rotated_one_is_picked_up() {
    let server = FileRest::start(5000);
    let dir = tempfile::tempdir().unwrap();
    let share = filerest::unique_share("rot");
    server.create_share(&share);
    let valid = server.share_sas(&share, "rcwdl", &sas_expiry(3600));

    // One character of the signature changed.
    let sig_start = valid.find("sig=").unwrap() + 4;
    let mut wrong = valid.clone().into_bytes();
    wrong[sig_start + 2] = if wrong[sig_start + 2] == b'A' {
        b'B'
    } else {
        b'A'
    };
    let wrong = String::from_utf8(wrong).unwrap();
    let expired = server.share_sas(&share, "rcwdl", &sas_expiry(-60));
    let read_only = server.share_sas(&share, "rl", &sas_expiry(3600));

    let sas_path = dir.path().join("share.sas");
    let store = store(
        &server,
        &share,
        Credential::SasToken(SecretRef::File(sas_path.clone())),
    );
    let name = p("x/f.txt");
    let options = PutOptions::default();
    let put = || store.put(&name, Bytes::from_static(b"x"), &options);
    for (token, what) in [
        (&wrong, "wrong signature"),
        (&expired, "expired"),
        (&read_only, "read-only"),
    ] {
        secret_file(dir.path(), "share.sas", token);
        let err = put().await.unwrap_err();
        assert!(
            matches!(err, StoreError::PermissionDenied { .. }),
            "{what}: {err}"
        );
        // Errors never carry the signature.
        let text = err.to_string();
        assert!(!text.contains(&token[sig_start..]), "{what}: {text}");
    }
    // The file is rotated to a valid token: the same store works without being rebuilt.
    secret_file(dir.path(), "share.sas", &valid);
    put().await.unwrap();
    assert_eq!(
        server.files(&share),
        [("x/f.txt".to_owned(), b"x".to_vec())]
    );
}

#[tokio::test]
async fn a_rotated_account_key_is_re_read() {
    let server = FileRest::start(5000);
    let dir = tempfile::tempdir().unwrap();
    let share = filerest::unique_share("key");
    server.create_share(&share);
    let store = key_store(&server, dir.path(), &share);
    store
        .put(&p("a"), Bytes::from_static(b"1"), &PutOptions::default())
        .await
        .unwrap();
    // The account key is rotated on the service side first: requests fail...
    let new_key = "bmV3LWtleS1hZnRlci1yb3RhdGlvbi0wMTIzNDU2Nzg5YWI=";
    server.rotate_key(new_key);
    let err = store.head(&p("a")).await.unwrap_err();
    assert!(matches!(err, StoreError::PermissionDenied { .. }), "{err}");
    assert!(!err.to_string().contains(new_key) && !err.to_string().contains(filerest::KEY));
    // ...until the key file is updated; the running store picks it up.
    secret_file(dir.path(), "account.key", new_key);
    assert_eq!(store.head(&p("a")).await.unwrap().size, 1);
}

#[tokio::test]
async fn uploads_record_a_crc64_that_downloads_read_from_each_get_and_check() {
    let server = FileRest::start(5000);
    let dir = tempfile::tempdir().unwrap();
    let share = filerest::unique_share("crc");
    server.create_share(&share);
    let store: Arc<dyn Store> = Arc::new(key_store(&server, dir.path(), &share));
    // Listings carry no metadata: the download learns the CRC64 from its GETs.
    let large = crc64_round_trip(store, false).await;
    // Stored as metadata `crc64` (16 hex digits), as on blobs: by Set File Metadata after the
    // parts, by Create File for a whole-file put.
    let stored = |name: &str| server.metadata(&share, name).unwrap().get("crc64").cloned();
    assert_eq!(stored("run/large.bin"), Some(crc64_hex(crc64(&large))));
    assert_eq!(stored("run/small.txt").as_deref(), Some("ae8b14860a799888"));
}

#[tokio::test]
async fn a_wrong_stored_crc64_on_a_share_fails_the_file_naming_it_and_keeps_nothing() {
    let server = FileRest::start(5000);
    let dir = tempfile::tempdir().unwrap();
    let share = filerest::unique_share("badcrc");
    server.create_share(&share);
    let store: Arc<dyn Store> = Arc::new(key_store(&server, dir.path(), &share));
    // One small file (one GET) and one of several parts.
    for size in [1000, LARGE] {
        let data = pattern(size, 3);
        let name = format!("d{size}/bad.bin");
        store
            .put(&p(&name), Bytes::from(data.clone()), &PutOptions::default())
            .await
            .unwrap();
        server.set_metadata(&share, &name, "crc64", &crc64_hex(crc64(&data) ^ 1));
        let target = dir.path().join(format!("back{size}"));
        let prefix = p(&format!("d{size}"));
        let report = transfer::download(&small_parts(), store.clone(), &prefix, &target, false)
            .await
            .unwrap();
        assert_eq!(report.errors.len(), 1, "{size}: {:?}", report.errors);
        let error = &report.errors[0].error;
        assert!(
            error.contains(&name) && error.contains("CRC64 mismatch"),
            "{error}"
        );
        let left: Vec<_> = std::fs::read_dir(&target).unwrap().collect();
        assert!(
            left.is_empty(),
            "{size}: nothing kept, no partial: {left:?}"
        );
    }
}
