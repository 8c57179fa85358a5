//! Exit codes (SPEC §5), after sysexits.h. The child's own code and 128+N for signals are
//! passed through as they are.

use std::fmt;

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

    /// A transfer that could not run at all: the same code from `run` and from the commands.
    pub fn for_transfer(error: &crate::transfer::TransferError) -> Self {
        use crate::transfer::TransferError;
        match error {
            TransferError::NothingMatched { .. } | TransferError::SourceMissing { .. } => {
                ExitCode::NoInput
            }
            TransferError::Store(_) | TransferError::List { .. } => ExitCode::Unavailable,
            TransferError::Local { .. }
            | TransferError::DiskFull { .. }
            | TransferError::Journal(_) => ExitCode::IoErr,
        }
    }
}

/// An error that ends the command with a given exit code. Created at the edges (CLI), from the
/// typed errors of the modules below.
#[derive(Debug)]
pub struct Failure {
    pub code: ExitCode,
    pub message: String,
}

impl Failure {
    pub fn new(code: ExitCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}
