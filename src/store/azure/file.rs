//! The `azure_file` backend: an Azure File share over FileREST.
//!
//! There is no official Rust SDK for Azure Files, so every call is a raw request sent through
//! the shared Azure client (`client`): the same pipeline, SharedKey/SAS policies, retry loop
//! with secret re-reading, and error mapping as the Blob backend. Listing is in `listing`.
//!
//! File shares differ from Blob containers in ways the trait hides:
//! - directories are real: uploads create parents one level at a time, listings walk them;
//! - a file is created at its final size and written in ranges of at most 4 MiB;
//! - nothing is atomic at the end of a write, so uploads write a hidden temporary file in the
//!   target's directory and rename it over the final name once complete (nothing partial under
//!   a final name); temporary names never appear in listings;
//! - the whole-file CRC64 is metadata `crc64`, as on blobs, set on the temporary file (Create
//!   File, or Set File Metadata once a multi-part upload knows it) and moved by the rename; but
//!   listings carry no metadata, so downloads read it from each Get File's answer.

mod listing;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use azure_core::http::{Method, Request};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use md5::{Digest, Md5};

use super::client::{AzureClient, Failed, Service, from_azure, header, http_date, md5_from_base64};
use crate::model::ObjectPath;
use crate::model::RetryPolicy;
use crate::model::datastore::{AzureLocation, Credential};
use crate::store::Resources;
use crate::store::checksum::{crc64, crc64_hex, parse_crc64};
use crate::store::support::{check_part, reject_root};
use crate::store::{
    ByteStream, Checksums, ListPage, ListRequest, ObjectMeta, PartUpload, PutOptions, Result,
    Store, StoreError,
};

/// FileREST version of every request: Rename File needs 2021-04-10 or later, and from
/// 2021-06-08 the SMB properties of Create File/Directory have defaults (we still send them).
pub const API_VERSION: &str = "2022-11-02";
/// Put Range writes at most 4 MiB per request.
pub const MAX_RANGE: u64 = 4 * 1024 * 1024;
/// Parts of one `put` in flight at once.
const PUT_CONCURRENCY: usize = 4;

const SERVICE: Service = Service {
    kind: "azure_file",
    api_version: API_VERSION,
};

/// The header that carries the whole-file CRC64 (metadata `crc64`, as on blobs).
const CRC64_HEADER: &str = "x-ms-meta-crc64";

/// Marks of our temporary upload names: `.<name>.dataref-<random>.partial`.
const TEMP_MARK: &str = ".dataref-";
const TEMP_SUFFIX: &str = ".partial";

#[derive(Clone)]
pub struct FileStore {
    share: Arc<Share>,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.share.client.description())
    }
}

/// The FileREST operations, over the shared client.
struct Share {
    client: AzureClient,
}

/// True for our own temporary upload names, which listings hide.
pub fn is_temp_name(segment: &str) -> bool {
    segment.starts_with('.') && segment.ends_with(TEMP_SUFFIX) && segment.contains(TEMP_MARK)
}

/// A fresh temporary name beside `path`. The original name is shortened so that the result
/// stays within Azure's 255-character limit.
fn temp_path(path: &ObjectPath) -> Result<ObjectPath> {
    let name = path.file_name().unwrap_or("file");
    let short: String = name.chars().take(100).collect();
    let random = crate::model::random::random_u64();
    let segment = format!(".{short}{TEMP_MARK}{random:016x}{TEMP_SUFFIX}");
    path.parent()
        .unwrap_or_default()
        .child(&segment)
        .map_err(|source| StoreError::InvalidName {
            path: path.to_string(),
            source,
        })
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
        if matches!(location.credential, Credential::Anonymous) {
            return Err(StoreError::InvalidInput {
                path: location.container.clone(),
                reason: "Azure File shares need an account key or a SAS token".into(),
            });
        }
        let client = AzureClient::new(SERVICE, location, service_url, resources)?;
        Ok(Self {
            share: Arc::new(Share { client }),
        })
    }

    fn client_mut(&mut self) -> &mut AzureClient {
        &mut Arc::get_mut(&mut self.share)
            .expect("configured before use")
            .client
    }

    /// Smaller listing pages, so that tests exercise continuation markers.
    pub fn with_page_size(mut self, page_size: u32) -> Self {
        self.client_mut().set_page_size(page_size);
        self
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.client_mut().retry = retry;
        self
    }

    /// Creates the share; an existing one is fine.
    pub async fn create_share(&self) -> Result<()> {
        let client = &self.share.client;
        let result = client
            .send(client.description(), || {
                let mut url = client.base_url().clone();
                url.query_pairs_mut().append_pair("restype", "share");
                client.request(url, Method::Put)
            })
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(failed) if failed.is("ShareAlreadyExists") => Ok(()),
            Err(failed) => Err(failed.into()),
        }
    }
}

