//! Identity-based datastores (`"credential": "managed_identity"`) for real: Azurite serving
//! HTTPS with `--oauth basic`, a token endpoint on loopback that hands out tokens living a few
//! seconds, and jobs that outlive them. Both identity protocols dataref meets are exercised:
//! App Service's `IDENTITY_ENDPOINT` (through the `azure_identity` crate) and Azure ML
//! compute's `MSI_ENDPOINT` (dataref's own).

mod common;

use std::path::{Path, PathBuf};
use std::process::Child;

use common::azurite;
use common::cli::{Outcome, command, output, write_file, write_manifest};
use common::secrets::assert_no_secret;
use common::token_server::{HEADER_SECRET, TokenServer};
use serde_json::json;

/// Token lifetime: shorter than each job below.
const TOKEN_SECONDS: u64 = 4;

struct Setup {
    dir: tempfile::TempDir,
    tls: common::tls::TestTls,
    config: PathBuf,
    endpoint: String,
    _azurite: KillOnDrop,
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Setup {
    /// Azurite over HTTPS with OAuth, a container `data` seeded through an account key.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let tls = common::tls::make(&dir.path().join("tls"));
        let (child, port) = azurite::start_https_oauth(&tls.cert, &tls.key);
        let endpoint = format!("https://127.0.0.1:{port}/{}", azurite::ACCOUNT);
        let setup = Self {
            config: dir.path().join("config"),
            dir,
            tls,
            endpoint,
            _azurite: KillOnDrop(child),
        };
        let key = azurite::key_file(setup.dir.path());
        let key = key.to_str().unwrap();
        setup
            .dataref(
                &[],
                &[
                    "datastore",
                    "register",
                    "azure-blob",
                    "--name",
                    "keyed",
                    "--account",
                    azurite::ACCOUNT,
                    "--container",
                    "data",
                    "--key-file",
                    key,
                    "--endpoint",
                    &setup.endpoint,
                    "--create-if-not-exists",
                ],
            )
            .expect_code(0);
        let seed = setup.dir.path().join("seed");
        write_file(&seed.join("in/a.txt"), "first", 0o644);
        write_file(&seed.join("in/b.txt"), "second", 0o644);
        setup
            .dataref(
                &[],
                &[
                    "upload",
                    "--datastore",
                    "keyed",
                    "--no-progress",
                    seed.to_str().unwrap(),
                ],
            )
            .expect_code(0);
        setup
    }

    /// `dataref --config-dir CONFIG ARGS` trusting the test CA, with `env` added.
    fn dataref(&self, env: &[(&str, &str)], args: &[&str]) -> Outcome {
        let mut cmd = command();
        cmd.current_dir(self.dir.path())
            .env("SSL_CERT_FILE", &self.tls.ca)
            .envs(env.iter().copied())
            .arg("--config-dir")
            .arg(&self.config)
            .args(args);
        output(&mut cmd)
    }

    fn register_identity(&self, name: &str, endpoint: &str, client_id: Option<&str>) {
        let mut args = vec![
            "datastore",
            "register",
            "azure-blob",
            "--name",
            name,
            "--account",
            azurite::ACCOUNT,
            "--container",
            "data",
            "--managed-identity",
            "--endpoint",
            endpoint,
        ];
        if let Some(id) = client_id {
            args.extend(["--client-id", id]);
        }
        self.dataref(&[], &args).expect_code(0);
    }

    /// What the keyed datastore holds under `prefix`, downloaded.
    fn stored(&self, prefix: &str) -> PathBuf {
        let target = self
            .dir
            .path()
            .join(format!("check-{}", prefix.replace('/', "_")));
        self.dataref(
            &[],
            &[
                "download",
                "--datastore",
                "keyed",
                "--prefix",
                prefix,
                "--target-path",
                target.to_str().unwrap(),
                "--no-progress",
            ],
        )
        .expect_code(0);
        target
    }

    fn job(&self, name: &str, references: serde_json::Value, script: &str) -> PathBuf {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        write_manifest(
            &dir.join("job.json"),
            &json!({"data_references": references, "command": ["sh", "-c", script]}),
        )
    }
}

fn no_token_in(outcome: &Outcome, job_dir: &Path, tokens: &[String]) {
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    assert_no_secret(&outcome.all_output(), &tokens, "the output");
    for file in ["job.log", "result.json"] {
        let text = std::fs::read_to_string(job_dir.join(".dataref").join(file)).unwrap();
        assert_no_secret(&text, &tokens, file);
    }
}

