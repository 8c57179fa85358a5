//! The backends every datastore scenario runs against: `local` (a directory), Azure Blob
//! (Azurite) and Azure Files (the strict FileREST server in `filerest`). A scenario takes a
//! [`Backend`], starts a [`Remote`] for it, and uses only what `Remote` offers (datastore JSON
//! for manifests, `datastore register` arguments, reading and writing objects), so one body of
//! code covers all three. [`backend_tests!`](crate::backend_tests) turns scenario functions into
//! one `#[test]` per scenario and backend.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dataref::model::ObjectPath;
use dataref::model::{AzureLocation, Credential, SecretRef};
use dataref::store::azure::blob::BlobStore;
use dataref::store::azure::file::FileStore;
use dataref::store::local::LocalStore;
use dataref::store::{PutOptions, Resources, Store, list_all, read_to_bytes};
use serde_json::{Value, json};

use super::data::{md5_of, p};
use super::filerest::FileRest;
use super::secrets::{sas_signature, secret_file};
use super::{azurite, filerest};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Local,
    Blob,
    Files,
}

/// How a datastore authenticates: with the account key, or with a SAS token (a SAS for the
/// account on Blob, for the share on Files). A local datastore has no credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    Key,
    Sas,
}

/// One test's backend: the service (shared Azurite, a FileREST server of its own, or nothing
/// for local), its key and SAS files, and a runtime for the store calls.
pub struct Remote {
    pub backend: Backend,
    dir: PathBuf,
    key: PathBuf,
    files: Option<FileRest>,
    runtime: tokio::runtime::Runtime,
    sas: std::sync::Mutex<Vec<String>>,
}

