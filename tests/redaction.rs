//! Secrets never leave dataref: a sweep over every channel it writes to or hands on — the
//! terminal (plain and JSON logs at `RUST_LOG=trace`, where the HTTP pipeline logs requests),
//! `job.log`, `result.json`, the daemon's API answers and its own log, the script's
//! environment, and the command line of every process alive while the job runs (`ps`) — for a
//! job that succeeds and for one that fails against the service with a wrong key and a forged
//! SAS (whose errors carry URLs and status lines).
//!
//! What counts as a secret: the account key, the SAS token's signature (raw and URL-encoded),
//! and the `Authorization: SharedKey <account>:<signature>` value dataref computes per request.

mod common;

use common::fs::read;
use common::secrets::{sas_expiry, sas_signature, secret_file};

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{azurite, cli};
use dataref::model::ObjectPath;
use dataref::model::{AzureLocation, Credential, SecretRef};
use dataref::store::azure::blob::BlobStore;
use dataref::store::{PutOptions, Store};
use serde_json::{Value, json};

/// The secrets of one test, with the forms in which each could leak.
struct Secrets(Vec<(String, &'static str)>);

impl Secrets {
    fn add(&mut self, value: &str, what: &'static str) {
        self.0.push((value.to_owned(), what));
        let encoded =
            percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        if encoded != value {
            self.0.push((encoded, what));
        }
    }

    #[track_caller]
    fn assert_absent(&self, channel: &str, text: &str) {
        assert!(!text.is_empty(), "{channel} is empty: nothing was checked");
        for (secret, what) in &self.0 {
            assert!(
                !text.contains(secret.as_str()),
                "the {what} leaked into {channel}"
            );
        }
        // Whatever key signed it, a SharedKey authorization value is a credential.
        assert!(
            !text.contains(&format!("SharedKey {}:", azurite::ACCOUNT)),
            "an Authorization header value leaked into {channel}"
        );
    }
}

/// Two containers with one input blob each: `keyed` (account key) and `signed` (SAS).
struct Setup {
    dir: tempfile::TempDir,
    keyed: String,
    signed: String,
    key_file: PathBuf,
    sas: String,
    sas_file: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let key_file = secret_file(&keys, "account.key", azurite::KEY);
    let sas = azurite::account_sas(&sas_expiry(3600));
    let sas_file = secret_file(&keys, "container.sas", &sas);
    let keyed = azurite::unique_container("keyed");
    let signed = azurite::unique_container("signed");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        for container in [&keyed, &signed] {
            let endpoint = azurite::shared().endpoint();
            let store = BlobStore::new(
                &AzureLocation {
                    account_name: azurite::ACCOUNT.into(),
                    container: container.clone(),
                    endpoint: Some(endpoint.clone()),
                    credential: Credential::AccountKey(SecretRef::File(key_file.clone())),
                },
                &endpoint,
                &dataref::store::Resources::new(64 * 1024 * 1024),
            )
            .unwrap();
            store.create_container().await.unwrap();
            store
                .put(
                    &ObjectPath::parse("data/x.txt").unwrap(),
                    b"input\n".to_vec().into(),
                    &PutOptions::default(),
                )
                .await
                .unwrap();
        }
    });
    Setup {
        dir,
        keyed,
        signed,
        key_file,
        sas,
        sas_file,
    }
}

impl Setup {
    fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    fn secrets(&self) -> Secrets {
        let mut secrets = Secrets(Vec::new());
        secrets.add(azurite::KEY, "account key");
        secrets.add(&sas_signature(&self.sas), "SAS signature");
        secrets
    }

    fn blob_datastore(&self, container: &str, credential: Value) -> Value {
        let mut datastore = json!({"kind": "azure_blob", "account_name": azurite::ACCOUNT,
                                   "container_name": container,
                                   "endpoint": azurite::shared().endpoint()});
        for (k, v) in credential.as_object().unwrap() {
            datastore[k] = v.clone();
        }
        datastore
    }

