//! The share model (real directories, files of a fixed size) and the FileREST operations, with
//! the documented status codes and error codes.

use std::collections::BTreeMap;
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use md5::{Digest, Md5};

use super::Shared;
use super::auth::{self, Grant};
use super::http::{HttpRequest, HttpResponse};

/// Put Range writes at most 4 MiB.
const MAX_RANGE: u64 = 4 * 1024 * 1024;
/// The largest file Azure Files accepts (4 TiB).
const MAX_FILE: u64 = 4 * 1024 * 1024 * 1024 * 1024;
/// SMB properties are required on Create File/Directory from this version...
const SMB_REQUIRED_FROM: &str = "2019-02-02";
/// ...until this one, which gives them defaults.
const SMB_DEFAULTED_FROM: &str = "2021-06-08";
/// Rename File exists from this version.
const RENAME_FROM: &str = "2021-04-10";

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
    fn into_response(self) -> HttpResponse {
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

type Answer = Result<HttpResponse, ApiError>;

fn missing_header(name: &str) -> ApiError {
    error_of(
        400,
        "MissingRequiredHeader",
        &format!("An HTTP header that's mandatory for this request is not specified: {name}"),
    )
}

fn invalid_header(name: &str, value: &str) -> ApiError {
    error_of(
        400,
        "InvalidHeaderValue",
        &format!(
            "The value for one of the HTTP headers is not in the correct format: {name}: {value}"
        ),
    )
}

fn invalid_query(name: &str) -> ApiError {
    error_of(
        400,
        "InvalidQueryParameterValue",
        &format!(
            "Value for one of the query parameters specified in the request URI is invalid: {name}"
        ),
    )
}

fn share_not_found() -> ApiError {
    error_of(404, "ShareNotFound", "The specified share does not exist.")
}

fn parent_not_found() -> ApiError {
    error_of(
        404,
        "ParentNotFound",
        "The specified parent path does not exist.",
    )
}

fn resource_not_found() -> ApiError {
    error_of(
        404,
        "ResourceNotFound",
        "The specified resource does not exist.",
    )
}

fn type_mismatch() -> ApiError {
    error_of(
        409,
        "ResourceTypeMismatch",
        "The specified resource type does not match the type of the existing resource.",
    )
}

fn invalid_range() -> ApiError {
    error_of(
        416,
        "InvalidRange",
        "The range specified is invalid for the current size of the resource.",
    )
}

#[derive(Debug, Clone)]
pub struct File {
    data: Vec<u8>,
    md5: Option<String>,
    modified: SystemTime,
    etag: u64,
}

#[derive(Debug, Default)]
pub struct Dir {
    entries: BTreeMap<String, Node>,
}

#[derive(Debug)]
pub enum Node {
    Dir(Dir),
    File(File),
}

#[derive(Debug, Default)]
pub struct State {
    shares: BTreeMap<String, Dir>,
    next_etag: u64,
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

    fn etag(&mut self) -> u64 {
        self.next_etag += 1;
        self.next_etag
    }

    fn share(&mut self, share: &str) -> Result<&mut Dir, ApiError> {
        self.shares.get_mut(share).ok_or_else(share_not_found)
    }

    /// The directory `segments` names; a missing or non-directory step is `ParentNotFound`
    /// (`missing` is the error for the last step, which callers choose).
    fn dir<'a>(
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
    fn parent<'a>(
        root: &'a mut Dir,
        segments: &'a [String],
    ) -> Result<(&'a mut Dir, &'a String), ApiError> {
        let (name, parents) = segments.split_last().expect("a file path has a name");
        let dir = Self::dir(root, parents, parent_not_found)?;
        Ok((dir, name))
    }

    fn file<'a>(root: &'a mut Dir, segments: &'a [String]) -> Result<&'a mut File, ApiError> {
        let (dir, name) = Self::parent(root, segments)?;
        match dir.entries.get_mut(name) {
            Some(Node::File(f)) => Ok(f),
            Some(Node::Dir(_)) | None => Err(resource_not_found()),
        }
    }
}

