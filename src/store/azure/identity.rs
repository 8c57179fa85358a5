//! Identity-based access (Azure ML v2's recommended datastores: no key, no SAS): Entra ID tokens
//! from the node's managed identity, put on each request by a policy of ours.
//!
//! Tokens come from the official `azure_identity` crate (IMDS, or App Service's
//! `IDENTITY_ENDPOINT`/`IDENTITY_HEADER`), except on Azure ML compute, whose
//! `MSI_ENDPOINT`/`MSI_SECRET` protocol that crate does not speak: that one is ours. Tokens are
//! cached and refreshed before they expire, live only in memory, and are sent over HTTPS only.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_core::credentials::{AccessToken, Secret, TokenCredential, TokenRequestOptions};
use azure_core::error::ErrorKind;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{ClientOptions, Context, Request, Transport};
use azure_core::time::OffsetDateTime;
use tokio::sync::Mutex;

/// The scope of Azure Storage data-plane tokens.
pub const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";
/// A token is refreshed this long before it expires, or at half its life if that is sooner.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);

fn credential_error(message: impl Into<String>) -> azure_core::Error {
    azure_core::Error::with_message(ErrorKind::Credential, message.into())
}

/// The node's managed identity (`client_id`: a user-assigned one), fetching through `http`.
pub fn managed_identity(
    client_id: Option<&str>,
    http: Arc<reqwest::Client>,
) -> azure_core::Result<Arc<dyn TokenCredential>> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if var("IDENTITY_ENDPOINT").is_none() {
        if let (Some(endpoint), Some(secret)) = (var("MSI_ENDPOINT"), var("MSI_SECRET")) {
            return Ok(Arc::new(AzureMlIdentity {
                endpoint,
                secret: Secret::new(secret),
                client_id: client_id.map(str::to_owned),
                http,
                cached: Mutex::new(None),
            }));
        }
    }
    let options = azure_identity::ManagedIdentityCredentialOptions {
        user_assigned_id: client_id.map(|id| azure_identity::UserAssignedId::ClientId(id.into())),
        client_options: ClientOptions {
            transport: Some(Transport::new(http)),
            ..Default::default()
        },
    };
    let credential: Arc<dyn TokenCredential> =
        azure_identity::ManagedIdentityCredential::new(Some(options))?;
    Ok(credential)
}

/// Puts `Authorization: Bearer <token>` on every attempt (and, for Azure Files, the
/// `x-ms-file-request-intent: backup` the service requires with OAuth).
#[derive(Debug)]
pub struct BearerPolicy {
    pub credential: Arc<dyn TokenCredential>,
    pub file_intent: bool,
}

#[async_trait]
impl Policy for BearerPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        if request.url().scheme() != "https" {
            return Err(credential_error(format!(
                "a managed identity's token is sent over HTTPS only; the endpoint is {}://{}",
                request.url().scheme(),
                request.url().host_str().unwrap_or_default()
            )));
        }
        let token = self.credential.get_token(&[STORAGE_SCOPE], None).await?;
        request.insert_header("authorization", format!("Bearer {}", token.token.secret()));
        if self.file_intent {
            request.insert_header("x-ms-file-request-intent", "backup");
        }
        next[0].send(ctx, request, &next[1..]).await
    }
}

/// Azure ML compute's identity endpoint (`MSI_ENDPOINT`, header `secret: $MSI_SECRET`,
/// API version 2017-09-01).
struct AzureMlIdentity {
    endpoint: String,
    secret: Secret,
    client_id: Option<String>,
    http: Arc<reqwest::Client>,
    /// The token, and when to fetch the next one.
    cached: Mutex<Option<(AccessToken, OffsetDateTime)>>,
}

impl std::fmt::Debug for AzureMlIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureMlIdentity")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Deserialize)]
struct TokenAnswer {
    access_token: String,
    /// Seconds since the epoch, as a string or a number.
    expires_on: serde_json::Value,
}

