use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

const SETTLE: Duration = Duration::from_millis(500);

fn queue(commit_files: &[&str]) -> Queue {
    let globs: Vec<String> = commit_files.iter().map(|g| g.to_string()).collect();
    Queue::new(Rules::new(&globs, SETTLE).unwrap())
}

/// Everything that may start at `now`, in order.
fn start_all(q: &mut Queue, now: Instant) -> Vec<Ready> {
    std::iter::from_fn(|| q.next_ready(now)).collect()
}

fn paths(ready: &[Ready]) -> Vec<&str> {
    ready.iter().map(|r| r.path.as_str()).collect()
}

#[test]
fn files_wait_for_the_settle_delay_and_go_in_close_order() {
    let mut q = queue(&[]);
    let t0 = Instant::now();
    q.closed("b.pt".into(), t0);
    q.closed("a.pt".into(), t0 + Duration::from_millis(100));
    assert_eq!(q.next_ready(t0 + Duration::from_millis(499)), None);
    assert_eq!(q.next_wakeup(t0), Some(t0 + SETTLE));
    let started = start_all(&mut q, t0 + Duration::from_millis(600));
    assert_eq!(paths(&started), ["b.pt", "a.pt"]);
    assert_eq!(q.in_flight(), 2);
}

#[test]
fn a_file_closed_again_moves_to_the_end() {
    let mut q = queue(&[]);
    let t0 = Instant::now();
    q.closed("a".into(), t0);
    q.closed("b".into(), t0);
    q.closed("a".into(), t0);
    assert_eq!(paths(&start_all(&mut q, t0 + SETTLE)), ["b", "a"]);
}

#[test]
fn temporary_names_wait_for_their_rename() {
    let mut q = queue(&[]);
    let t0 = Instant::now();
    q.closed("ckpt/__0_0.distcp".into(), t0);
    q.closed("ckpt/.metadata.tmp".into(), t0);
    let later = t0 + 2 * SETTLE;
    let shard = q.next_ready(later).unwrap();
    assert_eq!(shard.path, "ckpt/__0_0.distcp");
    assert_eq!(q.next_ready(later), None, "the .tmp file is never uploaded");
    // DCP renames .metadata.tmp to .metadata: the commit point.
    q.removed("ckpt/.metadata.tmp");
    q.closed("ckpt/.metadata".into(), later);
    let after_settle = later + SETTLE;
    assert_eq!(
        q.next_ready(after_settle),
        None,
        "the marker waits for its shard"
    );
    q.finished(&shard, Finished::Durable, after_settle);
    let marker = q.next_ready(after_settle).unwrap();
    assert_eq!(
        (marker.path.as_str(), marker.marker),
        ("ckpt/.metadata", true)
    );
    q.finished(&marker, Finished::Durable, after_settle);
    assert!(q.is_idle());
}

#[test]
fn a_marker_waits_for_its_folder_and_below_only() {
    let mut q = queue(&[]);
    let t0 = Instant::now();
    q.closed("run/sub/shard".into(), t0);
    q.closed("other/shard".into(), t0);
    q.closed("run/trainer_state.json".into(), t0);
    let now = t0 + SETTLE;
    let started = start_all(&mut q, now);
    assert_eq!(paths(&started), ["run/sub/shard", "other/shard"]);
    q.finished(&started[1], Finished::Durable, now);
    assert_eq!(q.next_ready(now), None, "run/sub/shard is still uploading");
    q.finished(&started[0], Finished::Durable, now);
    assert_eq!(q.next_ready(now).unwrap().path, "run/trainer_state.json");
}

#[test]
fn a_marker_does_not_wait_for_files_closed_after_it() {
    let mut q = queue(&[]);
    let t0 = Instant::now();
    q.closed("step1/.metadata".into(), t0);
    q.closed("step1/late.log".into(), t0);
    assert_eq!(
        paths(&start_all(&mut q, t0 + SETTLE)),
        ["step1/.metadata", "step1/late.log"]
    );
}

#[test]
fn a_renamed_checkpoint_folder_uploads_its_marker_last() {
    let mut q = queue(&[]);
    let t0 = Instant::now();
    // The Trainer wrote trainer_state.json before the weights, inside tmp-checkpoint-5/.
    q.closed("tmp-checkpoint-5/trainer_state.json".into(), t0);
    q.closed("tmp-checkpoint-5/model.safetensors".into(), t0);
    assert_eq!(q.next_ready(t0 + SETTLE), None, "temporary folder");
    q.removed("tmp-checkpoint-5");
    q.appeared(
        vec![
            "checkpoint-5/trainer_state.json".into(),
            "checkpoint-5/model.safetensors".into(),
        ],
        t0 + SETTLE,
    );
    let now = t0 + 2 * SETTLE;
    let started = start_all(&mut q, now);
    assert_eq!(paths(&started), ["checkpoint-5/model.safetensors"]);
    q.finished(&started[0], Finished::Durable, now);
    assert_eq!(
        q.next_ready(now).unwrap().path,
        "checkpoint-5/trainer_state.json"
    );
}

