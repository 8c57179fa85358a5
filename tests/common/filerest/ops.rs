//! The FileREST operations, with the documented status codes and error codes, on the share
//! model of `model`.

use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use md5::{Digest, Md5};

use super::Shared;
use super::auth::{self, Grant};
use super::http::{HttpRequest, HttpResponse};
use super::model::*;
pub use super::model::{ApiError, State, error, error_of};

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
        ("PUT", None, Some("metadata"), false) => {
            // Set File Metadata: replaces all of it (none given clears it).
            grant.require("w")?;
            let metadata = metadata_of(request)?.unwrap_or_default();
            let etag = state.etag();
            let root = state.share(&share)?;
            let file = State::file(root, &segments)?;
            file.metadata = metadata;
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
    let metadata = metadata_of(request)?.unwrap_or_default();
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
            metadata,
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
    // Metadata given with the rename replaces the file's; without, it moves with the file.
    let metadata = metadata_of(request)?;
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
    if let Some(metadata) = metadata {
        file.metadata = metadata;
    }
    let (dir, name) = State::parent(root, segments)?;
    dir.entries.insert(name.clone(), Node::File(file));
    Ok(HttpResponse::new(200))
}
