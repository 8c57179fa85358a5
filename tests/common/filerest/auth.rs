//! The server's own check of SharedKey signatures and service SAS tokens, written from the
//! "Authorize with Shared Key" and "Create a service SAS" pages of the REST reference. It
//! rebuilds the string-to-sign from the request exactly as received.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::http::HttpRequest;
use super::ops::{ApiError, error_of};

/// How long a signed request stays valid around the server's clock.
const MAX_CLOCK_SKEW_SECONDS: i64 = 15 * 60;
/// The first version whose SharedKey string-to-sign has an empty Content-Length for 0.
pub const MIN_VERSION: &str = "2015-02-21";

pub fn hmac_b64(key: &[u8], data: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data.as_bytes());
    B64.encode(mac.finalize().into_bytes())
}

/// The SharedKey string-to-sign of `request` (service versions 2015-02-21 and later).
pub fn shared_key_string_to_sign(account: &str, request: &HttpRequest) -> String {
    let get = |name: &str| request.header(name).unwrap_or_default();
    let mut length = get("content-length");
    if length.trim() == "0" {
        length.clear();
    }
    let mut lines = vec![
        request.method.clone(),
        get("content-encoding"),
        get("content-language"),
        length,
        get("content-md5"),
        get("content-type"),
        get("date"),
        get("if-modified-since"),
        get("if-match"),
        get("if-none-match"),
        get("if-unmodified-since"),
        get("range"),
    ];
    // Canonicalised headers: every x-ms-* header, lower-cased, sorted, value trimmed.
    let mut ms: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &request.headers {
        if name.starts_with("x-ms-") {
            ms.entry(name.clone())
                .or_default()
                .push(value.trim().to_owned());
        }
    }
    for (name, values) in ms {
        lines.push(format!("{name}:{}", values.join(",")));
    }
    // Canonicalised resource: /account + the path as sent, then each query parameter
    // (name lower-cased, sorted; values sorted and comma-joined) on its own line.
    let mut resource = format!("/{account}{}", request.raw_path);
    let mut query: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &request.query {
        query
            .entry(name.to_lowercase())
            .or_default()
            .push(value.clone());
    }
    for (name, mut values) in query {
        values.sort();
        resource.push_str(&format!("\n{name}:{}", values.join(",")));
    }
    lines.push(resource);
    lines.join("\n")
}

/// The service SAS string-to-sign for the File service (versions 2015-04-05 and later), with
/// no response-header overrides.
#[allow(clippy::too_many_arguments)]
pub fn service_sas_string_to_sign(
    sp: &str,
    st: &str,
    se: &str,
    canonical_resource: &str,
    si: &str,
    sip: &str,
    spr: &str,
    sv: &str,
) -> String {
    [
        sp,
        st,
        se,
        canonical_resource,
        si,
        sip,
        spr,
        sv,
        "",
        "",
        "",
        "",
        "",
    ]
    .join("\n")
}

/// Who a request was authorised as.
#[derive(Debug, Clone)]
pub enum Grant {
    /// The account key: everything.
    Key,
    /// A service SAS with these permissions (`r`, `c`, `w`, `d`, `l`).
    Sas { permissions: String },
}

impl Grant {
    /// Checks a permission letter; `Key` has them all.
    pub fn require(&self, any_of: &str) -> Result<(), ApiError> {
        match self {
            Grant::Key => Ok(()),
            Grant::Sas { permissions } if any_of.chars().any(|c| permissions.contains(c)) => Ok(()),
            Grant::Sas { .. } => Err(error_of(
                403,
                "AuthorizationPermissionMismatch",
                "This request is not authorized to perform this operation using this permission.",
            )),
        }
    }
}

fn auth_failed(detail: &str) -> ApiError {
    error_of(
        403,
        "AuthenticationFailed",
        &format!(
            "Server failed to authenticate the request. Make sure the value of Authorization \
             header is formed correctly including the signature. Detail: {detail}"
        ),
    )
}

/// A `YYYY-MM-DD` service version, as a comparable string.
pub fn check_version(request: &HttpRequest) -> Result<String, ApiError> {
    let version = request.header("x-ms-version").ok_or_else(|| {
        error_of(
            400,
            "MissingRequiredHeader",
            "An HTTP header that's mandatory for this request is not specified: x-ms-version",
        )
    })?;
    let well_formed = version.len() == 10
        && version.chars().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                c == '-'
            } else {
                c.is_ascii_digit()
            }
        });
    if !well_formed || version.as_str() < MIN_VERSION {
        return Err(error_of(
            400,
            "InvalidHeaderValue",
            &format!(
                "The value for one of the HTTP headers is not in the correct format: x-ms-version {version}"
            ),
        ));
    }
    Ok(version)
}

