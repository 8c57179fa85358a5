//! `dataref cleanup`: removes dead dataref mounts (a Slurm epilog, a unit's `ExecStartPre`).

use std::path::Path;

use super::exit::CliError;
use crate::fs::cleanup::{self, CleanupError};

/// Prints one line per removed mount and a summary. Exits 0 when no dead mount is left
/// (also when there was nothing to do), 74 when one could not be removed.
pub fn run(_config_dir: &Path) -> Result<i32, CliError> {
    let report = cleanup::cleanup_dead_mounts();
    if let Some(error) = &report.table_error {
        return Err(CliError::MountsLeft(error.clone()));
    }
    for mount in &report.removed {
        println!(
            "removed dead mount {} ({})",
            mount.mountpoint.display(),
            mount.fsname
        );
    }
    let live = match report.live.len() {
        0 => String::new(),
        n => format!("; {n} live dataref mount{} left alone", plural(n)),
    };
    if report.failed.is_empty() {
        match report.removed.len() {
            0 => println!("no dead dataref mounts{live}"),
            n => println!("removed {n} dead dataref mount{}{live}", plural(n)),
        }
        return Ok(0);
    }

    for failure in &report.failed {
        eprintln!(
            "dataref: cannot remove dead mount {} ({}): {}",
            failure.mount.mountpoint.display(),
            failure.mount.fsname,
            failure.error
        );
    }
    let failed = report.failed.len();
    let mut message = format!(
        "{failed} dead dataref mount{} could not be removed (removed {}{live})",
        plural(failed),
        report.removed.len()
    );
    if report
        .failed
        .iter()
        .any(|f| f.error == CleanupError::NeedsRoot)
    {
        message.push_str("; unmounting needs root: run `dataref cleanup` as root");
    }
    Err(CliError::MountsLeft(message))
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
