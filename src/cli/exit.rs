//! The one place where outcomes and failures become exit codes (after sysexits.h).
//!
//! Commands return typed errors ([`CliError`], carrying the modules' own error types) and jobs
//! return how they ended ([`JobEnd`]); the functions here are the only ones that choose a code.
//! The script's own code and 128+N for signals are passed through as they are.

use std::path::PathBuf;

use crate::daemon::DaemonError;
use crate::daemon::client::ClientError;
use crate::fs::mount::MountError;
use crate::job::{InputFailure, JobEnd, JobError};
use crate::manifest::LoadError;
use crate::model::SecretError;
use crate::registry::RegistryError;
use crate::store::StoreError;
use crate::transfer::TransferError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    Success = 0,
    /// Bad command line.
    Usage = 64,
    /// Invalid JSON or manifest, unknown datastore, missing or unsafe secret.
    DataErr = 65,
    /// The manifest file is missing, or an input matches nothing.
    NoInput = 66,
    /// Storage, auth or mount failure before the script.
    Unavailable = 69,
    /// Local I/O failure.
    IoErr = 74,
    /// The script exited 0 but stage-out failed.
    TempFail = 75,
    /// The daemon refused the request (not root, not in its allowed group, or a secret or path
    /// the submitting user may not use).
    NoPerm = 77,
}

impl ExitCode {
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// Why a command failed. Each variant says what went wrong, not which code it gets.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A flag or argument that cannot be used as given.
    #[error("{flag}: {message}")]
    BadArgument { flag: String, message: String },
    /// Flags that do not go together, or a command that cannot run as invoked.
    #[error("{0}")]
    Usage(String),
    /// A datastore definition given on the command line is invalid.
    #[error("{0}")]
    InvalidDefinition(String),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("unknown datastore {name:?}{hint}")]
    UnknownDatastore { name: String, hint: String },
    #[error("{}: no such file or directory", path.display())]
    MissingSource { path: PathBuf },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// `validate` judges configuration only: a registry it cannot read is a configuration
    /// problem there, not a local I/O failure of a job.
    #[error(transparent)]
    RegistryForValidation(RegistryError),
    #[error(transparent)]
    Manifest(#[from] LoadError),
    #[error(transparent)]
    Transfer(#[from] TransferError),
    /// Some files of a transfer failed (each was reported); `all_local` when every failure was
    /// this machine's (disk, permissions), not the store's.
    #[error("{failed} file(s) failed")]
    FilesFailed { failed: usize, all_local: bool },
    #[error("datastore {name:?}: {source}")]
    OpenStore {
        name: String,
        #[source]
        source: StoreError,
    },
    /// Storage refused or failed a request the command itself makes (creating a container);
    /// `then` says what that means for the command.
    #[error("{context}: {source}{then}")]
    Storage {
        context: String,
        #[source]
        source: StoreError,
        then: &'static str,
    },
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error(transparent)]
    Job(#[from] JobError),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The daemon answered a request with an error status.
    #[error("{message}")]
    Answered { status: u16, message: String },
    #[error("{context}: {source}")]
    Local {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Dead mounts could not be listed, or not all of them removed.
    #[error("{0}")]
    MountsLeft(String),
}

impl CliError {
    pub fn bad_argument(flag: &str, message: impl std::fmt::Display) -> Self {
        Self::BadArgument {
            flag: flag.to_owned(),
            message: message.to_string(),
        }
    }

    pub fn local(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Local {
            context: context.into(),
            source,
        }
    }

    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::BadArgument { .. } | CliError::Usage(_) => ExitCode::Usage,
            CliError::InvalidDefinition(_)
            | CliError::Secret(_)
            | CliError::UnknownDatastore { .. }
            | CliError::RegistryForValidation(_)
            | CliError::Registry(RegistryError::Invalid { .. }) => ExitCode::DataErr,
            CliError::Registry(RegistryError::Io { .. }) => ExitCode::IoErr,
            CliError::Manifest(LoadError::Missing { .. }) | CliError::MissingSource { .. } => {
                ExitCode::NoInput
            }
            CliError::Manifest(LoadError::Invalid { .. }) => ExitCode::DataErr,
            CliError::Transfer(e) => for_transfer(e),
            CliError::FilesFailed { all_local, .. } => files_failed(*all_local),
            CliError::Mount(e) => for_mount(e),
            CliError::OpenStore { .. } | CliError::Storage { .. } => ExitCode::Unavailable,
            CliError::Job(JobError::OpenStore { .. }) => ExitCode::Unavailable,
            CliError::Job(_) | CliError::Daemon(_) | CliError::Local { .. } => ExitCode::IoErr,
            CliError::MountsLeft(_) => ExitCode::IoErr,
            CliError::Client(_) => ExitCode::Unavailable,
            CliError::Answered { status, .. } => match status {
                422 | 413 => ExitCode::DataErr,
                404 => ExitCode::NoInput,
                400 => ExitCode::Usage,
                403 => ExitCode::NoPerm,
                _ => ExitCode::Unavailable,
            },
        }
    }
}

