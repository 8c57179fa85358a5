//! The datastore abstraction: one small async trait, several backends.
//!
//! The transfer engine and the FUSE filesystem only ever talk to `dyn Store`, so every backend
//! (local/NFS directory, Azure Blob container, Azure File share, in-memory for tests) gets the
//! same download, upload and mount behaviour. Listing is directory-aware by construction: a
//! listing is always *under* a directory (`prefix/`), so `a/b` never matches `a/b_v2.csv`.

pub mod azure;
mod breaker;
pub mod checksum;
/// Test doubles: compiled for this crate's unit tests and, with the `test-support` feature,
/// for the integration tests; never part of the release binary.
#[cfg(any(test, feature = "test-support"))]
pub mod counting;
#[cfg(test)]
pub(crate) mod faulty;
#[cfg(any(test, feature = "test-support"))]
pub mod hooked;
pub mod local;
#[cfg(any(test, feature = "test-support"))]
pub mod memory;
pub mod metered;
mod ranged;
mod resources;
mod support;

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use crate::model::{ObjectPath, PathError, Retryable};
pub use breaker::Breaker;
pub use checksum::Checksums;
pub use ranged::{RangeError, RangeSink, read_range};
pub use resources::Resources;

/// A stream of body chunks, as a ranged read returns it.
pub type ByteStream = BoxStream<'static, Result<Bytes, StoreError>>;

/// What a backend can fail with. Each variant says what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: not found")]
    NotFound { path: String },
    #[error("{path}: already exists")]
    AlreadyExists { path: String },
    #[error("{path}: access denied: {reason}")]
    PermissionDenied { path: String, reason: String },
    #[error("{path}: invalid request: {reason}")]
    InvalidInput { path: String, reason: String },
    #[error("{path}: refused name: {source}")]
    InvalidName {
        path: String,
        #[source]
        source: PathError,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {message}")]
    Service { context: String, message: String },
    /// The object was replaced since it was listed or opened: a read pinned to the version it
    /// saw must not mix bytes of two versions.
    #[error("{path}: changed while being read (it was replaced in storage since it was listed)")]
    Changed { path: String },
    /// An HTTP answer that is not success; 408, 429 and 5xx are transient.
    #[error("HTTP {status}: {message}")]
    Http {
        status: u16,
        message: String,
        retry_after: Option<std::time::Duration>,
    },
    /// The connection failed, was reset or timed out: transient.
    #[error("network: {message}")]
    Network { message: String },
    /// A transient failure that outlasted the retry policy. Permanent: a caller that retries
    /// too would multiply the policy's bound instead of keeping it.
    #[error("{source} (gave up after {attempts} attempts in {:.0} s)", elapsed.as_secs_f64())]
    GaveUp {
        attempts: u32,
        elapsed: std::time::Duration,
        #[source]
        source: Box<StoreError>,
    },
}

impl Retryable for StoreError {
    /// Worth retrying: throttling, server errors, broken connections.
    fn is_transient(&self) -> bool {
        match self {
            Self::Http { status, .. } => matches!(status, 408 | 429 | 500..=599),
            Self::Network { .. } => true,
            _ => false,
        }
    }

    /// How long the server asked us to wait.
    fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Self::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    fn gave_up(self, attempts: u32, elapsed: std::time::Duration) -> Self {
        Self::GaveUp {
            attempts,
            elapsed,
            source: Box::new(self),
        }
    }
}

impl StoreError {
    pub fn io(path: impl fmt::Display, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            return Self::NotFound {
                path: path.to_string(),
            };
        }
        Self::Io {
            path: path.to_string(),
            source,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }

    /// Storage itself failed: the retry policy gave up on a transient failure (with a policy of
    /// one attempt, the transient failure itself). What trips the `Breaker`.
    pub fn is_outage(&self) -> bool {
        self.is_transient() || matches!(self, Self::GaveUp { .. })
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Attributes of one stored object (a file or blob; never a directory).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectMeta {
    pub path: ObjectPath,
    pub size: u64,
    pub last_modified: Option<SystemTime>,
    /// Whole-object MD5 when the store records one (Blob `Content-MD5`).
    pub content_md5: Option<[u8; 16]>,
    /// Whole-object CRC-64/NVME when the object was written with one (`checksum`).
    pub crc64: Option<u64>,
    /// Which version of the object this describes (an ETag): reads given it return bytes of
    /// this version or `StoreError::Changed`, never a mix. `None` when the backend has none.
    pub version: Option<String>,
}

/// One page of a listing.
#[derive(Debug, Default, Clone)]
pub struct ListPage {
    /// Objects, in name order.
    pub objects: Vec<ObjectMeta>,
    /// With a delimiter: the sub-directories directly under the listed directory.
    pub directories: Vec<ObjectPath>,
    /// Names the backend could not represent safely (`..`, backslashes, over-long segments):
    /// they are reported, never turned into paths.
    pub refused: Vec<RefusedName>,
    /// Pass back to `list` to get the next page; `None` when this was the last one.
    pub continuation: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedName {
    pub name: String,
    pub reason: String,
}

/// What to list: everything under `dir/` (recursive) or only its direct children.
#[derive(Debug, Clone, Default)]
pub struct ListRequest {
    pub dir: ObjectPath,
    /// `true`: one level, with sub-directories in `ListPage::directories` (Blob's delimiter `/`).
    pub delimited: bool,
    pub continuation: Option<String>,
}

/// Options for writes.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// Whole-object checksums to record with the object (verified by later downloads).
    pub checksums: Checksums,
}

/// A datastore backend. Paths are always relative to the datastore's root.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// A short human description for messages (`local:/data`, `azure_blob:acct/container`).
    /// Never contains a secret.
    fn describe(&self) -> String;

    /// Largest part `PartUpload::put_part` accepts (Azure Files: 4 MiB per range).
    fn max_part_size(&self) -> u64;

    /// One page of the objects under `request.dir`.
    async fn list(&self, request: &ListRequest) -> Result<ListPage>;

    /// Attributes of one object; `NotFound` for a directory or a missing name.
    async fn head(&self, path: &ObjectPath) -> Result<ObjectMeta>;

    /// Streams bytes `range` of an object. A range past the end is clipped; an empty range of
    /// an existing object (0-byte files) is an empty stream. With `version` (an
    /// `ObjectMeta::version`), the bytes are of that version or the read fails with
    /// `StoreError::Changed`. One attempt: callers read through `read_range`, which retries it
    /// and resumes a broken body from the first missing byte.
    async fn get_range(
        &self,
        path: &ObjectPath,
        range: Range<u64>,
        version: Option<&str>,
    ) -> Result<ByteStream>;

    /// `get_range`, with the whole-object CRC64 the answer carries, for backends whose
    /// listings do not (Azure Files returns metadata only with the file): a download takes it
    /// from the GET it sends anyway rather than asking for each file's properties first. The
    /// default carries none; wrappers that count or time reads must pass it on.
    async fn get_range_with_crc64(
        &self,
        path: &ObjectPath,
        range: Range<u64>,
        version: Option<&str>,
    ) -> Result<(ByteStream, Option<u64>)> {
        Ok((self.get_range(path, range, version).await?, None))
    }

    /// Writes a whole (small) object at once, replacing an existing one.
    async fn put(&self, path: &ObjectPath, data: Bytes, options: &PutOptions) -> Result<()>;

    /// Starts a multi-part write of exactly `total_size` bytes. Nothing is visible under `path`
    /// until `PartUpload::complete` succeeds.
    async fn start_upload(&self, path: &ObjectPath, total_size: u64)
    -> Result<Box<dyn PartUpload>>;

    /// Continues a multi-part write of `path` that an earlier, interrupted process began with
    /// the same `total_size` and `part_size` and never completed; `upload_id` is what that
    /// attempt's `PartUpload::upload_id` said. Parts of that very upload the backend still
    /// holds with the length that layout gives them are reported as `staged`: `complete`
    /// counts them as written, so they need not be sent again. Backends that cannot see an
    /// earlier attempt's parts start afresh (with another id), which is always correct, only
    /// slower.
    async fn resume_upload(
        &self,
        path: &ObjectPath,
        total_size: u64,
        _part_size: u64,
        _upload_id: &str,
    ) -> Result<ResumedUpload> {
        Ok(ResumedUpload {
            upload: self.start_upload(path, total_size).await?,
            staged: BTreeSet::new(),
        })
    }

    /// Deletes one object; `NotFound` when it does not exist.
    async fn delete(&self, path: &ObjectPath) -> Result<()>;
}

/// A multi-part write picked up again (`Store::resume_upload`).
pub struct ResumedUpload {
    pub upload: Box<dyn PartUpload>,
    /// Indices of the parts already on the service.
    pub staged: BTreeSet<u64>,
}

/// An in-progress multi-part write. Parts may be written concurrently and in any order.
#[async_trait]
pub trait PartUpload: Send + Sync {
    /// Writes part `index` (0-based), covering bytes `offset..offset + data.len()`. Every part
    /// but the last has the same size, at most `Store::max_part_size`.
    async fn put_part(&self, index: u64, offset: u64, data: Bytes) -> Result<()>;

