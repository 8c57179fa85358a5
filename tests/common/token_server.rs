//! A managed-identity token endpoint on loopback, speaking both protocols dataref meets: App
//! Service's (`IDENTITY_ENDPOINT`, header `x-identity-header`, what `azure_identity` uses) and
//! Azure ML compute's (`MSI_ENDPOINT`, header `secret`). It hands out short-lived JWTs that
//! Azurite's `--oauth basic` accepts (issuer, audience, nbf/iat/exp; the signature is not
//! checked there) and records every request.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The value both secret headers must carry.
pub const HEADER_SECRET: &str = "test-identity-header-value";

#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub query: String,
    pub tokens_issued: String,
}

pub struct TokenServer {
    pub url: String,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
}

impl TokenServer {
    /// Serves tokens valid for `lifetime_seconds`.
    pub fn start(lifetime_seconds: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut first = String::new();
                if reader.read_line(&mut first).is_err() {
                    continue;
                }
                let mut authorised = false;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    let (name, value) = line.split_once(':').unwrap_or((&line, ""));
                    let name = name.trim().to_ascii_lowercase();
                    if (name == "x-identity-header" || name == "secret")
                        && value.trim() == HEADER_SECRET
                    {
                        authorised = true;
                    }
                }
                let target = first.split_whitespace().nth(1).unwrap_or("").to_owned();
                let query = target
                    .split_once('?')
                    .map(|(_, q)| q)
                    .unwrap_or("")
                    .to_owned();
                let (status, body) = if authorised {
                    let (token, expires) = jwt(lifetime_seconds);
                    seen.lock().unwrap().push(TokenRequest {
                        query,
                        tokens_issued: token.clone(),
                    });
                    let body = format!(
                        r#"{{"access_token":"{token}","expires_on":"{expires}","resource":"https://storage.azure.com/","token_type":"Bearer"}}"#
                    );
                    ("200 OK", body)
                } else {
                    (
                        "401 Unauthorized",
                        r#"{"error":"no secret header"}"#.to_owned(),
                    )
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Self { url, requests }
    }

    pub fn requests(&self) -> Vec<TokenRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// Every token handed out so far (what must never appear in an output).
    pub fn tokens(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .map(|r| r.tokens_issued)
            .collect()
    }
}

/// A JWT Azurite's basic OAuth check accepts, and its expiry (seconds since the epoch).
fn jwt(lifetime_seconds: u64) -> (String, u64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exp = now + lifetime_seconds;
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = format!(
        r#"{{"aud":"https://storage.azure.com","iss":"https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/","iat":{now},"nbf":{},"exp":{exp},"oid":"{}"}}"#,
        now - 60,
        super::data::unique_name("identity")
    );
    let claims = URL_SAFE_NO_PAD.encode(claims);
    let signature = URL_SAFE_NO_PAD.encode(b"not checked by --oauth basic");
    (format!("{header}.{claims}.{signature}"), exp)
}