// App Service's protocol, through `azure_identity`: a download before the script and an upload
// after it, with a token's whole life between them.
#[test]
fn a_job_on_an_identity_datastore_outlives_its_tokens() {
    let setup = Setup::new();
    let tokens = TokenServer::start(TOKEN_SECONDS);
    setup.register_identity("by_identity", &setup.endpoint, None);
    let job = setup.job(
        "app_service",
        json!({
            "inputs": {"datastore": "by_identity", "path_on_datastore": "in", "mode": "download"},
            "outputs": {"datastore": "by_identity", "path_on_datastore": "out/app",
                        "mode": "upload", "path_on_compute": "outputs"},
        }),
        &format!(
            "mkdir -p outputs && cat $AZUREML_DATAREFERENCE_inputs/a.txt > outputs/copy.txt && sleep {}",
            TOKEN_SECONDS + 2
        ),
    );
    let env = [
        ("IDENTITY_ENDPOINT", tokens.url.as_str()),
        ("IDENTITY_HEADER", HEADER_SECRET),
    ];
    let outcome = setup.dataref(&env, &["run", "--no-progress", job.to_str().unwrap()]);
    assert_eq!(outcome.code, 0, "{}", outcome.all_output());
    let stored = setup.stored("out/app");
    assert_eq!(
        std::fs::read_to_string(stored.join("out/app/copy.txt")).unwrap(),
        "first"
    );
    // The token used for the download was dead by the upload: a fresh one was fetched.
    assert!(
        tokens.requests().len() >= 2,
        "{:?}",
        tokens.requests().len()
    );
    no_token_in(&outcome, job.parent().unwrap(), &tokens.tokens());
}

// Azure ML compute's protocol (dataref's own client): a mount read before and after a token
// expired; a user-assigned identity's client ID is passed on; tokens are cached, not fetched
// per request.
#[test]
fn a_mount_through_azure_ml_compute_identity_refreshes_and_caches_tokens() {
    let setup = Setup::new();
    let tokens = TokenServer::start(TOKEN_SECONDS);
    setup.register_identity("ml_identity", &setup.endpoint, Some("cid-1234"));
    let job = setup.job(
        "azure_ml",
        json!({"data": {"datastore": "ml_identity", "path_on_datastore": "in", "mode": "mount"}}),
        &format!(
            "set -e; d=$AZUREML_DATAREFERENCE_data; test \"$(cat $d/a.txt)\" = first; \
             sleep {}; test \"$(cat $d/b.txt)\" = second; ls $d > listing.txt",
            TOKEN_SECONDS + 2
        ),
    );
    let env = [
        ("MSI_ENDPOINT", tokens.url.as_str()),
        ("MSI_SECRET", HEADER_SECRET),
    ];
    let started = std::time::Instant::now();
    let outcome = setup.dataref(&env, &["run", "--no-progress", job.to_str().unwrap()]);
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(outcome.code, 0, "{}", outcome.all_output());
    let requests = tokens.requests();
    assert!(
        requests.len() >= 2,
        "one token cannot have served the whole job"
    );
    // Refreshed at half a token's life: at most one fetch per half-life of the job's own time
    // (however slow the machine) plus the first; not one per storage request.
    let bound = (elapsed / (TOKEN_SECONDS as f64 / 2.0)).ceil() as usize + 1;
    assert!(
        requests.len() <= bound,
        "{} token requests in {elapsed:.1} s",
        requests.len()
    );
    assert!(
        requests
            .iter()
            .all(|r| r.query.contains("clientid=cid-1234")),
        "{requests:?}"
    );
    assert!(
        requests
            .iter()
            .all(|r| r.query.contains("api-version=2017-09-01"))
    );
    no_token_in(&outcome, job.parent().unwrap(), &tokens.tokens());
}

// A token never travels in clear: an http endpoint is refused before any token is fetched.
#[test]
fn an_identity_token_is_never_sent_over_plain_http() {
    let setup = Setup::new();
    let tokens = TokenServer::start(TOKEN_SECONDS);
    let plain = setup.endpoint.replacen("https://", "http://", 1);
    setup.register_identity("plain", &plain, None);
    let job = setup.job(
        "plain",
        json!({"inputs": {"datastore": "plain", "path_on_datastore": "in", "mode": "download"}}),
        "true",
    );
    let env = [
        ("IDENTITY_ENDPOINT", tokens.url.as_str()),
        ("IDENTITY_HEADER", HEADER_SECRET),
    ];
    let outcome = setup.dataref(&env, &["run", "--no-progress", job.to_str().unwrap()]);
    assert_ne!(outcome.code, 0);
    assert!(
        outcome.all_output().contains("HTTPS only"),
        "{}",
        outcome.all_output()
    );
    assert!(
        tokens.requests().is_empty(),
        "a token was fetched for an http endpoint"
    );
}