impl Remote {
    /// Starts the backend; key and SAS files and local datastore roots live under `dir`.
    pub fn start(backend: Backend, dir: &Path) -> Self {
        let dir = dir.join("remote");
        std::fs::create_dir_all(&dir).unwrap();
        let (key, files) = match backend {
            Backend::Local => (PathBuf::new(), None),
            Backend::Blob => {
                azurite::shared();
                (secret_file(&dir, "account.key", azurite::KEY), None)
            }
            // Pages of two entries: every listing follows its continuation markers.
            Backend::Files => (
                secret_file(&dir, "account.key", filerest::KEY),
                Some(FileRest::start(2)),
            ),
        };
        Self {
            backend,
            dir,
            key,
            files,
            runtime: tokio::runtime::Runtime::new().unwrap(),
            sas: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// A container (Blob), share (Files) or root directory (local) name no other test uses. It
    /// does not exist yet.
    pub fn fresh(&self, prefix: &str) -> String {
        match self.backend {
            Backend::Files => filerest::unique_share(prefix),
            _ => azurite::unique_container(prefix),
        }
    }

    /// A fresh container, created.
    pub fn container(&self, prefix: &str) -> String {
        let name = self.fresh(prefix);
        self.create(&name);
        name
    }

    /// Creates `container` (a directory for local).
    pub fn create(&self, container: &str) {
        match self.backend {
            Backend::Local => std::fs::create_dir_all(self.root(container)).unwrap(),
            Backend::Blob => self
                .runtime
                .block_on(self.blob(container).create_container())
                .unwrap(),
            Backend::Files => self
                .runtime
                .block_on(self.file(container).create_share())
                .unwrap(),
        }
    }

    fn root(&self, container: &str) -> PathBuf {
        self.dir.join("stores").join(container)
    }

    fn endpoint(&self) -> String {
        match &self.files {
            Some(server) => server.endpoint(),
            None => azurite::shared().endpoint(),
        }
    }

    fn account(&self) -> &'static str {
        match self.backend {
            Backend::Files => filerest::ACCOUNT,
            _ => azurite::ACCOUNT,
        }
    }

    fn location(&self, container: &str) -> AzureLocation {
        AzureLocation {
            account_name: self.account().into(),
            container: container.into(),
            endpoint: Some(self.endpoint()),
            credential: Credential::AccountKey(SecretRef::File(self.key.clone())),
        }
    }

    fn blob(&self, container: &str) -> BlobStore {
        BlobStore::new(
            &self.location(container),
            &self.endpoint(),
            &Resources::new(64 * 1024 * 1024),
        )
        .unwrap()
    }

    fn file(&self, container: &str) -> FileStore {
        FileStore::new(
            &self.location(container),
            &self.endpoint(),
            &Resources::new(64 * 1024 * 1024),
        )
        .unwrap()
    }

    /// A store for `container`, authenticated with the account key.
    pub fn store(&self, container: &str) -> Arc<dyn Store> {
        match self.backend {
            Backend::Local => Arc::new(LocalStore::new(self.root(container)).unwrap()),
            Backend::Blob => Arc::new(self.blob(container)),
            Backend::Files => Arc::new(self.file(container)),
        }
    }

    /// Writes objects (with their Content-MD5) into `container`.
    pub fn put(&self, container: &str, objects: &[(&str, Vec<u8>)]) {
        let store = self.store(container);
        self.runtime.block_on(async {
            for (name, data) in objects {
                let options = PutOptions {
                    checksums: dataref::store::Checksums::md5_only(md5_of(data)),
                };
                store
                    .put(&p(name), data.clone().into(), &options)
                    .await
                    .unwrap_or_else(|e| panic!("put {name}: {e}"));
            }
        });
    }

    /// An object's bytes.
    pub fn get(&self, container: &str, name: &str) -> Vec<u8> {
        let store = self.store(container);
        self.runtime
            .block_on(read_to_bytes(store.as_ref(), &p(name)))
            .unwrap_or_else(|e| panic!("get {name}: {e}"))
            .to_vec()
    }

    /// An object's recorded MD5 (`None` when the backend keeps none: local).
    pub fn md5(&self, container: &str, name: &str) -> Option<[u8; 16]> {
        let store = self.store(container);
        self.runtime
            .block_on(store.head(&p(name)))
            .unwrap_or_else(|e| panic!("head {name}: {e}"))
            .content_md5
    }

    /// Whether this backend records a whole-object MD5 that uploads must set.
    pub fn records_md5(&self) -> bool {
        self.backend != Backend::Local
    }

    /// Every object in `container`, sorted; fails if the container does not exist.
    pub fn names(&self, container: &str) -> Vec<String> {
        let store = self.store(container);
        let page = self
            .runtime
            .block_on(list_all(store.as_ref(), &ObjectPath::root(), false))
            .unwrap_or_else(|e| panic!("listing {container}: {e}"));
        let mut names: Vec<String> = page
            .objects
            .iter()
            .map(|o| o.path.as_str().to_owned())
            .collect();
        names.sort();
        names
    }

    /// The directories the service holds in `container`, where directories are real (Files).
    pub fn directories(&self, container: &str) -> Option<Vec<String>> {
        self.files
            .as_ref()
            .map(|server| server.directories(container))
    }

    /// The inline manifest datastore for `container`. `endpoint_slash` writes the endpoint
    /// with a trailing `/` (which dataref must accept).
    pub fn datastore(&self, container: &str, auth: Auth, endpoint_slash: bool) -> Value {
        let endpoint = match endpoint_slash {
            true => format!("{}/", self.endpoint()),
            false => self.endpoint(),
        };
        let mut value = match self.backend {
            Backend::Local => return json!({"kind": "local", "root": self.root(container)}),
            Backend::Blob => json!({"kind": "azure_blob", "container_name": container}),
            // The spec's name for the share (`container_name` is the alias, tested elsewhere).
            Backend::Files => json!({"kind": "azure_file", "share_name": container}),
        };
        value["account_name"] = json!(self.account());
        value["endpoint"] = json!(endpoint);
        match auth {
            Auth::Key => value["account_key"] = json!({"file": self.key}),
            Auth::Sas => value["sas_token"] = json!({"file": self.sas_file(container)}),
        }
        value
    }

    /// `datastore register ...` arguments for `container` under `name`, with the account key.
    pub fn register_args(&self, name: &str, container: &str, create: bool) -> Vec<String> {
        let kind = match self.backend {
            Backend::Local => "local",
            Backend::Blob => "azure-blob",
            Backend::Files => "azure-file",
        };
        let mut args: Vec<String> = ["datastore", "register", kind, "--name", name]
            .map(String::from)
            .into();
        match self.backend {
            Backend::Local => {
                args.extend(["--root".into(), self.root(container).display().to_string()])
            }
            Backend::Blob | Backend::Files => {
                let flag = match self.backend {
                    Backend::Blob => "--container",
                    _ => "--share",
                };
                args.extend(
                    [
                        "--account",
                        self.account(),
                        flag,
                        container,
                        "--endpoint",
                        &self.endpoint(),
                        "--key-file",
                        self.key.to_str().unwrap(),
                    ]
                    .map(String::from),
                );
                if create {
                    args.push("--create-if-not-exists".into());
                }
            }
        }
        args
    }

    /// A SAS file for `container` (read, create, write, delete, list), valid for an hour.
    fn sas_file(&self, container: &str) -> PathBuf {
        let expiry = super::secrets::sas_expiry(3600);
        let sas = match &self.files {
            Some(server) => server.share_sas(container, "rcwdl", &expiry),
            None => azurite::account_sas(&expiry),
        };
        self.sas.lock().unwrap().push(sas.clone());
        secret_file(&self.dir, &format!("{container}.sas"), &sas)
    }

    /// What must never appear in dataref's output: the account key and every SAS signature
    /// handed out. Empty for local.
    pub fn secrets(&self) -> Vec<String> {
        if self.backend == Backend::Local {
            return Vec::new();
        }
        let key = match self.backend {
            Backend::Blob => azurite::KEY,
            _ => filerest::KEY,
        };
        let mut secrets = vec![key.to_owned()];
        for sas in self.sas.lock().unwrap().iter() {
            secrets.push(sas_signature(sas));
        }
        secrets
    }

    /// Fails if a secret of this backend occurs in `text`.
    #[track_caller]
    pub fn assert_no_secret(&self, text: &str, place: &str) {
        let secrets = self.secrets();
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        super::secrets::assert_no_secret(text, &secrets, place);
    }
}

/// One `#[test]` per scenario and backend: `backend_tests!(scenario_a, scenario_b)` makes
/// `local::scenario_a`, `blob::scenario_a`, `files::scenario_a`, ... each calling
/// `scenario_a(Backend::...)`.
#[macro_export]
macro_rules! backend_tests {
    ($($scenario:ident),+ $(,)?) => {
        mod local {
            $(#[test] fn $scenario() { super::$scenario($crate::common::backend::Backend::Local) })+
        }
        mod blob {
            $(#[test] fn $scenario() { super::$scenario($crate::common::backend::Backend::Blob) })+
        }
        mod files {
            $(#[test] fn $scenario() { super::$scenario($crate::common::backend::Backend::Files) })+
        }
    };
}