    /// A job that downloads with the key, mounts and uploads with the SAS, and whose script
    /// records what it was given: its environment and every process's command line.
    fn manifest(&self, name: &str, sas_credential: Value) -> PathBuf {
        let manifest = json!({
            "datastores": {
                "keyed": self.blob_datastore(&self.keyed, json!({"account_key": {"file": self.key_file}})),
                "signed": self.blob_datastore(&self.signed, sas_credential),
            },
            "data_references": {
                "inp": {"datastore": "keyed", "path_on_datastore": "data", "mode": "download"},
                "mnt": {"datastore": "signed", "path_on_datastore": "data", "mode": "mount"},
                "out": {"datastore": "signed", "path_on_datastore": "runs/1", "mode": "upload",
                        "path_on_compute": "outputs"}
            },
            "command": ["sh", "-c",
                "mkdir -p outputs seen && env > seen/env.txt && \
                 tr '\\0' '\\n' < /proc/self/environ > seen/environ.txt && \
                 ps -eo pid,args > seen/ps.txt && \
                 cat \"$AZUREML_DATAREFERENCE_mnt/x.txt\" \"$AZUREML_DATAREFERENCE_inp/x.txt\" \
                 > outputs/both.txt"]
        });
        cli::write_manifest(&self.path("work").join(name), &manifest)
    }

    /// Checks what the script recorded and what the job wrote.
    fn assert_job_clean(&self, secrets: &Secrets, work: &Path, job_dir: &Path, label: &str) {
        assert_eq!(read(&work.join("outputs/both.txt")), "input\ninput\n");
        for seen in ["env.txt", "environ.txt", "ps.txt"] {
            secrets.assert_absent(
                &format!("{label}: the script's {seen}"),
                &read(&work.join("seen").join(seen)),
            );
        }
        let ps = read(&work.join("seen/ps.txt"));
        assert!(ps.contains("dataref"), "ps saw dataref itself:\n{ps}");
        secrets.assert_absent(
            &format!("{label}: job.log"),
            &read(&job_dir.join("job.log")),
        );
        secrets.assert_absent(
            &format!("{label}: result.json"),
            &read(&job_dir.join("result.json")),
        );
    }
}

fn run_job(setup: &Setup, manifest: &Path, log_format: Option<&str>) -> cli::Outcome {
    let mut command = cli::command();
    command
        .current_dir(setup.path("work"))
        .arg("--config-dir")
        .arg(setup.path("config"))
        .args(["run", "--no-progress"])
        .arg(manifest)
        .env("RUST_LOG", "trace");
    if let Some(format) = log_format {
        command.env("DATAREF_LOG_FORMAT", format);
    }
    cli::output(&mut command)
}

/// `dataref run`: plain and JSON logs at trace level, a SAS from the environment (which must
/// then be withheld from the script) and from a file.
#[test]
fn a_successful_job_leaks_no_secret_anywhere() {
    let setup = setup();
    std::fs::create_dir_all(setup.path("work")).unwrap();
    let secrets = setup.secrets();
    let work = setup.path("work");
    let job_dir = work.join(".dataref");

    let from_env = setup.manifest(
        "env.json",
        json!({"sas_token": {"env": "REDACTION_TEST_SAS"}}),
    );
    let mut command = cli::command();
    command
        .current_dir(&work)
        .arg("--config-dir")
        .arg(setup.path("config"))
        .args(["run", "--no-progress"])
        .arg(&from_env)
        .env("RUST_LOG", "trace")
        .env("REDACTION_TEST_SAS", &setup.sas);
    let out = cli::output(&mut command);
    out.expect_code(0);
    // The trace really logged HTTP traffic, so the check below covers request logging.
    assert!(
        out.stderr.contains(&setup.signed),
        "no request was logged at trace level:\n{}",
        out.stderr
    );
    secrets.assert_absent("the terminal (plain logs)", &out.all_output());
    setup.assert_job_clean(&secrets, &work, &job_dir, "SAS from env");
    assert!(
        !read(&work.join("seen/env.txt")).contains("REDACTION_TEST_SAS="),
        "the variable holding a secret was passed to the script"
    );

    let from_file = setup.manifest("file.json", json!({"sas_token": {"file": setup.sas_file}}));
    let out = run_job(&setup, &from_file, Some("json"));
    out.expect_code(0);
    assert!(out.stderr.trim_start().starts_with('{'), "{}", out.stderr);
    secrets.assert_absent("the terminal (JSON logs)", &out.all_output());
    setup.assert_job_clean(&secrets, &work, &job_dir, "SAS from file");
}

