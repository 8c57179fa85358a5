//! Playing an ordinary user against the root agent (issue 15): a job that runs as another user
//! — a daemon job of a non-root peer, `dataref run --run-as` — touches that user's files with
//! that user's rights only, so whatever the user swaps, plants or names, the kernel says no.
//!
//! Each test makes real users (`useradd`: `dr-adv-a` attacks, `dr-adv-b` is a stranger), root's
//! canaries in the test's own folder (root-only folders, root 0600 files), and runs one attack
//! and its control: the same job without the attack, which must succeed. What is checked
//! afterwards is the state of things, never a message: canary trees unchanged (contents, mode,
//! owner, mtime), nothing created in root-only folders, no root secret in any file the user can
//! read, in the job's logs or at a listener the user named, nothing mounted on root's folders.
//!
//! The swaps happen while the job waits in the queue (`--max-jobs 1`, a root job holding the
//! slot), after the submit-time checks, or from the job's own script.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use common::canary::{Canary, Unmounter, files_containing, fingerprint, mounts_under, root_dir};
use common::cli::{self, sh, write_file};
use common::daemon::{Area, Daemon};
use common::fs::read;
use common::serial;
use common::users::{User, user};
use common::wait::{poll, poll_or};

const ATTACKER: &str = "dr-adv-a";
const STRANGER: &str = "dr-adv-b";
const ENDED: &[&str] = &["succeeded", "failed", "cancelled", "interrupted"];
const JOB_LIMIT: Duration = Duration::from_secs(90);

/// A shell loop that waits (at most a minute) for the file `go` or the scene's stop file.
fn wait_for(go: &Path, stop: &Path) -> String {
    format!(
        "i=0; while [ $i -lt 600 ] && [ ! -e {} ] && [ ! -e {} ]; do sleep 0.1; i=$((i+1)); done",
        go.display(),
        stop.display()
    )
}

/// A daemon (`--max-jobs 1`, the attacker's group allowed) on an area whose `work/` belongs to
/// the attacker, with the registry datastore `reg` (root's `store/`, the administrator's grant).
struct Scene {
    daemon: Option<Daemon>,
    _unmount: Unmounter,
    area: Area,
    user: User,
    holds: std::cell::Cell<u32>,
}

impl Scene {
    fn new() -> Self {
        let user = user(ATTACKER);
        let area = Area::new();
        user.own(&area.path("work"));
        cli::mkdir(&area.path("ctl"));
        cli::register_local(&area.path("config"), "reg", &area.path("store"));
        let daemon = area.daemon(
            &["--max-jobs", "1", "--allow-group", &user.gid.to_string()],
            &[],
        );
        Scene {
            daemon: Some(daemon),
            _unmount: Unmounter(area.dir.path().to_path_buf()),
            area,
            user,
            holds: std::cell::Cell::new(0),
        }
    }

    fn work(&self) -> PathBuf {
        self.area.path("work")
    }

    fn stop_file(&self) -> PathBuf {
        self.area.path("ctl/stop")
    }

    /// A manifest in `work/` without the area's inline datastore unless `fields` names some.
    fn manifest(&self, name: &str, mut fields: Value) -> PathBuf {
        if fields.get("datastores").is_none() {
            fields["datastores"] = json!({});
        }
        self.area.manifest(name, fields)
    }

    /// Submits as the attacker; the job's id.
    fn submit(&self, manifest: &Path) -> String {
        let out = self.area.client_as(
            self.user.uid,
            self.user.gid,
            &["submit", manifest.to_str().unwrap()],
        );
        out.expect_code(0);
        out.stdout.trim().to_owned()
    }

    /// Submits as the attacker and waits for the end; the job's record.
    fn run(&self, manifest: &Path) -> Value {
        let id = self.submit(manifest);
        self.wait_end(&id)
    }

    /// Waits for the job to end (its log and the daemon's in the failure); its record.
    fn wait_end(&self, id: &str) -> Value {
        let mut record = Value::Null;
        poll_or(
            &format!("job {id} to end"),
            JOB_LIMIT,
            || {
                format!(
                    "--- job.log ---\n{}\n--- runner.log ---\n{}\n--- daemon ---\n{}",
                    self.job_log(id),
                    std::fs::read_to_string(
                        self.area.path("state/jobs").join(id).join("runner.log")
                    )
                    .unwrap_or_default(),
                    std::fs::read_to_string(self.area.path("daemon.stderr")).unwrap_or_default()
                )
            },
            || {
                record = self.area.status(id);
                ENDED.contains(&record["state"].as_str().unwrap_or(""))
            },
        );
        record
    }

    /// Submits `manifest` as the attacker behind a root job holding the only slot, checks that
    /// it is queued, runs `swap` (the attack, after every submit-time check), frees the slot.
    /// The job's id.
    fn queued(&self, manifest: &Path, swap: impl FnOnce()) -> String {
        let n = self.holds.get() + 1;
        self.holds.set(n);
        let release = self.area.path(&format!("ctl/release-{n}"));
        let holder = self.area.manifest(
            &format!("holder-{n}.json"),
            json!({"command": sh(&format!("{}; exit 0", wait_for(&release, &self.stop_file())))}),
        );
        let holder = self.area.submit(&holder);
        self.area.wait_state(&holder, &["running"], JOB_LIMIT);
        let id = self.submit(manifest);
        assert_eq!(self.area.status(&id)["state"], "queued");
        swap();
        write_file(&release, "", 0o644);
        self.wait_end(&holder);
        id
    }

    /// What the attacker can learn of a job through the API: its log and its record.
    fn visible_to_user(&self, id: &str) -> String {
        let logs = self
            .area
            .client_as(self.user.uid, self.user.gid, &["logs", id]);
        let status = self
            .area
            .client_as(self.user.uid, self.user.gid, &["status", "--json", id]);
        format!("{}\n{}", logs.all_output(), status.all_output())
    }

