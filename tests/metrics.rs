//! The daemon's metrics and health endpoints, against real parts: a real Prometheus (Debian's
//! `prometheus`, started here on loopback with a scrape config written here) scrapes
//! `--metrics-listen` while a job reads through a FUSE mount, and its query API returns the
//! job's series; `/readyz` follows a registry datastore's storage (Azurite, killed and started
//! again) while `/healthz` stays healthy.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::azurite::{self, Restartable};
use common::cli::sh;
use common::daemon::Area;
use common::http::{free_port, get_tcp, get_unix};
use common::wait::poll;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};

/// Prometheus, killed when dropped.
struct Prometheus {
    child: Child,
    address: String,
}

impl Prometheus {
    /// Scrapes `target` (`host:port`) every second; returns once it is ready.
    fn start(dir: &Path, target: &str) -> Self {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: dataref\n    metrics_path: /metrics\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let address = format!("127.0.0.1:{}", free_port());
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus is installed (scripts/test installs Debian's package)");
        let prometheus = Self { child, address };
        poll("Prometheus to be ready", Duration::from_secs(60), || {
            get_tcp(&prometheus.address, "/-/ready").is_ok_and(|a| a.status == 200)
        });
        prometheus
    }

    /// The instant vector `query` evaluates to.
    fn query(&self, query: &str) -> Vec<Value> {
        let path = format!(
            "/api/v1/query?query={}",
            utf8_percent_encode(query, NON_ALPHANUMERIC)
        );
        let answer = get_tcp(&self.address, &path).unwrap().json();
        assert_eq!(answer["status"], "success", "{answer}");
        answer["data"]["result"].as_array().unwrap().clone()
    }

    /// The one value of `query` once Prometheus has it (within `limit`).
    fn value(&self, query: &str, limit: Duration) -> f64 {
        let mut value = None;
        poll(&format!("Prometheus to answer {query}"), limit, || {
            let result = self.query(query);
            value = result
                .first()
                .and_then(|series| series["value"][1].as_str())
                .and_then(|v| v.parse::<f64>().ok());
            value.is_some()
        });
        value.unwrap()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_the_figures_of_a_job_reading_through_a_mount() {
    let area = Area::new();
    std::fs::create_dir_all(area.path("store/data")).unwrap();
    std::fs::write(area.path("store/data/big.bin"), vec![7u8; 4 * 1024 * 1024]).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let _daemon = area.daemon(&["--metrics-listen", &listen], &[]);
    let prometheus = Prometheus::start(area.dir.path(), &listen);

    let manifest = area.manifest(
        "read.json",
        json!({
            "data_references": {"data": {"datastore": "store", "path_on_datastore": "data"}},
            "command": sh("cat \"$AZUREML_DATAREFERENCE_data/big.bin\" > /dev/null && sleep 3"),
        }),
    );
    let id = area.submit(&manifest);
    let status = area.wait_state(&id, &["succeeded", "failed"], Duration::from_secs(120));
    assert_eq!(status["state"], "succeeded", "{status:#}");

    let series = format!("job_id=\"{id}\",reference=\"data\"");
    let limit = Duration::from_secs(60);
    let bytes = prometheus.value(&format!("dataref_job_bytes_total{{{series}}}"), limit);
    assert!(bytes >= 4.0 * 1024.0 * 1024.0, "bytes read: {bytes}");
    let reads = prometheus.value(
        &format!("dataref_fuse_request_duration_seconds_count{{{series},operation=\"read\"}}"),
        limit,
    );
    assert!(reads > 0.0, "FUSE reads: {reads}");
    let buckets = prometheus.query(&format!(
        "dataref_fuse_request_duration_seconds_bucket{{{series},operation=\"read\"}}"
    ));
    assert!(buckets.len() > 10, "the histogram's buckets: {buckets:?}");
    let gets = prometheus.value(
        &format!("sum(dataref_storage_requests_total{{{series},operation=\"get\"}})"),
        limit,
    );
    assert!(gets > 0.0, "storage reads: {gets}");
    let jobs = prometheus.value("dataref_jobs{state=\"succeeded\"}", limit);
    assert_eq!(jobs, 1.0);

    // The same exposition on the socket; its labels name jobs and references, never objects
    // or paths.
    let metrics = get_unix(&area.socket(), "/metrics").unwrap();
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .body
            .contains("dataref_job_data_wait_seconds_total{"),
        "{}",
        metrics.body
    );
    assert!(metrics.body.ends_with("# EOF\n"), "{}", metrics.body);
    for private in ["big.bin", "store/data", area.dir.path().to_str().unwrap()] {
        assert!(
            !metrics.body.contains(private),
            "{private} in {}",
            metrics.body
        );
    }
    // And in the job's record, per reference.
    let record = area.status(&id);
    let io = &record["result"]["references"]["data"]["io"];
    assert!(
        io["bytes"].as_u64().unwrap() >= 4 * 1024 * 1024,
        "{record:#}"
    );
    assert!(
        record["result"]["data_wait"]["seconds"].is_number(),
        "{record:#}"
    );
}

#[test]
fn readyz_follows_a_registry_datastore_and_healthz_stays_healthy() {
    let area = Area::new();
    let azurite = Restartable::start(&area.path("azurite"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = runtime.block_on(azurite::fresh_store(
        &azurite.endpoint(),
        area.dir.path(),
        "ready",
    ));
    let key = azurite::key_file(area.dir.path());
    let container = azurite::container_of(&store);
    azurite::register(
        &area.path("config"),
        "blobs",
        &container,
        &key,
        &azurite.endpoint(),
    );
    // The container must outlive the kill below (Azurite persists every 5 s).
    std::thread::sleep(azurite::PERSIST_INTERVAL);
    let listen = format!("127.0.0.1:{}", free_port());
    let _daemon = area.daemon(&["--metrics-listen", &listen], &[]);

    let limit = Duration::from_secs(30);
    let ready = |expected: u16| {
        let mut last = String::new();
        poll(&format!("readyz to answer {expected}"), limit, || {
            let tcp = get_tcp(&listen, "/readyz").unwrap();
            let socket = get_unix(&area.socket(), "/readyz").unwrap();
            last = format!("{} {}", tcp.status, tcp.body);
            tcp.status == expected && socket.status == expected
        });
        get_tcp(&listen, "/readyz").unwrap().json()
    };
    let healthy = || {
        for answer in [
            get_tcp(&listen, "/healthz").unwrap(),
            get_unix(&area.socket(), "/healthz").unwrap(),
        ] {
            assert_eq!(answer.status, 200, "{}", answer.body);
            assert_eq!(answer.json()["status"], "ok");
        }
    };

    let body = ready(200);
    assert_eq!(body["datastores"]["blobs"], "reachable", "{body:#}");
    healthy();

    azurite.kill();
    let body = ready(503);
    assert_eq!(body["status"], "unready", "{body:#}");
    let problems = body["problems"].to_string();
    let first = body["problems"][0].as_str().unwrap_or_default();
    assert!(
        first.contains("datastore \"blobs\""),
        "names the datastore: {body:#}"
    );
    assert!(!problems.contains(azurite::KEY), "no secret: {body:#}");
    healthy();

    azurite.restart();
    let body = ready(200);
    assert_eq!(body["problems"], json!([]), "{body:#}");
    healthy();
}

#[test]
fn status_shows_a_running_jobs_live_figures_and_the_record_keeps_its_data_wait() {
    let area = Area::new();
    std::fs::create_dir_all(area.path("store/data")).unwrap();
    std::fs::write(area.path("store/data/f.bin"), vec![1u8; 3 * 1024 * 1024]).unwrap();
    let _daemon = area.daemon(&[], &[]);
    let manifest = area.manifest(
        "live.json",
        json!({
            "data_references": {"data": {"datastore": "store", "path_on_datastore": "data"}},
            "command": sh("cat \"$AZUREML_DATAREFERENCE_data/f.bin\" > /dev/null && sleep 60"),
        }),
    );
    let id = area.submit(&manifest);
    let mut shown = String::new();
    poll(
        "status to show the live figures",
        Duration::from_secs(60),
        || {
            shown = area.client(&["status", &id]).expect_code(0).stdout.clone();
            shown.contains(" running ") && shown.contains("3.0 MiB")
        },
    );
    let line = shown
        .lines()
        .find(|l| l.starts_with("data "))
        .unwrap_or_else(|| panic!("a line for the reference: {shown}"));
    assert!(line.contains("mount"), "{shown}");
    assert!(shown.contains("memory budget: "), "{shown}");

    area.client(&["cancel", &id]).expect_code(0);
    area.wait_state(&id, &["cancelled"], Duration::from_secs(60));
    let record: Value = serde_json::from_slice(
        &std::fs::read(area.path("state/jobs").join(&id).join("record.json")).unwrap(),
    )
    .unwrap();
    let wait = &record["data_wait"];
    assert!(wait["seconds"].is_number(), "{record:#}");
    assert!(wait["references"]["data"].is_number(), "{record:#}");
    let shown = area.client(&["status", &id]).expect_code(0).stdout.clone();
    assert!(shown.contains("waited on data "), "{shown}");
}

#[test]
fn status_shows_the_last_durable_checkpoint_of_a_continuous_output() {
    let area = Area::new();
    std::fs::create_dir_all(area.path("store")).unwrap();
    let _daemon = area.daemon(&[], &[]);
    let manifest = area.manifest(
        "sync.json",
        json!({
            "data_references": {"ckpt": {"datastore": "store", "path_on_datastore": "runs/9",
                                         "mode": "upload", "path_on_compute": "ckpt",
                                         "sync": "continuous"}},
            "command": sh("mkdir -p ckpt/step-1 && head -c 4096 /dev/zero > ckpt/step-1/w.bin && \
                           echo '{}' > ckpt/step-1/.metadata.tmp && \
                           mv ckpt/step-1/.metadata.tmp ckpt/step-1/.metadata && sleep 60"),
        }),
    );
    let id = area.submit(&manifest);
    let mut shown = String::new();
    poll(
        "status to show the durable checkpoint",
        Duration::from_secs(60),
        || {
            shown = area.client(&["status", &id]).expect_code(0).stdout.clone();
            shown.contains("last durable checkpoint: step-1 (2 files")
        },
    );
    let line = shown.lines().find(|l| l.starts_with("ckpt: ")).unwrap();
    assert!(
        line.contains("2 files (") && line.contains("durable"),
        "{shown}"
    );
    // The job record lists each durable file and the checkpoint while the job runs.
    let mut body = Value::Null;
    poll(
        "the record to list the durable files",
        Duration::from_secs(30),
        || {
            body = area
                .client(&["status", &id, "--json"])
                .expect_code(0)
                .json();
            body["durable"]["ckpt"]["files"].as_array().map(Vec::len) == Some(2)
        },
    );
    let files = body["durable"]["ckpt"]["files"].as_array().unwrap();
    assert!(
        files
            .iter()
            .any(|f| f["path"] == "runs/9/step-1/w.bin" && f["size"] == 4096),
        "{body:#}"
    );
    assert_eq!(
        body["durable"]["ckpt"]["checkpoints"][0]["checkpoint"],
        "step-1"
    );
    assert_eq!(body["state"], "running", "{body:#}");
    area.client(&["cancel", &id]).expect_code(0);
    area.wait_state(&id, &["cancelled"], Duration::from_secs(60));
}
