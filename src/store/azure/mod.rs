//! Azure Storage backends: Blob containers and File shares, sharing authentication, error
//! mapping and the retry policy.

pub mod auth;
pub mod blob;
pub mod file;

use std::time::Duration;

use azure_core::error::ErrorKind;
use azure_core::http::headers::HeaderName;

use super::StoreError;

/// Maps an SDK error to ours, by status. Messages are built from the status, the service's
/// error code and message — never from request URLs, which may carry a SAS signature.
pub(crate) fn from_azure(context: &str, error: azure_core::Error) -> StoreError {
    let context = context.to_owned();
    match error.kind() {
        ErrorKind::HttpResponse {
            status,
            error_code,
            raw_response,
        } => {
            let status = u16::from(*status);
            let code = error_code.clone().unwrap_or_default();
            let retry_after = raw_response.as_ref().and_then(|raw| {
                raw.headers()
                    .get_optional_str(&HeaderName::from_static("retry-after"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs)
            });
            match status {
                404 => StoreError::NotFound { path: context },
                409 => StoreError::AlreadyExists { path: context },
                401 | 403 => StoreError::PermissionDenied {
                    path: context,
                    reason: format!("HTTP {status} {code}"),
                },
                _ => StoreError::Http {
                    status,
                    message: format!("{context}: {code}"),
                    retry_after,
                },
            }
        }
        ErrorKind::Connection | ErrorKind::Io => StoreError::Network {
            message: format!("{context}: {}", auth::redact(&with_causes(&error))),
        },
        ErrorKind::Credential => StoreError::PermissionDenied {
            path: context,
            reason: auth::redact(&error.to_string()),
        },
        _ => StoreError::Service {
            context,
            message: auth::redact(&error.to_string()),
        },
    }
}

/// An error and its sources, `a: b: c`: the SDK's "error sending request" alone does not say
/// whether the connection was refused, reset or timed out.
fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A 403 that a rotated secret might fix.
pub(crate) fn is_auth_failure(error: &StoreError) -> bool {
    matches!(error, StoreError::PermissionDenied { .. })
}

#[cfg(test)]
mod tests {
    use azure_core::http::{Method, Request, Url};

    use super::auth::string_to_sign;

    /// The SharedKey string-to-sign of two known requests, written out by hand from the
    /// documented format: verb, eleven standard headers (a `Content-Length` of 0 is empty), the
    /// sorted `x-ms-*` headers with trimmed values, then `/account/path` and the query
    /// parameters, lower-cased, decoded and sorted.
    #[test]
    fn string_to_sign_matches_the_documented_format() {
        let url = Url::parse(
            "http://127.0.0.1:10000/devstoreaccount1/bench/dir/a%20b.bin\
             ?comp=block&blockid=ZGF0YXJlZi0wMDAwMDAwMDAwMDE%3D&Timeout=30",
        )
        .unwrap();
        let mut put = Request::new(url, Method::Put);
        put.insert_header("x-ms-version", "2026-04-06");
        put.insert_header("x-ms-date", "Wed, 25 Nov 2026 10:00:00 GMT");
        put.insert_header("x-ms-client-request-id", "  abc  ");
        put.insert_header("content-md5", "XrY7u+Ae7tCTyyK7j1rNww==");
        put.insert_header("content-type", "application/octet-stream");
        put.insert_header("user-agent", "dataref");
        // No Content-Length header: the body's length is signed.
        put.set_body(bytes::Bytes::from_static(b"hello world"));
        assert_eq!(
            string_to_sign("devstoreaccount1", &put),
            "PUT\n\
             \n\
             \n\
             11\n\
             XrY7u+Ae7tCTyyK7j1rNww==\n\
             application/octet-stream\n\
             \n\
             \n\
             \n\
             \n\
             \n\
             \n\
             x-ms-client-request-id:abc\n\
             x-ms-date:Wed, 25 Nov 2026 10:00:00 GMT\n\
             x-ms-version:2026-04-06\n\
             /devstoreaccount1/devstoreaccount1/bench/dir/a%20b.bin\n\
             blockid:ZGF0YXJlZi0wMDAwMDAwMDAwMDE=\n\
             comp:block\n\
             timeout:30"
        );

        let url = Url::parse("http://127.0.0.1:10000/devstoreaccount1/bench/big.bin").unwrap();
        let mut get = Request::new(url, Method::Get);
        get.insert_header("x-ms-version", "2026-04-06");
        get.insert_header("x-ms-date", "Wed, 25 Nov 2026 10:00:00 GMT");
        get.insert_header("content-length", "0");
        get.insert_header("range", "bytes=0-8388607");
        get.insert_header("if-match", "\"0x8DD\"");
        assert_eq!(
            string_to_sign("devstoreaccount1", &get),
            "GET\n\
             \n\
             \n\
             \n\
             \n\
             \n\
             \n\
             \n\
             \"0x8DD\"\n\
             \n\
             \n\
             bytes=0-8388607\n\
             x-ms-date:Wed, 25 Nov 2026 10:00:00 GMT\n\
             x-ms-version:2026-04-06\n\
             /devstoreaccount1/devstoreaccount1/bench/big.bin"
        );
    }
}
