//! The daemon with other users and under load: a user's symlinked output is not followed by
//! the root agent, unprivileged peers run as themselves, bursts of jobs and requests, and
//! malformed or oversize requests. Lifecycle and sd_notify are in daemon.rs.

mod common;

use common::cli::sh;
use common::fs::read;
use common::serial;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::cli;
use common::daemon::Area;

const NOBODY: u32 = 65534;

/// A job's user cannot make the root agent upload what they may not read: an output path they
/// turned into a symlink (`outputs -> a root-only folder`) is not followed; the reference fails
/// and says why.
#[test]
fn a_users_symlinked_output_is_not_followed_by_the_root_agent() {
    let _serial = serial::lock();
    let area = Area::new();
    let work = area.path("work");
    std::os::unix::fs::chown(&work, Some(NOBODY), Some(NOBODY)).unwrap();
    cli::write_file(&area.path("private/shadow"), "root-only", 0o600);
    std::fs::set_permissions(area.path("private"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let _daemon = area.daemon(&["--allow-group", &NOBODY.to_string()], &[]);
    let manifest = area.manifest(
        "job.json",
        json!({
            "data_references": {
                "out": {"datastore": "store", "path_on_datastore": "stolen", "mode": "upload",
                        "path_on_compute": "outputs"}
            },
            "command": sh(&format!("ln -s {} outputs", area.path("private").display())),
        }),
    );
    let out = area.client_as(
        NOBODY,
        NOBODY,
        &["submit", "--wait", manifest.to_str().unwrap()],
    );
    out.expect_code(75);
    assert!(
        !area.path("store/stolen").exists(),
        "the root-only folder was uploaded"
    );
    let id = area.job_dirs().pop().expect("a job directory");
    let result: Value =
        serde_json::from_str(&read(&area.path("state/jobs").join(id).join("result.json"))).unwrap();
    assert_eq!(
        result["references"]["out"]["status"], "failed",
        "{result:#}"
    );
    assert!(
        result["references"]["out"]["errors"][0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("is a symbolic link owned by the job's user; not followed"),
        "{result:#}"
    );
}

/// A job submitted by an unprivileged user runs as that user; it may not use a secret file it
/// does not own, and peers outside the allowed group are refused and audited.
#[test]
fn unprivileged_peers_run_as_themselves_and_cannot_borrow_roots_secrets() {
    let _serial = serial::lock();
    let area = Area::new();
    cli::write_file(&area.path("store/in/a.txt"), "for-nobody", 0o600);
    let work = area.path("work");
    std::os::unix::fs::chown(&work, Some(NOBODY), Some(NOBODY)).unwrap();
    // The store is the registry's (the administrator's) and writable by root only: the job
    // uses it with the service's rights, as Azure ML workspace datastores are used.
    cli::register_local(&area.path("config"), "store", &area.path("store"));
    let _daemon = area.daemon(&["--allow-group", &NOBODY.to_string()], &[]);
    let socket_mode = std::fs::metadata(area.socket()).unwrap();
    assert_eq!(socket_mode.mode() & 0o777, 0o660);
    assert_eq!(socket_mode.gid(), NOBODY);

    let manifest = area.registry_manifest(
        "job.json",
        json!({
            "data_references": {
                "data": {"datastore": "store", "path_on_datastore": "in", "mode": "mount"},
                "dl": {"datastore": "store", "path_on_datastore": "in", "mode": "download",
                       "path_on_compute": "dl"},
                "out": {"datastore": "store", "path_on_datastore": "who", "mode": "upload",
                        "path_on_compute": "made/by/dataref/outputs"}
            },
            // dataref creates made/by/dataref as root: the script can only write there if
            // dataref gave those folders to it. The source file is 0600 root: the script reads
            // it through the mount (its own, 0400, allow_other) and owns its downloaded copy.
            "command": sh("mkdir made/by/dataref/outputs && cd made/by/dataref/outputs && \
                           id -u > uid && echo \"$HOME $USER\" > env && \
                           cat $AZUREML_DATAREFERENCE_data/a.txt > mounted && \
                           stat -c %u $AZUREML_DATAREFERENCE_dl/a.txt > downloaded_owner && \
                           echo changed >> $AZUREML_DATAREFERENCE_dl/a.txt"),
        }),
    );
    let out = area.client_as(
        NOBODY,
        NOBODY,
        &["submit", "--wait", manifest.to_str().unwrap()],
    );
    out.expect_code(0);
    assert_eq!(read(&area.path("store/who/uid")).trim(), NOBODY.to_string());
    assert_eq!(read(&area.path("store/who/env")), "/nonexistent nobody\n");
    assert_eq!(read(&area.path("store/who/mounted")), "for-nobody");
    assert_eq!(
        read(&area.path("store/who/downloaded_owner")).trim(),
        NOBODY.to_string()
    );
    for created in ["made", "made/by", "made/by/dataref"] {
        assert_eq!(
            std::fs::metadata(area.path("work").join(created))
                .unwrap()
                .uid(),
            NOBODY,
            "{created}: the folders dataref created belong to the script's user"
        );
    }

    // A secret file owned by root: refused (403 → 77), audited, nothing queued.
    cli::write_file(
        &area.path("config/root-only.key"),
        "cm9vdC1vbmx5LWtleQ==",
        0o600,
    );
    let jobs_before = area.job_dirs();
    let secret_manifest = area.manifest(
        "secret.json",
        json!({
            "datastores": {"blob": {"kind": "azure_blob", "account_name": "acct",
                                     "container_name": "data",
                                     "account_key": {"file": area.path("config/root-only.key")}}},
            "data_references": {"d": {"datastore": "blob", "path_on_datastore": "x",
                                      "mode": "download"}},
            "command": ["true"],
        }),
    );
    let out = area.client_as(
        NOBODY,
        NOBODY,
        &["submit", secret_manifest.to_str().unwrap()],
    );
    out.expect_code(77);
    assert!(
        out.stderr.contains("not owned by uid 65534"),
        "{}",
        out.stderr
    );
    assert!(
        !out.all_output().contains("cm9vdC1vbmx5"),
        "the secret never shows"
    );
    assert_eq!(area.job_dirs(), jobs_before);
    let audit = read(&area.path("state/audit.log"));
    assert!(audit.contains("refused a job of uid 65534"), "{audit}");

    // An inline datastore on the node's managed identity: refused (the registry's to grant).
    let identity_manifest = area.manifest(
        "identity.json",
        json!({
            "datastores": {"mi": {"kind": "azure_blob", "account_name": "acct",
                                   "container_name": "data", "credential": "managed_identity"}},
            "data_references": {"d": {"datastore": "mi", "path_on_datastore": "x",
                                      "mode": "download"}},
            "command": ["true"],
        }),
    );
    let out = area.client_as(
        NOBODY,
        NOBODY,
        &["submit", identity_manifest.to_str().unwrap()],
    );
    out.expect_code(77);
    assert!(out.stderr.contains("managed identity"), "{}", out.stderr);
    assert_eq!(area.job_dirs(), jobs_before);

    // The cache's place and the free-space floor are the service's.
    let cache_manifest = area.manifest(
        "cache.json",
        json!({
            "data_references": {"d": {"datastore": "store", "path_on_datastore": "in"}},
            "mount": {"cache_dir": area.path("state"), "reserved_free_disk_bytes": 0},
            "command": ["true"],
        }),
    );
    let out = area.client_as(
        NOBODY,
        NOBODY,
        &["submit", cache_manifest.to_str().unwrap()],
    );
    out.expect_code(77);
    assert!(out.stderr.contains("mount.cache_dir"), "{}", out.stderr);
    assert!(
        out.stderr.contains("mount.reserved_free_disk_bytes"),
        "{}",
        out.stderr
    );
    assert_eq!(area.job_dirs(), jobs_before);

    // A peer outside root and the allowed group (socket opened up to reach the check): 403.
    std::fs::set_permissions(area.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = area.client_as(NOBODY, 4242, &["status"]);
    out.expect_code(77);
    assert!(out.stderr.contains("permission denied"), "{}", out.stderr);
    let audit = read(&area.path("state/audit.log"));
    assert!(
        audit.contains("refused a job listing: uid 65534 gid 4242"),
        "{audit}"
    );
}

/// 200 jobs in a burst: all complete, never more than --max-jobs at once, daemon RSS flat.
#[test]
fn a_burst_of_200_jobs_completes_within_max_jobs() {
    let area = Area::new();
    let daemon = area.daemon(&["--max-jobs", "3"], &[]);
    let manifest = area.manifest("tiny.json", json!({"command": ["true"]}));
    let manifest_bytes = std::fs::read(&manifest).unwrap();
    let base = area.path("work");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = dataref::daemon::client::Client::new(&area.socket());
    let started = Instant::now();
    let rss_start = daemon.rss_kib();
    let path = format!(
        "/v1/jobs?base_dir={}",
        dataref::daemon::client::query_value(base.to_str().unwrap())
    );
    let ids: Vec<String> = runtime.block_on(async {
        let mut ids = Vec::new();
        for _ in 0..200 {
            let (status, body) = client
                .json(hyper::Method::POST, &path, Some(manifest_bytes.clone()))
                .await
                .unwrap();
            assert_eq!(status, 201, "{body}");
            ids.push(body["id"].as_str().unwrap().to_owned());
        }
        ids
    });
    let submitted = started.elapsed();
    let mut rss_peak = rss_start;
    let records = runtime.block_on(async {
        loop {
            rss_peak = rss_peak.max(daemon.rss_kib());
            let (_, body) = client
                .json(hyper::Method::GET, "/v1/jobs", None)
                .await
                .unwrap();
            let jobs = body["jobs"].as_array().unwrap().clone();
            if jobs.iter().all(|j| j["state"] == "succeeded") {
                return jobs;
            }
            let bad: Vec<&Value> = jobs
                .iter()
                .filter(|j| {
                    ["failed", "cancelled", "interrupted"].contains(&j["state"].as_str().unwrap())
                })
                .collect();
            assert!(bad.is_empty(), "{bad:#?}");
            assert!(started.elapsed() < Duration::from_secs(600), "too slow");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let total = started.elapsed();
    assert_eq!(records.len(), 200);
    assert_eq!(ids.len(), 200);
    // Never more than 3 at once: no instant is inside more than 3 [started, finished] spans.
    let mut events: Vec<(f64, i32)> = Vec::new();
    for r in &records {
        events.push((r["started_at"].as_f64().unwrap(), 1));
        events.push((r["finished_at"].as_f64().unwrap(), -1));
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut running = 0;
    let mut peak = 0;
    for (_, delta) in events {
        running += delta;
        peak = peak.max(running);
    }
    assert!(peak <= 3, "{peak} jobs ran at once with --max-jobs 3");
    let rss_end = daemon.rss_kib();
    eprintln!(
        "200 jobs: submitted in {:.2} s, all done in {:.1} s; peak concurrency {peak}; \
         daemon RSS {rss_start} KiB at start, peak {rss_peak} KiB, {rss_end} KiB at end",
        submitted.as_secs_f64(),
        total.as_secs_f64()
    );
    assert!(
        rss_peak < rss_start + 32 * 1024,
        "RSS grew from {rss_start} to {rss_peak} KiB"
    );
}

/// Oversize, malformed and unknown requests get a 4xx and change nothing.
#[test]
fn malformed_and_oversize_requests_are_rejected_without_effect() {
    let area = Area::new();
    let _daemon = area.daemon(&[], &[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = dataref::daemon::client::Client::new(&area.socket());
    let post = |path: &str, body: Vec<u8>| {
        runtime
            .block_on(client.json(hyper::Method::POST, path, Some(body)))
            .unwrap()
    };
    let (status, body) = post("/v1/jobs", vec![b' '; 2 * 1024 * 1024]);
    assert_eq!(status, 413, "{body}");
    let (status, body) = post("/v1/jobs", b"{not json".to_vec());
    assert_eq!(status, 422, "{body}");
    assert!(
        body["issues"][0]["message"]
            .as_str()
            .unwrap()
            .contains("invalid JSON")
    );
    let (status, _) = post("/v1/jobs?base_dir=relative/dir", b"{}".to_vec());
    assert_eq!(status, 400);
    let (status, _) = post("/v1/nothing", b"{}".to_vec());
    assert_eq!(status, 404);
    let (status, _) = post("/v1/jobs/../../etc/cancel", Vec::new());
    assert_eq!(status, 404);
    let (status, _) = runtime
        .block_on(client.json(hyper::Method::DELETE, "/v1/jobs", None))
        .unwrap();
    assert_eq!(status, 405);
    assert!(area.job_dirs().is_empty(), "{:?}", area.job_dirs());
}

/// 1,000 status requests a second for 10 s while jobs run: every one answered, RSS flat.
#[test]
fn a_thousand_status_requests_a_second_while_jobs_run() {
    let area = Area::new();
    let daemon = area.daemon(&["--max-jobs", "2"], &[]);
    let manifest = area.manifest("sleepy.json", json!({"command": sh("sleep 120")}));
    let ids = [area.submit(&manifest), area.submit(&manifest)];
    for id in &ids {
        area.wait_state(id, &["running"], Duration::from_secs(60));
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let socket = area.socket();
    let rss_before = daemon.rss_kib();
    let started = Instant::now();
    let (answered, failures) = runtime.block_on(async {
        let mut tasks = Vec::new();
        // 20 clients × 50 requests a second.
        for n in 0..20 {
            let socket = socket.clone();
            let id = ids[n % 2].clone();
            tasks.push(tokio::spawn(async move {
                let client = dataref::daemon::client::Client::new(&socket);
                let mut ticks = tokio::time::interval(Duration::from_millis(20));
                let (mut ok, mut failed) = (0u32, Vec::new());
                for _ in 0..500 {
                    ticks.tick().await;
                    match client
                        .json(hyper::Method::GET, &format!("/v1/jobs/{id}"), None)
                        .await
                    {
                        Ok((status, body)) if status == 200 && body["state"] == "running" => {
                            ok += 1
                        }
                        other => failed.push(format!("{other:?}")),
                    }
                }
                (ok, failed)
            }));
        }
        let mut answered = 0;
        let mut failures = Vec::new();
        for task in tasks {
            let (ok, failed) = task.await.unwrap();
            answered += ok;
            failures.extend(failed);
        }
        (answered, failures)
    });
    let elapsed = started.elapsed().as_secs_f64();
    let rss_after = daemon.rss_kib();
    eprintln!(
        "{answered} status requests in {elapsed:.1} s ({:.0}/s); daemon RSS {rss_before} → \
         {rss_after} KiB",
        answered as f64 / elapsed
    );
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..1]
    );
    assert_eq!(answered, 10_000);
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
}