impl AzureMlIdentity {
    async fn fetch(&self) -> azure_core::Result<AccessToken> {
        let mut url = url::Url::parse(&self.endpoint)
            .map_err(|e| credential_error(format!("MSI_ENDPOINT is not a URL: {e}")))?;
        url.query_pairs_mut()
            .append_pair("resource", "https://storage.azure.com/")
            .append_pair("api-version", "2017-09-01");
        if let Some(id) = &self.client_id {
            url.query_pairs_mut().append_pair("clientid", id);
        }
        let failed =
            |e: reqwest::Error| credential_error(format!("Azure ML identity endpoint: {e}"));
        let answer = self
            .http
            .get(url)
            .header("secret", self.secret.secret())
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(failed)?;
        let status = answer.status();
        if !status.is_success() {
            return Err(credential_error(format!(
                "Azure ML identity endpoint answered {status}"
            )));
        }
        let bytes = answer.bytes().await.map_err(failed)?;
        let body: TokenAnswer = serde_json::from_slice(&bytes).map_err(|e| {
            credential_error(format!(
                "Azure ML identity endpoint: unexpected answer ({e})"
            ))
        })?;
        let seconds = match &body.expires_on {
            serde_json::Value::String(s) => s.parse::<i64>().ok(),
            serde_json::Value::Number(n) => n.as_i64(),
            _ => None,
        }
        .ok_or_else(|| credential_error("Azure ML identity endpoint: no usable expires_on"))?;
        let expires_on = OffsetDateTime::from_unix_timestamp(seconds)
            .map_err(|_| credential_error("Azure ML identity endpoint: expires_on out of range"))?;
        Ok(AccessToken::new(Secret::new(body.access_token), expires_on))
    }
}

#[async_trait]
impl TokenCredential for AzureMlIdentity {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let mut cached = self.cached.lock().await;
        let now = OffsetDateTime::now_utc();
        if let Some((token, refresh_at)) = cached.as_ref() {
            if now < *refresh_at {
                return Ok(token.clone());
            }
        }
        let token = self.fetch().await?;
        *cached = Some((token.clone(), refresh_time(now, token.expires_on)));
        Ok(token)
    }
}

/// When to fetch the next token: `REFRESH_MARGIN` before expiry, or halfway through a shorter
/// life, so a short-lived token is not fetched on every request.
fn refresh_time(now: OffsetDateTime, expires_on: OffsetDateTime) -> OffsetDateTime {
    let life = expires_on - now;
    let margin = azure_core::time::Duration::try_from(REFRESH_MARGIN).expect("fits");
    match life > margin * 2 {
        true => expires_on - margin,
        false => now + life / 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use azure_core::http::{Method, Url};

    #[derive(Debug)]
    struct FixedToken;

    #[async_trait]
    impl TokenCredential for FixedToken {
        async fn get_token(
            &self,
            _: &[&str],
            _: Option<TokenRequestOptions<'_>>,
        ) -> azure_core::Result<AccessToken> {
            let expires = OffsetDateTime::now_utc() + azure_core::time::Duration::seconds(3600);
            Ok(AccessToken::new(Secret::new("the-token"), expires))
        }
    }

    /// The end of the pipeline: keeps the headers it was given.
    #[derive(Debug, Default)]
    struct Capture(std::sync::Mutex<Vec<(String, String)>>);

    #[async_trait]
    impl Policy for Capture {
        async fn send(
            &self,
            _: &Context,
            request: &mut Request,
            _: &[Arc<dyn Policy>],
        ) -> PolicyResult {
            let headers = request
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.as_str().to_owned()));
            self.0.lock().unwrap().extend(headers);
            Err(credential_error("captured"))
        }
    }

    async fn headers_sent(url: &str, file_intent: bool) -> Vec<(String, String)> {
        let policy = BearerPolicy {
            credential: Arc::new(FixedToken),
            file_intent,
        };
        let capture = Arc::new(Capture::default());
        let next: Vec<Arc<dyn Policy>> = vec![capture.clone()];
        let mut request = Request::new(Url::parse(url).unwrap(), Method::Get);
        let _ = policy.send(&Context::new(), &mut request, &next).await;
        capture.0.lock().unwrap().clone()
    }

    // Azure Files takes OAuth only with the backup intent header (the strict FileREST test
    // server speaks plain HTTP, so Files is checked here, at the request).
    #[tokio::test]
    async fn bearer_tokens_go_on_https_requests_with_the_files_intent() {
        let blob = headers_sent("https://a.blob.core.windows.net/c/x", false).await;
        assert!(blob.contains(&("authorization".into(), "Bearer the-token".into())));
        assert!(!blob.iter().any(|(k, _)| k == "x-ms-file-request-intent"));
        let file = headers_sent("https://a.file.core.windows.net/s/x", true).await;
        assert!(file.contains(&("authorization".into(), "Bearer the-token".into())));
        assert!(file.contains(&("x-ms-file-request-intent".into(), "backup".into())));
        assert!(
            headers_sent("http://127.0.0.1:1/a/c", true)
                .await
                .is_empty()
        );
    }

    #[test]
    fn tokens_are_refreshed_before_they_expire() {
        let now = OffsetDateTime::now_utc();
        let hour = now + azure_core::time::Duration::seconds(3600);
        assert_eq!(
            refresh_time(now, hour),
            hour - azure_core::time::Duration::seconds(300)
        );
        let short = now + azure_core::time::Duration::seconds(20);
        assert_eq!(
            refresh_time(now, short),
            now + azure_core::time::Duration::seconds(10)
        );
    }
}
