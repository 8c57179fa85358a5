//! Progress display: a bar on a terminal, periodic plain lines otherwise (logs, CI, Slurm
//! output files), or nothing.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    Off,
    /// A bar if stderr is a terminal, else plain lines every few seconds.
    Auto,
    /// Plain lines at this interval, whatever stderr is.
    Lines(Duration),
}

const LINE_INTERVAL: Duration = Duration::from_secs(5);

/// Counters shared by the transfer tasks; the display reads them.
#[derive(Debug)]
pub struct Progress {
    label: String,
    files_total: AtomicU64,
    bytes_total: AtomicU64,
    files_done: AtomicU64,
    bytes_done: AtomicU64,
    bar: Option<ProgressBar>,
    ticker: OnceLock<tokio::task::JoinHandle<()>>,
}

impl Progress {
    pub fn start(mode: ProgressMode, label: &str, files: u64, bytes: u64) -> Arc<Self> {
        let interval = match mode {
            ProgressMode::Off => None,
            ProgressMode::Auto if std::io::stderr().is_terminal() => {
                return Arc::new(Self::with_bar(label, files, bytes));
            }
            ProgressMode::Auto => Some(LINE_INTERVAL),
            ProgressMode::Lines(interval) => Some(interval),
        };
        let progress = Arc::new(Self::counters(label, files, bytes, None));
        if let Some(interval) = interval {
            let weak = Arc::downgrade(&progress);
            let ticker = tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(progress) = weak.upgrade() else {
                        break;
                    };
                    eprintln!("{}", progress.line());
                }
            });
            // The ticker holds only a weak reference; it is aborted when the transfer finishes.
            let _ = progress.ticker.set(ticker);
        }
        progress
    }

    fn counters(label: &str, files: u64, bytes: u64, bar: Option<ProgressBar>) -> Self {
        Self {
            label: label.to_owned(),
            files_total: AtomicU64::new(files),
            bytes_total: AtomicU64::new(bytes),
            files_done: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            bar,
            ticker: OnceLock::new(),
        }
    }

    fn with_bar(label: &str, files: u64, bytes: u64) -> Self {
        let bar = ProgressBar::with_draw_target(Some(bytes), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(label.to_owned());
        bar.set_message(format!("0/{files} files"));
        Self::counters(label, files, bytes, Some(bar))
    }

    pub fn add_bytes(&self, bytes: u64) {
        self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    /// A transfer was retried: take back bytes counted for the failed attempt.
    pub fn sub_bytes(&self, bytes: u64) {
        self.bytes_done.fetch_sub(bytes, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.set_position(self.bytes_done.load(Ordering::Relaxed));
        }
    }

    pub fn file_done(&self) {
        let done = self.files_done.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(bar) = &self.bar {
            let total = self.files_total.load(Ordering::Relaxed);
            bar.set_message(format!("{done}/{total} files"));
        }
    }

    /// Removes a file from the totals (skipped after the totals were set).
    pub fn forget_file(&self, bytes: u64) {
        self.files_total.fetch_sub(1, Ordering::Relaxed);
        self.bytes_total.fetch_sub(bytes, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.set_length(self.bytes_total.load(Ordering::Relaxed));
        }
    }

    fn line(&self) -> String {
        format!(
            "{}: {}/{} files, {} of {}",
            self.label,
            self.files_done.load(Ordering::Relaxed),
            self.files_total.load(Ordering::Relaxed),
            human_bytes(self.bytes_done.load(Ordering::Relaxed)),
            human_bytes(self.bytes_total.load(Ordering::Relaxed)),
        )
    }

    pub fn finish(&self) {
        if let Some(ticker) = self.ticker.get() {
            ticker.abort();
        }
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(ticker) = self.ticker.get() {
            ticker.abort();
        }
    }
}

/// `1536` → `1.5 KiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
