//! One job, one memory budget: three mounts and a download in one `dataref run` with
//! `memory_budget_bytes` = 64 MiB, every mount hammered by readers (from outside while the
//! download runs, then by the script), real FUSE as root. The budget's own counter
//! (`result.json` `memory.peak_held_bytes`) never passes the budget, and the agent's peak RSS
//! stays within the budget plus a fixed overhead.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use md5::{Digest, Md5};
use serde_json::json;

const MIB: u64 = 1024 * 1024;
const BUDGET: u64 = 64 * MIB;
/// What the agent needs besides its budget: measured at 12–27 MiB on this job (the binary,
/// tokio's and fuser's threads, the disk cache's index, listings, one reply per FUSE request in
/// flight, the allocator's slack), with room to spare. The README states this bound.
const OVERHEAD: u64 = 48 * MIB;

/// Writes a file of `mib` MiB whose every MiB differs (its number leads it), so that bytes read
/// from the wrong offset do not match.
fn write_data(path: &Path, mib: u64, seed: u8) -> String {
    let mut hasher = Md5::new();
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for n in 0..mib {
        let mut chunk: Vec<u8> = (0..MIB as usize)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        chunk[..8].copy_from_slice(&n.to_le_bytes());
        std::io::Write::write_all(&mut out, &chunk).unwrap();
        hasher.update(&chunk);
    }
    format!("{:x}", hasher.finalize())
}

fn md5_of(path: &Path) -> String {
    let mut hasher = Md5::new();
    let mut file = std::fs::File::open(path).unwrap();
    std::io::copy(&mut file, &mut hasher).unwrap();
    format!("{:x}", hasher.finalize())
}

fn job_mounts(work: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let work = work.to_string_lossy().into_owned();
    info.lines()
        .filter(|l| l.contains(" - fuse") && l.contains("dataref:"))
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(work.as_str()))
        .map(PathBuf::from)
        .collect()
}

#[test]
fn three_mounts_and_a_download_stay_within_one_budget() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let work = dir.path().join("work");
    let mut expected = Vec::new();
    for (m, name) in ["m1", "m2", "m3"].iter().enumerate() {
        std::fs::create_dir_all(store.join(name)).unwrap();
        for f in 0..2 {
            let file = format!("f{f}.bin");
            let sum = write_data(&store.join(name).join(&file), 40, (m * 2 + f) as u8);
            expected.push((format!("{name}/{file}"), sum));
        }
    }
    std::fs::create_dir_all(store.join("dl")).unwrap();
    let downloads: Vec<(String, String)> = (0..3)
        .map(|f| {
            let file = format!("d{f}.bin");
            let sum = write_data(&store.join("dl").join(&file), 48, 100 + f as u8);
            (file, sum)
        })
        .collect();
    std::fs::create_dir_all(&work).unwrap();
    // Every mounted file read whole (checksummed) and in scattered ranges, all at once.
    std::fs::write(
        work.join("hammer.sh"),
        r#"set -e
n=0
for f in "$AZUREML_DATAREFERENCE_m1"/* "$AZUREML_DATAREFERENCE_m2"/* "$AZUREML_DATAREFERENCE_m3"/*; do
  n=$((n+1))
  (md5sum "$f" > "sum.$n") &
  (for i in 1 2 3 4 5 6 7 8; do dd if="$f" of=/dev/null bs=256k skip=$((i*17)) count=9 2>/dev/null; done) &
done
wait
cat sum.* > sums.txt
"#,
    )
    .unwrap();
    let reference = |path: &str, mode: &str| json!({"datastore": "ds", "path_on_datastore": path, "mode": mode});
    let manifest = json!({
        "datastores": {"ds": {"kind": "local", "root": store}},
        "data_references": {
            "m1": reference("m1", "mount"),
            "m2": reference("m2", "mount"),
            "m3": reference("m3", "mount"),
            "dl": reference("dl", "download"),
        },
        "command": ["/bin/sh", "hammer.sh"],
        "memory_budget_bytes": BUDGET,
    });
    let manifest_path = common::cli::write_manifest(&work.join("job.json"), &manifest);
    let config = dir.path().join("config");

    let child = common::cli::command()
        .current_dir(&work)
        .arg("--config-dir")
        .arg(&config)
        .args(["run", "--no-progress"])
        .arg(&manifest_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Readers from outside the job, on every mount as soon as it is there, until the job ends.
    let done = Arc::new(AtomicBool::new(false));
    let read_bytes = Arc::new(AtomicU64::new(0));
    let outside: Vec<_> = (0..3)
        .map(|reader| {
            let (done, read_bytes, work) = (done.clone(), read_bytes.clone(), work.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    let mounts = job_mounts(&work);
                    let Some(mount) = mounts.get(reader) else {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    };
                    for entry in std::fs::read_dir(mount).into_iter().flatten().flatten() {
                        if let Ok(data) = std::fs::read(entry.path()) {
                            read_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    let output = child.wait_with_output().unwrap();
    done.store(true, Ordering::Relaxed);
    for reader in outside {
        reader.join().unwrap();
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let log = std::fs::read_to_string(work.join(".dataref/job.log")).unwrap_or_default();
    assert_eq!(output.status.code(), Some(0), "{stderr}\n{log}");

    // What was read through the mounts and downloaded is exact.
    let sums = std::fs::read_to_string(work.join("sums.txt")).unwrap();
    for (name, sum) in &expected {
        let line = sums
            .lines()
            .find(|l| l.ends_with(&format!("/{name}")))
            .unwrap_or_else(|| panic!("{name} not read:\n{sums}"));
        assert!(line.starts_with(sum.as_str()), "{name}: {line} != {sum}");
    }
    for (file, sum) in &downloads {
        assert_eq!(&md5_of(&work.join("ds/dl").join(file)), sum, "{file}");
    }

    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(work.join(".dataref/result.json")).unwrap())
            .unwrap();
    let memory = &result["memory"];
    let budget = memory["budget_bytes"].as_u64().unwrap();
    let peak_held = memory["peak_held_bytes"].as_u64().unwrap();
    let peak_rss = memory["peak_rss_bytes"].as_u64().unwrap();
    println!(
        "budget {} MiB, peak held {:.1} MiB, peak RSS {:.1} MiB, read from outside {} MiB",
        budget / MIB,
        peak_held as f64 / MIB as f64,
        peak_rss as f64 / MIB as f64,
        read_bytes.load(Ordering::Relaxed) / MIB
    );
    assert_eq!(budget, BUDGET);
    assert!(peak_held <= BUDGET, "held {peak_held} of {BUDGET}");
    // The budget was really under pressure (windows, parts and cache writes competing).
    assert!(peak_held >= BUDGET / 2, "only {peak_held} held at most");
    assert!(
        peak_rss <= BUDGET + OVERHEAD,
        "peak RSS {peak_rss} over the budget plus {OVERHEAD}"
    );
}
