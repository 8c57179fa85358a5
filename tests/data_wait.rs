//! Data-wait: a job whose script reads a mount over slow storage reports, per reference, a
//! wait close to the delay injected between dataref and Azurite (by the fault proxy), and one
//! that reads fast storage and then the page cache reports near zero. Every reference's
//! figures (bytes, files, requests, retries, errors, cache hits/misses) land in `result.json`,
//! and the job log ends with the one-line summary.

mod common;

use std::time::Duration;

use common::azurite;
use common::data::{p, pattern};
use common::fault_proxy::{Fault, FaultProxy, Rule, ranged_get};
use common::job::Job;
use dataref::store::{PutOptions, Store};
use serde_json::{Value, json};

/// The delay the proxy holds the mount's one storage read back for.
const DELAY: Duration = Duration::from_secs(2);
/// How close the reported wait must be: at least 95 % of the delay (the reader was blocked
/// for all of it), at most 1 s more (the request's own work is milliseconds; 1 s covers a
/// loaded 2-core machine). Reads answered by the page cache add nothing.
const OVER: f64 = 1.0;

/// A job area whose datastore `blobs` is a fresh container reached through `proxy`, holding
/// `in/f.bin` (64 KiB: one kernel read, one storage read).
fn area(proxy: &FaultProxy, runtime: &tokio::runtime::Runtime) -> (Job, Value) {
    let job = Job::new();
    let store = runtime.block_on(azurite::fresh_store(
        &proxy.endpoint(),
        &job.root,
        "datawait",
    ));
    runtime.block_on(async {
        let data = pattern(64 * 1024, 7);
        store
            .put(&p("in/f.bin"), data.into(), &PutOptions::default())
            .await
            .unwrap();
    });
    let datastores = json!({"blobs": {
        "kind": "azure_blob",
        "account_name": azurite::ACCOUNT,
        "container_name": azurite::container_of(&store),
        "endpoint": proxy.endpoint(),
        "account_key": {"file": azurite::key_file(&job.root)},
    }});
    (job, datastores)
}

/// Reads the mounted file five times: the first read reaches dataref, the others the page
/// cache.
fn reading_job(datastores: &Value, extra: Value) -> Value {
    let mut references = json!({"data": {"datastore": "blobs", "path_on_datastore": "in"}});
    for (name, reference) in extra.as_object().unwrap() {
        references[name] = reference.clone();
    }
    json!({
        "datastores": datastores,
        "data_references": references,
        "command": ["sh", "-c",
            "for i in 1 2 3 4 5; do cat \"$AZUREML_DATAREFERENCE_data/f.bin\" >/dev/null || exit 9; done; \
             mkdir -p out && echo model > out/model.txt"],
    })
}

#[test]
fn a_slow_mount_reports_the_delay_as_data_wait_and_the_page_cache_reports_none() {
    let runtime = tokio::runtime::Runtime::new().unwrap();

    // Slow: the one storage read is held back DELAY.
    let proxy = FaultProxy::start(azurite::shared().port);
    let (job, datastores) = area(&proxy, &runtime);
    proxy.push(ranged_get(Fault::Stall(DELAY)));
    let manifest = job.manifest(reading_job(&datastores, json!({})));
    job.expect_code(job.run(&manifest), 0);
    assert_eq!(proxy.fired().len(), 1, "the delay hit the read");
    let result = job.result();
    let io = &result["references"]["data"]["io"];
    let waited = io["wait_seconds"].as_f64().unwrap();
    let delay = DELAY.as_secs_f64();
    assert!(
        waited >= delay * 0.95 && waited <= delay + OVER,
        "waited {waited} s for a {delay} s delay: {io:#}"
    );
    let read = io["wait_by_kind"]["read"].as_f64().unwrap();
    assert!(read >= delay * 0.95, "the wait was a read's: {io:#}");
    assert!(io["bytes"].as_u64().unwrap() >= 64 * 1024, "{io:#}");
    assert!(io["files"].as_u64().unwrap() >= 1, "{io:#}");
    // At least the listing and the read; none failed or was retried.
    assert!(io["requests"].as_u64().unwrap() >= 2, "{io:#}");
    assert_eq!(io["errors"], 0, "{io:#}");
    assert_eq!(io["retries"], 0, "{io:#}");
    assert!(io["cache_misses"].as_u64().unwrap() >= 1, "{io:#}");
    assert!(io["fuse"]["read"]["count"].as_u64().unwrap() >= 1, "{io:#}");
    assert!(io["storage"]["get"]["ok"].as_u64().unwrap() >= 1, "{io:#}");
    let total = &result["data_wait"];
    assert!(
        total["seconds"].as_f64().unwrap() >= delay * 0.95,
        "{total}"
    );
    assert!(
        total["of_seconds"].as_f64().unwrap() >= total["seconds"].as_f64().unwrap(),
        "{total}"
    );
    let last = job.log().lines().last().unwrap_or_default().to_owned();
    assert!(
        last.contains("waited on data ") && last.contains(" s of ") && last.ends_with("%)"),
        "the log ends with the summary: {last:?}"
    );

    // Fast: no delay; the first read is milliseconds, the four others never reach dataref.
    // A download and an upload beside the mount: their staging and stage-out are their wait.
    let proxy = FaultProxy::start(azurite::shared().port);
    let (job, datastores) = area(&proxy, &runtime);
    let extra = json!({
        "copy": {"datastore": "blobs", "path_on_datastore": "in", "mode": "download",
                 "path_on_compute": "copy"},
        "model": {"datastore": "blobs", "path_on_datastore": "models", "mode": "upload",
                  "path_on_compute": "out"},
    });
    // One busy answer to the job's first GET (the mount's listing): retried, and counted.
    proxy.push(Rule {
        method: Some("GET"),
        ranged_only: false,
        fault: Fault::Status {
            code: 503,
            retry_after_seconds: None,
        },
    });
    let manifest = job.manifest(reading_job(&datastores, extra));
    job.expect_code(job.run(&manifest), 0);
    assert_eq!(proxy.fired().len(), 1);
    let result = job.result();
    let retries: u64 = result["references"]
        .as_object()
        .unwrap()
        .values()
        .map(|r| r["io"]["retries"].as_u64().unwrap())
        .sum();
    assert_eq!(retries, 1, "the retry is counted: {result:#}");
    let io = &result["references"]["data"]["io"];
    let waited = io["wait_seconds"].as_f64().unwrap();
    assert!(waited < 0.5, "near zero: {io:#}");
    assert!(io["fuse"]["read"]["count"].as_u64().unwrap() >= 1, "{io:#}");
    for name in ["copy", "model"] {
        let outcome = &result["references"][name];
        let io = &outcome["io"];
        assert_eq!(io["files"], 1, "{name}: {outcome:#}");
        assert!(io["bytes"].as_u64().unwrap() > 0, "{name}: {outcome:#}");
        assert!(io["requests"].as_u64().unwrap() >= 1, "{name}: {outcome:#}");
        let wait = io["wait_seconds"].as_f64().unwrap();
        let duration = outcome["duration_seconds"].as_f64().unwrap();
        assert!(
            wait > 0.0 && wait >= duration * 0.9,
            "{name}: the transfer's time is its wait: {outcome:#}"
        );
    }
    // The job's figures of the last second are in live.json too.
    let live: Value =
        serde_json::from_slice(&std::fs::read(job.job_dir().join("live.json")).unwrap()).unwrap();
    assert_eq!(live["references"]["copy"]["files"], 1, "{live:#}");
    assert!(live["budget_bytes"].as_u64().unwrap() > 0, "{live:#}");
}
