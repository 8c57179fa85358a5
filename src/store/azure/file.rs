//! The `azure_file` backend: an Azure File share over FileREST.
//!
//! There is no official Rust SDK for Azure Files, so every call is a raw request sent through
//! an azure_core pipeline of ours, with the same SharedKey/SAS policies, retry policy and error
//! mapping as the Blob backend.
//!
//! File shares differ from Blob containers in ways the trait hides:
//! - directories are real: uploads create parents one level at a time, listings walk them;
//! - a file is created at its final size and written in ranges of at most 4 MiB;
//! - nothing is atomic at the end of a write, so uploads write a hidden temporary file in the
//!   target's directory and rename it over the final name once complete (nothing partial under a final name);
//!   temporary names never appear in listings.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use azure_core::http::headers::HeaderName;
use azure_core::http::policies::Policy;
use azure_core::http::{
    ClientOptions, Context, Method, Pipeline, RawResponse, Request, RetryOptions, Transport, Url,
};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use super::auth::{SasPolicy, SecretSource, SharedKeyPolicy};
use super::{from_azure, is_auth_failure};
use crate::model::ObjectPath;
use crate::model::RetryPolicy;
use crate::model::datastore::{AzureLocation, Credential};
use crate::store::Resources;
use crate::store::support::{check_part, reject_root};
use crate::store::{
    ByteStream, ListPage, ListRequest, ObjectMeta, PartUpload, PutOptions, RefusedName, Result,
    Store, StoreError,
};

/// FileREST version of every request: Rename File needs 2021-04-10 or later, and from
/// 2021-06-08 the SMB properties of Create File/Directory have defaults (we still send them).
pub const API_VERSION: &str = "2022-11-02";
/// Put Range writes at most 4 MiB per request.
pub const MAX_RANGE: u64 = 4 * 1024 * 1024;
/// Listing page size (the service's maximum).
const DEFAULT_PAGE: u32 = 5000;
/// A recursive listing walks at most this many directory pages per `list` call before it
/// hands back a continuation, even if they held no files (bounded latency per page).
const WALK_STEPS_PER_PAGE: usize = 64;
/// Parts of one `put` in flight at once.
const PUT_CONCURRENCY: usize = 4;

/// Marks of our temporary upload names: `.<name>.dataref-<random>.partial`.
const TEMP_MARK: &str = ".dataref-";
const TEMP_SUFFIX: &str = ".partial";

#[derive(Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.inner.description)
    }
}

struct Inner {
    pipeline: Pipeline,
    share_url: Url,
    description: String,
    /// The secret to re-read after a 403.
    secret: Option<Arc<SecretSource>>,
    /// With SAS authentication, Rename File's source URL carries the token too.
    sas: Option<Arc<SecretSource>>,
    retry: RetryPolicy,
    page_size: u32,
}

/// A failed call: the error callers see, and the service's error code (`x-ms-error-code`) for
/// the decisions that depend on it (a missing parent, an existing directory).
#[derive(Debug)]
struct Failed {
    error: StoreError,
    code: Option<String>,
}

impl Failed {
    fn is(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }
}

impl From<Failed> for StoreError {
    fn from(failed: Failed) -> Self {
        failed.error
    }
}

fn error_code(error: &azure_core::Error) -> Option<String> {
    match error.kind() {
        azure_core::error::ErrorKind::HttpResponse { error_code, .. } => error_code.clone(),
        _ => None,
    }
}

/// True for our own temporary upload names, which listings hide.
pub fn is_temp_name(segment: &str) -> bool {
    segment.starts_with('.') && segment.ends_with(TEMP_SUFFIX) && segment.contains(TEMP_MARK)
}

/// A fresh temporary name beside `path`. The original name is shortened so that the result
/// stays within Azure's 255-character limit.
fn temp_path(path: &ObjectPath) -> Result<ObjectPath> {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = path.file_name().unwrap_or("file");
    let short: String = name.chars().take(100).collect();
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    hasher.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    let segment = format!(".{short}{TEMP_MARK}{:016x}{TEMP_SUFFIX}", hasher.finish());
    path.parent()
        .unwrap_or_default()
        .child(&segment)
        .map_err(|source| StoreError::InvalidName {
            path: path.to_string(),
            source,
        })
}

fn header<'a>(response: &'a RawResponse, name: &'static str) -> Option<&'a str> {
    response
        .headers()
        .get_optional_str(&HeaderName::from_static(name))
}

