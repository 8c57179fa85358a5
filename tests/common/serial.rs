//! Serial sections: tests of one binary that must not overlap (dataref's dead-mount cleanup
//! is machine-wide, so one test's cleanup could take another's mount).

use std::sync::{Mutex, MutexGuard};

static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the binary's one serial section until dropped (a panicked holder does not poison it).
pub fn lock() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

static SERIAL_ASYNC: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The serial section of async tests, which hold it across awaits (a separate section from
/// [`lock`]'s: a binary uses one or the other).
pub async fn lock_async() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL_ASYNC.lock().await
}
