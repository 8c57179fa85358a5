//! Resumable uploads against Azurite (docs/upload-journal.md): dataref is SIGKILLed in the
//! middle of uploading a large output, and `dataref run --stage-out-only` with the same job
//! directory (what the daemon's recovery runs) finishes it from the journal and the blob's
//! uncommitted block list.
//!
//! A proxy between dataref and Azurite lets a known number of Put Block requests through and
//! holds the rest, so the kill lands at a known point; a second proxy counts what the resumed
//! run sends.

mod common;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use common::azurite;
use common::fault_proxy::FaultProxy;
use dataref::model::ObjectPath;
use dataref::store::Store;
use dataref::store::azure::blob::BlobStore;
use futures::TryStreamExt;
use md5::{Digest, Md5};
use serde_json::json;

const PART_SIZE: u64 = 8 * 1024 * 1024;
const OBJECT: &str = "runs/1/model.bin";

/// Put Block (not Put Block List): `PUT ...?comp=block&blockid=...`.
fn is_put_block(request_line: &str) -> bool {
    request_line.starts_with("PUT ") && query_has(request_line, "comp=block")
}

fn is_put_block_list(request_line: &str) -> bool {
    request_line.starts_with("PUT ") && query_has(request_line, "comp=blocklist")
}

fn query_has(request_line: &str, pair: &str) -> bool {
    let target = request_line.split(' ').nth(1).unwrap_or("");
    let query = target.split_once('?').map_or("", |(_, q)| q);
    query.split('&').any(|p| p == pair)
}

struct Job {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    work: PathBuf,
    job_dir: PathBuf,
    key: PathBuf,
    container: String,
}

impl Job {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let work = root.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let job = Self {
            key: azurite::key_file(&root),
            job_dir: root.join("job"),
            work,
            root,
            container: azurite::unique_container("resume"),
            _tmp: tmp,
        };
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(job.store().create_container()).unwrap();
        job
    }

    /// The container, straight to Azurite (not through a proxy).
    fn store(&self) -> BlobStore {
        azurite::keyed_store(&self.container, &self.key)
    }

    fn output(&self) -> PathBuf {
        self.work.join("outputs/model.bin")
    }

    /// `job.json`: the script writes `bytes` of `seq` output (every part different) to
    /// `outputs/model.bin`, uploaded under `runs/1/`. dataref reaches Azurite through `proxy`.
    fn manifest(&self, proxy: &FaultProxy, bytes: u64) -> PathBuf {
        let manifest = json!({
            "datastores": {
                "outputs": {"kind": "azure_blob", "account_name": azurite::ACCOUNT,
                            "container_name": self.container, "endpoint": proxy.endpoint(),
                            "account_key": {"file": self.key}}
            },
            "data_references": {
                "model": {"datastore": "outputs", "path_on_datastore": "runs/1",
                          "mode": "upload", "path_on_compute": "outputs"}
            },
            "command": ["sh", "-c",
                        format!("mkdir -p outputs && seq 1 300000000 | head -c {bytes} > outputs/model.bin")]
        });
        let path = self.work.join("job.json");
        std::fs::write(&path, manifest.to_string()).unwrap();
        path
    }

    fn spawn(&self, manifest: &Path, extra: &[&str]) -> Child {
        common::job::spawn_run(&self.root, &self.work, &self.job_dir, manifest, extra)
    }

    fn journal(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.job_dir.join("uploads.journal"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// `staged` records since the last `start`: the parts of the latest upload.
    fn staged_in_journal(&self) -> usize {
        let journal = self.journal();
        let last_start = journal.iter().rposition(|r| r["op"] == "start");
        journal[last_start.map_or(0, |i| i + 1)..]
            .iter()
            .filter(|r| r["op"] == "staged")
            .count()
    }

    /// The upload id of the latest `start`.
    fn upload_id(&self) -> String {
        let journal = self.journal();
        let start = journal.iter().rev().find(|r| r["op"] == "start").unwrap();
        start["upload_id"].as_str().unwrap().to_owned()
    }

    fn job_log(&self) -> String {
        std::fs::read_to_string(self.job_dir.join("job.log")).unwrap_or_default()
    }

    /// Runs the job until the journal shows `staged` parts (the proxy holds every later Put
    /// Block), then SIGKILLs dataref.
    fn run_and_kill_after(&self, bytes: u64, staged: usize) {
        self.kill_after(bytes, staged, &[]);
    }

    /// `run_and_kill_after` with more flags (`--stage-out-only`: upload what is there).
    fn kill_after(&self, bytes: u64, staged: usize, extra: &[&str]) {
        let starts = |job: &Self| job.journal().iter().filter(|r| r["op"] == "start").count();
        let earlier = starts(self);
        let proxy = FaultProxy::start(azurite::shared().port);
        proxy.hold_after(staged, is_put_block);
        let mut child = self.spawn(&self.manifest(&proxy, bytes), extra);
        let deadline = Instant::now() + Duration::from_secs(90);
        while starts(self) == earlier || self.staged_in_journal() < staged {
            assert!(
                child.try_wait().unwrap().is_none(),
                "dataref ended before it was killed\n{}",
                self.job_log()
            );
            assert!(
                Instant::now() < deadline,
                "the journal never showed {staged} staged parts\n{}",
                self.job_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert_eq!(self.staged_in_journal(), staged);
    }

    /// `dataref run --stage-out-only` with the same job directory, through a fresh proxy
    /// (returned, to count what was sent).
    fn recover(&self, bytes: u64) -> FaultProxy {
        let proxy = FaultProxy::start(azurite::shared().port);
        let manifest = self.manifest(&proxy, bytes);
        let mut child = self.spawn(&manifest, &["--stage-out-only"]);
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                panic!("the recovery did not finish\n{}", self.job_log());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(status.code(), Some(0), "{}", self.job_log());
        proxy
    }

    /// Nothing under the final name, and the service holds exactly `staged` of our blocks.
    fn assert_nothing_visible_and_blocks_staged(&self, bytes: u64, staged: usize) {
        let store = self.store();
        let object = ObjectPath::parse(OBJECT).unwrap();
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let head = store.head(&object).await;
            assert!(
                head.unwrap_err().is_not_found(),
                "a partial object is visible"
            );
            let resumed = store
                .resume_upload(&object, bytes, PART_SIZE, &self.upload_id())
                .await
                .unwrap();
            assert_eq!(resumed.staged.len(), staged);
        });
    }

    /// The blob is byte-exact (MD5 of its content) and records the right Content-MD5.
    fn assert_uploaded_exactly(&self) {
        let expected: [u8; 16] = {
            let mut hasher = Md5::new();
            let mut file = std::fs::File::open(self.output()).unwrap();
            std::io::copy(&mut file, &mut hasher).unwrap();
            hasher.finalize().into()
        };
        let store = self.store();
        let object = ObjectPath::parse(OBJECT).unwrap();
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let meta = store.head(&object).await.unwrap();
            assert_eq!(meta.size, std::fs::metadata(self.output()).unwrap().len());
            assert_eq!(meta.content_md5, Some(expected), "recorded Content-MD5");
            let mut hasher = Md5::new();
            let mut body = store.get_range(&object, 0..meta.size, None).await.unwrap();
            while let Some(chunk) = body.try_next().await.unwrap() {
                hasher.update(&chunk);
            }
            let downloaded: [u8; 16] = hasher.finalize().into();
            assert_eq!(downloaded, expected, "blob content");
        });
    }
}