#[test]
fn commit_files_globs_match_names_and_paths() {
    let rules = Rules::new(&["*.done".into(), "ckpt-*/COMMIT".into()], SETTLE).unwrap();
    assert!(rules.is_marker("a/b/step.done"));
    assert!(rules.is_marker("ckpt-3/COMMIT"));
    assert!(!rules.is_marker("other/COMMIT"));
    assert!(rules.is_marker("x/.metadata") && rules.is_marker("trainer_state.json"));
    assert!(!rules.is_marker("x/.metadata.tmp") && !rules.is_marker("x/metadata"));
}

#[test]
fn temporary_names() {
    for temp in [
        "tmp-checkpoint-4/model.safetensors",
        "c/.metadata.tmp",
        "model.safetensors.tmp",
        ".tmpA1b2C3",
        "x.partial",
        "notes.txt~",
        "a.temp",
    ] {
        assert!(is_temporary(temp), "{temp}");
    }
    for kept in [
        "checkpoint-4/model.safetensors",
        "tmpfile.txt",
        "c/.metadata",
    ] {
        assert!(!is_temporary(kept), "{kept}");
    }
}

#[test]
fn one_upload_per_name_and_a_rewrite_is_uploaded_again() {
    let mut q = queue(&[]);
    let t0 = Instant::now();
    q.closed("model.pt".into(), t0);
    let first = q.next_ready(t0 + SETTLE).unwrap();
    q.closed("model.pt".into(), t0 + SETTLE);
    let now = t0 + 3 * SETTLE;
    assert_eq!(q.next_ready(now), None, "the first upload is still running");
    q.finished(&first, Finished::Durable, now);
    assert_eq!(q.next_ready(now).unwrap().path, "model.pt");
}

#[test]
fn a_file_changed_while_read_is_uploaded_again() {
    let mut q = queue(&[]);
    let t0 = Instant::now();
    q.closed("model.pt".into(), t0);
    let first = q.next_ready(t0 + SETTLE).unwrap();
    q.finished(&first, Finished::Changed, t0 + SETTLE);
    assert_eq!(q.next_ready(t0 + 2 * SETTLE).unwrap().path, "model.pt");
}

#[test]
fn removed_before_its_upload_starts_is_not_uploaded() {
    let mut q = queue(&[]);
    let t0 = Instant::now();
    q.closed("scratch/a".into(), t0);
    q.closed("scratch/b/c".into(), t0);
    q.closed("keep".into(), t0);
    q.removed("scratch");
    assert_eq!(paths(&start_all(&mut q, t0 + SETTLE)), ["keep"]);
}

#[test]
fn a_failed_file_holds_its_marker_back_and_is_retried() {
    let mut q = queue(&[]);
    q.retry_after = Duration::from_secs(5);
    let t0 = Instant::now();
    q.closed("c/shard".into(), t0);
    q.closed("c/.metadata".into(), t0);
    let now = t0 + SETTLE;
    let shard = q.next_ready(now).unwrap();
    q.finished(&shard, Finished::Failed("503".into()), now);
    assert_eq!(q.next_ready(now + Duration::from_secs(1)), None);
    let retry = q.next_ready(now + Duration::from_secs(6)).unwrap();
    assert_eq!(retry.path, "c/shard");
    q.finished(&retry, Finished::Failed("503".into()), now);
    // The script ends: the retry does not wait out its backoff, and a failure is then final:
    // the marker is reported, never uploaded.
    q.drain(now);
    let last_try = q.next_ready(now).unwrap();
    assert_eq!(last_try.path, "c/shard");
    q.finished(&last_try, Finished::Failed("503".into()), now);
    assert_eq!(q.next_ready(now), None);
    assert_eq!(q.next_wakeup(now), None, "nothing will start by itself");
    let failures = q.take_held().failures;
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert_eq!(failures[0].0, "c/.metadata");
    assert!(failures[0].1.contains("c/shard"), "{failures:?}");
    assert_eq!(failures[1], ("c/shard".to_owned(), "503".to_owned()));
}