/// SMB properties for new files and directories: no attributes, timestamps of now, and the
/// permissions inherited from the parent directory.
fn new_smb_properties(request: &mut Request) {
    request.insert_header("x-ms-file-attributes", "None");
    request.insert_header("x-ms-file-creation-time", "now");
    request.insert_header("x-ms-file-last-write-time", "now");
    request.insert_header("x-ms-file-permission", "inherit");
}

impl FileStore {
    /// A store for the share described by `location` (nothing is contacted yet), sending
    /// through the job's HTTP client under its retry policy.
    pub fn new(location: &AzureLocation, service_url: &str, resources: &Resources) -> Result<Self> {
        let (auth, secret, sas): (Arc<dyn Policy>, _, _) = match &location.credential {
            Credential::AccountKey(secret) => {
                let source = Arc::new(SecretSource::new(secret.clone()));
                let policy = SharedKeyPolicy {
                    account: location.account_name.clone(),
                    key: source.clone(),
                };
                (Arc::new(policy), source, None)
            }
            Credential::SasToken(secret) => {
                let source = Arc::new(SecretSource::new(secret.clone()));
                let policy = SasPolicy {
                    token: source.clone(),
                };
                (Arc::new(policy), source.clone(), Some(source))
            }
            Credential::Anonymous => {
                return Err(StoreError::InvalidInput {
                    path: location.container.clone(),
                    reason: "Azure File shares need an account key or a SAS token".into(),
                });
            }
        };
        let invalid = |reason: String| StoreError::InvalidInput {
            path: service_url.to_owned(),
            reason,
        };
        let mut share_url =
            Url::parse(service_url).map_err(|e| invalid(format!("invalid endpoint: {e}")))?;
        share_url
            .path_segments_mut()
            .map_err(|()| invalid("the endpoint cannot take a path".into()))?
            .pop_if_empty()
            .push(&location.container);
        let options = ClientOptions {
            per_try_policies: vec![auth],
            retry: RetryOptions::none(),
            transport: Some(Transport::new(resources.http())),
            ..Default::default()
        };
        let pipeline = Pipeline::new(
            Some("dataref"),
            Some(env!("CARGO_PKG_VERSION")),
            options,
            Vec::new(),
            Vec::new(),
            None,
        );
        Ok(Self {
            inner: Arc::new(Inner {
                pipeline,
                description: format!("azure_file:{}/{}", service_url, location.container),
                share_url,
                secret: Some(secret),
                sas,
                retry: resources.retry.clone(),
                page_size: DEFAULT_PAGE,
            }),
        })
    }

    fn inner_mut(&mut self) -> &mut Inner {
        Arc::get_mut(&mut self.inner).expect("configured before use")
    }

    /// Smaller listing pages, so that tests exercise continuation markers.
    pub fn with_page_size(mut self, page_size: u32) -> Self {
        self.inner_mut().page_size = page_size.max(1);
        self
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.inner_mut().retry = retry;
        self
    }

    /// Creates the share; an existing one is fine.
    pub async fn create_share(&self) -> Result<()> {
        let inner = &self.inner;
        let result = inner
            .send(&inner.description, || {
                let mut url = inner.share_url.clone();
                url.query_pairs_mut().append_pair("restype", "share");
                inner.request(url, Method::Put)
            })
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(failed) if failed.is("ShareAlreadyExists") => Ok(()),
            Err(failed) => Err(failed.into()),
        }
    }
}

impl Inner {
    fn url(&self, path: &ObjectPath) -> Url {
        let mut url = self.share_url.clone();
        url.path_segments_mut()
            .expect("checked in new")
            .extend(path.segments());
        url
    }