/// A wrong account key and a forged SAS: the service answers 403, the errors name the request
/// (URLs, status) — and still carry neither credential.
#[test]
fn failing_requests_report_errors_without_their_credentials() {
    let setup = setup();
    std::fs::create_dir_all(setup.path("work")).unwrap();
    let keys = setup.path("keys");
    // A well-formed key and a SAS with a well-formed signature, both wrong.
    let wrong_key = "d3JvbmctYnV0LXdlbGwtZm9ybWVkLWFjY291bnQta2V5LWZvci1henVyaXRlLXRlc3Q=";
    let forged_sig = "Zm9yZ2VkLXNpZ25hdHVyZS10aGF0LWF6dXJpdGUtcmVmdXNlcw==";
    let mut forged_sas = setup.sas.split("&sig=").next().unwrap().to_owned();
    forged_sas.push_str(&format!(
        "&sig={}",
        percent_encoding::utf8_percent_encode(forged_sig, percent_encoding::NON_ALPHANUMERIC)
    ));
    let wrong_key_file = secret_file(&keys, "wrong.key", wrong_key);
    let forged_file = secret_file(&keys, "forged.sas", &forged_sas);
    let mut secrets = setup.secrets();
    secrets.add(wrong_key, "wrong account key");
    secrets.add(forged_sig, "forged SAS signature");
    let work = setup.path("work");

    for (name, datastore) in [
        (
            "wrong-key.json",
            json!({"account_key": {"file": wrong_key_file}}),
        ),
        (
            "forged-sas.json",
            json!({"sas_token": {"file": forged_file}}),
        ),
    ] {
        let manifest = json!({
            "datastores": {"bad": setup.blob_datastore(&setup.keyed, datastore)},
            "data_references": {
                "inp": {"datastore": "bad", "path_on_datastore": "data", "mode": "download"}
            },
            "command": ["true"]
        });
        let path = cli::write_manifest(&work.join(name), &manifest);
        let out = run_job(&setup, &path, None);
        out.expect_code(69);
        assert!(
            out.all_output().contains("403") || out.all_output().contains("uthentication"),
            "{name}: the error says what the service answered:\n{}",
            out.all_output()
        );
        secrets.assert_absent(&format!("{name}: the terminal"), &out.all_output());
        let job_dir = work.join(".dataref");
        secrets.assert_absent(&format!("{name}: job.log"), &read(&job_dir.join("job.log")));
        secrets.assert_absent(
            &format!("{name}: result.json"),
            &read(&job_dir.join("result.json")),
        );
    }
}

/// The daemon: its answers (submit, status, logs), its own log and the job record, and the runner
/// and script it starts (their command lines and the script's environment).
#[test]
fn the_daemon_and_its_jobs_leak_no_secret() {
    let setup = setup();
    for sub in ["work", "config", "state"] {
        std::fs::create_dir_all(setup.path(sub)).unwrap();
    }
    let secrets = setup.secrets();
    let socket = setup.path("run/dataref.sock");
    let daemon_log = setup.path("daemon.stderr");
    let mut daemon = cli::command()
        .arg("--config-dir")
        .arg(setup.path("config"))
        .arg("daemon")
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(setup.path("state"))
        .env("RUST_LOG", "trace")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&daemon_log).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no daemon socket"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let client = |args: &[&str]| {
        let mut command = cli::command();
        command
            .current_dir(setup.path("work"))
            .arg(args[0])
            .arg("--socket")
            .arg(&socket)
            .args(&args[1..]);
        cli::output(&mut command)
    };

    let manifest = setup.manifest("job.json", json!({"sas_token": {"file": setup.sas_file}}));
    let submitted = client(&["submit", "--wait", manifest.to_str().unwrap()]);
    let status = client(&["status", "--json"]);
    submitted.expect_code(0);
    status.expect_code(0);
    let jobs = status.json();
    let id = jobs["jobs"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("a job id in {jobs:#}"))
        .to_owned();
    let one = client(&["status", "--json", &id]);
    let logs = client(&["logs", &id]);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = daemon.wait();
    one.expect_code(0);
    logs.expect_code(0);
    secrets.assert_absent(
        "submit --wait (the job's log, followed)",
        &submitted.all_output(),
    );
    secrets.assert_absent("status --json", &status.all_output());
    secrets.assert_absent("status --json ID", &one.all_output());
    secrets.assert_absent("logs ID", &logs.all_output());
    let job_dir = setup.path("state/jobs").join(&id);
    setup.assert_job_clean(&secrets, &setup.path("work"), &job_dir, "daemon job");
    let ps = read(&setup.path("work/seen/ps.txt"));
    assert!(
        ps.contains("--job-dir"),
        "ps saw the daemon's runner:\n{ps}"
    );
    secrets.assert_absent("the daemon's log", &read(&daemon_log));
    secrets.assert_absent("the job record", &read(&job_dir.join("record.json")));
}
