//! Blob names that would leave the target directory, stored for real in Azurite (which keeps
//! them literally, turning `\` into `/` as Azure does) and then downloaded and mounted: every
//! such name is refused and reported, nothing lands outside the target, and the names that are
//! merely unusual (Unicode look-alikes, both normalisation forms) arrive byte for byte.

mod common;

use common::fs::files as files_under;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::sync::Arc;

use common::azurite;
use dataref::fs::filesystem::{FsCore, FsOptions, Kind, ROOT_INO};
use dataref::model::ObjectPath;
use dataref::model::{AzureLocation, Credential, SecretRef};
use dataref::store::azure::blob::BlobStore;
use dataref::transfer::{self, Engine, SkipReason};

/// Names as they travel in the request path (percent-encoded where a client library would
/// have normalised them away), and how they are stored.
const REFUSED: &[(&str, &str)] = &[
    ("a/../../evil1", "a/../../evil1"),
    ("a/%2E%2E/%2E%2E/evil2", "a/../../evil2"),
    ("%2E%2E%2F%2E%2E%2Fevil3", "../../evil3"),
    ("..%5C..%5Cevil4", "../../evil4"),
    ("%2Fabs5", "/abs5"),
    ("a//b6", "a//b6"),
    ("sub/.", "sub/."),
    ("sub/./x7", "sub/./x7"),
    ("ok/..", "ok/.."),
];

/// Accepted names: NFC and NFD spellings of "café" are two files (Linux keeps bytes), a
/// two-dot leader and a fullwidth solidus are ordinary characters, not `..` or `/`.
const ACCEPTED: &[(&str, &str)] = &[
    ("caf%C3%A9", "café"),
    ("cafe%CC%81", "cafe\u{301}"),
    ("x%E2%80%A5y", "x\u{2025}y"),
    ("full%EF%BC%8Fwidth", "full\u{ff0f}width"),
    ("dir/ok.txt", "dir/ok.txt"),
];

/// Stores a blob with a raw HTTP request: no URL library in between, so `..` and `//` reach
/// the emulator exactly as written (what a hostile or careless producer can do).
fn put_raw(container: &str, encoded_name: &str, sas: &str, body: &[u8]) {
    let port = azurite::shared().port;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let head = format!(
        "PUT /{}/{container}/{encoded_name}?{sas} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         x-ms-blob-type: BlockBlob\r\nx-ms-version: 2025-01-05\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        azurite::ACCOUNT,
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    // The status line is all we need; the emulator may keep the connection open.
    let mut head = [0u8; 512];
    let n = stream.read(&mut head).unwrap();
    let response = String::from_utf8_lossy(&head[..n]);
    assert!(
        response.starts_with("HTTP/1.1 201"),
        "{encoded_name}: {response}"
    );
}

/// Every file the mount shows, by walking the filesystem core the FUSE adapter serves.
async fn files_in_mount(fs: &FsCore) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut pending = vec![(ROOT_INO, String::new())];
    while let Some((ino, prefix)) = pending.pop() {
        for entry in fs.readdir(ino).await.unwrap().entries.iter() {
            if entry.name == "." || entry.name == ".." {
                continue;
            }
            assert!(
                !entry.name.contains('/') && !entry.name.is_empty(),
                "{:?}",
                entry.name
            );
            let path = format!("{prefix}{}", entry.name);
            match entry.kind {
                Kind::Directory => pending.push((entry.ino, format!("{path}/"))),
                _ => {
                    out.insert(path);
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn hostile_blob_names_are_refused_by_download_and_mount() {
    let dir = tempfile::tempdir().unwrap();
    let container = azurite::unique_container("hostile");
    let endpoint = azurite::shared().endpoint();
    let location = AzureLocation {
        account_name: azurite::ACCOUNT.into(),
        container: container.clone(),
        endpoint: Some(endpoint.clone()),
        credential: Credential::AccountKey(SecretRef::File(azurite::key_file(dir.path()))),
    };
    let store = Arc::new(
        BlobStore::new(
            &location,
            &endpoint,
            &dataref::store::Resources::new(64 * 1024 * 1024),
        )
        .unwrap(),
    );
    store.create_container().await.unwrap();
    let sas = azurite::account_sas(&common::secrets::sas_expiry(3600));
    let long = "L".repeat(300);
    for (encoded, _) in REFUSED.iter().chain(ACCEPTED) {
        put_raw(&container, encoded, &sas, encoded.as_bytes());
    }
    put_raw(&container, &long, &sas, b"long");

    // Download of the whole container into a target two levels below a sandbox.
    let sandbox = tempfile::tempdir().unwrap();
    let target = sandbox.path().join("deep/target");
    let mut engine = Engine::new(&dataref::store::Resources::new(64 * 1024 * 1024));
    engine.reserved_free_disk_bytes = 0;
    let report = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        transfer::download(&engine, store.clone(), &ObjectPath::root(), &target, false),
    )
    .await
    .expect("the download ends")
    .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let refused: BTreeSet<String> = report
        .skipped
        .iter()
        .inspect(|s| assert_eq!(s.reason, SkipReason::RefusedName, "{s:?}"))
        .map(|s| s.path.clone())
        .collect();
    let mut expected_refused: BTreeSet<String> = REFUSED
        .iter()
        .map(|(_, stored)| stored.to_string())
        .collect();
    expected_refused.insert(long.clone());
    assert_eq!(refused, expected_refused);

    let accepted: BTreeSet<String> = ACCEPTED.iter().map(|(_, s)| s.to_string()).collect();
    let landed: BTreeSet<String> = files_under(sandbox.path())
        .into_iter()
        .map(|p| {
            p.strip_prefix("deep/target/")
                .unwrap_or_else(|| panic!("{p} landed outside the target"))
                .to_owned()
        })
        .collect();
    assert_eq!(landed, accepted);
    for (encoded, stored) in ACCEPTED {
        assert_eq!(
            std::fs::read(target.join(stored)).unwrap(),
            encoded.as_bytes(),
            "{stored}"
        );
    }

    // The mount shows exactly the same files.
    let fs = FsCore::new(
        store,
        ObjectPath::root(),
        FsOptions::new(dataref::model::MemoryBudget::new(256 * 1024 * 1024)),
    );
    let shown = tokio::time::timeout(std::time::Duration::from_secs(60), files_in_mount(&fs))
        .await
        .expect("the walk through the mount ends");
    assert_eq!(shown, accepted);
}
