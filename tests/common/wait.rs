//! Waiting for something to happen, with a deadline instead of a sleep.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// What a polled condition returns: `bool` (ready or not) or `Option<T>` (ready with a value).
pub trait Ready {
    type Value;
    fn into_ready(self) -> Option<Self::Value>;
}

impl Ready for bool {
    type Value = ();
    fn into_ready(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Ready for Option<T> {
    type Value = T;
    fn into_ready(self) -> Option<T> {
        self
    }
}

/// Checks `ready` until it holds (`true` or `Some(value)`) and returns its value; fails the
/// test after `limit`. The first checks come within milliseconds, later ones at most every
/// 50 ms, so a slow condition (a process spawned per check) does not load the machine.
#[track_caller]
pub fn poll<R: Ready>(what: &str, limit: Duration, ready: impl FnMut() -> R) -> R::Value {
    poll_or(what, limit, String::new, ready)
}

/// [`poll`], with `describe()` (logs, state) in the failure message.
#[track_caller]
pub fn poll_or<R: Ready>(
    what: &str,
    limit: Duration,
    describe: impl FnOnce() -> String,
    mut ready: impl FnMut() -> R,
) -> R::Value {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(value) = ready().into_ready() {
            return value;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {limit:?} waiting for {what}\n{}",
                describe()
            );
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Waits for `child` to exit; after `limit` kills it and fails the test with `describe()`.
#[track_caller]
pub fn exit_within(
    child: &mut Child,
    limit: Duration,
    describe: impl FnOnce() -> String,
) -> ExitStatus {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the process did not exit within {limit:?}\n{}", describe());
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}
