//! `dataref daemon` and its clients `submit`, `status`, `cancel`, `logs`.

use std::path::{Path, PathBuf};

use hyper::{Method, StatusCode};
use serde_json::Value;

use super::exit::{self, CliError};
use crate::daemon::client::{Client, ClientError, query_value};
use crate::daemon::{self, Config, DEFAULT_SOCKET, DEFAULT_STATE_DIR};

#[derive(Debug, clap::Args)]
pub struct SocketArg {
    /// The daemon's socket.
    #[arg(long, env = "DATAREF_SOCKET", default_value = DEFAULT_SOCKET, value_name = "PATH")]
    pub socket: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    /// Job records, manifests, logs and results: <DIR>/jobs/<id>/.
    #[arg(long, env = "DATAREF_STATE_DIR", default_value = DEFAULT_STATE_DIR, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Jobs that run at once; the others wait in the queue.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_jobs: u32,
    /// A group (name or gid) whose members may submit jobs; the socket is given to it.
    #[arg(long, value_name = "GROUP")]
    pub allow_group: Option<String>,
    /// Also serve /metrics (Prometheus), /healthz and /readyz over TCP at ADDR:PORT (off by
    /// default; they are always on the socket).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Where jobs' mounts keep their disk caches (local NVMe, say) when a manifest does not
    /// say; jobs of non-root users may not say. Default: each job's own directory.
    #[arg(long, value_name = "DIR")]
    pub cache_root: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    /// Follow the job's log and exit with its exit code.
    #[arg(long)]
    pub wait: bool,
    /// The job: dataref's manifest (JSON or YAML), an Azure ML v1 run configuration (JSON,
    /// submission body or .runconfig YAML) or an Azure ML v2 command-job YAML, told apart by
    /// content. Its relative paths resolve
    /// against its own directory.
    #[arg(value_name = "JOB")]
    pub manifest: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    /// Print JSON (the API's answer).
    #[arg(long)]
    pub json: bool,
    /// One job; without it, every job you may see.
    pub id: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    pub id: String,
}

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    /// Keep printing until the job ends.
    #[arg(long)]
    pub follow: bool,
    pub id: String,
}

pub fn daemon(config_dir: &Path, args: DaemonArgs) -> Result<i32, CliError> {
    let allow_group = match &args.allow_group {
        None => None,
        Some(group) => Some(resolve_group(group)?),
    };
    let executable = std::env::current_exe()
        .map_err(|e| CliError::local("cannot find dataref's own binary", e))?;
    let config = Config {
        socket: absolute(&args.socket.socket, "--socket")?,
        state_dir: absolute(&args.state_dir, "--state-dir")?,
        max_jobs: args.max_jobs as usize,
        allow_group,
        config_dir: absolute(config_dir, "--config-dir")?,
        executable,
        metrics_listen: args.metrics_listen,
        cache_root: match &args.cache_root {
            Some(dir) => Some(absolute(dir, "--cache-root")?),
            None => None,
        },
    };
    let runtime = super::runtime()?;
    runtime.block_on(daemon::run(config))?;
    // SIGTERM after an orderly drain is a clean stop (systemd: Result=success).
    Ok(0)
}

fn absolute(path: &Path, flag: &str) -> Result<PathBuf, CliError> {
    std::path::absolute(path).map_err(|e| CliError::bad_argument(flag, e))
}

fn resolve_group(group: &str) -> Result<u32, CliError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        _ => Err(CliError::bad_argument(
            "--allow-group",
            format!("no group named {group:?}"),
        )),
    }
}

/// Turns an API error answer into a typed error with the daemon's message and problems.
fn api_failure(status: StatusCode, body: &Value) -> CliError {
    let mut message = body["error"]
        .as_str()
        .unwrap_or("request failed")
        .to_owned();
    if let Some(issues) = body["issues"].as_array() {
        for issue in issues {
            let path = issue["path"].as_str().unwrap_or("");
            let text = issue["message"].as_str().unwrap_or("");
            if path.is_empty() {
                message.push_str(&format!("\n  {text}"));
            } else {
                message.push_str(&format!("\n  {path}: {text}"));
            }
        }
    }
    CliError::Answered {
        status: status.as_u16(),
        message,
    }
}

