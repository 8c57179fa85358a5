//! The job API: HTTP/1.1 + JSON on a Unix socket, with the caller known from the
//! kernel's peer credentials, never from anything it sends.
//!
//! `POST /v1/jobs` (manifest; `?base_dir=` for relative paths) → 201 `{"id"}`;
//! `GET /v1/jobs`; `GET /v1/jobs/{id}`; `POST /v1/jobs/{id}/cancel`;
//! `GET /v1/jobs/{id}/logs?follow=1`; and, also on `--metrics-listen`, `GET /metrics`,
//! `GET /healthz`, `GET /readyz`.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::net::UnixListener;

use super::peer::Peer;
use super::record::JobRecord;
use super::{CancelError, Config, Daemon, DaemonError, io_error};
use crate::model::issues::Issue;

/// Manifests are small; anything bigger is a mistake or an attack.
pub const MAX_MANIFEST_BYTES: usize = 1024 * 1024;

/// How much of an oversize body is read and thrown away before the 413 is sent. A client that
/// is still writing when the server closes gets a broken pipe instead of the answer; reading the
/// rest (up to this bound) lets an honest client see why it was refused.
const MAX_DRAINED_BYTES: usize = 16 * MAX_MANIFEST_BYTES;

/// The caller of one connection, read when it was accepted.
#[derive(Debug, Clone)]
pub struct Caller(Option<Peer>);

impl Connected<IncomingStream<'_, UnixListener>> for Caller {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        Caller(Peer::of(stream.io()).ok())
    }
}

/// Binds the socket: its directory is created, a stale socket file replaced (a live daemon's
/// is not), and access limited to root and `--allow-group` (mode 0660).
pub fn bind(config: &Config) -> Result<UnixListener, DaemonError> {
    let socket = &config.socket;
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent)
            .map_err(io_error("cannot create the socket directory", parent))?;
    }
    if socket.exists() {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Err(DaemonError::SocketInUse(socket.clone()));
        }
        let _ = std::fs::remove_file(socket);
    }
    let listener = UnixListener::bind(socket).map_err(io_error("cannot bind", socket))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))
        .map_err(io_error("cannot set the mode of", socket))?;
    if let Some(gid) = config.allow_group {
        std::os::unix::fs::chown(socket, None, Some(gid))
            .map_err(io_error("cannot give the socket to its group:", socket))?;
    }
    Ok(listener)
}

pub async fn serve(daemon: Arc<Daemon>, registry: Arc<Registry>, listener: UnixListener) {
    let app = Router::new()
        .route("/v1/jobs", post(submit).get(list))
        .route("/v1/jobs/{id}", get(show))
        .route("/v1/jobs/{id}/cancel", post(cancel))
        .route("/v1/jobs/{id}/logs", get(logs))
        .layer(DefaultBodyLimit::max(MAX_MANIFEST_BYTES))
        .with_state(daemon.clone())
        .merge(observing(daemon, registry));
    if let Err(e) = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<Caller>(),
    )
    .await
    {
        tracing::error!("the API server stopped: {e}");
    }
}

/// The metrics and health endpoints: on the socket, and alone on `--metrics-listen`.
pub fn observing(daemon: Arc<Daemon>, registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state((daemon, registry))
}

/// Serves [`observing`] on a TCP listener (`--metrics-listen`).
pub async fn serve_metrics(
    daemon: Arc<Daemon>,
    registry: Arc<Registry>,
    listener: tokio::net::TcpListener,
) {
    if let Err(e) = axum::serve(listener, observing(daemon, registry)).await {
        tracing::error!("the metrics listener stopped: {e}");
    }
}

type Observed = State<(Arc<Daemon>, Arc<Registry>)>;

async fn metrics(State((_, registry)): Observed) -> Response {
    let text = tokio::task::spawn_blocking(move || super::metrics::render(&registry))
        .await
        .unwrap_or_default();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            super::metrics::CONTENT_TYPE,
        )],
        text,
    )
        .into_response()
}

fn health_answer(ok: bool, body: Value) -> Response {
    let status = match ok {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, axum::Json(body)).into_response()
}

async fn healthz(State((daemon, _)): Observed) -> Response {
    let (ok, body) = super::health::healthz(&daemon);
    health_answer(ok, body)
}

async fn readyz(State((daemon, _)): Observed) -> Response {
    let (ok, body) = super::health::readyz(&daemon).await;
    health_answer(ok, body)
}

/// An error answer: a status and a JSON body with `error` (and `issues` for manifests).
#[derive(Debug)]
struct ApiError(StatusCode, Value);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(self.1)).into_response()
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError(status, json!({"error": message.into()}))
}

