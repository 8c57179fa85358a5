//! The one Azure Storage client both backends hold: the azure_core pipeline built from a
//! datastore's credential and the job's HTTP client, the SharedKey/SAS policies (`auth`), the
//! retry loop that re-reads a rotated secret once after a 403, the error mapping, and the pieces
//! of the REST dialect Blob and File share (URLs under the container or share, request headers,
//! encoded names in listings, dates and MD5s in answers).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use azure_core::error::ErrorKind;
use azure_core::http::headers::HeaderName;
use azure_core::http::policies::Policy;
use azure_core::http::{
    ClientOptions, Context, Method, Pipeline, RawResponse, Request, RetryOptions, Transport, Url,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::auth::{self, ExtraHeadersPolicy, SasPolicy, SecretSource, SharedKeyPolicy};
use crate::model::datastore::{AzureLocation, Credential};
use crate::model::{ObjectPath, RetryPolicy};
use crate::store::{Resources, Result, StoreError};

/// Listing page size (the services' maximum).
const DEFAULT_PAGE: u32 = 5000;

/// Which service a client talks to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Service {
    /// The datastore kind, for descriptions (`azure_blob`, `azure_file`).
    pub kind: &'static str,
    /// `x-ms-version` of the requests we build ourselves.
    pub api_version: &'static str,
}

/// One container or share, reached through one pipeline.
pub(crate) struct AzureClient {
    /// Our own requests go through this; SDK clients get `options` and build theirs.
    pipeline: Pipeline,
    options: ClientOptions,
    /// The container's or share's URL.
    base: Url,
    service: Service,
    description: String,
    /// The secret to re-read after a 403.
    secret: Option<Arc<SecretSource>>,
    /// With SAS authentication, the token (Rename File's source URL carries it too).
    sas: Option<Arc<SecretSource>>,
    pub retry: RetryPolicy,
    /// Listing page size (smaller in tests, to exercise continuations).
    pub page_size: u32,
}

/// A failed call: the error callers see, and the service's error code (`x-ms-error-code`) for
/// the decisions that depend on it (a missing parent, an existing directory).
#[derive(Debug)]
pub(crate) struct Failed {
    pub error: StoreError,
    pub code: Option<String>,
}

impl Failed {
    pub fn is(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }
}

impl From<Failed> for StoreError {
    fn from(failed: Failed) -> Self {
        failed.error
    }
}

impl AzureClient {
    /// A client for the container or share `location` names (nothing is contacted yet),
    /// sending through the job's HTTP client under its retry policy.
    pub fn new(
        service: Service,
        location: &AzureLocation,
        service_url: &str,
        resources: &Resources,
    ) -> Result<Self> {
        let (auth, secret, sas): (Option<Arc<dyn Policy>>, _, _) = match &location.credential {
            Credential::AccountKey(secret) => {
                let source = Arc::new(SecretSource::new(secret.clone()));
                let policy = SharedKeyPolicy {
                    account: location.account_name.clone(),
                    key: source.clone(),
                };
                (Some(Arc::new(policy)), Some(source), None)
            }
            Credential::SasToken(secret) => {
                let source = Arc::new(SecretSource::new(secret.clone()));
                let policy = SasPolicy {
                    token: source.clone(),
                };
                (Some(Arc::new(policy)), Some(source.clone()), Some(source))
            }
            Credential::Anonymous => (None, None, None),
            Credential::ManagedIdentity { client_id } => {
                let credential =
                    super::identity::managed_identity(client_id.as_deref(), resources.http())
                        .map_err(|e| StoreError::InvalidInput {
                            path: service_url.to_owned(),
                            reason: format!("managed identity: {e}"),
                        })?;
                let policy = super::identity::BearerPolicy {
                    credential,
                    file_intent: service.kind == "azure_file",
                };
                (Some(Arc::new(policy)), None, None)
            }
        };
        let invalid = |reason: String| StoreError::InvalidInput {
            path: service_url.to_owned(),
            reason,
        };
        let mut base =
            Url::parse(service_url).map_err(|e| invalid(format!("invalid endpoint: {e}")))?;
        base.path_segments_mut()
            .map_err(|()| invalid("the endpoint cannot take a path".into()))?
            .pop_if_empty()
            .push(&location.container);
        let options = ClientOptions {
            per_call_policies: vec![Arc::new(ExtraHeadersPolicy)],
            per_try_policies: auth.into_iter().collect(),
            // Retries are ours (`call`), so that every call and every broken body follow one
            // policy.
            retry: RetryOptions::none(),
            transport: Some(Transport::new(resources.http())),
            ..Default::default()
        };
        let pipeline = Pipeline::new(
            Some("dataref"),
            Some(env!("CARGO_PKG_VERSION")),
            options.clone(),
            Vec::new(),
            Vec::new(),
            None,
        );
        Ok(Self {
            pipeline,
            options,
            description: format!("{}:{}/{}", service.kind, service_url, location.container),
            base,
            service,
            secret,
            sas,
            retry: resources.retry.clone(),
            page_size: DEFAULT_PAGE,
        })
    }

    /// Options for an SDK client: the same policies and transport as our own pipeline.
    pub fn options(&self) -> ClientOptions {
        self.options.clone()
    }

    /// `azure_blob:<endpoint>/<container>`: never contains a secret.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The container's or share's URL.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// The current SAS token, when the client authenticates with one.
    pub fn sas_token(&self) -> Option<String> {
        let token = self.sas.as_ref()?.current().ok()?;
        Some(token.expose().trim_start_matches('?').to_owned())
    }

