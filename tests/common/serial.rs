//! Serial sections: tests of one binary that must not overlap (dataref's dead-mount cleanup
//! is machine-wide, so one test's cleanup could take another's mount).

use std::sync::{Mutex, MutexGuard};

static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the binary's one serial section until dropped (a panicked holder does not poison it).
pub fn lock() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}
