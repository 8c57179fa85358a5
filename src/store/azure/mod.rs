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
            message: format!("{context}: {}", auth::redact(&error.to_string())),
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

/// A 403 that a rotated secret might fix.
pub(crate) fn is_auth_failure(error: &StoreError) -> bool {
    matches!(error, StoreError::PermissionDenied { .. })
}
