//! The command line: a thin layer that reads flags and environment once, calls the library,
//! and turns its typed errors into messages and exit codes (`exit`, the one place that
//! decides them).

mod cleanup;
mod daemon;
mod datastore;
mod datastore_yaml;
pub mod exit;
mod mount;
mod run;
mod transfer;
mod validate;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::registry::Registry;
use exit::{CliError, ExitCode};

pub const DEFAULT_CONFIG_DIR: &str = "/etc/dataref";

/// dataref: makes a training job's data references available on the compute node.
///
/// A job manifest names data references (a path in a datastore and a mode: mount, download or
/// upload). dataref validates the whole manifest before touching anything, makes each input
/// available, runs the job's command with AZUREML_DATAREFERENCE_<name> variables, and uploads
/// the outputs when it exits.
///
/// Exit codes: 0 success, 64 usage, 65 invalid manifest or datastore, 66 missing manifest or
/// input, 69 storage or mount failure, 74 local I/O failure, 75 stage-out failure after a
/// successful script, 77 refused by the daemon; otherwise the script's own code, or 128+N for
/// signal N.
#[derive(Debug, Parser)]
#[command(name = "dataref", version, max_term_width = 100)]
pub struct Cli {
    /// Directory holding datastores.json and keys/.
    #[arg(
        long,
        global = true,
        env = "DATAREF_CONFIG_DIR",
        default_value = DEFAULT_CONFIG_DIR,
        value_name = "DIR"
    )]
    pub config_dir: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a job: validate, fetch inputs, run the command, upload outputs.
    ///
    /// Exits with the script's code (128+N if signal N killed it). SIGTERM, SIGINT and SIGHUP
    /// are forwarded to the script; outputs are still uploaded (upload_policy).
    Run(run::Args),
    /// Check a job (manifest, Azure ML v1 or v2 document) and print the resolved plan, without
    /// side effects.
    ///
    /// Prints, per data reference: datastore, mode, remote path, the absolute local path and
    /// the variable the script receives. On errors, prints every problem with its JSON path and
    /// exits 65.
    Validate(validate::Args),
    /// Register, list, inspect and remove datastores (the registry).
    #[command(subcommand)]
    Datastore(datastore::Command),
    /// Upload a directory's contents, or files, to a datastore (ds.upload / ds.upload_files).
    Upload(transfer::UploadArgs),
    /// Download a directory or object from a datastore (ds.download).
    Download(transfer::DownloadArgs),
    /// Mount a datastore path read-only, in the foreground until signalled or unmounted.
    Mount(mount::Args),
    /// Remove dead dataref mounts (a Slurm epilog, a unit's ExecStartPre).
    ///
    /// A dataref mount is dead when the process that served it is gone, or when the kernel
    /// answers ENOTCONN for it; it is removed with a lazy unmount. Live mounts (another running
    /// job's) and other filesystems are never touched. Exits 0 when no dead mount is left, 74
    /// when one could not be removed (unmounting needs root).
    Cleanup,
    /// Run as a service: accept jobs on a Unix socket and run each as its submitter.
    ///
    /// Under systemd (Type=notify) it reports READY, STATUS and WATCHDOG. SIGTERM stops intake,
    /// signals running scripts, waits their grace period, uploads their outputs and exits 0.
    Daemon(daemon::DaemonArgs),
    /// Submit a job to the daemon; prints its id (with --wait: follows its log and exits with
    /// the job's exit code).
    Submit(daemon::SubmitArgs),
    /// Show the daemon's jobs, or one job.
    Status(daemon::StatusArgs),
    /// Cancel a job: a queued one at once, a running one like a preemption (SIGTERM, grace,
    /// outputs uploaded).
    Cancel(daemon::CancelArgs),
    /// Print a job's log (--follow: until it ends).
    Logs(daemon::LogsArgs),
}

/// Library backtraces off unless asked for explicitly. The Azure SDK builds an error, with a
/// backtrace when `RUST_BACKTRACE` is set, for every optional header a response lacks: several
/// per request, 4–5% of a mount's CPU. `RUST_LIB_BACKTRACE=0` stops those captures and leaves
/// panic backtraces as `RUST_BACKTRACE` says. The script never sees the variable (`job::env`).
fn quiet_library_backtraces() {
    use crate::job::env::OWN_LIB_BACKTRACE;
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: called first thing in main, before any other thread exists.
        unsafe {
            std::env::set_var("RUST_LIB_BACKTRACE", "0");
            std::env::set_var(OWN_LIB_BACKTRACE, "1");
        }
    }
}

/// Large buffers are mmapped and unmapped, always. glibc otherwise raises its mmap threshold to
/// the size of each large block freed (up to 32 MiB) and serves later windows from its arenas,
/// which keep freed memory: resident memory then grows far past what the budget lets the job
/// hold. The buffer pool (`fs::buffers`) is what keeps the page faults of fresh maps rare.
/// Four arenas are plenty for the runtime's threads and bound the same effect across them.
fn bound_the_allocator() {
    // SAFETY: mallopt only changes allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}

/// Parses the command line, runs the command and returns the process exit code.
pub fn main() -> i32 {
    // The user-side process of a job run as another user (see `localfs`): no CLI, no runtime.
    if std::env::args_os().nth(1).as_deref() == Some(crate::localfs::USER_SIDE_ARG.as_ref()) {
        return crate::localfs::user_side_main();
    }
    bound_the_allocator();
    quiet_library_backtraces();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            let _ = e.print();
            // Only an explicit --help/--version succeeds; help shown because a subcommand
            // is missing is a usage error.
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => 0,
                _ => ExitCode::Usage.code(),
            };
        }
    };
    init_logging();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("dataref: error: {error}");
            error.exit_code().code()
        }
    }
}

fn run(cli: Cli) -> Result<i32, CliError> {
    match cli.command {
        Command::Run(args) => run::run(&cli.config_dir, args),
        Command::Validate(args) => validate::run(&cli.config_dir, args),
        Command::Upload(args) => transfer::upload(&cli.config_dir, args),
        Command::Download(args) => transfer::download(&cli.config_dir, args),
        Command::Mount(args) => mount::run(&cli.config_dir, args),
        Command::Cleanup => cleanup::run(&cli.config_dir),
        Command::Daemon(args) => daemon::daemon(&cli.config_dir, args),
        Command::Submit(args) => daemon::submit(args),
        Command::Status(args) => daemon::status(args),
        Command::Cancel(args) => daemon::cancel(args),
        Command::Logs(args) => daemon::logs(args),
        Command::Datastore(command) => datastore::run(&cli.config_dir, command),
    }
}

/// Logs go to stderr; `RUST_LOG` filters them, `DATAREF_LOG_FORMAT=json` makes them JSON.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("DATAREF_LOG_FORMAT").as_deref() == Ok("json") {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}

pub(crate) fn load_registry(config_dir: &std::path::Path) -> Result<Registry, CliError> {
    Ok(Registry::load(config_dir)?)
}

/// The async runtime for commands that transfer data.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::local("cannot start the runtime", e))
}