impl Share {
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
                .client
                .send(&context, || {
                    let mut request = self.client.request(
                        self.client.url_with(&current, &[("restype", "directory")]),
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
    /// creating the parent directories when they are missing. The checksums known before the
    /// content (a whole-file `put`) are recorded at once: it is a temporary name, renamed only
    /// once every range is written.
    async fn create_file(&self, path: &ObjectPath, size: u64, checksums: Checksums) -> Result<()> {
        let context = path.to_string();
        let attempt = || {
            self.client.send(&context, || {
                let mut request = self.client.request(self.client.url(path), Method::Put);
                request.insert_header("x-ms-type", "file");
                request.insert_header("x-ms-content-length", size.to_string());
                if let Some(md5) = checksums.md5 {
                    request.insert_header("x-ms-content-md5", B64.encode(md5));
                }
                if let Some(crc) = checksums.crc64 {
                    request.insert_header(CRC64_HEADER, crc64_hex(crc));
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
        self.client
            .send(&path.to_string(), || {
                let mut request = self.client.request(
                    self.client.url_with(path, &[("comp", "range")]),
                    Method::Put,
                );
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
        self.client
            .send(&path.to_string(), || {
                let mut request = self.client.request(
                    self.client.url_with(path, &[("comp", "properties")]),
                    Method::Put,
                );
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

    /// Records the whole-file CRC64 as the file's metadata (Set File Metadata, which replaces
    /// all of it: a temporary file of ours has no other).
    async fn set_crc64(&self, path: &ObjectPath, crc: u64) -> Result<()> {
        self.client
            .send(&path.to_string(), || {
                let mut request = self.client.request(
                    self.client.url_with(path, &[("comp", "metadata")]),
                    Method::Put,
                );
                request.insert_header(CRC64_HEADER, crc64_hex(crc));
                request
            })
            .await?;
        Ok(())
    }

    /// Renames `from` over `to` (same directory), replacing an existing file.
    async fn rename(&self, from: &ObjectPath, to: &ObjectPath) -> Result<()> {
        self.client
            .send(&to.to_string(), || {
                let mut source = self.client.url(from);
                if let Some(token) = self.client.sas_token() {
                    // The service authorises the source separately: it carries the SAS too.
                    source.set_query(Some(&token));
                }
                let mut request = self
                    .client
                    .request(self.client.url_with(to, &[("comp", "rename")]), Method::Put);
                request.insert_header("x-ms-file-rename-source", source.to_string());
                request.insert_header("x-ms-file-rename-replace-if-exists", "true");
                request
            })
            .await?;
        Ok(())
    }

    async fn delete_file(&self, path: &ObjectPath) -> Result<()> {
        self.client
            .send(&path.to_string(), || {
                self.client.request(self.client.url(path), Method::Delete)
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
}

#[async_trait]
impl Store for FileStore {
    fn describe(&self) -> String {
        self.share.client.description().to_owned()
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
        let client = &self.share.client;
        let context = path.to_string();
        let response = client
            .send(&context, || client.request(client.url(path), Method::Head))
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
            last_modified: header(&response, "last-modified").and_then(http_date),
            content_md5: header(&response, "content-md5").and_then(md5_from_base64),
            crc64: header(&response, CRC64_HEADER).and_then(parse_crc64),
            version: header(&response, "etag").map(str::to_owned),
        })
    }

    async fn get_range(
        &self,
        path: &ObjectPath,
        range: Range<u64>,
        version: Option<&str>,
    ) -> Result<ByteStream> {
        Ok(self.get_range_with_crc64(path, range, version).await?.0)
    }

    /// Get File answers with the file's metadata, so the CRC64 that listings lack comes with
    /// the bytes, without a Get File Properties per file.
    async fn get_range_with_crc64(
        &self,
        path: &ObjectPath,
        range: Range<u64>,
        version: Option<&str>,
    ) -> Result<(ByteStream, Option<u64>)> {
        if range.is_empty() {
            // Nothing to read (0-byte files): a ranged GET would be a 416.
            return Ok((futures::stream::empty().boxed(), None));
        }
        let client = &self.share.client;
        let context = path.to_string();
        let last = range.end - 1;
        // One attempt: the caller retries and resumes (`store::ranged`).
        let result = client
            .stream(&context, || {
                let mut request = client.request(client.url(path), Method::Get);
                request.insert_header("x-ms-range", format!("bytes={}-{last}", range.start));
                request
            })
            .await;
        let response = match result {
            Ok(response) => response,
            // A range that starts at or past the end: nothing there.
            Err(Failed {
                error: StoreError::Http { status: 416, .. },
                ..
            }) => return Ok((futures::stream::empty().boxed(), None)),
            Err(failed) => return Err(failed.into()),
        };
        // Get File takes no If-Match, but every answer names the version its bytes are of:
        // another version's body is dropped before a byte of it is read.
        let etag = azure_core::http::headers::HeaderName::from_static("etag");
        if let Some(version) = version
            && response.headers().get_optional_str(&etag) != Some(version)
        {
            return Err(StoreError::Changed { path: context });
        }
        let crc = response
            .headers()
            .get_optional_str(&azure_core::http::headers::HeaderName::from_static(
                CRC64_HEADER,
            ))
            .and_then(parse_crc64);
        // The body streams from the socket; a broken body is resumed by the caller.
        let stream = response
            .into_body()
            .map_err(move |e| from_azure(&context, e));
        Ok((stream.boxed(), crc))
    }

    async fn put(&self, path: &ObjectPath, data: Bytes, options: &PutOptions) -> Result<()> {
        reject_root(path)?;
        let share = &self.share;
        let checksums = Checksums {
            md5: Some(
                options
                    .checksums
                    .md5
                    .unwrap_or_else(|| Md5::digest(&data).into()),
            ),
            crc64: Some(options.checksums.crc64.unwrap_or_else(|| crc64(&data))),
        };
        let temp = temp_path(path)?;
        share
            .create_file(&temp, data.len() as u64, checksums)
            .await?;
        let written = async {
            let chunks = (0..data.len()).step_by(MAX_RANGE as usize).map(|start| {
                let end = (start + MAX_RANGE as usize).min(data.len());
                share.put_range(&temp, start as u64, data.slice(start..end))
            });
            futures::stream::iter(chunks)
                .buffer_unordered(PUT_CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await?;
            share.rename(&temp, path).await
        }
        .await;
        if written.is_err() {
            share.discard(&temp).await;
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
        self.share
            .create_file(&temp, total_size, Checksums::default())
            .await?;
        Ok(Box::new(FileUpload {
            share: self.share.clone(),
            path: path.clone(),
            temp,
            total_size,
            written: Mutex::new(BTreeMap::new()),
        }))
    }

    async fn delete(&self, path: &ObjectPath) -> Result<()> {
        reject_root(path)?;
        self.share.delete_file(path).await
    }
}

/// A multi-part write into a temporary file, renamed into place by `complete`.
struct FileUpload {
    share: Arc<Share>,
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
        self.share.put_range(&self.temp, offset, data).await?;
        self.written.lock().unwrap().insert(index, len);
        Ok(())
    }

    async fn complete(self: Box<Self>, checksums: Checksums) -> Result<()> {
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
                // Both on the temporary name: nothing under the final name claims a checksum
                // before the rename makes it complete.
                if let Some(md5) = checksums.md5 {
                    self.share.set_md5(&self.temp, md5).await?;
                }
                if let Some(crc) = checksums.crc64 {
                    self.share.set_crc64(&self.temp, crc).await?;
                }
                self.share.rename(&self.temp, &self.path).await
            }
            .await
        };
        if result.is_err() {
            self.share.discard(&self.temp).await;
        }
        result
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        match self.share.delete_file(&self.temp).await {
            Ok(()) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crc64_header_is_the_metadata_blobs_use() {
        use crate::store::checksum::CRC64_METADATA;
        assert_eq!(CRC64_HEADER, format!("x-ms-meta-{CRC64_METADATA}"));
    }

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
}
