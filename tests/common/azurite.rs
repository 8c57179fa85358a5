//! Azurite, the official Azure Storage emulator, started by the tests themselves.
//!
//! `scripts/test` installs it (npm, `azurite@3.35.0`) and exports `DATAREF_AZURITE_BLOB`; when
//! run by hand, the binary is looked up in `.tools/azurite`. If it cannot be found or does not
//! start, the test fails: Blob tests are never skipped.
//!
//! One instance per test binary, on a free loopback port, in memory. It is spawned from a
//! thread that never exits, with `PR_SET_PDEATHSIG`, so it dies with the test process.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dataref::model::{AzureLocation, Credential, SecretRef};
use dataref::store::Store;
use dataref::store::azure::blob::BlobStore;

pub const ACCOUNT: &str = "devstoreaccount1";
/// Azurite's published development key (not a secret).
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

pub struct Azurite {
    pub port: u16,
}

impl Azurite {
    /// The blob service URL, e.g. `http://127.0.0.1:41234/devstoreaccount1`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }
}

fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("DATAREF_AZURITE_BLOB") {
        return PathBuf::from(path);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/azurite/node_modules/.bin/azurite-blob")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts a new Azurite (blob service only) and waits until it accepts connections.
pub fn start_new(location: Option<&std::path::Path>) -> (std::process::Child, u16) {
    start_at(free_port(), location)
}

/// Starts an Azurite on `port` (a restart reuses its predecessor's port).
pub fn start_at(port: u16, location: Option<&std::path::Path>) -> (std::process::Child, u16) {
    start_with(port, location, &[])
}

/// An Azurite serving HTTPS with `cert`/`key` and accepting OAuth tokens (`--oauth basic`: the
/// issuer, audience and lifetime are checked, not the signature).
pub fn start_https_oauth(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> (std::process::Child, u16) {
    let args = [
        "--oauth".to_owned(),
        "basic".to_owned(),
        "--cert".to_owned(),
        cert.display().to_string(),
        "--key".to_owned(),
        key.display().to_string(),
    ];
    start_with(free_port(), None, &args)
}

/// Starts an Azurite on `port` with `extra` arguments.
pub fn start_with(
    port: u16,
    location: Option<&std::path::Path>,
    extra: &[String],
) -> (std::process::Child, u16) {
    let bin = binary();
    assert!(
        bin.exists(),
        "Azurite not found at {} — run scripts/test (it installs azurite@3.35.0) or set \
         DATAREF_AZURITE_BLOB",
        bin.display()
    );
    let mut command = Command::new(&bin);
    command
        .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
        .args([
            "--skipApiVersionCheck",
            "--loose",
            "--silent",
            "--disableTelemetry",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match location {
        Some(dir) => command.args(["--location", dir.to_str().unwrap()]),
        None => command.arg("--inMemoryPersistence"),
    };
    // SAFETY: prctl only, between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start Azurite ({}): {e}", bin.display()));
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            let mut stderr = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .ok();
            panic!("Azurite exited at start ({status}): {stderr}");
        }
        assert!(
            Instant::now() < deadline,
            "Azurite did not start within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, port)
}

/// The test binary's shared instance.
pub fn shared() -> &'static Azurite {
    static INSTANCE: OnceLock<Azurite> = OnceLock::new();
    INSTANCE.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        // PDEATHSIG follows the spawning thread: this one lives as long as the process.
        std::thread::spawn(move || {
            let (child, port) = start_new(None);
            tx.send(port).unwrap();
            let _keep = child;
            loop {
                std::thread::park();
            }
        });
        Azurite {
            port: rx.recv().expect("Azurite failed to start"),
        }
    })
}

/// An Azurite of a test's own, persisting to a `--location` directory, that the test can kill
/// (SIGKILL, as a crash) and start again on the same port with the same data. The process is
/// owned by a thread that lives as long as the test binary, so `PR_SET_PDEATHSIG` (which
/// follows the spawning thread) does not fire between restarts.
pub struct Restartable {
    pub port: u16,
    commands: std::sync::mpsc::Sender<(Control, std::sync::mpsc::Sender<()>)>,
}

enum Control {
    Kill,
    Start,
}

impl Restartable {
    pub fn start(location: &std::path::Path) -> Self {
        let location = location.to_path_buf();
        let (commands, received) =
            std::sync::mpsc::channel::<(Control, std::sync::mpsc::Sender<()>)>();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (child, port) = start_new(Some(&location));
            tx.send(port).unwrap();
            let mut child = Some(child);
            for (control, done) in received {
                match control {
                    Control::Kill => {
                        if let Some(mut running) = child.take() {
                            running.kill().unwrap();
                            running.wait().unwrap();
                        }
                    }
                    Control::Start => {
                        if child.is_none() {
                            child = Some(start_at(port, Some(&location)).0);
                        }
                    }
                }
                let _ = done.send(());
            }
            // The test is done with it.
            if let Some(mut running) = child {
                let _ = running.kill();
                let _ = running.wait();
            }
        });
        Self {
            port: rx.recv().expect("Azurite failed to start"),
            commands,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    fn control(&self, control: Control) {
        let (done, wait) = std::sync::mpsc::channel();
        self.commands.send((control, done)).unwrap();
        wait.recv().unwrap();
    }

    /// SIGKILL, waited for: the port refuses connections when this returns.
    pub fn kill(&self) {
        self.control(Control::Kill);
    }

    /// Starts it again on the same port; returns once it accepts connections.
    pub fn restart(&self) {
        self.control(Control::Start);
    }
}

/// Azurite saves its metadata (LokiJS, `autosaveInterval: 5000`) every 5 s: what was written
/// less than that before a SIGKILL is lost with it. Tests that kill it wait this long after
/// setting up the data they read back.
pub const PERSIST_INTERVAL: Duration = Duration::from_secs(6);

/// An account SAS for the blob service (read, add, create, write, delete, list), expiring at
/// `expiry` (`2035-01-01T00:00:00Z` form).
pub fn account_sas(expiry: &str) -> String {
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD
        .decode(KEY)
        .unwrap();
    let (permissions, services, resource_types, version) = ("racwdl", "b", "sco", "2025-01-05");
    let string_to_sign = [
        ACCOUNT,
        permissions,
        services,
        resource_types,
        "",
        expiry,
        "",
        "",
        version,
        "",
        "",
    ]
    .join("\n");
    let signature = dataref::store::azure::auth::hmac_sha256_b64(&key, &string_to_sign);
    let encode = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    format!(
        "sv={version}&ss={services}&srt={resource_types}&sp={permissions}&se={}&sig={}",
        encode(expiry),
        encode(&signature)
    )
}

/// A container name no other test of this run uses.
pub fn unique_container(prefix: &str) -> String {
    super::data::unique_name(prefix)
}

/// The account key in a file of mode 0600 under `dir`.
pub fn key_file(dir: &std::path::Path) -> PathBuf {
    super::secrets::secret_file(dir, "account.key", KEY)
}

/// A blob store with a fresh container of its own (created) on `endpoint` (Azurite, or a proxy
/// in front of it), authenticated with the account key written under `dir`.
pub async fn fresh_store(endpoint: &str, dir: &std::path::Path, prefix: &str) -> BlobStore {
    let location = AzureLocation {
        account_name: ACCOUNT.into(),
        container: unique_container(prefix),
        endpoint: Some(endpoint.to_owned()),
        credential: Credential::AccountKey(SecretRef::File(key_file(dir))),
    };
    let store = BlobStore::new(
        &location,
        endpoint,
        &dataref::store::Resources::new(64 * 1024 * 1024),
    )
    .unwrap();
    store.create_container().await.unwrap();
    store
}

/// `datastore register azure-blob` of `container` at `endpoint` (Azurite, or a proxy in front of
/// it) with the key file `key`, as `name`; must succeed (storage is not contacted).
pub fn register(
    config_dir: &std::path::Path,
    name: &str,
    container: &str,
    key: &std::path::Path,
    endpoint: &str,
) {
    register_keyed(
        config_dir,
        name,
        container,
        ("--key-file", key.to_str().unwrap()),
        endpoint,
    );
}

/// [`register`] with the key given as `(flag, value)`: `--key-file PATH` or `--key-env VAR`.
pub fn register_keyed(
    config_dir: &std::path::Path,
    name: &str,
    container: &str,
    (key_flag, key): (&str, &str),
    endpoint: &str,
) {
    super::cli::run(
        config_dir,
        &[
            "datastore",
            "register",
            "azure-blob",
            "--name",
            name,
            "--account",
            ACCOUNT,
            "--container",
            container,
            key_flag,
            key,
            "--endpoint",
            endpoint,
        ],
    )
    .expect_code(0);
}

/// The container a blob store works on.
pub fn container_of(store: &BlobStore) -> String {
    store.describe().rsplit('/').next().unwrap().to_owned()
}

/// The Azure ML SDKs' Python (`DATAREF_AZUREML_PYTHON`, set by `scripts/test`, or
/// `.tools/azureml-sdk`): it also has the Azure Storage SDK (`azure-storage-blob`).
pub fn sdk_python() -> PathBuf {
    let path = std::env::var_os("DATAREF_AZUREML_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/azureml-sdk/bin/python")
        });
    assert!(
        path.exists(),
        "the Azure ML SDKs are not installed at {} (scripts/test installs them)",
        path.display()
    );
    path
}

/// A blob store on `container` of the shared Azurite, with the account key in `key`.
pub fn keyed_store(container: &str, key: &std::path::Path) -> BlobStore {
    let endpoint = shared().endpoint();
    let location = AzureLocation {
        account_name: ACCOUNT.into(),
        container: container.to_owned(),
        endpoint: Some(endpoint.clone()),
        credential: Credential::AccountKey(SecretRef::File(key.to_path_buf())),
    };
    BlobStore::new(
        &location,
        &endpoint,
        &dataref::store::Resources::new(64 * 1024 * 1024),
    )
    .unwrap()
}