/// A transfer that could not run at all: the same code from `run` and from the commands.
fn for_transfer(error: &TransferError) -> ExitCode {
    match error {
        TransferError::NothingMatched { .. } | TransferError::SourceMissing { .. } => {
            ExitCode::NoInput
        }
        TransferError::Store(_) | TransferError::List { .. } => ExitCode::Unavailable,
        TransferError::Local { .. } | TransferError::DiskFull { .. } => ExitCode::IoErr,
    }
}

/// A mount that could not be made: a prefix that matches nothing is a missing input, as for
/// a download; anything else (storage, FUSE, the mount point) is a mount failure.
fn for_mount(error: &MountError) -> ExitCode {
    match error {
        MountError::NothingMatched { .. } => ExitCode::NoInput,
        MountError::Store(_)
        | MountError::MountPointNotTheirs { .. }
        | MountError::Mountpoint { .. }
        | MountError::DirectoryInTheWay { .. }
        | MountError::Mount(_) => ExitCode::Unavailable,
    }
}

/// Some files failed: only local I/O failures (this machine's disk) are 74; any store failure
/// makes it 69.
fn files_failed(all_local: bool) -> ExitCode {
    match all_local {
        true => ExitCode::IoErr,
        false => ExitCode::Unavailable,
    }
}

/// The exit code of a job that ran (or tried to).
pub fn for_job(end: &JobEnd) -> i32 {
    match end {
        JobEnd::Succeeded => ExitCode::Success.code(),
        JobEnd::ScriptFailed { code } | JobEnd::Preempted { code } => *code,
        JobEnd::StageOutFailed => ExitCode::TempFail.code(),
        JobEnd::SignalledBeforeStart(signal) => 128 + *signal as i32,
        JobEnd::InputFailed(why) => match why {
            InputFailure::Transfer(e) => for_transfer(e),
            InputFailure::Files { all_local } => files_failed(*all_local),
            InputFailure::Local => ExitCode::IoErr,
            InputFailure::Mount(e) => for_mount(e),
        }
        .code(),
        JobEnd::Recovered { uploads_ok: true } => ExitCode::Success.code(),
        JobEnd::Recovered { uploads_ok: false } => ExitCode::TempFail.code(),
    }
}

/// `submit --wait` for a job that never finished running (the daemon stopped it): try again.
pub fn for_unfinished_daemon_job() -> i32 {
    ExitCode::TempFail.code()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;

    #[test]
    fn job_outcomes_map_to_their_documented_codes() {
        let cases = [
            (JobEnd::Succeeded, 0),
            (JobEnd::ScriptFailed { code: 3 }, 3),
            (JobEnd::Preempted { code: 143 }, 143),
            (JobEnd::StageOutFailed, 75),
            (JobEnd::SignalledBeforeStart(Signal::SIGTERM), 143),
            (
                JobEnd::InputFailed(InputFailure::Mount(MountError::Mount(
                    std::io::Error::other("no /dev/fuse"),
                ))),
                69,
            ),
            (
                JobEnd::InputFailed(InputFailure::Mount(MountError::MountPointNotTheirs {
                    path: "m".into(),
                    owner: 1000,
                    found: 0,
                })),
                69,
            ),
            (
                JobEnd::InputFailed(InputFailure::Mount(MountError::NothingMatched {
                    store: "s".into(),
                    remote: "r".into(),
                })),
                66,
            ),
            (JobEnd::InputFailed(InputFailure::Local), 74),
            (
                JobEnd::InputFailed(InputFailure::Files { all_local: true }),
                74,
            ),
            (
                JobEnd::InputFailed(InputFailure::Files { all_local: false }),
                69,
            ),
            (
                JobEnd::InputFailed(InputFailure::Transfer(TransferError::NothingMatched {
                    store: "s".into(),
                    remote: "r".into(),
                })),
                66,
            ),
            (JobEnd::Recovered { uploads_ok: true }, 0),
            (JobEnd::Recovered { uploads_ok: false }, 75),
        ];
        for (end, code) in cases {
            assert_eq!(for_job(&end), code, "{end:?}");
        }
    }

    #[test]
    fn daemon_answers_map_by_status() {
        let answered = |status| CliError::Answered {
            status,
            message: String::new(),
        };
        assert_eq!(answered(403).exit_code(), ExitCode::NoPerm);
        assert_eq!(answered(422).exit_code(), ExitCode::DataErr);
        assert_eq!(answered(404).exit_code(), ExitCode::NoInput);
        assert_eq!(answered(503).exit_code(), ExitCode::Unavailable);
    }
}
