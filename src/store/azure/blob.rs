//! The `azure_blob` backend over the official `azure_storage_blob` SDK.
//!
//! The SDK does the typed operations (properties, Put Blob, Put Block, Put Block List, delete,
//! create container). Listing with a delimiter is not in SDK 1.1 (and its model cannot read
//! Blob and BlobPrefix entries interleaved), so `list` sends the request through the shared
//! Azure client's pipeline and reads the XML itself; so does the ranged GET, which the SDK
//! wraps in a partitioned download whose per-call work outweighed a small blob's request. The
//! SDK's clients send through the same policies and transport, and every call runs under the
//! client's retry loop (`client::AzureClient::call`), so that every call and every broken body
//! follow one policy.

use std::collections::BTreeMap;
use std::num::NonZero;
use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use azure_core::http::{ClientMethodOptions, Context, Method, NoFormat, RequestContent};
use azure_storage_blob::models::{
    BlobClientGetPropertiesResultHeaders, BlobClientUploadOptions,
    BlockBlobClientCommitBlockListOptions, BlockListType, BlockLookupList,
};
use azure_storage_blob::{BlobClient, BlobContainerClient, BlobContainerClientOptions};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use md5::{Digest, Md5};

use super::auth::ExtraHeaders;
use super::client::{AzureClient, Failed, Service, from_azure};
use crate::model::ObjectPath;
use crate::model::RetryPolicy;
use crate::model::datastore::AzureLocation;
use crate::store::Resources;
use crate::store::checksum::{CRC64_METADATA, crc64, crc64_hex, parse_crc64};
use crate::store::support::{part_len, reject_root};
use crate::store::{
    ByteStream, Checksums, ListPage, ListRequest, ObjectMeta, PartUpload, PutOptions, RefusedName,
    Result, ResumedUpload, Store, StoreError,
};

/// Block blobs accept blocks up to 4000 MiB; our parts are far smaller.
const MAX_BLOCK: u64 = 4000 * 1024 * 1024;
/// A block blob holds at most 50,000 blocks.
const MAX_BLOCKS: u64 = 50_000;
/// The Blob service, as our own (list) requests speak to it.
const SERVICE: Service = Service {
    kind: "azure_blob",
    api_version: "2025-01-05",
};

#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.inner.client.description())
    }
}

struct Inner {
    client: AzureClient,
    /// The SDK's client, sending through `client`'s policies and transport.
    container: BlobContainerClient,
}

impl BlobStore {
    /// A store for the container described by `location` (nothing is contacted yet), sending
    /// through the job's HTTP client under its retry policy.
    pub fn new(location: &AzureLocation, service_url: &str, resources: &Resources) -> Result<Self> {
        let client = AzureClient::new(SERVICE, location, service_url, resources)?;
        let container = BlobContainerClient::new(
            client.base_url().clone(),
            None,
            Some(BlobContainerClientOptions {
                client_options: client.options(),
                ..Default::default()
            }),
        )
        .map_err(|e| StoreError::InvalidInput {
            path: service_url.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            inner: Arc::new(Inner { client, container }),
        })
    }

