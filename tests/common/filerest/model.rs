//! The share model (real directories, files of a fixed size), the documented errors, and the
//! request checks the FileREST operations (`ops`) share.

use std::collections::BTreeMap;
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::http::{HttpRequest, HttpResponse};

/// Put Range writes at most 4 MiB.
pub(super) const MAX_RANGE: u64 = 4 * 1024 * 1024;
/// The largest file Azure Files accepts (4 TiB).
pub(super) const MAX_FILE: u64 = 4 * 1024 * 1024 * 1024 * 1024;
/// SMB properties are required on Create File/Directory from this version...
pub(super) const SMB_REQUIRED_FROM: &str = "2019-02-02";
/// ...until this one, which gives them defaults.
pub(super) const SMB_DEFAULTED_FROM: &str = "2021-06-08";
/// Rename File exists from this version.
pub(super) const RENAME_FROM: &str = "2021-04-10";

/// A documented error: status, `x-ms-error-code` and message.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

pub fn error_of(status: u16, code: &'static str, message: &str) -> ApiError {
    ApiError {
        status,
        code,
        message: message.to_owned(),
    }
}

/// The error answer: `x-ms-error-code` and an `<Error>` XML body.
pub fn error(status: u16, code: &'static str, message: &str) -> HttpResponse {
    error_of(status, code, message).into_response()
}

impl ApiError {
    pub(super) fn into_response(self) -> HttpResponse {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{}</Code><Message>{}</Message></Error>",
            self.code,
            xml_escape(&self.message)
        );
        HttpResponse::new(self.status)
            .header("x-ms-error-code", self.code)
            .header("Content-Type", "application/xml")
            .body(body.into_bytes())
    }
}

pub(super) type Answer = Result<HttpResponse, ApiError>;

pub(super) fn missing_header(name: &str) -> ApiError {
    error_of(
        400,
        "MissingRequiredHeader",
        &format!("An HTTP header that's mandatory for this request is not specified: {name}"),
    )
}

pub(super) fn invalid_header(name: &str, value: &str) -> ApiError {
    error_of(
        400,
        "InvalidHeaderValue",
        &format!(
            "The value for one of the HTTP headers is not in the correct format: {name}: {value}"
        ),
    )
}

pub(super) fn invalid_query(name: &str) -> ApiError {
    error_of(
        400,
        "InvalidQueryParameterValue",
        &format!(
            "Value for one of the query parameters specified in the request URI is invalid: {name}"
        ),
    )
}

pub(super) fn share_not_found() -> ApiError {
    error_of(404, "ShareNotFound", "The specified share does not exist.")
}

pub(super) fn parent_not_found() -> ApiError {
    error_of(
        404,
        "ParentNotFound",
        "The specified parent path does not exist.",
    )
}

pub(super) fn resource_not_found() -> ApiError {
    error_of(
        404,
        "ResourceNotFound",
        "The specified resource does not exist.",
    )
}

pub(super) fn type_mismatch() -> ApiError {
    error_of(
        409,
        "ResourceTypeMismatch",
        "The specified resource type does not match the type of the existing resource.",
    )
}

pub(super) fn invalid_range() -> ApiError {
    error_of(
        416,
        "InvalidRange",
        "The range specified is invalid for the current size of the resource.",
    )
}

#[derive(Debug, Clone)]
pub struct File {
    pub(super) data: Vec<u8>,
    pub(super) md5: Option<String>,
    /// User metadata (`x-ms-meta-<name>`), names in lower case.
    pub(super) metadata: BTreeMap<String, String>,
    pub(super) modified: SystemTime,
    pub(super) etag: u64,
}

#[derive(Debug, Default)]
pub struct Dir {
    pub(super) entries: BTreeMap<String, Node>,
}

#[derive(Debug)]
pub enum Node {
    Dir(Dir),
    File(File),
}

#[derive(Debug, Default)]
pub struct State {
    pub(super) shares: BTreeMap<String, Dir>,
    pub(super) next_etag: u64,
}

impl State {
    pub fn create_share(&mut self, share: &str) {
        self.shares.entry(share.to_owned()).or_default();
    }