    fn url_with(&self, path: &ObjectPath, query: &[(&str, &str)]) -> Url {
        let mut url = self.url(path);
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (name, value) in query {
                pairs.append_pair(name, value);
            }
        }
        url
    }

    fn request(&self, url: Url, method: Method) -> Request {
        let mut request = Request::new(url, method);
        request.insert_header("x-ms-version", API_VERSION);
        // SharedKey signing sets its own per attempt; SAS requests carry one too, as every
        // request is built afresh for each attempt.
        request.insert_header(
            "x-ms-date",
            azure_core::time::to_rfc7231(&azure_core::time::OffsetDateTime::now_utc()),
        );
        request
    }

    /// Runs one operation under the retry policy; a 403 re-reads a rotated secret once.
    async fn call<T, F, Fut>(&self, context: &str, op: F) -> Result<T, Failed>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = azure_core::Result<T>>,
    {
        self.call_with(&self.retry, context, op).await
    }

    /// `call` under `retry` (a single attempt for ranged reads, which their callers retry).
    async fn call_with<T, F, Fut>(
        &self,
        retry: &RetryPolicy,
        context: &str,
        op: F,
    ) -> Result<T, Failed>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = azure_core::Result<T>>,
    {
        let mut reloaded = false;
        loop {
            let code = Mutex::new(None);
            let result = retry
                .run(|| async {
                    op().await.map_err(|e| {
                        *code.lock().unwrap() = error_code(&e);
                        from_azure(context, e)
                    })
                })
                .await;
            match result {
                Ok(value) => return Ok(value),
                Err(e)
                    if !reloaded
                        && is_auth_failure(&e)
                        && self.secret.as_ref().is_some_and(|s| s.reload()) =>
                {
                    reloaded = true;
                    tracing::info!("{context}: access denied; retrying with the re-read secret");
                }
                Err(error) => {
                    return Err(Failed {
                        error,
                        code: code.into_inner().unwrap(),
                    });
                }
            }
        }
    }

    /// Sends the request `build` makes (afresh for every attempt) and reads the whole answer.
    async fn send(
        &self,
        context: &str,
        build: impl Fn() -> Request,
    ) -> Result<RawResponse, Failed> {
        self.call(context, || async {
            let mut request = build();
            self.pipeline
                .send(&Context::new(), &mut request, None)
                .await
        })
        .await
    }

    /// Creates `dir` and any missing ancestors, one level at a time: the service creates a
    /// single directory per call and needs its parent. Races with concurrent uploads creating
    /// the same directories are fine (`ResourceAlreadyExists`).
    async fn ensure_directory(&self, dir: &ObjectPath) -> Result<()> {
        let mut pending = vec![dir.clone()];
        while let Some(current) = pending.last().cloned() {
            if current.is_root() {
                pending.pop();
                continue;
            }
            let context = current.to_string();
            let result = self
                .send(&context, || {
                    let mut request = self.request(
                        self.url_with(&current, &[("restype", "directory")]),
                        Method::Put,
                    );
                    new_smb_properties(&mut request);
                    request
                })
                .await;
            match result {
                Ok(_) => {
                    pending.pop();
                }
                Err(failed) if failed.is("ResourceAlreadyExists") => {
                    pending.pop();
                }
                Err(failed) if failed.is("ParentNotFound") => {
                    pending.push(current.parent().unwrap_or_default());
                }
                Err(failed) => return Err(failed.into()),
            }
        }
        Ok(())
    }

    /// Create File at its final size (its content is zeros until ranges are written),
    /// creating the parent directories when they are missing.
    async fn create_file(&self, path: &ObjectPath, size: u64, md5: Option<[u8; 16]>) -> Result<()> {
        let context = path.to_string();
        let attempt = || {
            self.send(&context, || {
                let mut request = self.request(self.url(path), Method::Put);
                request.insert_header("x-ms-type", "file");
                request.insert_header("x-ms-content-length", size.to_string());
                if let Some(md5) = md5 {
                    request.insert_header("x-ms-content-md5", B64.encode(md5));
                }
                new_smb_properties(&mut request);
                request
            })
        };
        match attempt().await {
            Ok(_) => Ok(()),
            Err(failed) if failed.is("ParentNotFound") => {
                self.ensure_directory(&path.parent().unwrap_or_default())
                    .await?;
                attempt().await.map(|_| ()).map_err(Into::into)
            }
            Err(failed) => Err(failed.into()),
        }
    }

    async fn put_range(&self, path: &ObjectPath, offset: u64, data: Bytes) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let end = offset + data.len() as u64 - 1;
        self.send(&path.to_string(), || {
            let mut request = self.request(self.url_with(path, &[("comp", "range")]), Method::Put);
            request.insert_header("x-ms-write", "update");
            request.insert_header("x-ms-range", format!("bytes={offset}-{end}"));
            request.set_body(data.clone());
            request
        })
        .await?;
        Ok(())
    }

    /// Records the whole-file MD5 (Set File Properties; other SMB properties are preserved).
    async fn set_md5(&self, path: &ObjectPath, md5: [u8; 16]) -> Result<()> {
        self.send(&path.to_string(), || {
            let mut request =
                self.request(self.url_with(path, &[("comp", "properties")]), Method::Put);
            request.insert_header("x-ms-content-md5", B64.encode(md5));
            request.insert_header("x-ms-file-attributes", "preserve");
            request.insert_header("x-ms-file-creation-time", "preserve");
            request.insert_header("x-ms-file-last-write-time", "preserve");
            request.insert_header("x-ms-file-permission", "preserve");
            request
        })
        .await?;
        Ok(())
    }

    /// Renames `from` over `to` (same directory), replacing an existing file.
    async fn rename(&self, from: &ObjectPath, to: &ObjectPath) -> Result<()> {
        self.send(&to.to_string(), || {
            let mut source = self.url(from);
            if let Some(token) = self.sas.as_ref().and_then(|s| s.current().ok()) {
                // The service authorises the source separately: it carries the SAS too.
                source.set_query(Some(token.expose().trim_start_matches('?')));
            }
            let mut request = self.request(self.url_with(to, &[("comp", "rename")]), Method::Put);
            request.insert_header("x-ms-file-rename-source", source.to_string());
            request.insert_header("x-ms-file-rename-replace-if-exists", "true");
            request
        })
        .await?;
        Ok(())
    }

    async fn delete_file(&self, path: &ObjectPath) -> Result<()> {
        self.send(&path.to_string(), || {
            self.request(self.url(path), Method::Delete)
        })
        .await?;
        Ok(())
    }

    /// Deletes a temporary file after a failure; a second failure is only logged.
    async fn discard(&self, temp: &ObjectPath) {
        match self.delete_file(temp).await {
            Ok(()) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => tracing::warn!("cannot remove the temporary file {temp}: {e}"),
        }
    }

    /// One page of one directory; a missing directory (or a file of that name) is empty.
    async fn list_directory(
        &self,
        dir: &ObjectPath,
        marker: Option<&str>,
    ) -> Result<listing::Page> {
        let page_size = self.page_size.to_string();
        let mut query = vec![
            ("restype", "directory"),
            ("comp", "list"),
            ("include", "Timestamps"),
            ("maxresults", page_size.as_str()),
        ];
        if let Some(marker) = marker {
            query.push(("marker", marker));
        }
        let context = dir.to_string();
        let result = self
            .send(&context, || {
                self.request(self.url_with(dir, &query), Method::Get)
            })
            .await;
        let body = match result {
            Ok(response) => response.into_body(),
            Err(failed)
                if matches!(failed.error, StoreError::NotFound { .. })
                    && !failed.is("ShareNotFound") =>
            {
                return Ok(listing::Page::default());
            }
            Err(failed) if failed.is("ResourceTypeMismatch") => {
                return Ok(listing::Page::default());
            }
            Err(failed) => return Err(failed.into()),
        };
        azure_core::xml::from_xml::<_, listing::EnumerationResults>(&body)
            .map(listing::Page::from)
            .map_err(|e| StoreError::Service {
                context: self.description.clone(),
                message: format!("unreadable listing of {context}: {e}"),
            })
    }
}

