//! The registry process (docs/PROTOCOL.md §2.2, §4.4, §6.3-like behaviour of the
//! registry): the generated secret survives a crash, SIGTERM is a clean and
//! prompt exit.

use chatixia_e2e::ws::WsClient;
use chatixia_e2e::{Registry, Scratch, block_on};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

#[test]
fn a_token_minted_before_a_crash_still_works_after_restart() {
    let dir = Scratch::new("life-restart");
    let mut reg = Registry::start_default(dir.path());
    let secret_file = dir.path().join("chatixia-state/signaling-secret");
    let secret = std::fs::read_to_string(&secret_file).expect("generated secret in ./chatixia-state");
    assert_eq!(secret.trim().len(), 64, "256 bits in hex: {secret:?}");
    let mode = std::fs::metadata(&secret_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let alpha = reg.token("key-alpha");
    let bravo = reg.token("key-bravo");
    block_on(async {
        let mut before = WsClient::connect(&reg.ws_url(&alpha), "alpha").await.unwrap();
        assert!(before.register().await.is_empty());

        reg.restart(); // kill -9, same port and directory
        assert_eq!(before.expect_close().await, None, "the process died without a close frame");
        assert_eq!(std::fs::read_to_string(&secret_file).unwrap(), secret, "the secret was kept, not replaced");

        let mut a = WsClient::connect(&reg.ws_url(&alpha), "alpha").await.expect("pre-restart token");
        let mut b = WsClient::connect(&reg.ws_url(&bravo), "bravo").await.expect("pre-restart token");
        assert_eq!(a.register().await, ["bravo"]);
        b.send("offer", Some("alpha"), serde_json::json!({"sdp": "after restart"})).await;
        assert_eq!(a.next_json().await["payload"]["sdp"], "after restart");
    });

    // A fresh state directory means a fresh secret: the old tokens die.
    let other = Scratch::new("life-restart-other");
    let fresh = Registry::start_default(other.path());
    block_on(async {
        let (status, _) = WsClient::refused(&fresh.ws_url(&alpha)).await;
        assert_eq!(status, 401);
    });
}

#[test]
fn sigterm_closes_sockets_and_exits_zero_promptly() {
    let dir = Scratch::new("life-term");
    let mut reg = Registry::start_default(dir.path());
    block_on(async {
        let mut a = reg.connect("key-alpha").await;
        let mut b = reg.connect("key-bravo").await;
        assert_eq!(a.register().await, ["bravo"]);

        let t = Instant::now();
        reg.proc.signal("TERM");
        assert_eq!(a.expect_close().await, Some(1001), "going away");
        assert_eq!(b.expect_close().await, Some(1001));
        assert_eq!(reg.proc.wait_exit(), Some(0));
        assert!(t.elapsed() < Duration::from_secs(2), "exit took {:?}", t.elapsed());
        assert!(reg.proc.log().contains("stopped"), "{}", reg.proc.log());
    });
}

#[test]
fn sigterm_with_a_client_that_never_reads_still_exits_promptly() {
    let dir = Scratch::new("life-term-stuck");
    let mut reg = Registry::start_default(dir.path());
    block_on(async {
        // A raw TCP connection mid-request and an upgraded socket that is
        // never read from.
        let _half = std::net::TcpStream::connect(("127.0.0.1", reg.port)).unwrap();
        let _deaf = reg.connect("key-alpha").await;
        let t = Instant::now();
        reg.proc.signal("TERM");
        assert_eq!(reg.proc.wait_exit(), Some(0));
        assert!(t.elapsed() < Duration::from_secs(2), "exit took {:?}", t.elapsed());
    });
}