    pub fn files(&self, share: &str) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        if let Some(root) = self.shares.get(share) {
            walk(root, "", &mut |path, node| {
                if let Node::File(f) = node {
                    out.push((path.to_owned(), f.data.clone()));
                }
            });
        }
        out
    }

    /// The user metadata of the file `segments` names (`None`: no such file).
    pub fn metadata<'a>(
        &'a mut self,
        share: &str,
        segments: &'a [String],
    ) -> Option<&'a mut BTreeMap<String, String>> {
        let root = self.shares.get_mut(share)?;
        Self::file(root, segments)
            .ok()
            .map(|file| &mut file.metadata)
    }

    pub fn directories(&self, share: &str) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(root) = self.shares.get(share) {
            walk(root, "", &mut |path, node| {
                if let Node::Dir(_) = node {
                    out.push(path.to_owned());
                }
            });
        }
        out
    }

    pub(super) fn etag(&mut self) -> u64 {
        self.next_etag += 1;
        self.next_etag
    }

    pub(super) fn share(&mut self, share: &str) -> Result<&mut Dir, ApiError> {
        self.shares.get_mut(share).ok_or_else(share_not_found)
    }

    /// The directory `segments` names; a missing or non-directory step is `ParentNotFound`
    /// (`missing` is the error for the last step, which callers choose).
    pub(super) fn dir<'a>(
        root: &'a mut Dir,
        segments: &[String],
        missing: fn() -> ApiError,
    ) -> Result<&'a mut Dir, ApiError> {
        let mut dir = root;
        for (i, segment) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            dir = match dir.entries.get_mut(segment) {
                Some(Node::Dir(d)) => d,
                Some(Node::File(_)) if last => return Err(type_mismatch()),
                _ if last => return Err(missing()),
                _ => return Err(parent_not_found()),
            };
        }
        Ok(dir)
    }

    /// The parent directory of `segments` and the last name.
    pub(super) fn parent<'a>(
        root: &'a mut Dir,
        segments: &'a [String],
    ) -> Result<(&'a mut Dir, &'a String), ApiError> {
        let (name, parents) = segments.split_last().expect("a file path has a name");
        let dir = Self::dir(root, parents, parent_not_found)?;
        Ok((dir, name))
    }

    pub(super) fn file<'a>(
        root: &'a mut Dir,
        segments: &'a [String],
    ) -> Result<&'a mut File, ApiError> {
        let (dir, name) = Self::parent(root, segments)?;
        match dir.entries.get_mut(name) {
            Some(Node::File(f)) => Ok(f),
            Some(Node::Dir(_)) | None => Err(resource_not_found()),
        }
    }
}

pub(super) fn walk(dir: &Dir, prefix: &str, visit: &mut dyn FnMut(&str, &Node)) {
    for (name, node) in &dir.entries {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        visit(&path, node);
        if let Node::Dir(d) = node {
            walk(d, &path, visit);
        }
    }
}

pub(super) fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

pub(super) fn http_date(time: SystemTime) -> String {
    azure_core::time::to_rfc7231(&azure_core::time::OffsetDateTime::from(time))
}

/// Splits `/account/share/a/b` into the share and the decoded path segments.
pub(super) fn resource(account: &str, raw_path: &str) -> Result<(String, Vec<String>), ApiError> {
    let invalid = || {
        error_of(
            400,
            "InvalidUri",
            "The requested URI does not represent any resource on the server.",
        )
    };
    let mut segments = raw_path
        .strip_prefix('/')
        .ok_or_else(invalid)?
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|d| d.into_owned())
                .map_err(|_| invalid())
        })
        .collect::<Result<Vec<String>, ApiError>>()?;
    if segments.first().map(String::as_str) != Some(account) {
        return Err(invalid());
    }
    segments.remove(0);
    if segments.is_empty() || segments.iter().any(|s| s.is_empty()) {
        return Err(invalid());
    }
    let share = segments.remove(0);
    Ok((share, segments))
}

pub(super) fn check_share_name(share: &str) -> Result<(), ApiError> {
    let ok = (3..=63).contains(&share.len())
        && share
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !share.starts_with('-')
        && !share.ends_with('-')
        && !share.contains("--");
    if ok {
        Ok(())
    } else {
        Err(error_of(
            400,
            "InvalidResourceName",
            "The specified resource name contains invalid characters.",
        ))
    }
}

/// Names Azure Files refuses (`"\/:|<>*?`, control characters, over 255 characters).
pub(super) fn check_names(segments: &[String]) -> Result<(), ApiError> {
    for segment in segments {
        let bad = segment.chars().count() > 255
            || segment
                .chars()
                .any(|c| c.is_control() || "\"\\/:|<>*?".contains(c));
        if bad {
            return Err(error_of(
                400,
                "InvalidResourceName",
                "The specifed resource name contains invalid characters.",
            ));
        }
    }
    Ok(())
}