    fn job_log(&self, id: &str) -> String {
        std::fs::read_to_string(self.area.path("state/jobs").join(id).join("job.log"))
            .unwrap_or_default()
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        // Every waiting script ends; the daemon drains (stage-out, unmount) before it is killed.
        let _ = std::fs::write(self.stop_file(), "");
        if let Some(mut daemon) = self.daemon.take() {
            daemon.signal(nix::sys::signal::Signal::SIGTERM);
            let child = daemon.child.as_mut().unwrap();
            for tick in 0..300 {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                if tick == 100 {
                    // A job stuck on a mount it can no longer take down: take it down.
                    drop(Unmounter(self.area.dir.path().to_path_buf()));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Download targets and upload sources swapped for links.

/// A download target (`<dir>/in`, the user's) is replaced, while the job is queued, by a link
/// to a root-only folder, or its parent by a link to a root folder holding `in/`: nothing is
/// written, created, replaced or chown-ed there. Control: the same job without the swap
/// downloads into the user's folder, files owned by the user.
#[test]
fn a_download_target_swapped_for_a_link_while_queued_writes_nothing_of_roots() {
    let _serial = serial::lock();
    let s = Scene::new();
    write_file(&s.area.path("store/in/a.txt"), "downloaded-a", 0o644);
    write_file(&s.area.path("store/in/sub/b.txt"), "downloaded-b", 0o644);
    let job = |name: &str| {
        let target = s.work().join(name);
        s.user.must(
            &s.work(),
            &format!("mkdir -p {}", target.join("in").display()),
        );
        let manifest = s.manifest(
            &format!("{name}.json"),
            json!({
                "data_references": {"d": {"datastore": "reg", "path_on_datastore": "in",
                    "mode": "download", "path_on_compute": target, "overwrite": true}},
                "command": ["true"],
            }),
        );
        (target, manifest)
    };

    // Control.
    let (target, manifest) = job("control");
    let id = s.queued(&manifest, || {});
    let record = s.wait_end(&id);
    assert_eq!(record["state"], "succeeded", "{}", s.job_log(&id));
    for (file, text) in [
        ("in/a.txt", "downloaded-a"),
        ("in/sub/b.txt", "downloaded-b"),
    ] {
        assert_eq!(read(&target.join(file)), text);
        for owned in [target.join(file), target.join("in/sub")] {
            assert_eq!(
                std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&owned).unwrap()),
                s.user.uid,
                "{}: downloads belong to the job's user",
                owned.display()
            );
        }
    }

    // The attacks: the target itself becomes a link to a root-only folder; its parent a link
    // to a root folder that holds an `in/` of root's files.
    let private = root_dir(
        &s.area.path("root-leaf"),
        0o700,
        &[("a.txt", "root-a"), ("canary", "root-canary")],
    );
    let rooted = root_dir(
        &s.area.path("root-parent"),
        0o755,
        &[("in/a.txt", "root-a"), ("in/sub/keep", "root-keep")],
    );
    let mut problems = Vec::new();
    for (name, root, swap) in [
        ("leaf", &private, "mv {t}/in {t}/in.old && ln -s {r} {t}/in"),
        ("parent", &rooted, "mv {t} {t}.old && ln -s {r} {t}"),
    ] {
        let canary = Canary::new(root);
        let (target, manifest) = job(name);
        let swap = swap
            .replace("{t}", target.to_str().unwrap())
            .replace("{r}", root.to_str().unwrap());
        let id = s.queued(&manifest, || s.user.must(&s.work(), &swap));
        let record = s.wait_end(&id);
        let changed = canary.changes();
        if !changed.is_empty() {
            problems.push(format!(
                "{name}: root's folder behind the swapped path changed (job {}):\n  {}\n{}",
                record["state"],
                changed.join("\n  "),
                s.job_log(&id)
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The job's own script turns its output folder, or the folder above it, into a link to a
/// root-only place holding a root 0600 file: that file's contents never reach the datastore.
/// Control: the same script without the swap uploads its output.
#[test]
fn an_upload_source_swapped_for_a_link_by_the_script_uploads_nothing_of_roots() {
    let _serial = serial::lock();
    let s = Scene::new();
    let secret = "ROOT-SECRET-FOR-UPLOAD";
    let private = root_dir(
        &s.area.path("root-up"),
        0o700,
        &[("res/secret.txt", secret), ("secret.txt", secret)],
    );
    let canary = Canary::new(&private);
    let job = |name: &str, script: &str| {
        s.manifest(
            &format!("{name}.json"),
            json!({
                "data_references": {"out": {"datastore": "reg", "path_on_datastore": name,
                    "mode": "upload", "path_on_compute": format!("{name}/res")}},
                "command": sh(script),
            }),
        )
    };
    let folder = |name: &str| format!("mkdir -p {name}/res && echo mine > {name}/res/mine.txt");

    let record = s.run(&job("control", &folder("control")));
    assert_eq!(record["state"], "succeeded", "{record:#}");
    assert_eq!(read(&s.area.path("store/control/mine.txt")), "mine\n");
    let record = s.run(&job(
        "control_file",
        "mkdir -p control_file && echo mine > control_file/res",
    ));
    assert_eq!(record["state"], "succeeded", "{record:#}");
    assert_eq!(read(&s.area.path("store/control_file/res")), "mine\n");

    // The output folder, the folder above it, and an output that is a single file.
    let p = private.display();
    let attacks = [
        (
            "leaf",
            format!(
                "{} && mv leaf/res leaf/res.old && ln -s {p} leaf/res",
                folder("leaf")
            ),
        ),
        (
            "parent",
            format!(
                "{} && mv parent parent.old && ln -s {p} parent",
                folder("parent")
            ),
        ),
        (
            "file",
            format!(
                "mkdir -p file && echo mine > file/res && rm file/res && ln -s {p}/secret.txt file/res"
            ),
        ),
    ];
    let mut outcomes = Vec::new();
    let mut seen = String::new();
    for (name, script) in attacks {
        let record = s.run(&job(name, &script));
        let id = record["id"].as_str().unwrap();
        seen.push_str(&s.visible_to_user(id));
        outcomes.push(format!("{name}: {}\n{}", record["state"], s.job_log(id)));
    }
    assert_eq!(
        files_containing(&s.area.path("store"), secret),
        Vec::<PathBuf>::new(),
        "root's file was uploaded\n{}",
        outcomes.join("\n")
    );
    assert_eq!(canary.changes(), Vec::<String>::new());
    assert!(!seen.contains(secret), "{}", outcomes.join("\n"));
}

/// The job's working directory (the user's, named in the manifest) is replaced, while the job
/// is queued, by a link to a root folder: the folders dataref makes there before the script
/// (a download's, an upload's parent) are not made in root's folder, nothing there changes.
/// Control: without the swap they are made in the working directory, owned by the user.
#[test]
fn a_working_directory_swapped_for_a_link_while_queued_creates_nothing_in_roots_folders() {
    let _serial = serial::lock();
    let s = Scene::new();
    write_file(&s.area.path("store/in/a.txt"), "downloaded-a", 0o644);
    let rooted = root_dir(&s.area.path("root-wd"), 0o755, &[("keep", "root-keep")]);
    let job = |name: &str| {
        let wd = s.work().join(name);
        s.user
            .must(&s.work(), &format!("mkdir -p {}", wd.display()));
        let manifest = s.manifest(
            &format!("{name}.json"),
            json!({
                "working_dir": wd,
                "data_references": {
                    "d": {"datastore": "reg", "path_on_datastore": "in", "mode": "download"},
                    "out": {"datastore": "reg", "path_on_datastore": format!("wd-{name}"),
                            "mode": "upload", "path_on_compute": "made/by/dataref/outputs"}
                },
                "command": sh("mkdir made/by/dataref/outputs && echo out > made/by/dataref/outputs/o.txt"),
            }),
        );
        (wd, manifest)
    };

    let (wd, manifest) = job("control");
    let id = s.queued(&manifest, || {});
    let record = s.wait_end(&id);
    assert_eq!(record["state"], "succeeded", "{}", s.job_log(&id));
    assert_eq!(read(&s.area.path("store/wd-control/o.txt")), "out\n");
    assert_eq!(read(&wd.join("reg/in/a.txt")), "downloaded-a");
    // What dataref made for the job in the user's working directory is the user's.
    let mut problems = Vec::new();
    for made in ["reg", "reg/in", "reg/in/a.txt", "made", "made/by/dataref"] {
        let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(wd.join(made)).unwrap());
        if owner != s.user.uid {
            problems.push(format!(
                "control: {made}, made by dataref in the user's working directory, is owned by \
                 uid {owner}, not the job's user"
            ));
        }
    }

    let canary = Canary::new(&rooted);
    let (wd, manifest) = job("attack");
    let swap = format!(
        "mv {w} {w}.old && ln -s {r} {w}",
        w = wd.display(),
        r = rooted.display()
    );
    let id = s.queued(&manifest, || s.user.must(&s.work(), &swap));
    let record = s.wait_end(&id);
    let changed = canary.changes();
    if !changed.is_empty() {
        problems.push(format!(
            "root's folder behind the swapped working directory changed (job {}):\n  {}\n{}",
            record["state"],
            changed.join("\n  "),
            s.job_log(&id)
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 2. Inline local datastores naming root's places.

/// A non-root user's inline `{"kind": "local", "root": <root-only folder>}`: as a download or a
/// mount it delivers nothing of root's 0600 file to the user; as an upload target it creates
/// nothing there. Control: an inline local datastore the user owns works all three ways, and
/// what it writes there is the user's.
#[test]
fn an_inline_local_datastore_on_roots_folders_gives_the_user_nothing_of_roots() {
    let _serial = serial::lock();
    let s = Scene::new();
    let secret = "ROOT-ONLY-CONTENT";
    let private = root_dir(
        &s.area.path("root-store"),
        0o700,
        &[("in/secret.txt", secret)],
    );
    let canary = Canary::new(&private);
    let work = s.work();
    s.user.must(
        &work,
        "mkdir -p mine/in && echo user-data > mine/in/u.txt && chmod 600 mine/in/u.txt",
    );

    // Control: the user's own folder as an inline datastore, read and written.
    let control = s.manifest(
        "control.json",
        json!({
            "datastores": {"mine": {"kind": "local", "root": work.join("mine")}},
            "data_references": {
                "dl": {"datastore": "mine", "path_on_datastore": "in", "mode": "download",
                       "path_on_compute": work.join("c-dl")},
                "mnt": {"datastore": "mine", "path_on_datastore": "in", "mode": "mount",
                        "path_on_compute": work.join("c-mnt")},
                "out": {"datastore": "mine", "path_on_datastore": "back", "mode": "upload",
                        "path_on_compute": "c-out"}
            },
            "command": sh("cat $AZUREML_DATAREFERENCE_mnt/u.txt > c-seen && mkdir -p c-out \
                           && echo result > c-out/r.txt"),
        }),
    );
    let record = s.run(&control);
    let id = record["id"].as_str().unwrap().to_owned();
    assert_eq!(record["state"], "succeeded", "{}", s.job_log(&id));
    assert_eq!(read(&work.join("c-dl/in/u.txt")), "user-data\n");
    assert_eq!(read(&work.join("c-seen")), "user-data\n");
    assert_eq!(read(&work.join("mine/back/r.txt")), "result\n");

    // The attacks: root's folder as the user's inline datastore.
    let theirs = json!({"theirs": {"kind": "local", "root": private}});
    let attacks = [
        (
            "download",
            json!({"d": {"datastore": "theirs", "path_on_datastore": "in", "mode": "download",
                         "path_on_compute": work.join("a-dl")}}),
        ),
        (
            "mount",
            json!({"d": {"datastore": "theirs", "path_on_datastore": "in", "mode": "mount",
                         "path_on_compute": work.join("a-mnt")}}),
        ),
        (
            "upload",
            json!({"d": {"datastore": "theirs", "path_on_datastore": "planted",
                         "mode": "upload", "path_on_compute": "a-out"}}),
        ),
    ];
    let (mut seen, mut outcomes) = (Vec::new(), Vec::new());
    for (mode, references) in attacks {
        let manifest = s.manifest(
            &format!("attack-{mode}.json"),
            json!({
                "datastores": theirs,
                "data_references": references,
                "command": sh(&format!(
                    "cat $AZUREML_DATAREFERENCE_d/secret.txt > a-{mode}-leak; \
                     cp -r $AZUREML_DATAREFERENCE_d a-{mode}-copy; \
                     mkdir -p a-out && echo planted > a-out/p.txt; true"
                )),
            }),
        );
        let record = s.run(&manifest);
        let id = record["id"].as_str().unwrap().to_owned();
        seen.push(s.visible_to_user(&id));
        outcomes.push(format!("{mode}: {}\n{}", record["state"], s.job_log(&id)));
    }
    let mut problems = Vec::new();
    let leaked = files_containing(&work, secret);
    if !leaked.is_empty() {
        problems.push(format!(
            "root's 0600 file reached the user's folder: {leaked:?}"
        ));
    }
    if seen.iter().any(|s| s.contains(secret)) {
        problems.push("root's file is in what the user sees of the jobs (logs, records)".into());
    }
    let changed = canary.changes();
    if !changed.is_empty() {
        problems.push(format!(
            "the root-only folder changed:\n  {}",
            changed.join("\n  ")
        ));
    }
    // The user's inline datastore is written with the user's rights.
    for written in ["mine/back", "mine/back/r.txt"] {
        let owner =
            std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(work.join(written)).unwrap());
        if owner != s.user.uid {
            problems.push(format!(
                "{written} (uploaded into the user's own inline datastore) is owned by uid \
                 {owner}, not the job's user"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n--- the attack jobs ---\n{}",
        problems.join("\n"),
        outcomes.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Secret files swapped for links to root's.

/// A loopback "storage" endpoint that answers 403 and keeps every request head it received.
struct Listener {
    url: String,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Listener {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/devstoreaccount1", listener.local_addr().unwrap());
        let heads = Arc::new(Mutex::new(Vec::new()));
        let record = heads.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let record = record.clone();
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut head = String::new();
                    let mut length = 0usize;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        head.push_str(&line);
                    }
                    let mut body = vec![0u8; length.min(1 << 20)];
                    let _ = reader.read_exact(&mut body);
                    head.push_str(&String::from_utf8_lossy(&body));
                    record.lock().unwrap().push(head);
                    let _ = stream.write_all(
                        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                });
            }
        });
        Listener { url, heads }
    }

    fn received(&self) -> String {
        self.heads.lock().unwrap().join("\n")
    }
}

/// The SAS file of a user's inline blob datastore (pointing at a listener the user could run)
/// is replaced, while the job is queued, by a link to root's SAS (0600, in a root folder
/// anyone may traverse, as `/etc/dataref/keys`): root's SAS never reaches the listener nor
/// anything the user sees. Control: the user's own SAS file is read and sent.
#[test]
fn a_secret_file_swapped_for_a_link_while_queued_never_sends_roots_sas() {
    let _serial = serial::lock();
    let s = Scene::new();
    let root_sas = root_dir(
        &s.area.path("root-keys"),
        0o755,
        &[("sas", "sv=2022-11-02&sig=ROOTSIGNATURE")],
    )
    .join("sas");
    let job = |name: &str, listener: &Listener| {
        let sas = s.work().join(format!("{name}.sas"));
        s.user.must(
            &s.work(),
            &format!(
                "umask 077 && echo 'sv=2022-11-02&sig=USERSIGNATURE' > {}",
                sas.display()
            ),
        );
        let manifest = s.manifest(
            &format!("{name}.json"),
            json!({
                "datastores": {"blob": {"kind": "azure_blob", "account_name": "devstoreaccount1",
                    "container_name": "data", "endpoint": listener.url,
                    "sas_token": {"file": sas}}},
                "data_references": {"d": {"datastore": "blob", "path_on_datastore": "x",
                    "mode": "download", "path_on_compute": s.work().join(format!("{name}-dl"))}},
                "command": ["true"],
            }),
        );
        (sas, manifest)
    };

    let control = Listener::start();
    let (_, manifest) = job("control", &control);
    let id = s.queued(&manifest, || {});
    s.wait_end(&id);
    assert!(
        control.received().contains("USERSIGNATURE"),
        "the user's SAS was not used: {}\n{}",
        control.received(),
        s.job_log(&id)
    );

    let attack = Listener::start();
    let (sas, manifest) = job("attack", &attack);
    let id = s.queued(&manifest, || {
        s.user.must(
            &s.work(),
            &format!(
                "rm {s} && ln -s {r} {s}",
                s = sas.display(),
                r = root_sas.display()
            ),
        )
    });
    let record = s.wait_end(&id);
    assert!(
        !attack.received().contains("ROOTSIGNATURE"),
        "root's SAS was sent to the user's endpoint (job {}): {}",
        record["state"],
        attack.received()
    );
    assert!(!s.visible_to_user(&id).contains("ROOTSIGNATURE"));
}

/// The same with the swap done by the job's own script, before its outputs are uploaded (the
/// secret is then re-read: changed file, 403 from the service): root's SAS never leaves.
/// Control: the same script without the swap uploads with the user's SAS.
#[test]
fn a_secret_file_swapped_by_the_script_never_sends_roots_sas() {
    let _serial = serial::lock();
    let s = Scene::new();
    let root_sas = root_dir(
        &s.area.path("root-keys"),
        0o755,
        &[("sas", "sv=2022-11-02&sig=ROOTSIGNATURE")],
    )
    .join("sas");
    let job = |name: &str, listener: &Listener, swap: bool| {
        let sas = s.work().join(format!("{name}.sas"));
        s.user.must(
            &s.work(),
            &format!(
                "umask 077 && echo 'sv=2022-11-02&sig=USERSIGNATURE' > {}",
                sas.display()
            ),
        );
        let swap = if swap {
            format!(
                "rm {s} && ln -s {r} {s} && touch -h {s}",
                s = sas.display(),
                r = root_sas.display()
            )
        } else {
            "true".to_owned()
        };
        s.manifest(
            &format!("{name}.json"),
            json!({
                "datastores": {"blob": {"kind": "azure_blob", "account_name": "devstoreaccount1",
                    "container_name": "data", "endpoint": listener.url,
                    "sas_token": {"file": sas}}},
                "data_references": {"out": {"datastore": "blob", "path_on_datastore": "o",
                    "mode": "upload", "path_on_compute": format!("{name}-out")}},
                "command": sh(&format!(
                    "mkdir -p {name}-out && echo data > {name}-out/f.txt && sleep 1.2 && {swap}"
                )),
            }),
        )
    };

    let control = Listener::start();
    let record = s.run(&job("control", &control, false));
    let id = record["id"].as_str().unwrap().to_owned();
    assert!(
        control.received().contains("USERSIGNATURE"),
        "the user's SAS was not used: {}\n{}",
        control.received(),
        s.job_log(&id)
    );

    let attack = Listener::start();
    let record = s.run(&job("attack", &attack, true));
    let id = record["id"].as_str().unwrap().to_owned();
    assert!(
        !attack.received().contains("ROOTSIGNATURE"),
        "root's SAS was sent to the user's endpoint (job {}): {}",
        record["state"],
        attack.received()
    );
    assert!(!s.visible_to_user(&id).contains("ROOTSIGNATURE"));
}

// ---------------------------------------------------------------------------------------------
// 4. A job directory the user controls (`dataref run --run-as`).

/// `dataref run --run-as` with a job directory that is the user's (the default
/// `<working_dir>/.dataref`, or `--job-dir` in the user's folder) in which the user planted
/// links named like the files root writes there, pointing at root's files and a root-only
/// folder; or with a `--cache-root` of the user's holding a link named like the cache: refused,
/// or written as the user — root's files stay as they were, and whatever was written in the
/// job directory is the user's. Control: a job directory only root controls works.
#[test]
fn planted_links_in_a_users_job_directory_never_write_roots_files() {
    let _serial = serial::lock();
    let user = user(ATTACKER);
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let _unmount = Unmounter(dir.path().to_path_buf());
    let work = dir.path().join("work");
    cli::mkdir(&work);
    user.own(&work);
    let store = dir.path().join("store");
    cli::mkdir(&store);
    user.own(&store);
    user.must(&store, "mkdir in && echo user-data > in/u.txt");
    let targets = root_dir(
        &dir.path().join("root-files"),
        0o755,
        &[
            ("result", "root-result"),
            ("result-tmp", "root-result-tmp"),
            ("log", "root-log"),
            ("journal", "root-journal"),
            ("cache/canary", "root-cache"),
        ],
    );
    std::fs::set_permissions(
        targets.join("cache"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let before = fingerprint(&targets);
    let plant = |job_dir: &Path| {
        user.must(
            &work,
            &format!(
                "mkdir -p {j} && ln -s {t}/result {j}/result.json && \
                 ln -s {t}/result-tmp {j}/.result.json.tmp && ln -s {t}/log {j}/job.log && \
                 ln -s {t}/journal {j}/uploads.journal && ln -s {t}/cache {j}/cache",
                j = job_dir.display(),
                t = targets.display()
            ),
        );
    };
    let manifest = cli::write_manifest(
        &work.join("job.json"),
        &json!({
            "datastores": {"mine": {"kind": "local", "root": store}},
            "data_references": {
                "data": {"datastore": "mine", "path_on_datastore": "in", "mode": "mount"},
                "out": {"datastore": "mine", "path_on_datastore": "back", "mode": "upload",
                        "path_on_compute": "outputs"}
            },
            "command": sh("mkdir -p outputs && cat $AZUREML_DATAREFERENCE_data/u.txt > \
                           outputs/seen.txt && echo ran > ran"),
        }),
    );
    let run_with = |job_dir: Option<&Path>, extra: &[&str]| {
        let _ = std::fs::remove_file(work.join("ran"));
        let mut command = cli::command();
        command
            .current_dir(&work)
            .arg("--config-dir")
            .arg(dir.path().join("config"))
            .args(["run", "--no-progress", "--run-as", &user.run_as()])
            .args(extra);
        if let Some(job_dir) = job_dir {
            command.arg("--job-dir").arg(job_dir);
        }
        cli::output(command.arg(&manifest))
    };
    let run = |job_dir: Option<&Path>| run_with(job_dir, &[]);

    // Control: a job directory only root controls.
    let out = run(Some(&dir.path().join("root-jobs/1")));
    out.expect_code(0);
    assert_eq!(read(&store.join("back/seen.txt")), "user-data\n");

    // The default job directory and an explicit one, both the user's, with planted links.
    for job_dir in [work.join(".dataref"), work.join("jobdir")] {
        plant(&job_dir);
        let out = run(if job_dir.ends_with(".dataref") {
            None
        } else {
            Some(&job_dir)
        });
        assert_eq!(
            fingerprint(&targets),
            before,
            "root's files behind links in {} changed (exit {}):\n{}",
            job_dir.display(),
            out.code,
            out.all_output()
        );
        assert!(
            out.code == 64 || work.join("ran").exists(),
            "neither refused (64) nor run: exit {}\n{}",
            out.code,
            out.all_output()
        );
        // Anything written in the user's job directory is the user's.
        for (path, node) in fingerprint(&job_dir) {
            assert_eq!(
                node.uid,
                user.uid,
                "{} in the user's job directory is root's",
                job_dir.join(path).display()
            );
        }
    }

    // A root job directory, but the mounts' cache root is the user's, with the cache's name
    // (`<job directory's name>.<reference>`) planted as a link to a root-only folder.
    user.must(
        &work,
        &format!(
            "mkdir cacheroot && ln -s {} cacheroot/2.data",
            targets.join("cache").display()
        ),
    );
    let cache_root = work.join("cacheroot");
    let out = run_with(
        Some(&dir.path().join("root-jobs/2")),
        &["--cache-root", cache_root.to_str().unwrap()],
    );
    assert_eq!(
        fingerprint(&targets),
        before,
        "root's folder behind a link in the user's cache root changed (exit {}):\n{}",
        out.code,
        out.all_output()
    );
    assert!(
        out.code == 64 || work.join("ran").exists(),
        "neither refused (64) nor run: exit {}\n{}",
        out.code,
        out.all_output()
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Mount points swapped for links.

/// A queued job's mount point (`<dir>/in`, the user's) is replaced by a link to a root-owned
/// folder, or its parent by a link to a root folder holding `in/`: nothing is mounted on root's
/// folder, its listing is unchanged while the job runs and after. Control: without the swap the
/// mount appears at the user's path, the user reads it, and another user gets EACCES.
#[test]
fn a_mount_point_swapped_for_a_link_while_queued_mounts_nothing_on_roots_folders() {
    let _serial = serial::lock();
    let s = Scene::new();
    let stranger = user(STRANGER);
    write_file(&s.area.path("store/in/m.txt"), "mounted-data", 0o644);
    let rooted = root_dir(
        &s.area.path("root-mnt"),
        0o755,
        &[("in/canary.txt", "root-file")],
    );
    // Root's files readable by all: a mount over them would be noticed by everyone.
    std::fs::set_permissions(
        rooted.join("in/canary.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let work = s.work();
    let job = |name: &str| {
        let point = work.join(name);
        s.user
            .must(&work, &format!("mkdir -p {}", point.join("in").display()));
        let ready = work.join(format!("{name}-ready"));
        let manifest = s.manifest(
            &format!("{name}.json"),
            json!({
                "data_references": {"d": {"datastore": "reg", "path_on_datastore": "in",
                    "mode": "mount", "path_on_compute": point}},
                "command": sh(&format!(
                    "cat $AZUREML_DATAREFERENCE_d/m.txt > {name}-seen; touch {}; {}",
                    ready.display(),
                    wait_for(&s.area.path(&format!("ctl/{name}-go")), &s.stop_file())
                )),
            }),
        );
        (point, ready, manifest)
    };
    // Until the script runs or the job ends: the job's record when it ended.
    let started = |id: &str, ready: &Path| {
        poll("the script to start or the job to end", JOB_LIMIT, || {
            if ready.exists() {
                return Some(None);
            }
            let record = s.area.status(id);
            ENDED
                .contains(&record["state"].as_str().unwrap_or(""))
                .then_some(Some(record))
        })
    };
    let go = |name: &str| write_file(&s.area.path(&format!("ctl/{name}-go")), "", 0o644);

    // Control.
    let (point, ready, manifest) = job("control");
    let id = s.queued(&manifest, || {});
    assert_eq!(started(&id, &ready), None, "{}", s.job_log(&id));
    assert!(common::mounts::is_mounted(&point.join("in")));
    assert_eq!(read(&work.join("control-seen")), "mounted-data");
    let peek = Command::new("cat")
        .arg(point.join("in/m.txt"))
        .uid(stranger.uid)
        .gid(stranger.gid)
        .output()
        .unwrap();
    assert!(!peek.status.success(), "another user read the job's mount");
    assert!(
        String::from_utf8_lossy(&peek.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&peek.stderr)
    );
    go("control");
    let record = s.wait_end(&id);
    assert_eq!(record["state"], "succeeded", "{}", s.job_log(&id));

    // The attacks: the mount point, then its parent, swapped for links to root's folder.
    let real = rooted.canonicalize().unwrap();
    let mut problems = Vec::new();
    for (name, swap) in [
        (
            "leaf",
            format!(
                "mv leaf/in leaf/in.old && ln -s {} leaf/in",
                rooted.join("in").display()
            ),
        ),
        (
            "parent",
            format!("mv parent parent.old && ln -s {} parent", rooted.display()),
        ),
    ] {
        let canary = Canary::new(&rooted);
        let (_, ready, manifest) = job(name);
        let id = s.queued(&manifest, || s.user.must(&work, &swap));
        let ended = started(&id, &ready);
        let (mounted, looked) = (mounts_under(&real), canary.changes());
        go(name);
        let record = match ended {
            Some(record) => record,
            None => s.wait_end(&id),
        };
        if !mounted.is_empty() {
            problems.push(format!(
                "{name}: mounted on root's folder while the job ran: {mounted:?} (job {})",
                record["state"]
            ));
        }
        if !looked.is_empty() {
            problems.push(format!(
                "{name}: root's folder looked different while the job ran:\n  {}",
                looked.join("\n  ")
            ));
        }
        let changed = canary.changes();
        if !changed.is_empty() {
            problems.push(format!(
                "{name}: root's folder changed:\n  {}",
                changed.join("\n  ")
            ));
        }
        let left = mounts_under(&real);
        if !left.is_empty() {
            problems.push(format!("{name}: still mounted after the job: {left:?}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The job's own script, while its mount is up, turns the folder above its mount point into a
/// link to a root folder where root has a filesystem mounted at `in`: when the job ends,
/// root's mount is still there and whole. Control: without the swap, the job's mount is gone
/// after the job and root's is untouched.
#[test]
fn a_mount_point_swapped_by_the_script_never_unmounts_roots_mounts() {
    let _serial = serial::lock();
    let s = Scene::new();
    write_file(&s.area.path("store/in/m.txt"), "mounted-data", 0o644);
    let rooted = root_dir(&s.area.path("root-mounted"), 0o755, &[]);
    let roots_mount = rooted.join("in");
    cli::mkdir(&roots_mount);
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs"])
        .arg(&roots_mount)
        .status()
        .unwrap();
    assert!(mounted.success());
    write_file(&roots_mount.join("canary.txt"), "root-tmpfs", 0o644);
    let canary = Canary::new(&rooted);
    let work = s.work();
    let job = |name: &str, swap: &str| {
        s.user.must(
            &work,
            &format!("mkdir -p {}", work.join(name).join("in").display()),
        );
        s.manifest(
            &format!("{name}.json"),
            json!({
                "data_references": {"d": {"datastore": "reg", "path_on_datastore": "in",
                    "mode": "mount", "path_on_compute": work.join(name)}},
                "command": sh(&format!(
                    "cat $AZUREML_DATAREFERENCE_d/m.txt > {name}-seen && {swap}"
                )),
            }),
        )
    };

    let record = s.run(&job("control", "true"));
    let id = record["id"].as_str().unwrap().to_owned();
    assert_eq!(record["state"], "succeeded", "{}", s.job_log(&id));
    assert_eq!(read(&work.join("control-seen")), "mounted-data");
    assert!(!common::mounts::is_mounted(&work.join("control/in")));
    assert!(common::mounts::is_mounted(&roots_mount));

    let id = s.submit(&job(
        "attack",
        &format!("mv attack attack.old && ln -s {} attack", rooted.display()),
    ));
    let mut problems = Vec::new();
    let ended = || ENDED.contains(&s.area.status(&id)["state"].as_str().unwrap_or(""));
    let in_time = std::time::Instant::now() + Duration::from_secs(30);
    while !ended() && std::time::Instant::now() < in_time {
        std::thread::sleep(Duration::from_millis(100));
    }
    let roots_mount_there = common::mounts::is_mounted(&roots_mount);
    if !ended() {
        problems.push(format!(
            "the job did not end within 30 s of its script; still mounted: {:?}",
            mounts_under(&work)
        ));
        // Take down what it left, so that it can end.
        for point in mounts_under(&work) {
            let _ = Command::new("umount").args(["-l", &point]).status();
        }
    }
    let record = s.wait_end(&id);
    if !roots_mount_there {
        problems.push(format!(
            "root's mount at {} was taken down by the job's unmount (job {})",
            roots_mount.display(),
            record["state"]
        ));
    }
    assert_eq!(read(&work.join("attack-seen")), "mounted-data");
    let changed = canary.changes();
    if roots_mount_there && !changed.is_empty() {
        problems.push(format!(
            "root's folder changed:\n  {}",
            changed.join("\n  ")
        ));
    }
    assert!(
        problems.is_empty(),
        "{}\n{}",
        problems.join("\n"),
        s.job_log(&id)
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Secrets in the processes the user can look into.

/// `dataref run --run-as` with a datastore whose key is in root's environment (`{"env": VAR}`,
/// as a Slurm prolog may pass it) and a registry datastore whose key file is root's: while the
/// script runs, nothing the user can read in `/proc` — the environment and arguments of every
/// process, their own and any helper running as them — holds either key. (The job's uploads
/// use both keys after the script, at a listener that answers 403.)
#[test]
fn no_process_the_user_can_read_holds_roots_secrets() {
    let _serial = serial::lock();
    let user = user(ATTACKER);
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let _unmount = Unmounter(dir.path().to_path_buf());
    let work = dir.path().join("work");
    cli::mkdir(&work);
    user.own(&work);
    let config = dir.path().join("config");
    // base64 of ROOT-ENV-KEY-CANARY-0123456789 and ROOT-REGISTRY-KEY-CANARY-98765.
    let env_key = "Uk9PVC1FTlYtS0VZLUNBTkFSWS0wMTIzNDU2Nzg5";
    let file_key = "Uk9PVC1SRUdJU1RSWS1LRVktQ0FOQVJZLTk4NzY1";
    write_file(&config.join("keys/regkey"), file_key, 0o600);
    let listener = Listener::start();
    cli::run(
        &config,
        &[
            "datastore",
            "register",
            "azure-blob",
            "--name",
            "regkey",
            "--account",
            "devstoreaccount1",
            "--container",
            "data",
            "--key-file",
            config.join("keys/regkey").to_str().unwrap(),
            "--endpoint",
            &listener.url,
        ],
    )
    .expect_code(0);
    let store = dir.path().join("store");
    cli::mkdir(&store);
    user.own(&store);
    user.must(&store, "mkdir in && echo user-data > in/u.txt");
    let manifest = cli::write_manifest(
        &work.join("job.json"),
        &json!({
            "datastores": {
                "envkey": {"kind": "azure_blob", "account_name": "devstoreaccount1",
                           "container_name": "data", "endpoint": listener.url,
                           "account_key": {"env": "ADV_ROOT_KEY"}},
                "mine": {"kind": "local", "root": store}
            },
            "data_references": {
                "data": {"datastore": "mine", "path_on_datastore": "in", "mode": "mount"},
                "e": {"datastore": "envkey", "path_on_datastore": "e", "mode": "upload",
                      "path_on_compute": "e-out"},
                "r": {"datastore": "regkey", "path_on_datastore": "r", "mode": "upload",
                      "path_on_compute": "r-out"}
            },
            "command": sh("cat $AZUREML_DATAREFERENCE_data/u.txt > seen; \
                           for p in /proc/[0-9]*; do cat $p/environ; echo; cat $p/cmdline; echo; \
                           done 2>/dev/null | tr '\\0' '\\n' > scan.txt; \
                           mkdir -p e-out r-out && echo x > e-out/f && echo x > r-out/f"),
        }),
    );
    let out = cli::output(
        cli::command()
            .current_dir(&work)
            .env("ADV_ROOT_KEY", env_key)
            .arg("--config-dir")
            .arg(&config)
            .args([
                "run",
                "--no-progress",
                "--run-as",
                &user.run_as(),
                "--job-dir",
            ])
            .arg(dir.path().join("jobs/1"))
            .arg(&manifest),
    );
    // Control: the script ran as the user and saw its data and its own process.
    assert_eq!(
        read(&work.join("seen")),
        "user-data\n",
        "{}",
        out.all_output()
    );
    let scan = read(&work.join("scan.txt"));
    assert!(scan.contains("AZUREML_DATAREFERENCE_data"), "{scan}");
    // The keys were used (with the service), never shown to the user.
    let received = listener.received();
    assert!(
        received
            .to_ascii_lowercase()
            .contains("authorization: sharedkey"),
        "the uploads never reached the listener: {received}\n{}",
        out.all_output()
    );
    for (what, key) in [("the env key", env_key), ("the registry key", file_key)] {
        assert!(
            !scan.contains(key),
            "{what} is readable by the job's user in /proc"
        );
        assert!(!out.all_output().contains(key), "{what} in the output");
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Another user of the allowed group.

/// Two users of the daemon's group: the second can neither see, follow, nor cancel the first's
/// job through the API. Control: the job's own user sees its record and its log, and the job
/// runs to its end.
#[test]
fn another_user_of_the_group_cannot_see_follow_or_cancel_a_users_job() {
    let _serial = serial::lock();
    let owner = user(ATTACKER);
    let stranger = user(STRANGER);
    let shared = common::users::group("dr-adv");
    let area = Area::new();
    let work = area.path("work");
    owner.own(&work);
    std::os::unix::fs::chown(&work, Some(owner.uid), Some(shared)).unwrap();
    cli::mkdir(&area.path("ctl"));
    let _unmount = Unmounter(area.dir.path().to_path_buf());
    // The daemon makes its state directory itself, as on a node (systemd's StateDirectory=
    // makes it 0755).
    std::fs::remove_dir(area.path("state")).unwrap();
    let _daemon = area.daemon(&["--allow-group", &shared.to_string()], &[]);
    let go = area.path("ctl/go");
    let manifest = area.manifest(
        "job.json",
        json!({
            "datastores": {},
            "command": sh(&format!(
                "echo OWNERS-PRIVATE-LINE; {}",
                wait_for(&go, &area.path("ctl/stop"))
            )),
        }),
    );
    let out = area.client_as(owner.uid, shared, &["submit", manifest.to_str().unwrap()]);
    out.expect_code(0);
    let id = out.stdout.trim().to_owned();
    poll("the job's line in its log", JOB_LIMIT, || {
        area.client(&["logs", &id])
            .stdout
            .contains("OWNERS-PRIVATE-LINE")
    });

    // Control: its user sees it.
    let own = area.client_as(owner.uid, shared, &["logs", &id]);
    assert!(own.stdout.contains("OWNERS-PRIVATE-LINE"), "{own:?}");
    let own = area.client_as(owner.uid, shared, &["status"]);
    assert!(own.stdout.contains(&id), "{own:?}");

    let mut problems = Vec::new();
    for args in [
        vec!["status", "--json", id.as_str()],
        vec!["status"],
        vec!["logs", id.as_str()],
        vec!["cancel", id.as_str()],
    ] {
        let out = area.client_as(stranger.uid, shared, &args);
        let shown = if args.len() == 1 {
            out.stdout.contains(&id)
        } else {
            out.code == 0
        };
        if shown || out.all_output().contains("OWNERS-PRIVATE-LINE") {
            problems.push(format!("{args:?} as another user: {out:?}"));
        }
    }
    assert_eq!(area.status(&id)["state"], "running");
    write_file(&go, "", 0o644);
    let record = area.wait_state(&id, ENDED, JOB_LIMIT);
    assert_eq!(record["state"], "succeeded");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// What a user's job leaves in the daemon's state directory (its log with the script's output,
/// its manifest, its record) is not readable by another local user, with the state directory
/// made by the daemon itself (0755 with systemd's `StateDirectory=`, as here). Control: root
/// reads them, and the job's user gets its log through the API.
#[test]
fn a_users_job_files_in_the_daemons_state_directory_are_not_readable_by_other_users() {
    let _serial = serial::lock();
    let owner = user(ATTACKER);
    let stranger = user(STRANGER);
    let area = Area::new();
    owner.own(&area.path("work"));
    std::fs::remove_dir(area.path("state")).unwrap();
    let _daemon = area.daemon(&["--allow-group", &owner.gid.to_string()], &[]);
    let manifest = area.manifest(
        "job.json",
        json!({"datastores": {}, "command": sh("echo OWNERS-PRIVATE-LINE")}),
    );
    let out = area.client_as(
        owner.uid,
        owner.gid,
        &["submit", "--wait", manifest.to_str().unwrap()],
    );
    out.expect_code(0);
    let id = area.job_dirs().pop().expect("a job directory");
    let logs = area.client_as(owner.uid, owner.gid, &["logs", &id]);
    assert!(logs.stdout.contains("OWNERS-PRIVATE-LINE"), "{logs:?}");
    let mut readable = Vec::new();
    for file in [
        "job.log",
        "manifest.json",
        "record.json",
        "runner.log",
        "result.json",
    ] {
        let path = area.path("state/jobs").join(&id).join(file);
        assert!(path.exists(), "{}", path.display());
        let peek = Command::new("cat")
            .arg(&path)
            .uid(stranger.uid)
            .gid(stranger.gid)
            .output()
            .unwrap();
        if peek.status.success() {
            readable.push(file);
        }
    }
    assert!(
        readable.is_empty(),
        "another local user read {readable:?} of a job's files in {}",
        area.path("state/jobs").join(&id).display()
    );
}
