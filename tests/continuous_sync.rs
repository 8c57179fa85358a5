//! `sync: continuous` against Azurite: checkpoints are durable while the script runs, commit
//! markers never reach storage before their data, nothing stays under a temporary name, and a
//! SIGKILLed run's next run restores checkpoints 1-2 and finishes what the journal had in
//! flight. The script checks storage itself with the Azure Storage Python SDK
//! (`tests/continuous/trainer.py`), while it runs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use common::azurite;
use common::fault_proxy::FaultProxy;
use dataref::model::ObjectPath;
use dataref::store::azure::blob::BlobStore;
use serde_json::{Value, json};

use common::azurite::sdk_python as python;

fn trainer() -> String {
    format!("{}/tests/continuous/trainer.py", env!("CARGO_MANIFEST_DIR"))
}

struct Area {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    work: PathBuf,
    job_dir: PathBuf,
    key: PathBuf,
    container: String,
}

impl Area {
    fn new(prefix: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let work = root.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let area = Self {
            key: azurite::key_file(&root),
            job_dir: root.join("job"),
            work,
            root,
            container: azurite::unique_container(prefix),
            _tmp: tmp,
        };
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(area.store().create_container()).unwrap();
        area
    }

    fn store(&self) -> BlobStore {
        azurite::keyed_store(&self.container, &self.key)
    }

    /// Blob names and sizes under `prefix`.
    fn stored(&self, prefix: &str) -> std::collections::BTreeMap<String, u64> {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let store = self.store();
        let prefix = ObjectPath::parse(prefix).unwrap();
        runtime
            .block_on(dataref::store::list_all(&store, &prefix, false))
            .unwrap()
            .objects
            .into_iter()
            .map(|o| (o.path.to_string(), o.size))
            .collect()
    }

    fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={};AccountKey={};BlobEndpoint={};",
            azurite::ACCOUNT,
            azurite::KEY,
            azurite::shared().endpoint()
        )
    }

    fn out(&self) -> PathBuf {
        self.work.join("out")
    }

    /// A job whose `ckpt` output (`out/`, continuous) goes to `runs/1` through `endpoint`.
    fn manifest(&self, endpoint: &str, restore: bool, command: Vec<String>) -> PathBuf {
        let manifest = json!({
            "datastores": {
                "outputs": {"kind": "azure_blob", "account_name": azurite::ACCOUNT,
                            "container_name": self.container, "endpoint": endpoint,
                            "account_key": {"file": self.key}}
            },
            "data_references": {
                "ckpt": {"datastore": "outputs", "path_on_datastore": "runs/1",
                         "mode": "upload", "path_on_compute": "out", "overwrite": true,
                         "sync": "continuous", "restore": restore}
            },
            "command": command,
        });
        let path = self.work.join("job.json");
        std::fs::write(&path, manifest.to_string()).unwrap();
        path
    }

    fn spawn(&self, manifest: &Path) -> Child {
        common::job::spawn_run(&self.root, &self.work, &self.job_dir, manifest, &[])
    }

    fn run(&self, manifest: &Path) -> i32 {
        let mut child = self.spawn(manifest);
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                panic!("the job did not end in 300 s\n{}", self.describe());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.job_dir.join("job.log")).unwrap_or_default()
    }

    fn result(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.job_dir.join("result.json")).unwrap()).unwrap()
    }

    fn journal(&self) -> Vec<Value> {
        std::fs::read_to_string(self.job_dir.join("uploads.journal"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn describe(&self) -> String {
        let err = std::fs::read_to_string(self.root.join("dataref.err")).unwrap_or_default();
        format!("job.log:\n{}\nstderr:\n{err}", self.log())
    }
}

#[test]
fn dcp_and_hf_checkpoints_are_durable_while_the_script_runs() {
    let area = Area::new("ckpt");
    let report = area.root.join("report.json");
    let command = vec![
        python().display().to_string(),
        trainer(),
        "checkpoints".into(),
        area.out().display().to_string(),
        area.connection_string(),
        area.container.clone(),
        "runs/1".into(),
        report.display().to_string(),
    ];
    let manifest = area.manifest(&azurite::shared().endpoint(), false, command);
    let code = area.run(&manifest);
    let report: Value = std::fs::read(&report)
        .map(|bytes| serde_json::from_slice(&bytes).unwrap())
        .unwrap_or_else(|_| panic!("the trainer wrote no report\n{}", area.describe()));
    assert_eq!(
        report["problems"],
        json!([]),
        "{report:#}\n{}",
        area.describe()
    );
    assert_eq!(code, 0, "{}", area.describe());
    // Seen by the script itself, before it ended: each checkpoint within a few seconds of its
    // commit (the bound is many times what it takes; the figures go to the closing note).
    let latencies = report["latencies"].as_object().unwrap();
    assert_eq!(latencies.len(), 10, "{report:#}");
    for (marker, seconds) in latencies {
        assert!(seconds.as_f64().unwrap() < 20.0, "{marker}: {seconds} s");
    }
    println!("commit → durable, seconds: {latencies:?}");

    // Nothing under a temporary name was left (or ever uploaded: the script's observer).
    let stored = area.stored("runs/1");
    assert!(
        stored.keys().all(|name| !name.contains("tmp")),
        "{stored:#?}"
    );
    assert_eq!(stored.len(), 5 * 4 + 5 * 4, "{stored:#?}");

    // result.json lists each durable file and each checkpoint, in commit order.
    let result = area.result();
    let sync = &result["references"]["ckpt"]["sync"];
    assert_eq!(sync["mode"], "continuous", "{result:#}");
    let files = sync["files"].as_array().unwrap();
    assert_eq!(files.len(), 40, "{sync:#}");
    for file in files {
        let name = file["path"].as_str().unwrap();
        assert_eq!(file["size"].as_u64(), stored.get(name).copied(), "{name}");
        assert!(file["durable_at"].as_f64().unwrap() > 1.0e9, "{file}");
    }
    let checkpoints: Vec<&str> = sync["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["checkpoint"].as_str().unwrap())
        .collect();
    let mut wanted = Vec::new();
    for step in 1..=5 {
        wanted.push(format!("dcp/step-{step}"));
        wanted.push(format!("hf/checkpoint-{step}"));
    }
    assert_eq!(checkpoints, wanted, "{sync:#}");
    assert_eq!(sync["checkpoints"][9]["files"], 4, "{sync:#}");
    assert!(
        area.log()
            .contains("ckpt: checkpoint hf/checkpoint-5 durable"),
        "{}",
        area.describe()
    );
    // No marker file in the user's folder.
    let mut names = Vec::new();
    for entry in std::fs::read_dir(area.out()).unwrap() {
        names.push(entry.unwrap().file_name().into_string().unwrap());
    }
    names.sort();
    assert_eq!(names, ["dcp", "hf"]);
}

fn is_put_block(request_line: &str) -> bool {
    let target = request_line.split(' ').nth(1).unwrap_or("");
    request_line.starts_with("PUT ")
        && target
            .split_once('?')
            .is_some_and(|(_, q)| q.split('&').any(|p| p == "comp=block"))
}

const BIG_SHARD: &str = "runs/1/dcp/step-3/__0_0.distcp";

#[test]
fn a_killed_run_leaves_whole_checkpoints_and_the_next_run_finishes_it() {
    let area = Area::new("ckpt-kill");
    // Checkpoints 1-2 are single-request uploads; checkpoint 3's 24 MiB shard is three blocks,
    // of which the proxy lets one through: dataref is killed with it in flight.
    let proxy = FaultProxy::start(azurite::shared().port);
    proxy.hold_after(1, is_put_block);
    let command = vec![
        python().display().to_string(),
        trainer(),
        "until-killed".into(),
        area.out().display().to_string(),
        area.connection_string(),
        area.container.clone(),
        "runs/1".into(),
        "24".into(),
    ];
    let manifest = area.manifest(&proxy.endpoint(), true, command);
    let mut child = area.spawn(&manifest);
    let staged = |area: &Area| {
        area.journal()
            .iter()
            .any(|r| r["op"] == "staged" && r["object"] == BIG_SHARD)
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while !(area.work.join("ready-to-kill").exists() && staged(&area)) {
        assert!(child.try_wait().unwrap().is_none(), "{}", area.describe());
        assert!(
            Instant::now() < deadline,
            "never in flight\n{}",
            area.describe()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let script = area.result()["script_pid"].as_u64();
    child.kill().unwrap(); // SIGKILL: no stage-out, no drain
    child.wait().unwrap();
    if let Some(pid) = script {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }

    let stored = area.stored("runs/1");
    for step in [1, 2] {
        for name in [".metadata", "__0_0.distcp", "__1_0.distcp", "__2_0.distcp"] {
            let name = format!("runs/1/dcp/step-{step}/{name}");
            assert!(stored.contains_key(&name), "{name} missing: {stored:#?}");
        }
    }
    assert!(
        !stored.contains_key("runs/1/dcp/step-3/.metadata") && !stored.contains_key(BIG_SHARD),
        "checkpoint 3 must not look committed, nor its shard be visible half sent: {stored:#?}"
    );

    // Started again on the node: checkpoints 1-2 lost locally come back from storage; the
    // in-flight shard is finished from the journal (same upload, not started over).
    std::fs::remove_dir_all(area.out().join("dcp/step-1")).unwrap();
    std::fs::remove_dir_all(area.out().join("dcp/step-2")).unwrap();
    let starts_before = area
        .journal()
        .iter()
        .filter(|r| r["op"] == "start" && r["object"] == BIG_SHARD)
        .count();
    let command = vec![
        python().display().to_string(),
        trainer(),
        "resume".into(),
        area.out().display().to_string(),
    ];
    let manifest = area.manifest(&azurite::shared().endpoint(), true, command);
    assert_eq!(area.run(&manifest), 0, "{}", area.describe());
    let journal = area.journal();
    let starts_after = journal
        .iter()
        .filter(|r| r["op"] == "start" && r["object"] == BIG_SHARD)
        .count();
    assert_eq!(starts_before, 1);
    assert_eq!(starts_after, 1, "resumed, not started over: {journal:#?}");
    assert!(
        journal
            .iter()
            .any(|r| r["op"] == "committed" && r["object"] == BIG_SHARD),
        "{journal:#?}"
    );
    let stored = area.stored("runs/1");
    assert_eq!(stored.get(BIG_SHARD), Some(&(24 << 20)), "{stored:#?}");
    assert!(
        stored.contains_key("runs/1/dcp/step-3/.metadata"),
        "{stored:#?}"
    );
    assert!(
        area.log().contains("ckpt: checkpoint dcp/step-3 durable"),
        "{}",
        area.describe()
    );
}
