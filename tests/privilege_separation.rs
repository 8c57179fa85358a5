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

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use common::canary::{Canary, files_containing, fingerprint, root_dir};
use common::cli::{self, sh, write_file};
use common::fs::read;
use common::scene::{ATTACKER, Listener, RunAsArea, Scene};
use common::serial;
use common::users::user;

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
        let what = format!("{name}: root's folder behind the swapped path");
        problems.extend(s.swapped_while_queued(&manifest, &swap, &canary, &what));
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
    let what = "root's folder behind the swapped working directory";
    problems.extend(s.swapped_while_queued(&manifest, &swap, &canary, what));
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
    never_sent_roots_sas(&s, &attack, &id, &record);
}

/// Root's SAS reached neither the endpoint the user named nor anything the user can see of the
/// job.
fn never_sent_roots_sas(s: &Scene, endpoint: &Listener, id: &str, record: &Value) {
    assert!(
        !endpoint.received().contains("ROOTSIGNATURE"),
        "root's SAS was sent to the user's endpoint (job {}): {}",
        record["state"],
        endpoint.received()
    );
    assert!(!s.visible_to_user(id).contains("ROOTSIGNATURE"));
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
    never_sent_roots_sas(&s, &attack, &id, &record);
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
    let dir = RunAsArea::new(&user);
    let (work, store) = (dir.path("work"), dir.path("store"));
    user.must(&store, "mkdir in && echo user-data > in/u.txt");
    let targets = root_dir(
        &dir.path("root-files"),
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
            .arg(dir.path("config"))
            .args(["run", "--no-progress", "--run-as", &user.run_as()])
            .args(extra);
        if let Some(job_dir) = job_dir {
            command.arg("--job-dir").arg(job_dir);
        }
        cli::output(command.arg(&manifest))
    };
    let run = |job_dir: Option<&Path>| run_with(job_dir, &[]);

    // Control: a job directory only root controls.
    let out = run(Some(&dir.path("root-jobs/1")));
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
        Some(&dir.path("root-jobs/2")),
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