    fn client_mut(&mut self) -> &mut AzureClient {
        &mut Arc::get_mut(&mut self.inner)
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

    /// Creates the container; an existing one is fine.
    pub async fn create_container(&self) -> Result<()> {
        let inner = &self.inner;
        match inner
            .client
            .call(inner.client.description(), || inner.container.create(None))
            .await
        {
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Inner {
    fn blob(&self, path: &ObjectPath) -> BlobClient {
        self.container.blob_client(path.as_str())
    }

    async fn list_page(&self, request: &ListRequest) -> Result<listing::Page> {
        let client = &self.client;
        let prefix = if request.dir.is_root() {
            String::new()
        } else {
            format!("{}/", request.dir.as_str())
        };
        let mut url = client.base_url().clone();
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("restype", "container")
                .append_pair("comp", "list")
                .append_pair("include", "metadata")
                .append_pair("maxresults", &client.page_size.to_string());
            if !prefix.is_empty() {
                query.append_pair("prefix", &prefix);
            }
            if request.delimited {
                query.append_pair("delimiter", "/");
            }
            if let Some(marker) = &request.continuation {
                query.append_pair("marker", marker);
            }
        }
        let body = client
            .send(client.description(), || {
                client.request(url.clone(), Method::Get)
            })
            .await?
            .into_body();
        client
            .parse_xml::<listing::EnumerationResults>("listing", &body)
            .map(listing::Page::from)
    }
}

#[async_trait]
impl Store for BlobStore {
    fn describe(&self) -> String {
        self.inner.client.description().to_owned()
    }

    fn max_part_size(&self) -> u64 {
        MAX_BLOCK
    }

    async fn list(&self, request: &ListRequest) -> Result<ListPage> {
        let raw = self.inner.list_page(request).await?;
        let mut page = ListPage {
            continuation: raw.next_marker.filter(|m| !m.is_empty()),
            ..Default::default()
        };
        for blob in raw.blobs {
            if blob.is_directory_marker() {
                continue;
            }
            match ObjectPath::parse(&blob.name) {
                Ok(path) if !path.is_root() => page.objects.push(ObjectMeta {
                    path,
                    size: blob.size,
                    last_modified: blob.last_modified,
                    content_md5: blob.content_md5,
                    crc64: blob.crc64,
                    version: blob.etag,
                }),
                Ok(_) => {}
                Err(reason) => page.refused.push(RefusedName {
                    name: blob.name,
                    reason: reason.to_string(),
                }),
            }
        }
        for prefix in raw.prefixes {
            // Only the delimiter comes off: `a//` is the folder `a/` (refused), never `a`.
            let name = prefix.strip_suffix('/').unwrap_or(&prefix);
            match ObjectPath::parse(name) {
                Ok(path) if !path.is_root() => page.directories.push(path),
                Ok(_) => {}
                Err(reason) => page.refused.push(RefusedName {
                    name: prefix,
                    reason: reason.to_string(),
                }),
            }
        }
        Ok(page)
    }

    async fn head(&self, path: &ObjectPath) -> Result<ObjectMeta> {
        if path.is_root() {
            return Err(StoreError::NotFound { path: "/".into() });
        }
        let blob = self.inner.blob(path);
        let context = path.to_string();
        let properties = self
            .inner
            .client
            .call(&context, || blob.get_properties(None))
            .await?;
        let header = |e: azure_core::Error| from_azure(&context, e);
        let metadata = properties.metadata().map_err(header)?;
        let size = properties.content_length().map_err(header)?.unwrap_or(0);
        if size == 0 && metadata.get("hdi_isfolder").is_some_and(|v| v == "true") {
            // A directory marker is not a file.
            return Err(StoreError::NotFound { path: context });
        }
        Ok(ObjectMeta {
            path: path.clone(),
            size,
            last_modified: properties
                .last_modified()
                .map_err(header)?
                .map(SystemTime::from),
            content_md5: properties
                .content_md5()
                .map_err(header)?
                .and_then(|m| <[u8; 16]>::try_from(m.as_slice()).ok()),
            crc64: metadata
                .get(CRC64_METADATA)
                .and_then(|value| parse_crc64(value)),
            version: properties
                .etag()
                .map_err(header)?
                .map(|etag| quoted(etag.as_ref())),
        })
    }

    async fn get_range(
        &self,
        path: &ObjectPath,
        range: Range<u64>,
        version: Option<&str>,
    ) -> Result<ByteStream> {
        if range.is_empty() {
            // Nothing to read (0-byte blobs): a ranged GET would be a 416.
            return Ok(futures::stream::empty().boxed());
        }
        let client = &self.inner.client;
        let context = path.to_string();
        let last = range.end - 1;
        // One attempt: the caller retries and resumes (`store::ranged`). A plain Get Blob
        // through the shared pipeline rather than the SDK's partitioned download, whose
        // per-call machinery (its options, a task channel, parsing every response header into
        // typed properties) cost more client CPU than the request itself for a small blob.
        let response = client
            .stream(&context, || {
                let mut request = client.request(client.url(path), Method::Get);
                request.insert_header("x-ms-range", format!("bytes={}-{last}", range.start));
                // Pinned: a blob replaced since it was listed answers 412, never new bytes.
                if let Some(version) = version {
                    request.insert_header("if-match", version.to_owned());
                }
                request
            })
            .await;
        let response = match response {
            Ok(response) => response,
            // A range that starts at or past the end: nothing there.
            Err(Failed {
                error: StoreError::Http { status: 416, .. },
                ..
            }) => return Ok(futures::stream::empty().boxed()),
            Err(Failed {
                error: StoreError::Http { status: 412, .. },
                ..
            }) if version.is_some() => return Err(StoreError::Changed { path: context }),
            Err(failed) => return Err(failed.into()),
        };
        let stream = response
            .into_body()
            .map_err(move |e| from_azure(&context, e));
        Ok(stream.boxed())
    }

    async fn put(&self, path: &ObjectPath, data: Bytes, options: &PutOptions) -> Result<()> {
        reject_root(path)?;
        let blob = self.inner.blob(path);
        // The service checks the transactional Content-MD5 and stores x-ms-blob-content-md5.
        let md5: [u8; 16] = options
            .checksums
            .md5
            .unwrap_or_else(|| Md5::digest(&data).into());
        let crc = options.checksums.crc64.unwrap_or_else(|| crc64(&data));
        self.inner
            .client
            .call(&path.to_string(), || {
                let context = Context::new()
                    .with_value(ExtraHeaders(vec![("content-md5".into(), B64.encode(md5))]));
                blob.upload(
                    <RequestContent<Bytes, NoFormat> as From<Bytes>>::from(data.clone()),
                    Some(BlobClientUploadOptions {
                        blob_content_md5: Some(md5.to_vec()),
                        metadata: Some(crc64_metadata(crc)),
                        method_options: ClientMethodOptions { context },
                        // Always one Put Blob: the SDK would otherwise split large bodies into
                        // blocks, and the whole-object Content-MD5 would not match each block.
                        partition_size: NonZero::new((data.len() as u64).max(1)),
                        ..Default::default()
                    }),
                )
            })
            .await?;
        Ok(())
    }

    async fn start_upload(
        &self,
        path: &ObjectPath,
        total_size: u64,
    ) -> Result<Box<dyn PartUpload>> {
        reject_root(path)?;
        Ok(Box::new(BlockUpload {
            blob: self.inner.blob(path),
            inner: self.inner.clone(),
            path: path.clone(),
            total_size,
            tag: new_tag(),
            staged: std::sync::Mutex::new(BTreeMap::new()),
        }))
    }

    /// The blocks an interrupted upload staged survive on the service (uncommitted, for a
    /// week): Get Block List `blocklisttype=uncommitted` says which parts need not be sent.
    async fn resume_upload(
        &self,
        path: &ObjectPath,
        total_size: u64,
        part_size: u64,
        upload_id: &str,
    ) -> Result<ResumedUpload> {
        reject_root(path)?;
        let Some(tag) = parse_tag(upload_id) else {
            // Not an id of ours (a damaged journal): none of the blocks can be told to be ours.
            return Ok(ResumedUpload {
                upload: self.start_upload(path, total_size).await?,
                staged: Default::default(),
            });
        };
        let blob = self.inner.blob(path);
        let block_blob = blob.block_blob_client();
        let context = path.to_string();
        let listed = match self
            .inner
            .client
            .call(&context, || {
                block_blob.get_block_list(BlockListType::Uncommitted, None)
            })
            .await
        {
            Ok(response) => response
                .into_model()
                .map_err(|e| from_azure(&context, e))?
                .uncommitted_blocks
                .unwrap_or_default(),
            // Neither a blob nor staged blocks under that name.
            Err(StoreError::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        // A block of another upload (another tag: an older content of the file), of another
        // layout, or a stray id is not ours to reuse: its part is re-sent.
        let staged: BTreeMap<u64, u64> = listed
            .iter()
            .filter_map(|block| {
                let index = part_index(tag, block.name.as_deref()?)?;
                let size = u64::try_from(block.size?).ok()?;
                (part_len(total_size, part_size, index) == Some(size)).then_some((index, size))
            })
            .collect();
        Ok(ResumedUpload {
            staged: staged.keys().copied().collect(),
            upload: Box::new(BlockUpload {
                blob,
                inner: self.inner.clone(),
                path: path.clone(),
                total_size,
                tag,
                staged: std::sync::Mutex::new(staged),
            }),
        })
    }

    async fn delete(&self, path: &ObjectPath) -> Result<()> {
        let blob = self.inner.blob(path);
        self.inner
            .client
            .call(&path.to_string(), || blob.delete(None))
            .await?;
        Ok(())
    }
}

/// The metadata that records a whole-blob CRC64.
fn crc64_metadata(crc: u64) -> std::collections::HashMap<String, String> {
    [(CRC64_METADATA.to_owned(), crc64_hex(crc))].into()
}

/// An ETag as the `ETag` header carries it (quoted): List Blobs gives it bare, and `If-Match`
/// must be sent in one form.
fn quoted(etag: &str) -> String {
    match etag.starts_with('"') {
        true => etag.to_owned(),
        false => format!("\"{etag}\""),
    }
}

/// A block id: `dr<tag: 12 hex digits>-<part index: 5 digits>`. The tag is random per upload
/// (recorded in the journal as its upload id), so a resumed upload counts only the blocks it
/// staged itself, never those an upload of an older content of the same file left; the index
/// makes it deterministic per part. 20 bytes for every part (the service requires equal
/// lengths within a blob), as long as the ids of earlier versions (`dataref-<12 digits>`), so
/// blocks those left uncommitted never make ours the wrong length.
pub fn block_id(tag: u64, index: u64) -> Vec<u8> {
    debug_assert!(tag >> 48 == 0 && index < MAX_BLOCKS);
    format!("dr{tag:012x}-{index:05}").into_bytes()
}

/// The part index of one of the blocks of upload `tag` (`block_id`'s inverse).
fn part_index(tag: u64, id: &[u8]) -> Option<u64> {
    let id = std::str::from_utf8(id).ok()?;
    let (head, digits) = id.split_once('-')?;
    let index = digits.parse().ok().filter(|i| *i < MAX_BLOCKS)?;
    (parse_tag(head.strip_prefix("dr")?) == Some(tag) && block_id(tag, index) == id.as_bytes())
        .then_some(index)
}

/// A fresh random 48-bit tag.
fn new_tag() -> u64 {
    crate::model::random::random_u64() & ((1 << 48) - 1)
}

fn format_tag(tag: u64) -> String {
    format!("{tag:012x}")
}

fn parse_tag(text: &str) -> Option<u64> {
    let tag = u64::from_str_radix(text, 16).ok()?;
    (format_tag(tag) == text).then_some(tag)
}

/// Put Block per part, Put Block List at the end: nothing is visible under the name before the
/// commit, and the commit records the whole-object MD5.
struct BlockUpload {
    inner: Arc<Inner>,
    blob: BlobClient,
    path: ObjectPath,
    total_size: u64,
    /// This upload's part of every block id (`block_id`).
    tag: u64,
    /// Part index → bytes staged.
    staged: std::sync::Mutex<BTreeMap<u64, u64>>,
}

#[async_trait]
impl PartUpload for BlockUpload {
    async fn put_part(&self, index: u64, offset: u64, data: Bytes) -> Result<()> {
        crate::store::support::check_part(&self.path, self.total_size, MAX_BLOCK, offset, &data)?;
        if index >= MAX_BLOCKS {
            return Err(StoreError::InvalidInput {
                path: self.path.to_string(),
                reason: format!("part {index}: a blob holds at most {MAX_BLOCKS} blocks"),
            });
        }
        let id = block_id(self.tag, index);
        // No transactional MD5 per block: hashing every block a second time (beside the
        // whole-object MD5 the engine computes while reading) cost as much CPU as the rest of
        // the upload. Content is protected by TCP/TLS checksums in transit and by the
        // whole-object Content-MD5 recorded at commit, which every download verifies.
        let block_blob = self.blob.block_blob_client();
        let len = data.len() as u64;
        self.inner
            .client
            .call(&self.path.to_string(), || {
                block_blob.stage_block(
                    &id,
                    len,
                    <RequestContent<Bytes, NoFormat> as From<Bytes>>::from(data.clone()),
                    None,
                )
            })
            .await?;
        self.staged.lock().unwrap().insert(index, len);
        Ok(())
    }

    async fn complete(self: Box<Self>, checksums: Checksums) -> Result<()> {
        let staged = std::mem::take(&mut *self.staged.lock().unwrap());
        let bytes: u64 = staged.values().sum();
        let contiguous = staged.keys().copied().eq(0..staged.len() as u64);
        if bytes != self.total_size || !contiguous {
            return Err(StoreError::InvalidInput {
                path: self.path.to_string(),
                reason: format!("{bytes} bytes staged of {}", self.total_size),
            });
        }
        let ids: Vec<Vec<u8>> = staged.keys().map(|i| block_id(self.tag, *i)).collect();
        let block_blob = self.blob.block_blob_client();
        self.inner
            .client
            .call(&self.path.to_string(), || {
                let list = BlockLookupList {
                    latest: Some(ids.clone()),
                    ..Default::default()
                };
                let block_blob = &block_blob;
                async move {
                    block_blob
                        .commit_block_list(
                            list.try_into()?,
                            Some(BlockBlobClientCommitBlockListOptions {
                                blob_content_md5: checksums.md5.map(|m| m.to_vec()),
                                metadata: checksums.crc64.map(crc64_metadata),
                                ..Default::default()
                            }),
                        )
                        .await
                }
            })
            .await?;
        Ok(())
    }

    fn upload_id(&self) -> Option<String> {
        Some(format_tag(self.tag))
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        // Uncommitted blocks are never visible and the service drops them after a week.
        Ok(())
    }
}

/// The List Blobs XML, read with our own model (Blob and BlobPrefix interleave).
mod listing {
    use std::time::SystemTime;

    use serde::Deserialize;

    use crate::store::azure::client::{XmlName as Name, http_date, md5_from_base64};
    use crate::store::checksum::parse_crc64;

    #[derive(Debug, Deserialize)]
    pub struct EnumerationResults {
        #[serde(rename = "Blobs", default)]
        blobs: Blobs,
        #[serde(rename = "NextMarker", default)]
        next_marker: Option<String>,
    }

    #[derive(Debug, Deserialize, Default)]
    struct Blobs {
        #[serde(rename = "$value", default)]
        items: Vec<Item>,
    }

    #[derive(Debug, Deserialize)]
    enum Item {
        Blob(Blob),
        BlobPrefix(Prefix),
    }

    #[derive(Debug, Deserialize)]
    struct Blob {
        #[serde(rename = "Name")]
        name: Name,
        #[serde(rename = "Properties")]
        properties: Properties,
        #[serde(rename = "Metadata", default)]
        metadata: Option<Metadata>,
    }

    #[derive(Debug, Deserialize, Default)]
    struct Metadata {
        #[serde(rename = "hdi_isfolder", default)]
        hdi_isfolder: Option<String>,
        #[serde(rename = "crc64", default)]
        crc64: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    struct Properties {
        #[serde(rename = "Content-Length")]
        content_length: u64,
        #[serde(rename = "Content-MD5", default)]
        content_md5: Option<String>,
        #[serde(rename = "Last-Modified", default)]
        last_modified: Option<String>,
        #[serde(rename = "Etag", default)]
        etag: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    struct Prefix {
        #[serde(rename = "Name")]
        name: Name,
    }

    pub struct ListedBlob {
        pub name: String,
        pub size: u64,
        pub content_md5: Option<[u8; 16]>,
        pub last_modified: Option<SystemTime>,
        pub crc64: Option<u64>,
        pub etag: Option<String>,
        folder_marker: bool,
    }

    impl ListedBlob {
        /// `dir/` names and 0-byte `hdi_isfolder=true` blobs (ADLS / blobfuse folders).
        pub fn is_directory_marker(&self) -> bool {
            self.name.ends_with('/') || (self.size == 0 && self.folder_marker)
        }
    }

    pub struct Page {
        pub blobs: Vec<ListedBlob>,
        pub prefixes: Vec<String>,
        pub next_marker: Option<String>,
    }

    impl From<EnumerationResults> for Page {
        fn from(results: EnumerationResults) -> Self {
            let mut page = Page {
                blobs: Vec::new(),
                prefixes: Vec::new(),
                next_marker: results.next_marker,
            };
            for item in results.blobs.items {
                match item {
                    Item::Blob(blob) => page.blobs.push(ListedBlob {
                        crc64: blob
                            .metadata
                            .as_ref()
                            .and_then(|m| m.crc64.as_deref())
                            .and_then(parse_crc64),
                        etag: blob.properties.etag.as_deref().map(super::quoted),
                        name: blob.name.decoded(),
                        size: blob.properties.content_length,
                        content_md5: blob
                            .properties
                            .content_md5
                            .as_deref()
                            .and_then(md5_from_base64),
                        last_modified: blob.properties.last_modified.as_deref().and_then(http_date),
                        folder_marker: blob
                            .metadata
                            .and_then(|m| m.hdi_isfolder)
                            .is_some_and(|v| v == "true"),
                    }),
                    Item::BlobPrefix(prefix) => page.prefixes.push(prefix.name.decoded()),
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
    fn block_ids_map_back_to_their_part_of_their_upload_only() {
        let tag = new_tag();
        assert_ne!(tag, new_tag(), "each upload has its own tag");
        for index in [0, 17, MAX_BLOCKS - 1] {
            let id = block_id(tag, index);
            assert_eq!(
                id.len(),
                "dataref-000000000017".len(),
                "as long as the old ids"
            );
            assert_eq!(part_index(tag, &id), Some(index));
            // The same part of another upload (an older content of the file) is not ours.
            assert_eq!(part_index(tag ^ 1, &id), None);
        }
        assert_eq!(parse_tag(&format_tag(tag)), Some(tag));
        // Ids of earlier versions, another tool's blocks, other widths: not parts of ours.
        assert_eq!(part_index(tag, b"dataref-000000000017"), None);
        assert_eq!(part_index(0x17, b"dr000000000017-17"), None);
        assert_eq!(part_index(0x17, b"dr000000000017-+0017"), None);
        assert_eq!(part_index(0x17, b"dr000000000017-00017"), Some(17));
        assert_eq!(
            part_index(0x17, b"dr000000000017-99999"),
            None,
            "past the limit"
        );
        assert_eq!(parse_tag("00000000001F"), None, "one spelling per tag");
    }

    #[test]
    fn part_lengths_follow_the_layout() {
        assert_eq!(part_len(20, 8, 0), Some(8));
        assert_eq!(part_len(20, 8, 2), Some(4));
        assert_eq!(part_len(20, 8, 3), None);
        assert_eq!(part_len(20, 8, u64::MAX), None);
    }
}