fn walk(dir: &Dir, prefix: &str, visit: &mut dyn FnMut(&str, &Node)) {
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

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

fn http_date(time: SystemTime) -> String {
    azure_core::time::to_rfc7231(&azure_core::time::OffsetDateTime::from(time))
}

/// Splits `/account/share/a/b` into the share and the decoded path segments.
fn resource(account: &str, raw_path: &str) -> Result<(String, Vec<String>), ApiError> {
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

fn check_share_name(share: &str) -> Result<(), ApiError> {
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
fn check_names(segments: &[String]) -> Result<(), ApiError> {
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
fn check_smb(request: &HttpRequest, version: &str, create: bool) -> Result<(), ApiError> {
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

fn md5_header(request: &HttpRequest, name: &str) -> Result<Option<String>, ApiError> {
    match request.header(name) {
        None => Ok(None),
        Some(v) => match B64.decode(v.trim()) {
            Ok(bytes) if bytes.len() == 16 => Ok(Some(v.trim().to_owned())),
            _ => Err(invalid_header(name, &v)),
        },
    }
}

/// `bytes=a-b` (inclusive) from `x-ms-range`, else `Range`.
fn range_header(request: &HttpRequest) -> Result<Option<(u64, Option<u64>)>, ApiError> {
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

fn file_headers(response: HttpResponse, file: &File) -> HttpResponse {
    let mut response = response
        .header("x-ms-type", "File")
        .header("Last-Modified", http_date(file.modified))
        .header("ETag", format!("\"0x{:x}\"", file.etag))
        .header("Accept-Ranges", "bytes");
    if let Some(md5) = &file.md5 {
        response = response.header("Content-MD5", md5.clone());
    }
    response
}

/// Answers one request.
pub fn handle(shared: &Shared, request: &HttpRequest) -> HttpResponse {
    let answer = handle_inner(shared, request);
    let mut response = match answer {
        Ok(response) => response,
        Err(e) => {
            if e.status == 401 || e.status == 403 {
                shared
                    .auth_failures
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            e.into_response()
        }
    };
    response = response
        .header(
            "x-ms-version",
            request.header("x-ms-version").unwrap_or_default(),
        )
        .header("x-ms-request-id", format!("{:x}", rand_id()))
        .header("Date", http_date(SystemTime::now()));
    response
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    h.finish()
}

fn handle_inner(shared: &Shared, request: &HttpRequest) -> Answer {
    let version = auth::check_version(request)?;
    let (share, segments) = resource(&shared.account, &request.raw_path)?;
    let path = segments.join("/");
    let grant = auth::authenticate(&shared.account, &shared.key(), request, &share, &path)?;
    check_names(&segments)?;
    let restype = request.query("restype");
    let comp = request.query("comp");
    let method = request.method.as_str();
    let mut state = shared.state.lock().unwrap();
    match (method, restype, comp, segments.is_empty()) {
        ("PUT", Some("share"), None, true) => {
            if matches!(grant, Grant::Sas { .. }) {
                return Err(error_of(
                    403,
                    "AuthorizationResourceTypeMismatch",
                    "This request is not authorized to perform this operation using this resource type.",
                ));
            }
            check_share_name(&share)?;
            if state.shares.contains_key(&share) {
                return Err(error_of(
                    409,
                    "ShareAlreadyExists",
                    "The specified share already exists.",
                ));
            }
            state.create_share(&share);
            Ok(HttpResponse::new(201))
        }
        ("PUT", Some("directory"), None, false) => {
            grant.require("cw")?;
            check_smb(request, &version, true)?;
            let root = state.share(&share)?;
            let (dir, name) = State::parent(root, &segments)?;
            match dir.entries.get(name) {
                Some(Node::Dir(_)) => Err(error_of(
                    409,
                    "ResourceAlreadyExists",
                    "The specified resource already exists.",
                )),
                Some(Node::File(_)) => Err(type_mismatch()),
                None => {
                    dir.entries.insert(name.clone(), Node::Dir(Dir::default()));
                    Ok(HttpResponse::new(201))
                }
            }
        }
        ("DELETE", Some("directory"), None, false) => {
            grant.require("d")?;
            let root = state.share(&share)?;
            let (dir, name) = State::parent(root, &segments)?;
            match dir.entries.get(name) {
                Some(Node::Dir(d)) if !d.entries.is_empty() => Err(error_of(
                    409,
                    "DirectoryNotEmpty",
                    "The specified directory is not empty.",
                )),
                Some(Node::Dir(_)) => {
                    dir.entries.remove(name);
                    Ok(HttpResponse::new(202))
                }
                Some(Node::File(_)) => Err(type_mismatch()),
                None => Err(resource_not_found()),
            }
        }
        ("GET", Some("directory"), Some("list"), _) => {
            grant.require("l")?;
            list(shared, &mut state, request, &share, &segments)
        }
        ("PUT", None, None, false) => {
            grant.require("cw")?;
            create_file(&mut state, request, &version, &share, &segments)
        }
        ("PUT", None, Some("range"), false) => {
            grant.require("w")?;
            put_range(shared, &mut state, request, &share, &segments)
        }
        ("PUT", None, Some("properties"), false) => {
            grant.require("w")?;
            check_smb(request, &version, false)?;
            let md5 = md5_header(request, "x-ms-content-md5")?;
            let length = match request.header("x-ms-content-length") {
                Some(v) => Some(
                    v.trim()
                        .parse::<u64>()
                        .map_err(|_| invalid_header("x-ms-content-length", &v))?,
                ),
                None => None,
            };
            let etag = state.etag();
            let root = state.share(&share)?;
            let file = State::file(root, &segments)?;
            // Content headers not given are cleared (documented behaviour).
            file.md5 = md5;
            if let Some(length) = length {
                file.data.resize(length as usize, 0);
            }
            file.modified = SystemTime::now();
            file.etag = etag;
            Ok(HttpResponse::new(200))
        }
        ("PUT", None, Some("rename"), false) => {
            grant.require("w")?;
            rename(shared, &mut state, request, &version, &share, &segments)
        }
        ("GET" | "HEAD", None, None, false) => {
            grant.require("r")?;
            let root = state.share(&share)?;
            let file = State::file(root, &segments)?;
            get_file(request, file)
        }
        ("DELETE", None, None, false) => {
            grant.require("d")?;
            let root = state.share(&share)?;
            let (dir, name) = State::parent(root, &segments)?;
            match dir.entries.get(name) {
                Some(Node::File(_)) => {
                    dir.entries.remove(name);
                    Ok(HttpResponse::new(202))
                }
                Some(Node::Dir(_)) => Err(type_mismatch()),
                None => Err(resource_not_found()),
            }
        }
        _ => Err(error_of(
            400,
            "UnsupportedHttpVerb",
            &format!("The resource doesn't support the specified HTTP verb or query: {method}"),
        )),
    }
}

fn create_file(
    state: &mut State,
    request: &HttpRequest,
    version: &str,
    share: &str,
    segments: &[String],
) -> Answer {
    match request.header("x-ms-type") {
        Some(t) if t.eq_ignore_ascii_case("file") => {}
        Some(t) => return Err(invalid_header("x-ms-type", &t)),
        None => return Err(missing_header("x-ms-type")),
    }
    let length = request
        .header("x-ms-content-length")
        .ok_or_else(|| missing_header("x-ms-content-length"))?;
    let size: u64 = length
        .trim()
        .parse()
        .ok()
        .filter(|s| *s <= MAX_FILE)
        .ok_or_else(|| invalid_header("x-ms-content-length", &length))?;
    if !request.body.is_empty() {
        return Err(error_of(
            400,
            "InvalidInput",
            "Create File takes no body; write ranges with Put Range.",
        ));
    }
    check_smb(request, version, true)?;
    let md5 = md5_header(request, "x-ms-content-md5")?;
    let etag = state.etag();
    let root = state.share(share)?;
    let (dir, name) = State::parent(root, segments)?;
    if let Some(Node::Dir(_)) = dir.entries.get(name) {
        return Err(type_mismatch());
    }
    // Create File replaces an existing file.
    dir.entries.insert(
        name.clone(),
        Node::File(File {
            data: vec![0; size as usize],
            md5,
            modified: SystemTime::now(),
            etag,
        }),
    );
    Ok(HttpResponse::new(201))
}

fn put_range(
    shared: &Shared,
    state: &mut State,
    request: &HttpRequest,
    share: &str,
    segments: &[String],
) -> Answer {
    let write = request
        .header("x-ms-write")
        .ok_or_else(|| missing_header("x-ms-write"))?;
    let (start, end) = match range_header(request)? {
        Some((start, Some(end))) => (start, end),
        Some(_) => return Err(invalid_header("x-ms-range", "an open-ended range")),
        None => return Err(missing_header("x-ms-range")),
    };
    let len = end - start + 1;
    match write.as_str() {
        "update" => {
            if request.body.len() as u64 > MAX_RANGE {
                return Err(error_of(
                    413,
                    "RequestBodyTooLarge",
                    "The request body is too large and exceeds the maximum permissible limit.",
                ));
            }
            if len != request.body.len() as u64 {
                return Err(invalid_header("Content-Length", "does not match the range"));
            }
            if let Some(md5) = md5_header(request, "content-md5")? {
                if B64.encode(Md5::digest(&request.body)) != md5 {
                    return Err(error_of(
                        400,
                        "Md5Mismatch",
                        "The MD5 value specified in the request did not match the MD5 value calculated by the server.",
                    ));
                }
            }
        }
        "clear" => {
            if !request.body.is_empty() {
                return Err(invalid_header(
                    "Content-Length",
                    "must be 0 to clear a range",
                ));
            }
        }
        other => return Err(invalid_header("x-ms-write", other)),
    }
    let etag = state.etag();
    let root = state.share(share)?;
    let file = State::file(root, segments)?;
    if end >= file.data.len() as u64 {
        // Put Range never extends a file: its size was set when it was created.
        return Err(invalid_range());
    }
    let (start, end) = (start as usize, end as usize);
    if write == "update" {
        file.data[start..=end].copy_from_slice(&request.body);
        shared
            .largest_range
            .fetch_max(request.body.len(), std::sync::atomic::Ordering::SeqCst);
    } else {
        file.data[start..=end].fill(0);
    }
    file.modified = SystemTime::now();
    file.etag = etag;
    Ok(HttpResponse::new(201))
}

fn get_file(request: &HttpRequest, file: &File) -> Answer {
    let size = file.data.len() as u64;
    match range_header(request)? {
        None => {
            let response = file_headers(HttpResponse::new(200), file)
                .header("Content-Length", size.to_string());
            Ok(if request.method == "HEAD" {
                response
            } else {
                response.body(file.data.clone())
            })
        }
        Some((start, end)) => {
            if start >= size {
                return Err(invalid_range());
            }
            let end = end.unwrap_or(size - 1).min(size - 1);
            let body = file.data[start as usize..=end as usize].to_vec();
            Ok(file_headers(HttpResponse::new(206), file)
                .header("Content-Range", format!("bytes {start}-{end}/{size}"))
                .header("Content-Length", body.len().to_string())
                .body(body))
        }
    }
}

fn list(
    shared: &Shared,
    state: &mut State,
    request: &HttpRequest,
    share: &str,
    segments: &[String],
) -> Answer {
    let max_results = match request.query("maxresults") {
        None => 5000,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=5000).contains(n))
            .ok_or_else(|| invalid_query("maxresults"))?,
    };
    let timestamps = match request.query("include") {
        None => false,
        Some(include) => {
            for item in include.split(',') {
                if !["Timestamps", "ETag", "Attributes", "PermissionKey"].contains(&item) {
                    return Err(invalid_query("include"));
                }
            }
            include.split(',').any(|i| i == "Timestamps")
        }
    };
    let prefix = request.query("prefix").unwrap_or("");
    let marker = request.query("marker").unwrap_or("");
    let page = max_results.min(shared.max_page());
    let root = state.share(share)?;
    let dir = State::dir(root, segments, resource_not_found)?;
    let mut remaining = dir
        .entries
        .iter()
        .filter(|(name, _)| name.starts_with(prefix) && name.as_str() >= marker);
    let mut entries = String::new();
    for (name, node) in remaining.by_ref().take(page) {
        match node {
            Node::File(f) => {
                entries.push_str(&format!(
                    "<File><Name>{}</Name><Properties><Content-Length>{}</Content-Length>",
                    xml_escape(name),
                    f.data.len()
                ));
                if timestamps {
                    entries.push_str(&format!(
                        "<Last-Modified>{}</Last-Modified>",
                        http_date(f.modified)
                    ));
                }
                entries.push_str("</Properties></File>");
            }
            Node::Dir(_) => entries.push_str(&format!(
                "<Directory><Name>{}</Name><Properties /></Directory>",
                xml_escape(name)
            )),
        }
    }
    // The marker is the next name to return: opaque to clients.
    let next = match remaining.next() {
        Some((name, _)) => format!("<NextMarker>{}</NextMarker>", xml_escape(name)),
        None => "<NextMarker />".to_owned(),
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><EnumerationResults ServiceEndpoint=\"http://127.0.0.1/{}/\" ShareName=\"{}\" DirectoryPath=\"{}\">{}{}<MaxResults>{}</MaxResults><Entries>{entries}</Entries>{next}</EnumerationResults>",
        shared.account,
        xml_escape(share),
        xml_escape(&segments.join("/")),
        if marker.is_empty() {
            String::new()
        } else {
            format!("<Marker>{}</Marker>", xml_escape(marker))
        },
        if prefix.is_empty() {
            String::new()
        } else {
            format!("<Prefix>{}</Prefix>", xml_escape(prefix))
        },
        max_results,
    );
    Ok(HttpResponse::new(200)
        .header("Content-Type", "application/xml")
        .body(body.into_bytes()))
}

fn rename(
    shared: &Shared,
    state: &mut State,
    request: &HttpRequest,
    version: &str,
    share: &str,
    segments: &[String],
) -> Answer {
    if version < RENAME_FROM {
        return Err(invalid_header(
            "x-ms-version",
            "Rename File needs 2021-04-10 or later",
        ));
    }
    let source = request
        .header("x-ms-file-rename-source")
        .ok_or_else(|| missing_header("x-ms-file-rename-source"))?;
    // An absolute URL or a path; either way `/account/share/...` on this share.
    let (source_path, source_query) = match url::Url::parse(&source) {
        Ok(url) => (
            url.path().to_owned(),
            url.query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect::<Vec<_>>(),
        ),
        Err(_) => (source.clone(), Vec::new()),
    };
    let (source_share, source_segments) = resource(&shared.account, &source_path)
        .map_err(|_| invalid_header("x-ms-file-rename-source", &source))?;
    if source_share != share || source_segments.is_empty() {
        return Err(invalid_header(
            "x-ms-file-rename-source",
            "not a file of this share",
        ));
    }
    if source_query.iter().any(|(k, _)| k == "sig") {
        auth::verify_sas(
            &shared.account,
            &shared.key(),
            &source_query,
            share,
            &source_segments.join("/"),
        )?;
    }
    let replace = match request.header("x-ms-file-rename-replace-if-exists") {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        Some(v) if v.eq_ignore_ascii_case("false") => false,
        Some(v) => return Err(invalid_header("x-ms-file-rename-replace-if-exists", &v)),
    };
    let etag = state.etag();
    let root = state.share(share)?;
    // The destination's directory must exist, and the destination may only be replaced
    // when asked to (never a directory).
    {
        let (dir, name) = State::parent(root, segments)?;
        match dir.entries.get(name) {
            Some(Node::Dir(_)) => return Err(type_mismatch()),
            Some(Node::File(_)) if !replace => {
                return Err(error_of(
                    409,
                    "ResourceAlreadyExists",
                    "The specified resource already exists.",
                ));
            }
            _ => {}
        }
    }
    let mut file = {
        let (dir, name) = State::parent(root, &source_segments)?;
        match dir.entries.get(name) {
            Some(Node::File(_)) => {}
            Some(Node::Dir(_)) => return Err(type_mismatch()),
            None => return Err(resource_not_found()),
        }
        match dir.entries.remove(name) {
            Some(Node::File(f)) => f,
            _ => unreachable!("checked above"),
        }
    };
    file.etag = etag;
    let (dir, name) = State::parent(root, segments)?;
    dir.entries.insert(name.clone(), Node::File(file));
    Ok(HttpResponse::new(200))
}