/// Where a recursive listing stands: the directory being read, its next marker, and the
/// directories found but not read yet (breadth first). Encoded as the continuation token.
#[derive(Debug, Serialize, Deserialize)]
struct Walk {
    dir: String,
    marker: Option<String>,
    pending: VecDeque<String>,
}

const WALK_TOKEN_PREFIX: &str = "walk1.";

impl Walk {
    fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("a walk encodes");
        format!("{WALK_TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
    }

    fn decode(token: &str, base: &ObjectPath) -> Result<Self> {
        let invalid = || StoreError::InvalidInput {
            path: base.to_string(),
            reason: "invalid listing continuation token".into(),
        };
        let json = token
            .strip_prefix(WALK_TOKEN_PREFIX)
            .and_then(|t| URL_SAFE_NO_PAD.decode(t).ok())
            .ok_or_else(invalid)?;
        let walk: Walk = serde_json::from_slice(&json).map_err(|_| invalid())?;
        // A token only ever names directories under the listed one.
        let inside = |d: &str| ObjectPath::parse(d).is_ok_and(|p| p.starts_with(base));
        if !inside(&walk.dir) || !walk.pending.iter().all(|d| inside(d)) {
            return Err(invalid());
        }
        Ok(walk)
    }
}

impl FileStore {
    /// Adds one service page of `dir` to `page`; returns the sub-directories found.
    fn collect(
        dir: &ObjectPath,
        raw: listing::Page,
        page: &mut ListPage,
        directories: &mut Vec<ObjectPath>,
    ) {
        for file in raw.files {
            if is_temp_name(&file.name) {
                continue;
            }
            match dir.child(&file.name) {
                Ok(path) => page.objects.push(ObjectMeta {
                    path,
                    size: file.size,
                    last_modified: file.last_modified,
                    // Listings carry no MD5; `head` does.
                    content_md5: None,
                }),
                Err(reason) => page.refused.push(RefusedName {
                    name: format!("{}/{}", dir.as_str(), file.name),
                    reason: reason.to_string(),
                }),
            }
        }
        for name in raw.directories {
            match dir.child(&name) {
                Ok(path) => directories.push(path),
                Err(reason) => page.refused.push(RefusedName {
                    name: format!("{}/{}/", dir.as_str(), name),
                    reason: reason.to_string(),
                }),
            }
        }
    }