    /// What `Store::resume_upload` needs to find this upload's parts again, for backends that
    /// can resume. Unique per upload, so parts another upload of the same name staged (an
    /// older content of the file) are never taken for this one's.
    fn upload_id(&self) -> Option<String> {
        None
    }

    /// Makes the object visible under its final name, atomically, recording the whole-object
    /// checksums (known only once every byte has been read).
    async fn complete(self: Box<Self>, checksums: Checksums) -> Result<()>;

    /// Discards everything written so far.
    async fn abort(self: Box<Self>) -> Result<()>;
}

/// Collects every page of a listing (callers that need the whole set, like downloads).
pub async fn list_all(store: &dyn Store, dir: &ObjectPath, delimited: bool) -> Result<ListPage> {
    let mut all = ListPage::default();
    let mut request = ListRequest {
        dir: dir.clone(),
        delimited,
        continuation: None,
    };
    loop {
        let page = store.list(&request).await?;
        // A backend's answer is checked, not trusted: an entry outside the listed folder (or,
        // delimited, deeper than one level) would let a mounted directory contain itself.
        let inside = |path: &ObjectPath| match delimited {
            true => path.parent().as_ref() == Some(dir),
            false => path.starts_with(dir) && path != dir,
        };
        let outside = |path: &ObjectPath| RefusedName {
            name: path.to_string(),
            reason: format!("is not inside the listed folder {dir}"),
        };
        for object in page.objects {
            match inside(&object.path) {
                true => all.objects.push(object),
                false => all.refused.push(outside(&object.path)),
            }
        }
        for directory in page.directories {
            match inside(&directory) {
                true => all.directories.push(directory),
                false => all.refused.push(outside(&directory)),
            }
        }
        all.refused.extend(page.refused);
        match page.continuation {
            Some(token) => request.continuation = Some(token),
            None => return Ok(all),
        }
    }
}

/// Reads a whole object into memory, retried as a whole under the default policy. For tests
/// and small metadata only: transfers stream.
pub async fn read_to_bytes(store: &dyn Store, path: &ObjectPath) -> Result<Bytes> {
    use futures::TryStreamExt;
    let meta = store.head(path).await?;
    crate::model::RetryPolicy::default()
        .run(|| async {
            let chunks: Vec<Bytes> = store
                .get_range(path, 0..meta.size, meta.version.as_deref())
                .await?
                .try_collect()
                .await?;
            Ok(chunks.concat().into())
        })
        .await
}

/// Opens the backend for a datastore definition, with the job's shared resources. Nothing is
/// contacted yet.
pub fn open(
    spec: &crate::model::DatastoreSpec,
    resources: &Resources,
) -> Result<std::sync::Arc<dyn Store>> {
    open_with_rights(spec, resources, &crate::localfs::LocalFs::direct())
}

/// [`open`], a local datastore's files read and written through `local_fs` (a job's user's
/// rights, for a datastore that user defined).
pub fn open_with_rights(
    spec: &crate::model::DatastoreSpec,
    resources: &Resources,
    local_fs: &crate::localfs::LocalFs,
) -> Result<std::sync::Arc<dyn Store>> {
    use crate::model::DatastoreSpec;
    match spec {
        DatastoreSpec::Local { root } => Ok(std::sync::Arc::new(local::LocalStore::with_rights(
            root,
            local_fs.clone(),
        )?)),
        DatastoreSpec::AzureBlob(location) => {
            let url = spec.service_url().expect("Azure kinds have a service URL");
            Ok(std::sync::Arc::new(azure::blob::BlobStore::new(
                location, &url, resources,
            )?))
        }
        DatastoreSpec::AzureFile(location) => {
            let url = spec.service_url().expect("Azure kinds have a service URL");
            Ok(std::sync::Arc::new(azure::file::FileStore::new(
                location, &url, resources,
            )?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend that answers every listing with the listed folder itself, its grandchild and
    /// a stranger: what a name like `a//` once made the Blob backend do.
    #[derive(Debug)]
    struct Misbehaving;

    #[async_trait::async_trait]
    impl Store for Misbehaving {
        fn describe(&self) -> String {
            "misbehaving".into()
        }
        fn max_part_size(&self) -> u64 {
            1
        }
        async fn list(&self, request: &ListRequest) -> Result<ListPage> {
            assert_eq!(request.dir.as_str(), "a", "the test lists the folder a");
            let path = |s: &str| ObjectPath::parse(s).unwrap();
            let meta = |s: &str| ObjectMeta {
                path: path(s),
                size: 1,
                ..Default::default()
            };
            Ok(ListPage {
                objects: vec![meta("a/ok.txt"), meta("a"), meta("a/b/deep.txt"), meta("z")],
                directories: vec![path("a"), path("a/sub"), path("a/b/c"), path("q")],
                refused: Vec::new(),
                continuation: None,
            })
        }
        async fn head(&self, _: &ObjectPath) -> Result<ObjectMeta> {
            unreachable!("not listed")
        }
        async fn get_range(
            &self,
            _: &ObjectPath,
            _: Range<u64>,
            _: Option<&str>,
        ) -> Result<ByteStream> {
            unreachable!("not listed")
        }
        async fn put(&self, _: &ObjectPath, _: Bytes, _: &PutOptions) -> Result<()> {
            unreachable!("not listed")
        }
        async fn start_upload(&self, _: &ObjectPath, _: u64) -> Result<Box<dyn PartUpload>> {
            unreachable!("not listed")
        }
        async fn delete(&self, _: &ObjectPath) -> Result<()> {
            unreachable!("not listed")
        }
    }

    fn names(page: &ListPage) -> (Vec<&str>, Vec<&str>, Vec<&str>) {
        let objects = page.objects.iter().map(|o| o.path.as_str()).collect();
        let dirs = page.directories.iter().map(|d| d.as_str()).collect();
        let mut refused: Vec<&str> = page.refused.iter().map(|r| r.name.as_str()).collect();
        refused.sort();
        (objects, dirs, refused)
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_error_that_outlasts_the_policy_is_permanent_and_says_so() {
        let policy = crate::model::RetryPolicy::default();
        let error = policy
            .run(|| async {
                Err::<(), _>(StoreError::Http {
                    status: 503,
                    message: "busy".into(),
                    retry_after: None,
                })
            })
            .await
            .unwrap_err();
        assert!(
            matches!(error, StoreError::GaveUp { attempts: 10, .. }),
            "{error}"
        );
        assert!(!error.is_transient(), "no caller may retry it again");
        assert!(
            error.to_string().contains("gave up after 10 attempts"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn list_all_keeps_only_entries_inside_the_listed_folder() {
        let a = ObjectPath::parse("a").unwrap();
        let delimited = list_all(&Misbehaving, &a, true).await.unwrap();
        assert_eq!(
            names(&delimited),
            (
                vec!["a/ok.txt"],
                vec!["a/sub"],
                vec!["a", "a", "a/b/c", "a/b/deep.txt", "q", "z"]
            )
        );
        let recursive = list_all(&Misbehaving, &a, false).await.unwrap();
        assert_eq!(
            names(&recursive).0,
            vec!["a/ok.txt", "a/b/deep.txt"],
            "a recursive listing keeps every descendant"
        );
    }
}
