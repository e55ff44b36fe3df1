//! Both daemons speak systemd's notify protocol (docs/ARCHITECTURE.md, single-threaded, §9): READY=1
//! once they serve, WATCHDOG=1 at half of WATCHDOG_USEC, STOPPING=1 on
//! SIGTERM. A datagram socket of the test stands in for systemd.

use chatixia_e2e::{Registry, Scratch, TIMEOUT};
use std::os::unix::net::UnixDatagram;

/// Collects notify messages until `want` has been seen.
fn wait_for(sock: &UnixDatagram, want: &str, seen: &mut Vec<String>) {
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 1024];
    while !seen.iter().any(|m| m.lines().any(|l| l == want)) {
        let n = sock.recv(&mut buf).unwrap_or_else(|e| panic!("no {want} (got {seen:?}): {e}"));
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
}

#[test]
fn registry_notifies_ready_watchdog_status_and_stopping() {
    let dir = Scratch::new("notify-registry");
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    std::fs::write(dir.path().join("api_keys.json"), chatixia_e2e::DEFAULT_KEYS).unwrap();
    let mut reg =
        Registry::start_in(dir.path(), &[], &[("NOTIFY_SOCKET", path.to_str().unwrap()), ("WATCHDOG_USEC", "200000")]);
    let mut seen = Vec::new();
    wait_for(&sock, "READY=1", &mut seen);
    // Half of 200 ms: several watchdog pings arrive quickly.
    for _ in 0..3 {
        let before = seen.iter().filter(|m| *m == "WATCHDOG=1").count();
        while seen.iter().filter(|m| *m == "WATCHDOG=1").count() == before {
            let mut tail = Vec::new();
            wait_for(&sock, "WATCHDOG=1", &mut tail);
            seen.extend(tail);
        }
    }
    assert!(seen.iter().any(|m| m.starts_with("STATUS=") && m.contains("signaling connections")), "{seen:?}");
    reg.proc.signal("TERM");
    wait_for(&sock, "STOPPING=1", &mut seen);
    assert_eq!(reg.proc.wait_exit(), Some(0));
}
