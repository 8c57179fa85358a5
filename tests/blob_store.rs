//! The `azure_blob` backend against Azurite (started by the test itself).

mod common;

use std::sync::Arc;

use common::azurite;
use dataref::model::{AzureLocation, Credential, SecretRef};
use dataref::store::azure::blob::BlobStore;

async fn store(dir: &std::path::Path, endpoint: &str, container: &str) -> BlobStore {
    let location = AzureLocation {
        account_name: azurite::ACCOUNT.into(),
        container: container.into(),
        endpoint: Some(endpoint.into()),
        credential: Credential::AccountKey(SecretRef::File(azurite::key_file(dir))),
    };
    let store = BlobStore::new(
        &location,
        endpoint,
        &dataref::store::Resources::new(64 * 1024 * 1024),
    )
    .unwrap()
    .with_page_size(3);
    store.create_container().await.unwrap();
    store
}

#[tokio::test]
async fn blob_store_conforms() {
    let azurite = azurite::shared();
    let dir = tempfile::tempdir().unwrap();
    let store = store(
        dir.path(),
        &azurite.endpoint(),
        &azurite::unique_container("conf"),
    )
    .await;
    common::conformance::run_all(&store, "suite").await;
}

#[tokio::test]
async fn create_container_is_idempotent_and_a_wrong_key_is_refused() {
    let azurite = azurite::shared();
    let dir = tempfile::tempdir().unwrap();
    let name = azurite::unique_container("idem");
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
    let wrong = Arc::new(
        BlobStore::new(
            &location,
            &azurite.endpoint(),
            &dataref::store::Resources::new(64 * 1024 * 1024),
        )
        .unwrap(),
    );
    let err = dataref::store::list_all(wrong.as_ref(), &dataref::model::ObjectPath::root(), false)
        .await
        .unwrap_err();
    assert!(
        matches!(err, dataref::store::StoreError::PermissionDenied { .. }),
        "{err}"
    );
}