type Answer = Result<Response, ApiError>;

fn issues_json(issues: &[Issue]) -> Value {
    issues
        .iter()
        .map(|i| json!({"path": i.path, "message": i.message}))
        .collect()
}

/// Root and members of the allowed group may talk to the daemon; anyone else gets 403 and an
/// audit line.
fn authorize(daemon: &Daemon, caller: &Caller, action: &str) -> Result<Peer, ApiError> {
    let Some(peer) = &caller.0 else {
        return Err(error(StatusCode::FORBIDDEN, "unknown peer credentials"));
    };
    let allowed = peer.is_root() || daemon.config.allow_group.is_some_and(|g| peer.in_group(g));
    if allowed {
        return Ok(peer.clone());
    }
    audit(
        daemon,
        &format!(
            "refused {action}: uid {} gid {} pid {:?} is neither root nor in the allowed group",
            peer.uid, peer.gid, peer.pid
        ),
    );
    Err(error(
        StatusCode::FORBIDDEN,
        "permission denied: only root and members of the daemon's allowed group may use it",
    ))
}

/// One line to the log (target `audit`) and to `<state-dir>/audit.log`.
fn audit(daemon: &Daemon, line: &str) {
    tracing::warn!(target: "audit", "{line}");
    let path = daemon.config.state_dir.join("audit.log");
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(file, "{} {line}", super::record::now());
    }
}

/// A peer sees its own jobs; root sees all.
fn visible(daemon: &Daemon, peer: &Peer, id: &str) -> Option<JobRecord> {
    let record = daemon.view(id)?;
    (peer.is_root() || record.submitted_by.uid == peer.uid).then_some(record)
}

#[derive(Debug, serde::Deserialize)]
struct SubmitQuery {
    base_dir: Option<PathBuf>,
}

async fn submit(
    State(daemon): State<Arc<Daemon>>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    Query(query): Query<SubmitQuery>,
    body: Body,
) -> Answer {
    let peer = authorize(&daemon, &caller, "a job submission")?;
    let body = read_manifest_body(body).await?;
    if daemon.is_draining() {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon is stopping and takes no new jobs",
        ));
    }
    let base_dir = query.base_dir.unwrap_or_else(|| PathBuf::from("/"));
    if !base_dir.is_absolute() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "base_dir must be an absolute path",
        ));
    }
    let daemon_for_check = daemon.clone();
    let body_for_check = body.clone();
    let base_for_check = base_dir.clone();
    let peer_for_check = peer.clone();
    // Validation reads secret files and stats paths: blocking work.
    let checked = tokio::task::spawn_blocking(move || {
        check_submission(
            &daemon_for_check,
            &peer_for_check,
            &base_for_check,
            &body_for_check,
        )
    })
    .await;
    checked.map_err(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "validation failed"))??;
    let id = daemon.enqueue(peer, base_dir, &body).map_err(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot store the job: {e}"),
        )
    })?;
    Ok((StatusCode::CREATED, axum::Json(json!({"id": id}))).into_response())
}

/// The request body, at most [`MAX_MANIFEST_BYTES`]. A longer one is read to its end (up to
/// [`MAX_DRAINED_BYTES`], then the connection is given up) and answered 413.
async fn read_manifest_body(body: Body) -> Result<Bytes, ApiError> {
    use futures::StreamExt;
    let mut body = body.into_data_stream();
    let mut kept = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| error(StatusCode::BAD_REQUEST, format!("bad body: {e}")))?;
        seen += chunk.len();
        if seen <= MAX_MANIFEST_BYTES {
            kept.extend_from_slice(&chunk);
        } else if seen > MAX_DRAINED_BYTES {
            break;
        }
    }
    if seen > MAX_MANIFEST_BYTES {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the manifest is larger than {MAX_MANIFEST_BYTES} bytes"),
        ));
    }
    Ok(Bytes::from(kept))
}

/// The same validation as `dataref validate` (422 with every problem), then what a non-root
/// peer may not do (403, audited).
fn check_submission(
    daemon: &Daemon,
    peer: &Peer,
    base_dir: &std::path::Path,
    body: &[u8],
) -> Result<(), ApiError> {
    let registry = crate::registry::Registry::load(&daemon.config.config_dir)
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let manifest_path = base_dir.join("manifest.json");
    let plan = crate::manifest::parse_bytes(body, &manifest_path, base_dir, &registry).map_err(
        |issues| {
            ApiError(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"error": "invalid manifest", "issues": issues_json(&issues)}),
            )
        },
    )?;
    if !peer.is_root() {
        let issues = super::access::check_non_root(&plan, peer.uid, &daemon.config.config_dir);
        if !issues.is_empty() {
            audit(
                daemon,
                &format!(
                    "refused a job of uid {}: {}",
                    peer.uid,
                    issues
                        .iter()
                        .map(|i| i.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            );
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                json!({"error": "not allowed for this user", "issues": issues_json(&issues)}),
            ));
        }
    }
    Ok(())
}