pub fn submit(args: SubmitArgs) -> Result<i32, CliError> {
    let manifest =
        std::fs::read(&args.manifest).map_err(|source| crate::manifest::LoadError::Missing {
            path: args.manifest.clone(),
            source,
        })?;
    let absolute = absolute(&args.manifest, "JOB.json")?;
    let base = absolute.parent().unwrap_or(Path::new("/"));
    let base = base.to_string_lossy();
    let runtime = super::runtime()?;
    runtime.block_on(async {
        let client = Client::new(&args.socket.socket);
        let path = format!("/v1/jobs?base_dir={}", query_value(&base));
        let (status, body) = client.json(Method::POST, &path, Some(manifest)).await?;
        if status != StatusCode::CREATED {
            return Err(api_failure(status, &body));
        }
        let id = body["id"].as_str().unwrap_or_default().to_owned();
        if !args.wait {
            println!("{id}");
            return Ok(0);
        }
        eprintln!("dataref: submitted job {id}");
        print_logs(&client, &id, true).await?;
        let (status, record) = client
            .json(Method::GET, &format!("/v1/jobs/{id}"), None)
            .await?;
        if status != StatusCode::OK {
            return Err(api_failure(status, &record));
        }
        let state = record["state"].as_str().unwrap_or("unknown");
        eprintln!("dataref: job {id} ended: {state}");
        // The job's own code when it ran; 75 (try again) when it never finished running.
        Ok(record["exit_code"]
            .as_i64()
            .map(|c| c as i32)
            .unwrap_or_else(exit::for_unfinished_daemon_job))
    })
}

async fn print_logs(client: &Client, id: &str, follow: bool) -> Result<(), CliError> {
    use http_body_util::BodyExt;
    use std::io::Write;
    let path = format!(
        "/v1/jobs/{id}/logs{}",
        if follow { "?follow=1" } else { "" }
    );
    let response = client.request(Method::GET, &path, None).await?;
    if response.status() != StatusCode::OK {
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        return Err(api_failure(status, &body));
    }
    let mut body = response.into_body();
    let mut stdout = std::io::stdout();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ClientError::Protocol(e.to_string()))?;
        if let Some(data) = frame.data_ref() {
            let _ = stdout.write_all(data);
            let _ = stdout.flush();
        }
    }
    Ok(())
}

pub fn status(args: StatusArgs) -> Result<i32, CliError> {
    let runtime = super::runtime()?;
    runtime.block_on(async {
        let client = Client::new(&args.socket.socket);
        let path = match &args.id {
            Some(id) => format!("/v1/jobs/{id}"),
            None => "/v1/jobs".to_owned(),
        };
        let (status, body) = client.json(Method::GET, &path, None).await?;
        if status != StatusCode::OK {
            return Err(api_failure(status, &body));
        }
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&body).expect("JSON encodes")
            );
            return Ok(0);
        }
        let jobs = match &args.id {
            Some(_) => vec![body.clone()],
            None => body["jobs"].as_array().cloned().unwrap_or_default(),
        };
        println!(
            "{:<28} {:<12} {:>5} {:>6}  MESSAGE",
            "ID", "STATE", "EXIT", "UID"
        );
        for job in jobs {
            println!(
                "{:<28} {:<12} {:>5} {:>6}  {}",
                job["id"].as_str().unwrap_or(""),
                job["state"].as_str().unwrap_or(""),
                job["exit_code"]
                    .as_i64()
                    .map(|c| c.to_string())
                    .unwrap_or("-".into()),
                job["submitted_by"]["uid"]
                    .as_u64()
                    .map(|c| c.to_string())
                    .unwrap_or_default(),
                job["message"].as_str().unwrap_or(""),
            );
        }
        if let Some(job) = args.id.as_ref().and(Some(&body)) {
            print_figures(job);
        }
        Ok(0)
    })
}