    /// Smaller listing pages, so that tests exercise continuation markers.
    pub fn set_page_size(&mut self, page_size: u32) {
        self.page_size = page_size.max(1);
    }

    /// The URL of `path` under the container or share.
    pub fn url(&self, path: &ObjectPath) -> Url {
        self.url_with(path, &[])
    }

    /// `url` with query parameters.
    pub fn url_with(&self, path: &ObjectPath, query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("checked in new")
            .extend(path.segments());
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (name, value) in query {
                pairs.append_pair(name, value);
            }
        }
        url
    }

    /// A request of ours, with the service version and a date. SharedKey signing sets its own
    /// date per attempt; SAS requests carry this one, as every request is built afresh for each
    /// attempt.
    pub fn request(&self, url: Url, method: Method) -> Request {
        let mut request = Request::new(url, method);
        request.insert_header("x-ms-version", self.service.api_version);
        request.insert_header(
            "x-ms-date",
            azure_core::time::to_rfc7231(&azure_core::time::OffsetDateTime::now_utc()),
        );
        request
    }

    /// Runs one operation under the retry policy; a 403 re-reads a rotated secret once.
    pub async fn call<T, F, Fut>(&self, context: &str, op: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = azure_core::Result<T>>,
    {
        Ok(self.call_with(&self.retry, context, op).await?)
    }

    /// `call` as one attempt (ranged reads, which the store's resumable read retries), keeping
    /// the service's error code.
    pub async fn call_once<T, F, Fut>(&self, context: &str, op: F) -> Result<T, Failed>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = azure_core::Result<T>>,
    {
        self.call_with(&RetryPolicy::none(), context, op).await
    }

    /// `call` under `retry`, keeping the service's error code.
    pub async fn call_with<T, F, Fut>(
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

    /// Sends the request `build` makes (afresh for every attempt) under the retry policy and
    /// reads the whole answer.
    pub async fn send(
        &self,
        context: &str,
        build: impl Fn() -> Request,
    ) -> Result<RawResponse, Failed> {
        self.call_with(&self.retry, context, || async {
            let mut request = build();
            self.pipeline
                .send(&Context::new(), &mut request, None)
                .await
        })
        .await
    }

    /// One attempt at the request `build` makes, whose body streams from the socket.
    pub async fn stream(
        &self,
        context: &str,
        build: impl Fn() -> Request,
    ) -> Result<azure_core::http::AsyncRawResponse, Failed> {
        self.call_once(context, || async {
            let mut request = build();
            self.pipeline
                .stream(&Context::new(), &mut request, None)
                .await
        })
        .await
    }

    /// Reads an answer's XML (`what`: "listing", for messages), or says it could not.
    pub fn parse_xml<T: serde::de::DeserializeOwned>(&self, what: &str, body: &[u8]) -> Result<T> {
        azure_core::xml::from_xml::<_, T>(body).map_err(|e| StoreError::Service {
            context: self.description.clone(),
            message: format!("unreadable {what}: {e}"),
        })
    }
}

fn error_code(error: &azure_core::Error) -> Option<String> {
    match error.kind() {
        ErrorKind::HttpResponse { error_code, .. } => error_code.clone(),
        _ => None,
    }
}

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
fn is_auth_failure(error: &StoreError) -> bool {
    matches!(error, StoreError::PermissionDenied { .. })
}

/// A name in a listing: names with characters XML cannot carry come percent-encoded
/// (`<Name Encoded="true">`).
#[derive(Debug, serde::Deserialize)]
pub(crate) struct XmlName {
    #[serde(rename = "@Encoded", default)]
    encoded: Option<bool>,
    #[serde(rename = "$text", default)]
    text: String,
}

impl XmlName {
    pub fn decoded(&self) -> String {
        if self.encoded == Some(true) {
            percent_encoding::percent_decode_str(&self.text)
                .decode_utf8_lossy()
                .into_owned()
        } else {
            self.text.clone()
        }
    }
}

/// An HTTP date (`Last-Modified`), when readable.
pub(crate) fn http_date(text: &str) -> Option<SystemTime> {
    azure_core::time::parse_rfc7231(text)
        .ok()
        .map(SystemTime::from)
}

/// A base64 `Content-MD5`, when it is one.
pub(crate) fn md5_from_base64(text: &str) -> Option<[u8; 16]> {
    let bytes = B64.decode(text.trim()).ok()?;
    <[u8; 16]>::try_from(bytes.as_slice()).ok()
}

/// A response header, when present.
pub(crate) fn header<'a>(response: &'a RawResponse, name: &'static str) -> Option<&'a str> {
    response
        .headers()
        .get_optional_str(&HeaderName::from_static(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_names_are_decoded_only_when_marked() {
        let plain = XmlName {
            encoded: None,
            text: "a%20b".into(),
        };
        assert_eq!(plain.decoded(), "a%20b");
        let encoded = XmlName {
            encoded: Some(true),
            text: "a%20b%0A".into(),
        };
        assert_eq!(encoded.decoded(), "a b\n");
    }

    #[test]
    fn answers_parse_dates_and_md5s() {
        assert!(http_date("Wed, 25 Nov 2026 10:00:00 GMT").is_some());
        assert_eq!(http_date("yesterday"), None);
        assert_eq!(
            md5_from_base64(" XrY7u+Ae7tCTyyK7j1rNww== "),
            Some([
                0x5e, 0xb6, 0x3b, 0xbb, 0xe0, 0x1e, 0xee, 0xd0, 0x93, 0xcb, 0x22, 0xbb, 0x8f, 0x5a,
                0xcd, 0xc3
            ])
        );
        assert_eq!(md5_from_base64("AAAA"), None, "not 16 bytes");
    }
}
