//! The `azure_blob` backend against Azurite (started by the test itself).

mod common;

use std::sync::Arc;

use common::azurite;
use dataref::datastore::{AzureLocation, Credential, SecretRef};
use dataref::store::azure::blob::BlobStore;

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A fresh container (names must be 3-63 lowercase characters).
fn unique_container(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    )
}

/// An account-key file of mode 0600 in `dir`.
fn key_file(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("account.key");
    std::fs::write(&path, azurite::KEY).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

async fn store(dir: &std::path::Path, endpoint: &str, container: &str) -> BlobStore {
    let location = AzureLocation {
        account_name: azurite::ACCOUNT.into(),
        container: container.into(),
        endpoint: Some(endpoint.into()),
        credential: Credential::AccountKey(SecretRef::File(key_file(dir))),
    };
    let store = BlobStore::new(&location, endpoint)
        .unwrap()
        .with_page_size(3);
    store.create_container().await.unwrap();
    store
}

#[tokio::test]
async fn blob_store_conforms() {
    let azurite = azurite::shared();
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), &azurite.endpoint(), &unique_container("conf")).await;
    common::conformance::run_all(&store, "suite").await;
}

#[tokio::test]
async fn create_container_is_idempotent_and_a_wrong_key_is_refused() {
    let azurite = azurite::shared();
    let dir = tempfile::tempdir().unwrap();
    let name = unique_container("idem");
    let store = store(dir.path(), &azurite.endpoint(), &name).await;
    store.create_container().await.unwrap();

    // Azurite verifies SharedKey signatures: a key off by one character is refused.
    use std::os::unix::fs::PermissionsExt;
    let bad = dir.path().join("bad.key");
    let mut key = azurite::KEY.to_owned();
    key.replace_range(0..1, "F");
    std::fs::write(&bad, key).unwrap();
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
    let location = AzureLocation {
        account_name: azurite::ACCOUNT.into(),
        container: name,
        endpoint: Some(azurite.endpoint()),
        credential: Credential::AccountKey(SecretRef::File(bad)),
    };
    let wrong = Arc::new(BlobStore::new(&location, &azurite.endpoint()).unwrap());
    let err = dataref::store::list_all(wrong.as_ref(), &dataref::store::ObjectPath::root(), false)
        .await
        .unwrap_err();
    assert!(
        matches!(err, dataref::store::StoreError::PermissionDenied { .. }),
        "{err}"
    );
}