/// Validates the SMB property headers of Create File/Directory (`create`) or Set Properties.
pub(super) fn check_smb(
    request: &HttpRequest,
    version: &str,
    create: bool,
) -> Result<(), ApiError> {
    let required = create && (SMB_REQUIRED_FROM..SMB_DEFAULTED_FROM).contains(&version);
    let check = |name: &str, valid: &dyn Fn(&str) -> bool| -> Result<(), ApiError> {
        match request.header(name) {
            None if required => Err(missing_header(name)),
            None => Ok(()),
            Some(v) if v == "preserve" && !create => Ok(()),
            Some(v) if valid(&v) => Ok(()),
            Some(v) => Err(invalid_header(name, &v)),
        }
    };
    const ATTRIBUTES: &[&str] = &[
        "None",
        "ReadOnly",
        "Hidden",
        "System",
        "Directory",
        "Archive",
        "Temporary",
        "Offline",
        "NotContentIndexed",
        "NoScrubData",
    ];
    check("x-ms-file-attributes", &|v| {
        v.split('|').all(|a| ATTRIBUTES.contains(&a.trim()))
    })?;
    let time = |v: &str| v == "now" || azure_core::time::parse_rfc3339(v).is_ok();
    check("x-ms-file-creation-time", &time)?;
    check("x-ms-file-last-write-time", &time)?;
    if request.header("x-ms-file-permission").is_some()
        && request.header("x-ms-file-permission-key").is_some()
    {
        return Err(invalid_header(
            "x-ms-file-permission",
            "given with x-ms-file-permission-key",
        ));
    }
    match request.header("x-ms-file-permission-key") {
        Some(_) => Ok(()),
        None => check("x-ms-file-permission", &|v| {
            v == "inherit" || v.starts_with("O:") || v.starts_with("D:")
        }),
    }
}

pub(super) fn md5_header(request: &HttpRequest, name: &str) -> Result<Option<String>, ApiError> {
    match request.header(name) {
        None => Ok(None),
        Some(v) => match B64.decode(v.trim()) {
            Ok(bytes) if bytes.len() == 16 => Ok(Some(v.trim().to_owned())),
            _ => Err(invalid_header(name, &v)),
        },
    }
}

/// `bytes=a-b` (inclusive) from `x-ms-range`, else `Range`.
pub(super) fn range_header(request: &HttpRequest) -> Result<Option<(u64, Option<u64>)>, ApiError> {
    let Some(value) = request
        .header("x-ms-range")
        .or_else(|| request.header("range"))
    else {
        return Ok(None);
    };
    let parse = || -> Option<(u64, Option<u64>)> {
        let (start, end) = value.trim().strip_prefix("bytes=")?.split_once('-')?;
        let start: u64 = start.parse().ok()?;
        let end = if end.is_empty() {
            None
        } else {
            Some(end.parse::<u64>().ok()?)
        };
        if end.is_some_and(|e| e < start) {
            return None;
        }
        Some((start, end))
    };
    parse()
        .map(Some)
        .ok_or_else(|| invalid_header("x-ms-range", &value))
}

pub(super) fn file_headers(response: HttpResponse, file: &File) -> HttpResponse {
    let mut response = response
        .header("x-ms-type", "File")
        .header("Last-Modified", http_date(file.modified))
        .header("ETag", format!("\"0x{:x}\"", file.etag))
        .header("Accept-Ranges", "bytes");
    if let Some(md5) = &file.md5 {
        response = response.header("Content-MD5", md5.clone());
    }
    // Get File and Get File Properties return the user metadata.
    for (name, value) in &file.metadata {
        response = response.header(&format!("x-ms-meta-{name}"), value.clone());
    }
    response
}

/// The user metadata a request sets (`x-ms-meta-<name>: <value>`), `None` when it sets none.
/// Names must be C# identifiers and values printable ASCII (400 `InvalidMetadata`).
pub(super) fn metadata_of(
    request: &HttpRequest,
) -> Result<Option<BTreeMap<String, String>>, ApiError> {
    let mut metadata = BTreeMap::new();
    for (name, value) in &request.headers {
        let Some(name) = name.strip_prefix("x-ms-meta-") else {
            continue;
        };
        let identifier = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !identifier || !value.chars().all(|c| (' '..='~').contains(&c)) {
            return Err(error_of(
                400,
                "InvalidMetadata",
                "The metadata specified is invalid. It has characters that are not permitted.",
            ));
        }
        metadata.insert(name.to_owned(), value.trim().to_owned());
    }
    Ok((!metadata.is_empty()).then_some(metadata))
}