/// One job's data-path figures: live while it runs (`live`, rewritten every second by its
/// runner), final once it ended (`result`).
fn print_figures(job: &Value) {
    let result = &job["result"];
    let live = &job["live"];
    let references = result["references"].as_object();
    let Some(references) = references.filter(|r| !r.is_empty()) else {
        return;
    };
    println!();
    println!(
        "{:<20} {:<8} {:>10} {:>7} {:>9} {:>7} {:>6} {:>10}",
        "REFERENCE", "MODE", "BYTES", "FILES", "REQUESTS", "RETRIES", "ERRORS", "WAITED"
    );
    for (name, outcome) in references {
        // The runner's last second is newer than result.json while the job runs.
        let io = match &live["references"][name] {
            Value::Null => &outcome["io"],
            figures => figures,
        };
        let number = |key: &str| io[key].as_u64().unwrap_or(0);
        println!(
            "{:<20} {:<8} {:>10} {:>7} {:>9} {:>7} {:>6} {:>8.1} s",
            name,
            outcome["mode"].as_str().unwrap_or(""),
            human_bytes(number("bytes")),
            number("files"),
            number("requests"),
            number("retries"),
            number("errors"),
            io["wait_seconds"].as_f64().unwrap_or(0.0),
        );
    }
    // Outputs uploaded while the script runs: what is durable, and the last checkpoint.
    for (name, sync) in live["outputs"].as_object().into_iter().flatten() {
        let number = |key: &str| sync[key].as_u64().unwrap_or(0);
        let last = &sync["last_checkpoint"];
        let checkpoint = match last["checkpoint"].as_str() {
            Some(folder) => format!(
                "; last durable checkpoint: {} ({} files, {})",
                if folder.is_empty() { "." } else { folder },
                last["files"].as_u64().unwrap_or(0),
                human_bytes(last["bytes"].as_u64().unwrap_or(0))
            ),
            None => "; no checkpoint durable yet".to_owned(),
        };
        println!(
            "{name}: {} files ({}) durable, {} waiting, {} uploading{checkpoint}",
            number("durable_files"),
            human_bytes(number("durable_bytes")),
            number("pending"),
            number("uploading"),
        );
    }
    if let (Some(held), Some(budget)) = (
        live["budget_in_use_bytes"].as_u64(),
        live["budget_bytes"].as_u64(),
    ) {
        let state = job["state"].as_str().unwrap_or("");
        if matches!(state, "running" | "staging_out") {
            println!(
                "memory budget: {} of {} in use",
                human_bytes(held),
                human_bytes(budget)
            );
        }
    }
    if let Some(wait) = result["data_wait"].as_object() {
        println!(
            "waited on data {:.1} s of {:.1} s ({:.1} %)",
            wait["seconds"].as_f64().unwrap_or(0.0),
            wait["of_seconds"].as_f64().unwrap_or(0.0),
            wait["percent"].as_f64().unwrap_or(0.0),
        );
    }
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

pub fn cancel(args: CancelArgs) -> Result<i32, CliError> {
    let runtime = super::runtime()?;
    runtime.block_on(async {
        let client = Client::new(&args.socket.socket);
        let (status, body) = client
            .json(Method::POST, &format!("/v1/jobs/{}/cancel", args.id), None)
            .await?;
        if status != StatusCode::OK {
            return Err(api_failure(status, &body));
        }
        println!("{} {}", args.id, body["state"].as_str().unwrap_or(""));
        Ok(0)
    })
}

pub fn logs(args: LogsArgs) -> Result<i32, CliError> {
    let runtime = super::runtime()?;
    runtime.block_on(async {
        let client = Client::new(&args.socket.socket);
        print_logs(&client, &args.id, args.follow).await?;
        Ok(0)
    })
}
