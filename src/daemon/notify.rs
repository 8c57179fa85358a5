//! systemd's notification protocol (sd_notify), written directly: one datagram per message to
//! `NOTIFY_SOCKET` (a path, or an abstract name starting with `@`). The `sd-notify` crate fails
//! on abstract sockets, and the protocol is a few lines.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
enum Target {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

/// Where notifications go, and how often systemd expects a watchdog ping.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    target: Option<Target>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`. A watchdog meant for another
    /// process (`WATCHDOG_PID` not ours) is ignored, as sd_watchdog_enabled does.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok(), std::process::id())
    }

    fn from_vars(var: impl Fn(&str) -> Option<String>, own_pid: u32) -> Self {
        let target =
            var("NOTIFY_SOCKET")
                .filter(|s| !s.is_empty())
                .map(|s| match s.strip_prefix('@') {
                    Some(name) => Target::Abstract(name.as_bytes().to_vec()),
                    None => Target::Path(s.into()),
                });
        let for_us = var("WATCHDOG_PID")
            .map(|pid| pid.trim().parse::<u32>().ok() == Some(own_pid))
            .unwrap_or(true);
        let watchdog = var("WATCHDOG_USEC")
            .and_then(|usec| usec.trim().parse::<u64>().ok())
            .filter(|usec| *usec > 0 && for_us)
            .map(Duration::from_micros);
        Self { target, watchdog }
    }

    /// How often to send `WATCHDOG=1`: half the timeout, as systemd recommends.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|timeout| timeout / 2)
    }

    /// Sends one message (`READY=1`, `STATUS=...`). Without systemd this does nothing; a failed
    /// send is logged, never fatal.
    pub fn notify(&self, message: &str) {
        let Some(target) = &self.target else {
            return;
        };
        if let Err(e) = send(target, message.as_bytes()) {
            tracing::warn!("sd_notify {message:?}: {e}");
        }
    }
}

fn send(target: &Target, message: &[u8]) -> std::io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    match target {
        Target::Path(path) => socket.send_to(message, path)?,
        Target::Abstract(name) => {
            use std::os::linux::net::SocketAddrExt;
            let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(message, &address)?
        }
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn watchdog_interval_is_half_the_timeout_and_only_for_our_pid() {
        let n = Notifier::from_vars(vars(&[("WATCHDOG_USEC", "4000000")]), 7);
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(2)));
        let n = Notifier::from_vars(
            vars(&[("WATCHDOG_USEC", "4000000"), ("WATCHDOG_PID", "7")]),
            7,
        );
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(2)));
        let n = Notifier::from_vars(
            vars(&[("WATCHDOG_USEC", "4000000"), ("WATCHDOG_PID", "8")]),
            7,
        );
        assert_eq!(n.watchdog_interval(), None);
        assert_eq!(Notifier::from_vars(vars(&[]), 7).watchdog_interval(), None);
    }

    #[test]
    fn sends_to_path_and_abstract_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::from_vars(vars(&[("NOTIFY_SOCKET", path.to_str().unwrap())]), 1);
        n.notify("READY=1");
        let mut buf = [0u8; 64];
        let len = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("dataref-test-{}", std::process::id());
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&address).unwrap();
        let n = Notifier::from_vars(vars(&[("NOTIFY_SOCKET", &format!("@{name}"))]), 1);
        n.notify("STOPPING=1");
        let len = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1");
    }
}