    async fn list_delimited(&self, request: &ListRequest) -> Result<ListPage> {
        let raw = self
            .inner
            .list_directory(&request.dir, request.continuation.as_deref())
            .await?;
        let mut page = ListPage {
            continuation: raw.next_marker.clone(),
            ..Default::default()
        };
        let mut directories = Vec::new();
        Self::collect(&request.dir, raw, &mut page, &mut directories);
        page.directories = directories;
        page.objects.sort_by(|a, b| a.path.cmp(&b.path));
        page.directories.sort();
        Ok(page)
    }

    async fn list_recursive(&self, request: &ListRequest) -> Result<ListPage> {
        let mut walk = match &request.continuation {
            Some(token) => Walk::decode(token, &request.dir)?,
            None => Walk {
                dir: request.dir.as_str().to_owned(),
                marker: None,
                pending: VecDeque::new(),
            },
        };
        let mut page = ListPage::default();
        for _ in 0..WALK_STEPS_PER_PAGE {
            let dir = ObjectPath::parse(&walk.dir).expect("checked when decoded");
            let raw = self
                .inner
                .list_directory(&dir, walk.marker.as_deref())
                .await?;
            let next_marker = raw.next_marker.clone();
            let mut directories = Vec::new();
            Self::collect(&dir, raw, &mut page, &mut directories);
            walk.pending
                .extend(directories.into_iter().map(|d| d.as_str().to_owned()));
            match next_marker {
                Some(marker) => walk.marker = Some(marker),
                None => match walk.pending.pop_front() {
                    Some(next) => {
                        walk.dir = next;
                        walk.marker = None;
                    }
                    None => {
                        page.objects.sort_by(|a, b| a.path.cmp(&b.path));
                        return Ok(page);
                    }
                },
            }
            if !page.objects.is_empty() {
                break;
            }
        }
        page.objects.sort_by(|a, b| a.path.cmp(&b.path));
        page.continuation = Some(walk.encode());
        Ok(page)
    }
}

#[async_trait]
impl Store for FileStore {
    fn describe(&self) -> String {
        self.inner.description.clone()
    }

    fn max_part_size(&self) -> u64 {
        MAX_RANGE
    }

    async fn list(&self, request: &ListRequest) -> Result<ListPage> {
        if request.delimited {
            self.list_delimited(request).await
        } else {
            self.list_recursive(request).await
        }
    }

