//! Server-reflexive candidates (docs/PROTOCOL.md §5.4) against a fake STUN server on
//! loopback: the sidecar announces what the server saw, and a server that
//! never answers does not slow links down.

use chatixia_e2e::sidecar::Sidecar;
use chatixia_e2e::ws::WsClient;
use chatixia_e2e::{Registry, Scratch, TIMEOUT, block_on};
use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What the fake server tells every client it is seen as (TEST-NET-1).
const MAPPED_IP: [u8; 4] = [192, 0, 2, 7];

/// A Binding request as RFC 5389 frames it: its transaction id.
fn binding_request_id(bytes: &[u8]) -> Option<[u8; 12]> {
    (bytes.len() >= 20 && bytes[..2] == [0x00, 0x01] && bytes[4..8] == [0x21, 0x12, 0xA4, 0x42])
        .then(|| bytes[8..20].try_into().unwrap())
}

/// A Binding success response the way common servers write it: no
/// MESSAGE-INTEGRITY, MAPPED-ADDRESS and XOR-MAPPED-ADDRESS, SOFTWARE.
fn binding_success(id: &[u8; 12], ip: [u8; 4], port: u16) -> Vec<u8> {
    let mut attrs = vec![0x00, 0x01, 0x00, 0x08, 0x00, 0x01];
    attrs.extend_from_slice(&port.to_be_bytes());
    attrs.extend_from_slice(&ip);
    attrs.extend_from_slice(&[0x00, 0x20, 0x00, 0x08, 0x00, 0x01]);
    attrs.extend_from_slice(&(port ^ 0x2112).to_be_bytes());
    let cookie = [0x21, 0x12, 0xA4, 0x42];
    attrs.extend(ip.iter().zip(cookie).map(|(a, c)| a ^ c));
    attrs.extend_from_slice(&[0x80, 0x22, 0x00, 0x04]);
    attrs.extend_from_slice(b"fake");
    let mut msg = vec![0x01, 0x01];
    msg.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    msg.extend_from_slice(&cookie);
    msg.extend_from_slice(id);
    msg.extend_from_slice(&attrs);
    msg
}

/// A STUN server on 127.0.0.1 that reports every request (sender and id)
/// and answers it when `answer` is set, else never (a black hole). The
/// thread lives as long as the test process.
fn fake_stun_server(answer: bool) -> (SocketAddr, mpsc::Receiver<SocketAddr>) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf) else { return };
            let Some(id) = binding_request_id(&buf[..n]) else { continue };
            if answer {
                let _ = sock.send_to(&binding_success(&id, MAPPED_IP, from.port()), from);
            }
            let _ = tx.send(from);
        }
    });
    (addr, rx)
}

/// Waits for a log line that may also have passed already.
fn saw_line(sidecar: &Sidecar, needle: &str) {
    if !sidecar.proc.log().contains(needle) {
        sidecar.proc.wait_for_line(needle);
    }
}

#[test]
fn the_sidecar_announces_the_server_reflexive_address() {
    let dir = Scratch::new("sc-stun");
    let reg = Registry::start_default(dir.path());
    let (stun, requests) = fake_stun_server(true);
    block_on(async {
        // alpha is a bare signaling client that watches what bravo sends it.
        let mut alpha = WsClient::connect(&reg.ws_url(&reg.token("key-alpha")), "alpha").await.unwrap();
        assert!(alpha.register().await.is_empty());
        // A name, so the lookup thread is exercised too.
        let url = format!("stun:localhost:{}", stun.port());
        let bravo = Sidecar::start_with(reg.port, dir.path(), "key-bravo", "bravo", &[("STUN_URLS", &url)]);
        saw_line(&bravo, &format!("STUN servers for server-reflexive candidates: localhost:{}", stun.port()));

        let from = requests.recv_timeout(TIMEOUT).expect("a binding request");
        assert_eq!(from.ip(), std::net::Ipv4Addr::LOCALHOST);
        let srflx = format!("{} {} typ srflx", std::net::Ipv4Addr::from(MAPPED_IP), from.port());
        let mut offer_has_host = false;
        let deadline = Instant::now() + TIMEOUT;
        let found = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = match alpha.next_within(left).await {
                Some(chatixia_e2e::ws::Incoming::Json(v)) => v,
                other => panic!("no srflx candidate from bravo: {other:?}"),
            };
            let text = match frame["type"].as_str() {
                Some("offer") => {
                    let sdp = frame["payload"]["sdp"].as_str().unwrap_or_default().to_owned();
                    offer_has_host = sdp.contains(&format!("127.0.0.1 {} typ host", from.port()));
                    sdp
                }
                Some("ice_candidate") => {
                    assert!(frame["payload"]["sdpMid"].as_str().is_some_and(|m| !m.is_empty()), "{frame}");
                    frame["payload"]["candidate"].as_str().unwrap_or_default().to_owned()
                }
                _ => continue,
            };
            if text.contains(&srflx) {
                break text;
            }
        };
        assert!(offer_has_host, "the offer came first and carried the host candidate");
        assert!(found.contains(" raddr "), "{found}");
        saw_line(&bravo, "server-reflexive address 192.0.2.7:");
        // The MAPPED-ADDRESS of the answer made str0m's codec say nothing.
        assert!(!bravo.proc.log().contains("WARN"), "{}", bravo.proc.log());
    });
}

#[test]
fn an_unanswering_stun_server_does_not_delay_links() {
    let dir = Scratch::new("sc-stun-hole");
    let reg = Registry::start_default(dir.path());
    let (hole, requests) = fake_stun_server(false);
    let url = format!("stun:{hole}");
    let env = [("STUN_URLS", url.as_str())];
    let alpha = Sidecar::start_with(reg.port, dir.path(), "key-alpha", "alpha", &env);
    let a = alpha.agent();
    alpha.proc.wait_for_line("connected to the registry as alpha");
    let t0 = Instant::now();
    let bravo = Sidecar::start_with(reg.port, dir.path(), "key-bravo", "bravo", &env);
    let b = bravo.agent();
    a.wait_for_within(Duration::from_secs(2), "peer_connected bravo", |v| {
        v["type"] == "peer_connected" && v["payload"]["peer_id"] == "bravo"
    });
    eprintln!("second sidecar start -> peer_connected with a silent STUN server: {:?}", t0.elapsed());
    b.wait_peer_event("peer_connected", "alpha");
    // Both did ask the server, which never answered.
    let mut askers: Vec<SocketAddr> = Vec::new();
    while askers.len() < 2 {
        let from = requests.recv_timeout(TIMEOUT).expect("binding requests from both sidecars");
        if !askers.contains(&from) {
            askers.push(from);
        }
    }
    assert!(!alpha.proc.log().contains("WARN"), "{}", alpha.proc.log());
}