#[test]
fn draining_ends_the_settle_delay_but_never_sends_temporary_names() {
    let mut q = queue(&[]);
    let t0 = Instant::now();
    q.closed("tmp-checkpoint-9/x".into(), t0);
    q.closed("y".into(), t0);
    assert_eq!(q.next_ready(t0), None);
    q.drain(t0);
    let started = start_all(&mut q, t0);
    assert_eq!(paths(&started), ["y"]);
    q.finished(&started[0], Finished::Durable, t0);
    assert_eq!(
        q.next_wakeup(t0),
        None,
        "a temporary name is no reason to wait"
    );
    let held = q.take_held();
    assert_eq!(held.temporaries, ["tmp-checkpoint-9/x"]);
    assert!(held.failures.is_empty(), "{held:?}");
}

#[test]
fn only_time_holds_wake_the_loop() {
    let mut q = queue(&[]);
    let t0 = Instant::now();
    q.closed("c/shard".into(), t0);
    q.closed("c/.metadata".into(), t0);
    q.closed("notes.tmp".into(), t0);
    let now = t0 + SETTLE;
    let shard = q.next_ready(now).unwrap();
    // The marker waits for the shard, the temporary file for its rename: neither is a time to
    // wake up at (the shard's end and the rename are events).
    assert_eq!(q.next_ready(now), None);
    assert_eq!(q.next_wakeup(now), None);
    q.finished(&shard, Finished::Durable, now);
    assert_eq!(q.next_ready(now).unwrap().path, "c/.metadata");
}

#[test]
fn a_marker_waits_for_a_file_closed_before_it_and_rewritten_since() {
    let mut q = queue(&[]);
    let t0 = Instant::now();
    q.closed("c/shard".into(), t0);
    let now = t0 + SETTLE;
    let first = q.next_ready(now).unwrap();
    q.closed("c/.metadata".into(), t0);
    // The next save rewrites the shard in place before its first upload is done.
    q.closed("c/shard".into(), now);
    q.finished(&first, Finished::Changed, now);
    let later = now + SETTLE;
    let again = q.next_ready(later).unwrap();
    assert_eq!(
        again.path, "c/shard",
        "the marker is not sent before the shard"
    );
    assert_eq!(q.next_ready(later), None);
    q.finished(&again, Finished::Durable, later);
    assert_eq!(q.next_ready(later).unwrap().path, "c/.metadata");
}

#[test]
fn holds_knows_what_waits_and_what_uploads() {
    let mut q = queue(&[]);
    let t0 = Instant::now();
    q.closed("a".into(), t0);
    q.closed("b".into(), t0 + SETTLE);
    let a = q.next_ready(t0 + SETTLE).unwrap();
    assert!(q.holds("a") && q.holds("b") && !q.holds("c"));
    q.finished(&a, Finished::Durable, t0 + SETTLE);
    assert!(!q.holds("a"));
}

proptest! {
    /// Whatever the order uploads complete in, a marker starts only when every file of its
    /// folder closed before it is durable at least at the version it had when the marker was
    /// closed.
    #[test]
    fn markers_never_start_before_their_data(
        ops in prop::collection::vec((0usize..3, 0usize..4, any::<bool>()), 1..60),
        completion in prop::collection::vec(any::<prop::sample::Index>(), 0..200),
    ) {
        let dirs = ["a", "a/sub", "b"];
        let mut q = queue(&[]);
        let now = Instant::now() + SETTLE;
        // Each file's latest closed version; what is in storage; what each marker needs.
        let mut version: HashMap<String, u32> = HashMap::new();
        let mut durable: HashMap<String, u32> = HashMap::new();
        let mut needs: HashMap<String, Vec<(String, u32)>> = HashMap::new();
        let mut running: Vec<(Ready, u32)> = Vec::new();
        let mut completions = completion.into_iter();
        for (dir, file, marker) in ops {
            let name = match marker {
                true => format!("{}/.metadata", dirs[dir]),
                false => format!("{}/shard{file}", dirs[dir]),
            };
            if marker {
                let dir = name.rsplit_once('/').unwrap().0;
                let before = version
                    .iter()
                    .filter(|(f, _)| is_under(f, dir) && **f != name)
                    .map(|(f, v)| (f.clone(), *v))
                    .collect();
                needs.insert(name.clone(), before);
            }
            q.closed(name.clone(), now - SETTLE);
            *version.entry(name.clone()).or_default() += 1;
            while let Some(ready) = q.next_ready(now) {
                for (file, at) in needs.get(&ready.path).into_iter().flatten() {
                    let stored = durable.get(file).copied().unwrap_or(0);
                    prop_assert!(stored >= *at, "{} before {} v{}", ready.path, file, at);
                }
                let at = version[&ready.path];
                running.push((ready, at));
            }
            if let Some(index) = completions.next() && !running.is_empty() {
                let (done, at) = running.swap_remove(index.index(running.len()));
                q.finished(&done, Finished::Durable, now);
                let stored = durable.entry(done.path.clone()).or_default();
                *stored = (*stored).max(at);
            }
        }
    }
}