/// Authenticates `request` for `account` with `key`, by SAS (a `sig` parameter) or SharedKey.
/// `share` and `path` (decoded, `/`-joined, empty for the share itself) name the resource.
pub fn authenticate(
    account: &str,
    key: &[u8],
    request: &HttpRequest,
    share: &str,
    path: &str,
) -> Result<Grant, ApiError> {
    // Every request must say when it was made (our client always sends x-ms-date).
    let date = request
        .header("x-ms-date")
        .or_else(|| request.header("date"))
        .ok_or_else(|| auth_failed("Request date header not specified (x-ms-date or Date)."))?;
    let at = azure_core::time::parse_rfc7231(&date)
        .map_err(|_| auth_failed("The date header is not a valid RFC 1123 date."))?;
    let skew = (azure_core::time::OffsetDateTime::now_utc() - at).whole_seconds();
    if skew.abs() > MAX_CLOCK_SKEW_SECONDS {
        return Err(auth_failed(
            "Request date is too far from the server's clock.",
        ));
    }
    if request.query("sig").is_some() {
        return verify_sas(account, key, &request.query, share, path);
    }
    let authorization = request.header("authorization").ok_or_else(|| {
        error_of(
            401,
            "NoAuthenticationInformation",
            "Server failed to authenticate the request. Please refer to the information in the \
             www-authenticate header.",
        )
    })?;
    let credentials = authorization
        .strip_prefix("SharedKey ")
        .ok_or_else(|| auth_failed("Only the SharedKey scheme is supported."))?;
    let (claimed_account, signature) = credentials
        .split_once(':')
        .ok_or_else(|| auth_failed("The Authorization header is malformed."))?;
    if claimed_account != account {
        return Err(auth_failed(
            "The account in the Authorization header is not this account.",
        ));
    }
    let expected = hmac_b64(key, &shared_key_string_to_sign(account, request));
    if !constant_time_eq(expected.as_bytes(), signature.as_bytes()) {
        return Err(auth_failed(
            "The MAC signature found in the HTTP request is not the same as any computed signature.",
        ));
    }
    Ok(Grant::Key)
}

/// Verifies a service SAS given as query parameters (also used for Rename File's source).
pub fn verify_sas(
    account: &str,
    key: &[u8],
    query: &[(String, String)],
    share: &str,
    path: &str,
) -> Result<Grant, ApiError> {
    let get = |name: &str| {
        query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let (sv, sr, sp, se, st, sig) = (
        get("sv"),
        get("sr"),
        get("sp"),
        get("se"),
        get("st"),
        get("sig"),
    );
    if sv.is_empty() || sr.is_empty() || sp.is_empty() || se.is_empty() {
        return Err(auth_failed("A SAS needs sv, sr, sp and se."));
    }
    if sv.as_str() < "2015-04-05" {
        return Err(auth_failed(
            "This server supports SAS versions 2015-04-05 and later.",
        ));
    }
    if !get("si").is_empty() || !get("sip").is_empty() {
        return Err(auth_failed(
            "Stored access policies and IP ranges are not supported here.",
        ));
    }
    if get("spr") == "https" {
        return Err(error_of(
            403,
            "AuthorizationProtocolMismatch",
            "This request is not authorized to perform this operation using this protocol.",
        ));
    }
    let resource = match sr.as_str() {
        "s" => format!("/file/{account}/{share}"),
        "f" if !path.is_empty() => format!("/file/{account}/{share}/{path}"),
        _ => {
            return Err(auth_failed(
                "Signed resource must be a share (s) or this file (f).",
            ));
        }
    };
    let string_to_sign =
        service_sas_string_to_sign(&sp, &st, &se, &resource, "", "", &get("spr"), &sv);
    let expected = hmac_b64(key, &string_to_sign);
    if !constant_time_eq(expected.as_bytes(), sig.as_bytes()) {
        return Err(auth_failed("Signature did not match."));
    }
    let now = azure_core::time::OffsetDateTime::now_utc();
    let expiry = parse_sas_time(&se).ok_or_else(|| auth_failed("se is not a valid time."))?;
    if expiry <= now {
        return Err(auth_failed(
            "Signed expiry time must be after the current time.",
        ));
    }
    if !st.is_empty() {
        let start = parse_sas_time(&st).ok_or_else(|| auth_failed("st is not a valid time."))?;
        if start > now {
            return Err(auth_failed("Signed start time is in the future."));
        }
    }
    if !sp.chars().all(|c| "rcwdl".contains(c)) {
        return Err(auth_failed("sp has a permission a share SAS cannot grant."));
    }
    Ok(Grant::Sas { permissions: sp })
}

/// SAS times: `YYYY-MM-DD`, or ISO 8601 UTC with or without seconds.
fn parse_sas_time(value: &str) -> Option<azure_core::time::OffsetDateTime> {
    let full = match value.len() {
        10 => format!("{value}T00:00:00Z"),
        17 => format!("{}:00Z", &value[..16]),
        _ => value.to_owned(),
    };
    azure_core::time::parse_rfc3339(&full).ok()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