fn count(proxy: &FaultProxy, matches: fn(&str) -> bool) -> usize {
    proxy.forwarded().iter().filter(|l| matches(l)).count()
}

#[test]
fn a_killed_upload_is_finished_without_resending_staged_blocks() {
    const BYTES: u64 = 1 << 30;
    const STAGED: usize = 40;
    let parts = BYTES.div_ceil(PART_SIZE) as usize;
    let job = Job::new();
    job.run_and_kill_after(BYTES, STAGED);
    job.assert_nothing_visible_and_blocks_staged(BYTES, STAGED);

    let proxy = job.recover(BYTES);
    assert_eq!(count(&proxy, is_put_block), parts - STAGED);
    assert_eq!(count(&proxy, is_put_block_list), 1);
    job.assert_uploaded_exactly();
    assert!(
        job.job_log()
            .contains(&format!("resumed ({STAGED} parts already staged)")),
        "{}",
        job.job_log()
    );
}

#[test]
fn a_source_changed_after_the_kill_is_uploaded_afresh() {
    const BYTES: u64 = 256 << 20;
    const STAGED: usize = 10;
    let parts = BYTES.div_ceil(PART_SIZE) as usize;
    let job = Job::new();
    job.run_and_kill_after(BYTES, STAGED);
    job.assert_nothing_visible_and_blocks_staged(BYTES, STAGED);

    // Same size, other bytes, later mtime: the staged blocks belong to the old content.
    std::thread::sleep(Duration::from_millis(20));
    let changed: Vec<u8> = (0..BYTES).map(|i| (i % 251) as u8).collect();
    std::fs::write(job.output(), changed).unwrap();

    let proxy = job.recover(BYTES);
    assert_eq!(count(&proxy, is_put_block), parts);
    job.assert_uploaded_exactly();
    assert!(!job.job_log().contains("resumed"), "{}", job.job_log());
}

/// Two interruptions with a change of content between them: attempt 1 stages 40 blocks of
/// content A and is killed; the file is rewritten (B, same size); attempt 2 starts over and is
/// killed after 10 blocks; attempt 3 resumes B. Only B's 10 blocks may count as staged: with
/// block ids that named only the part index, A's blocks 10..39 were committed into B's blob.
#[test]
fn a_second_interruption_never_commits_blocks_of_an_older_content() {
    const BYTES: u64 = 384 << 20;
    let parts = BYTES.div_ceil(PART_SIZE) as usize;
    let job = Job::new();
    job.run_and_kill_after(BYTES, 40);
    let first_id = job.upload_id();

    std::thread::sleep(Duration::from_millis(20));
    let changed: Vec<u8> = (0..BYTES).map(|i| (i % 251) as u8).collect();
    std::fs::write(job.output(), changed).unwrap();
    job.kill_after(BYTES, 10, &["--stage-out-only"]);
    assert_ne!(job.upload_id(), first_id, "content B is another upload");
    // The service holds both attempts' blocks; only B's count for B.
    job.assert_nothing_visible_and_blocks_staged(BYTES, 10);

    let proxy = job.recover(BYTES);
    assert_eq!(count(&proxy, is_put_block), parts - 10);
    job.assert_uploaded_exactly();
    assert!(
        job.job_log().contains("resumed (10 parts already staged)"),
        "{}",
        job.job_log()
    );
}