    async fn head(&self, path: &ObjectPath) -> Result<ObjectMeta> {
        if path.is_root() {
            return Err(StoreError::NotFound { path: "/".into() });
        }
        let inner = &self.inner;
        let context = path.to_string();
        let response = inner
            .send(&context, || inner.request(inner.url(path), Method::Head))
            .await?;
        // Get File Properties answers for files only; be sure a directory never passes.
        if header(&response, "x-ms-type").is_some_and(|t| !t.eq_ignore_ascii_case("file")) {
            return Err(StoreError::NotFound { path: context });
        }
        let size = header(&response, "content-length")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| StoreError::Service {
                context: context.clone(),
                message: "no Content-Length in the file's properties".into(),
            })?;
        Ok(ObjectMeta {
            path: path.clone(),
            size,
            last_modified: header(&response, "last-modified")
                .and_then(|t| azure_core::time::parse_rfc7231(t).ok())
                .map(SystemTime::from),
            content_md5: header(&response, "content-md5")
                .and_then(|m| B64.decode(m.trim()).ok())
                .and_then(|m| <[u8; 16]>::try_from(m.as_slice()).ok()),
        })
    }

    async fn get_range(&self, path: &ObjectPath, range: Range<u64>) -> Result<ByteStream> {
        if range.is_empty() {
            // Nothing to read (0-byte files): a ranged GET would be a 416.
            return Ok(futures::stream::empty().boxed());
        }
        let inner = self.inner.clone();
        let context = path.to_string();
        let last = range.end - 1;
        // One attempt: the caller retries and resumes (see `store::retry`).
        let result = inner
            .call_with(&RetryPolicy::none(), &context, || async {
                let mut request = inner.request(inner.url(path), Method::Get);
                request.insert_header("x-ms-range", format!("bytes={}-{last}", range.start));
                inner
                    .pipeline
                    .stream(&Context::new(), &mut request, None)
                    .await
            })
            .await;
        let response = match result {
            Ok(response) => response,
            // A range that starts at or past the end: nothing there.
            Err(Failed {
                error: StoreError::Http { status: 416, .. },
                ..
            }) => return Ok(futures::stream::empty().boxed()),
            Err(failed) => return Err(failed.into()),
        };
        // The body streams from the socket; a broken body is resumed by the caller.
        let stream = response
            .into_body()
            .map_err(move |e| from_azure(&context, e));
        Ok(stream.boxed())
    }

    async fn put(&self, path: &ObjectPath, data: Bytes, options: &PutOptions) -> Result<()> {
        reject_root(path)?;
        let inner = &self.inner;
        let md5: [u8; 16] = options
            .content_md5
            .unwrap_or_else(|| Md5::digest(&data).into());
        let temp = temp_path(path)?;
        inner
            .create_file(&temp, data.len() as u64, Some(md5))
            .await?;
        let written = async {
            let chunks = (0..data.len()).step_by(MAX_RANGE as usize).map(|start| {
                let end = (start + MAX_RANGE as usize).min(data.len());
                inner.put_range(&temp, start as u64, data.slice(start..end))
            });
            futures::stream::iter(chunks)
                .buffer_unordered(PUT_CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await?;
            inner.rename(&temp, path).await
        }
        .await;
        if written.is_err() {
            inner.discard(&temp).await;
        }
        written
    }

    async fn start_upload(
        &self,
        path: &ObjectPath,
        total_size: u64,
    ) -> Result<Box<dyn PartUpload>> {
        reject_root(path)?;
        let temp = temp_path(path)?;
        self.inner.create_file(&temp, total_size, None).await?;
        Ok(Box::new(FileUpload {
            inner: self.inner.clone(),
            path: path.clone(),
            temp,
            total_size,
            written: Mutex::new(BTreeMap::new()),
        }))
    }

    async fn delete(&self, path: &ObjectPath) -> Result<()> {
        reject_root(path)?;
        self.inner.delete_file(path).await
    }
}

/// A multi-part write into a temporary file, renamed into place by `complete`.
struct FileUpload {
    inner: Arc<Inner>,
    path: ObjectPath,
    temp: ObjectPath,
    total_size: u64,
    /// Part index → length, to check that every byte was written before renaming.
    written: Mutex<BTreeMap<u64, u64>>,
}

#[async_trait]
impl PartUpload for FileUpload {
    async fn put_part(&self, index: u64, offset: u64, data: Bytes) -> Result<()> {
        check_part(&self.path, self.total_size, MAX_RANGE, offset, &data)?;
        let len = data.len() as u64;
        self.inner.put_range(&self.temp, offset, data).await?;
        self.written.lock().unwrap().insert(index, len);
        Ok(())
    }

