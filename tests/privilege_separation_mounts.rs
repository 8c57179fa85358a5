//! Playing an ordinary user against the root agent (issue 15), continued: mount points swapped
//! for links (nothing is mounted on, or unmounted from, root's places), secrets in the processes
//! the user can look into, and what another user of the allowed group can see. The stage is
//! `common::scene`; see `privilege_separation.rs` for the method.

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use common::azurite::register_keyed;
use common::canary::{Canary, Unmounter, mounts_under, root_dir};
use common::cli::{self, sh, write_file};
use common::daemon::Area;
use common::fs::read;
use common::scene::{ATTACKER, ENDED, JOB_LIMIT, Listener, RunAsArea, STRANGER, Scene, wait_for};
use common::serial;
use common::users::user;
use common::wait::poll;

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
    let dir = RunAsArea::new(&user);
    let work = dir.path("work");
    let config = dir.path("config");
    // base64 of ROOT-ENV-KEY-CANARY-0123456789 and ROOT-REGISTRY-KEY-CANARY-98765.
    let env_key = "Uk9PVC1FTlYtS0VZLUNBTkFSWS0wMTIzNDU2Nzg5";
    let file_key = "Uk9PVC1SRUdJU1RSWS1LRVktQ0FOQVJZLTk4NzY1";
    write_file(&config.join("keys/regkey"), file_key, 0o600);
    let listener = Listener::start();
    let key_file = config.join("keys/regkey");
    let by_file = ("--key-file", key_file.to_str().unwrap());
    register_keyed(&config, "regkey", "data", by_file, &listener.url);
    // The administrator's datastore whose key is in the agent's environment (as a Slurm
    // prolog may pass it): a user's manifest may not name that variable itself.
    let by_env = ("--key-env", "ADV_ROOT_KEY");
    register_keyed(&config, "envkey", "data", by_env, &listener.url);
    let store = dir.path("store");
    user.must(&store, "mkdir in && echo user-data > in/u.txt");
    let manifest = cli::write_manifest(
        &work.join("job.json"),
        &json!({
            "datastores": {"mine": {"kind": "local", "root": store}},
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
            .arg(dir.path("jobs/1"))
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
