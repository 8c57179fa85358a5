//! Just enough HTTP/1.1 for the FileREST server: keep-alive, `Content-Length` bodies (FileREST
//! requires one on every write; chunked bodies are refused), one request at a time.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest request head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest body read at all: anything bigger is refused before it is buffered.
const MAX_BODY: usize = 16 * 1024 * 1024;

#[derive(Debug)]
pub struct HttpRequest {
    pub method: String,
    /// The path exactly as sent (still percent-encoded).
    pub raw_path: String,
    /// Query parameters, decoded, in the order sent.
    pub query: Vec<(String, String)>,
    /// Header names lower-cased, in the order sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// The value of a header; several headers of one name are joined with `,`.
    pub fn header(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }

    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    pub fn body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        206 => "Partial Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Request Entity Too Large",
        416 => "Requested Range Not Satisfiable",
        _ => "Status",
    }
}

/// Serves one connection until the client closes it.
pub async fn serve(
    mut stream: TcpStream,
    handle: impl Fn(&HttpRequest) -> HttpResponse + Send + 'static,
) {
    let mut buffer: Vec<u8> = Vec::with_capacity(8192);
    loop {
        // Read until the head is complete.
        let (mut request, head_len, content_length) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Request::new(&mut headers);
            match parsed.parse(&buffer) {
                Ok(httparse::Status::Complete(len)) => {
                    let target = parsed.path.unwrap_or("/").to_owned();
                    let (raw_path, raw_query) = match target.split_once('?') {
                        Some((p, q)) => (p.to_owned(), q.to_owned()),
                        None => (target.clone(), String::new()),
                    };
                    let request = HttpRequest {
                        method: parsed.method.unwrap_or("").to_owned(),
                        raw_path,
                        query: url::form_urlencoded::parse(raw_query.as_bytes())
                            .map(|(k, v)| (k.into_owned(), v.into_owned()))
                            .collect(),
                        headers: parsed
                            .headers
                            .iter()
                            .map(|h| {
                                (
                                    h.name.to_ascii_lowercase(),
                                    String::from_utf8_lossy(h.value).into_owned(),
                                )
                            })
                            .collect(),
                        body: Vec::new(),
                    };
                    if request.header("transfer-encoding").is_some() {
                        let _ = write(&mut stream, "", &length_required()).await;
                        return;
                    }
                    let length = match request.header("content-length") {
                        None => 0,
                        Some(v) => match v.trim().parse::<usize>() {
                            Ok(n) => n,
                            Err(_) => return,
                        },
                    };
                    break (request, len, length);
                }
                Ok(httparse::Status::Partial) if buffer.len() < MAX_HEAD => {}
                _ => return,
            }
            if !read_more(&mut stream, &mut buffer).await {
                return;
            }
        };
        if content_length > MAX_BODY {
            let response = super::ops::error(
                413,
                "RequestBodyTooLarge",
                "The request body is too large and exceeds the maximum permissible limit.",
            );
            let _ = write(&mut stream, &request.method, &response).await;
            return;
        }
        while buffer.len() < head_len + content_length {
            if !read_more(&mut stream, &mut buffer).await {
                return;
            }
        }
        request.body = buffer[head_len..head_len + content_length].to_vec();
        buffer.drain(..head_len + content_length);
        let close = request
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"));
        let response = handle(&request);
        if write(&mut stream, &request.method, &response)
            .await
            .is_err()
            || close
        {
            return;
        }
    }
}

fn length_required() -> HttpResponse {
    super::ops::error(
        411,
        "MissingContentLengthHeader",
        "Content-Length is required; chunked bodies are not supported.",
    )
}

async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 64 * 1024];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buffer.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

async fn write(
    stream: &mut TcpStream,
    method: &str,
    response: &HttpResponse,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nServer: dataref-filerest-test\r\n",
        response.status,
        reason(response.status)
    );
    let has_length = response
        .headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-length"));
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !has_length {
        head.push_str(&format!("Content-Length: {}\r\n", response.body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    // A HEAD answer describes the body without sending it.
    if method != "HEAD" {
        stream.write_all(&response.body).await?;
    }
    stream.flush().await
}
