//! The job log: dataref's own lines and the script's output, in `<job-dir>/job.log`.
//!
//! Under Slurm, output stops being forwarded after a cancel, so the file is the record that
//! survives. dataref's lines also go to stderr, prefixed `dataref:`.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug)]
pub struct JobLog {
    file: Option<Arc<Mutex<File>>>,
}

impl JobLog {
    /// Creates (or truncates) the log.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let file = File::create(path)?;
        Ok(Self {
            file: Some(Arc::new(Mutex::new(file))),
        })
    }

    /// Opens the log for appending (a recovery run adds to the interrupted run's log).
    pub fn append(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            file: Some(Arc::new(Mutex::new(file))),
        })
    }

    /// A log that only writes to stderr.
    pub fn stderr_only() -> Self {
        Self { file: None }
    }

    /// One line of dataref's own, to stderr and the file.
    pub fn line(&self, message: &str) {
        eprintln!("dataref: {message}");
        tracing::debug!("{message}");
        self.raw(format!("dataref: {message}\n").as_bytes());
    }

    /// Bytes of the script's output, to the file only.
    pub fn raw(&self, bytes: &[u8]) {
        if let Some(file) = &self.file {
            if let Ok(mut file) = file.lock() {
                let _ = file.write_all(bytes);
            }
        }
    }
}