async fn list(
    State(daemon): State<Arc<Daemon>>,
    ConnectInfo(caller): ConnectInfo<Caller>,
) -> Answer {
    let peer = authorize(&daemon, &caller, "a job listing")?;
    let jobs: Vec<JobRecord> = daemon
        .ids()
        .iter()
        .filter_map(|id| visible(&daemon, &peer, id))
        .collect();
    Ok(axum::Json(json!({"jobs": jobs})).into_response())
}

async fn show(
    State(daemon): State<Arc<Daemon>>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    Path(id): Path<String>,
) -> Answer {
    let peer = authorize(&daemon, &caller, "a job status")?;
    let record = visible(&daemon, &peer, &id)
        .ok_or_else(|| error(StatusCode::NOT_FOUND, format!("no job {id}")))?;
    let mut value = serde_json::to_value(&record).expect("records encode");
    let result = std::fs::read(daemon.job_dir(&id).join("result.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
    value["result"] = result.unwrap_or(Value::Null);
    // The running job's figures of the last second (bytes, requests, data-wait so far).
    let live = std::fs::read(daemon.job_dir(&id).join(crate::job::figures::LIVE_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
    value["live"] = live.unwrap_or(Value::Null);
    // Continuous outputs: each durable file and checkpoint so far.
    let durable = std::fs::read(daemon.job_dir(&id).join(crate::job::figures::DURABLE_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
    value["durable"] = durable.unwrap_or(Value::Null);
    Ok(axum::Json(value).into_response())
}

async fn cancel(
    State(daemon): State<Arc<Daemon>>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    Path(id): Path<String>,
) -> Answer {
    let peer = authorize(&daemon, &caller, "a job cancel")?;
    if visible(&daemon, &peer, &id).is_none() {
        return Err(error(StatusCode::NOT_FOUND, format!("no job {id}")));
    }
    match daemon.cancel(&id) {
        Ok(state) => Ok(axum::Json(json!({"id": id, "state": state})).into_response()),
        Err(CancelError::Unknown) => Err(error(StatusCode::NOT_FOUND, format!("no job {id}"))),
        Err(e @ CancelError::AlreadyFinished(_)) => Err(error(StatusCode::CONFLICT, e.to_string())),
    }
}

#[derive(Debug, serde::Deserialize)]
struct LogsQuery {
    follow: Option<String>,
}

async fn logs(
    State(daemon): State<Arc<Daemon>>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    Path(id): Path<String>,
    Query(query): Query<LogsQuery>,
) -> Answer {
    let peer = authorize(&daemon, &caller, "a job log")?;
    if visible(&daemon, &peer, &id).is_none() {
        return Err(error(StatusCode::NOT_FOUND, format!("no job {id}")));
    }
    let follow = matches!(query.follow.as_deref(), Some("1" | "true" | "yes"));
    let path = daemon.job_dir(&id).join("job.log");
    let stream = log_stream(daemon, id, path, follow);
    Ok(Response::builder()
        .header("content-type", "text/plain; charset=utf-8")
        .body(Body::from_stream(stream))
        .expect("a valid response"))
}

/// The log's bytes; with `follow`, then its growth until the job has ended (like `tail -f`).
fn log_stream(
    daemon: Arc<Daemon>,
    id: String,
    path: PathBuf,
    follow: bool,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> {
    struct Tail {
        file: Option<tokio::fs::File>,
        done: bool,
    }
    let start = Tail {
        file: None,
        done: false,
    };
    futures::stream::unfold(start, move |mut tail| {
        let daemon = daemon.clone();
        let id = id.clone();
        let path = path.clone();
        async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                if tail.done {
                    return None;
                }
                // Checked before reading, so that the last bytes written before the job ended
                // are still sent.
                let ended = daemon.view(&id).is_none_or(|r| r.state.is_final());
                if tail.file.is_none() {
                    tail.file = tokio::fs::File::open(&path).await.ok();
                }
                if let Some(file) = tail.file.as_mut() {
                    match file.read(&mut buf).await {
                        Ok(0) => {}
                        Ok(n) => {
                            buf.truncate(n);
                            return Some((Ok(Bytes::from(buf)), tail));
                        }
                        Err(e) => {
                            tail.done = true;
                            return Some((Err(e), tail));
                        }
                    }
                }
                if !follow || ended {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    })
}
