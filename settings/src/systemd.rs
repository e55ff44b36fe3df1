//! The systemd notify protocol (docs/ARCHITECTURE.md, single-threaded), spoken directly: one datagram
//! per message to `$NOTIFY_SOCKET`. Outside systemd every call is a no-op.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::time::Duration;

pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    last_status: String,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`; a path, or `@name` for an abstract socket.
    pub fn from_env() -> Notifier {
        Notifier::new(std::env::var("NOTIFY_SOCKET").ok().as_deref())
    }

    pub fn new(socket: Option<&str>) -> Notifier {
        let target = socket.filter(|s| !s.is_empty()).and_then(|s| {
            let addr = match s.strip_prefix('@') {
                Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
                None => SocketAddr::from_pathname(s),
            };
            let addr = addr.map_err(|e| log::warn!("NOTIFY_SOCKET {s:?} is unusable: {e}")).ok()?;
            let sock = UnixDatagram::unbound().map_err(|e| log::warn!("cannot notify systemd: {e}")).ok()?;
            Some((sock, addr))
        });
        Notifier { target, last_status: String::new() }
    }

    pub fn is_active(&self) -> bool {
        self.target.is_some()
    }

    pub fn send(&self, message: &str) {
        if let Some((sock, addr)) = &self.target
            && let Err(e) = sock.send_to_addr(message.as_bytes(), addr)
        {
            log::debug!("systemd notify failed: {e}");
        }
    }

    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// `STATUS=`, sent only when it changed.
    pub fn status(&mut self, status: String) {
        if status != self.last_status {
            self.send(&format!("STATUS={status}"));
            self.last_status = status;
        }
    }

    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }
}

/// The first directory systemd lists in `var` (`STATE_DIRECTORY`,
/// `RUNTIME_DIRECTORY`): it separates several with `:`.
pub fn directory(var: &str) -> Option<PathBuf> {
    let dirs = std::env::var_os(var)?;
    let dirs = dirs.to_string_lossy();
    let first = dirs.split(':').next().unwrap_or_default();
    (!first.is_empty()).then(|| PathBuf::from(first))
}

/// The state directory of either daemon: the `STATE_DIR` setting when
/// given, else systemd's `$STATE_DIRECTORY`, else `./chatixia-state`.
pub fn state_dir(explicit: Option<&str>) -> PathBuf {
    match explicit {
        Some(dir) => PathBuf::from(dir),
        None => directory("STATE_DIRECTORY").unwrap_or_else(|| PathBuf::from("chatixia-state")),
    }
}

/// How often to pet the watchdog: half of `WATCHDOG_USEC`, when it is set
/// for this process.
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_path_and_abstract_sockets() {
        let dir = std::env::temp_dir().join(format!("chatixia-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let mut n = Notifier::new(path.to_str());
        assert!(n.is_active());
        n.ready();
        n.status("registry connected, 0 peers".into());
        n.status("registry connected, 0 peers".into());
        n.watchdog();
        let mut buf = [0u8; 256];
        let mut got = Vec::new();
        server.set_nonblocking(true).unwrap();
        while let Ok(len) = server.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..len]).into_owned());
        }
        assert_eq!(got, ["READY=1", "STATUS=registry connected, 0 peers", "WATCHDOG=1"]);

        let name = format!("chatixia-notify-test-{}", std::process::id());
        let abs = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&abs).unwrap();
        Notifier::new(Some(&format!("@{name}"))).ready();
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");

        assert!(!Notifier::new(None).is_active());
        assert!(!Notifier::new(Some("")).is_active());
        Notifier::new(None).ready();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
