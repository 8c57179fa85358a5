//! Listing a share: one level is one List Directories and Files call per page; a recursive
//! listing walks directories breadth first, the walk state being the continuation token.

use std::collections::VecDeque;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use azure_core::http::Method;

use super::{FileStore, Share, is_temp_name};
use crate::model::ObjectPath;
use crate::store::{ListPage, ListRequest, ObjectMeta, RefusedName, Result, StoreError};

/// A recursive listing walks at most this many directory pages per `list` call before it
/// hands back a continuation, even if they held no files (bounded latency per page).
const WALK_STEPS_PER_PAGE: usize = 64;

impl Share {
    /// One page of one directory; a missing directory (or a file of that name) is empty.
    async fn list_directory(&self, dir: &ObjectPath, marker: Option<&str>) -> Result<xml::Page> {
        let client = &self.client;
        let page_size = client.page_size.to_string();
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
        let result = client
            .send(&context, || {
                client.request(client.url_with(dir, &query), Method::Get)
            })
            .await;
        let body = match result {
            Ok(response) => response.into_body(),
            Err(failed)
                if matches!(failed.error, StoreError::NotFound { .. })
                    && !failed.is("ShareNotFound") =>
            {
                return Ok(xml::Page::default());
            }
            Err(failed) if failed.is("ResourceTypeMismatch") => {
                return Ok(xml::Page::default());
            }
            Err(failed) => return Err(failed.into()),
        };
        client
            .parse_xml::<xml::EnumerationResults>(&format!("listing of {context}"), &body)
            .map(xml::Page::from)
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
        raw: xml::Page,
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
                    // Listings carry no MD5 and no ETag; `head` does.
                    ..Default::default()
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

    pub(super) async fn list_delimited(&self, request: &ListRequest) -> Result<ListPage> {
        let raw = self
            .share
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

    pub(super) async fn list_recursive(&self, request: &ListRequest) -> Result<ListPage> {
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
                .share
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

/// The List Directories and Files XML (files and directories interleave under `Entries`).
mod xml {
    use std::time::SystemTime;

    use serde::Deserialize;

    use crate::store::azure::client::{XmlName as Name, http_date};

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
                        last_modified: file.properties.last_modified.as_deref().and_then(http_date),
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