    async fn complete(self: Box<Self>, content_md5: Option<[u8; 16]>) -> Result<()> {
        let written = std::mem::take(&mut *self.written.lock().unwrap());
        let bytes: u64 = written.values().sum();
        let contiguous = written.keys().copied().eq(0..written.len() as u64);
        let result = if bytes != self.total_size || !contiguous {
            Err(StoreError::InvalidInput {
                path: self.path.to_string(),
                reason: format!("{bytes} bytes written of {}", self.total_size),
            })
        } else {
            async {
                if let Some(md5) = content_md5 {
                    self.inner.set_md5(&self.temp, md5).await?;
                }
                self.inner.rename(&self.temp, &self.path).await
            }
            .await
        };
        if result.is_err() {
            self.inner.discard(&self.temp).await;
        }
        result
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        match self.inner.delete_file(&self.temp).await {
            Ok(()) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// The List Directories and Files XML (files and directories interleave under `Entries`).
mod listing {
    use std::time::SystemTime;

    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    pub struct EnumerationResults {
        #[serde(rename = "Entries", default)]
        entries: Entries,
        #[serde(rename = "NextMarker", default)]
        next_marker: Option<String>,
    }

    #[derive(Debug, Deserialize, Default)]
    struct Entries {
        #[serde(rename = "$value", default)]
        items: Vec<Item>,
    }

    #[derive(Debug, Deserialize)]
    enum Item {
        File(File),
        Directory(Directory),
    }

    #[derive(Debug, Deserialize)]
    struct Name {
        #[serde(rename = "@Encoded", default)]
        encoded: Option<bool>,
        #[serde(rename = "$text", default)]
        text: String,
    }

    impl Name {
        /// Names with characters XML cannot carry come percent-encoded.
        fn decoded(&self) -> String {
            if self.encoded == Some(true) {
                percent_encoding::percent_decode_str(&self.text)
                    .decode_utf8_lossy()
                    .into_owned()
            } else {
                self.text.clone()
            }
        }
    }

    #[derive(Debug, Deserialize)]
    struct File {
        #[serde(rename = "Name")]
        name: Name,
        #[serde(rename = "Properties")]
        properties: Properties,
    }

    #[derive(Debug, Deserialize)]
    struct Properties {
        #[serde(rename = "Content-Length")]
        content_length: u64,
        #[serde(rename = "Last-Modified", default)]
        last_modified: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    struct Directory {
        #[serde(rename = "Name")]
        name: Name,
    }

    pub struct ListedFile {
        pub name: String,
        pub size: u64,
        pub last_modified: Option<SystemTime>,
    }

    #[derive(Default)]
    pub struct Page {
        pub files: Vec<ListedFile>,
        pub directories: Vec<String>,
        pub next_marker: Option<String>,
    }

    impl From<EnumerationResults> for Page {
        fn from(results: EnumerationResults) -> Self {
            let mut page = Page {
                next_marker: results.next_marker.filter(|m| !m.is_empty()),
                ..Default::default()
            };
            for item in results.entries.items {
                match item {
                    Item::File(file) => page.files.push(ListedFile {
                        name: file.name.decoded(),
                        size: file.properties.content_length,
                        last_modified: file
                            .properties
                            .last_modified
                            .and_then(|t| azure_core::time::parse_rfc7231(&t).ok())
                            .map(SystemTime::from),
                    }),
                    Item::Directory(dir) => page.directories.push(dir.name.decoded()),
                }
            }
            page
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_are_hidden_and_stay_short() {
        let path = ObjectPath::parse("a/b/model.bin").unwrap();
        let temp = temp_path(&path).unwrap();
        assert_eq!(temp.parent().unwrap().as_str(), "a/b");
        assert!(is_temp_name(temp.file_name().unwrap()), "{temp}");
        assert!(!is_temp_name("model.bin"));
        assert!(!is_temp_name(".hidden"));
        assert_ne!(
            temp,
            temp_path(&path).unwrap(),
            "two uploads never share a name"
        );
        let long = ObjectPath::parse(&"x".repeat(255)).unwrap();
        assert!(temp_path(&long).unwrap().as_str().len() <= 255);
    }

    #[test]
    fn walk_tokens_round_trip_and_stay_under_the_listed_directory() {
        let base = ObjectPath::parse("data").unwrap();
        let walk = Walk {
            dir: "data/a".into(),
            marker: Some("m".into()),
            pending: VecDeque::from(["data/b".to_owned()]),
        };
        let decoded = Walk::decode(&walk.encode(), &base).unwrap();
        assert_eq!(decoded.dir, "data/a");
        assert_eq!(decoded.marker.as_deref(), Some("m"));
        let escape = Walk {
            dir: "other".into(),
            marker: None,
            pending: VecDeque::new(),
        };
        assert!(Walk::decode(&escape.encode(), &base).is_err());
        assert!(Walk::decode("garbage", &base).is_err());
    }
}
