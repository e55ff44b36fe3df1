//! The registry's own TURN relay on loopback (docs/PROTOCOL.md §3.10): how
//! it starts, what `/api/config` hands out for it, sidecars allocating on it
//! over their signaling WebSocket, and clients that know nothing of it (the
//! original's sidecars) never receiving a binary frame. The NAT lab tests
//! (nat_registry_relay.rs) show it carrying links.

use async_tungstenite::tungstenite::Message;
use chatixia_e2e::sidecar::{Sidecar, mesh_message};
use chatixia_e2e::{Proc, Registry, Scratch, block_on, free_udp_tcp_port, metric};
use futures_util::StreamExt;
use serde_json::json;
use std::time::{Duration, Instant};

fn keys(dir: &Scratch) {
    std::fs::write(dir.path().join("api_keys.json"), chatixia_e2e::DEFAULT_KEYS).unwrap();
}

#[test]
fn a_relay_port_that_cannot_be_opened_stops_the_start_only_when_it_was_asked_for() {
    let dir = Scratch::new("relay-port");
    keys(&dir);
    // Someone else holds the port, on UDP.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();

    let mut asked = Proc::spawn(Registry::command(dir.path(), &[], &[("RELAY_PORT", &port)]));
    assert_eq!(asked.wait_exit(), Some(1), "{}", asked.log());
    assert!(asked.log().contains("cannot open the relay port"), "{}", asked.log());

    // The default port (3478) is taken here the same way, when it is free
    // to take at all: the registry goes on without a relay, and says so.
    let default = std::net::UdpSocket::bind("127.0.0.1:3478");
    let mut cmd = Registry::command(dir.path(), &[], &[]);
    cmd.env_remove("RELAY_PORT");
    let reg = Proc::spawn(cmd);
    reg.wait_for_line("listening on http://");
    let log = reg.log();
    assert!(log.contains("relay off: cannot open port 3478"), "{log}");
    drop(default);

    // Off when asked: no relay, no warning.
    let off = Registry::start_in(dir.path(), &[], &[("RELAY_PORT", "0")]);
    assert!(off.proc.log().contains("relay off (RELAY_PORT=0)"), "{}", off.proc.log());
    assert!(!off.get("/metrics").body.contains("chatixia_relay_"));
}

#[test]
fn api_config_offers_the_relay_to_token_holders_by_the_name_they_used() {
    let dir = Scratch::new("relay-config");
    keys(&dir);
    let port = free_udp_tcp_port();
    let reg = Registry::start_in(dir.path(), &[], &[("RELAY_PORT", &port.to_string())]);
    assert!(reg.proc.log().contains(&format!("relay on UDP and TCP port {port}")), "{}", reg.proc.log());
    let token = reg.token("key-alpha");
    let bearer = format!("Bearer {token}");

    let config = reg.request("GET", "/api/config", &[("Authorization", &bearer)], None).json();
    let relay = config["iceServers"].as_array().unwrap().last().unwrap().clone();
    let urls = json!([format!("turn:127.0.0.1:{port}?transport=udp"), format!("turn:127.0.0.1:{port}?transport=tcp")]);
    assert_eq!(relay["urls"], urls, "{config}");
    let username = relay["username"].as_str().unwrap();
    assert!(username.ends_with(":alpha"), "{username}");
    assert_eq!(config["relayWebSocket"]["username"], username);
    assert_eq!(config["relayWebSocket"]["instance"].as_str().map(str::len), Some(16));

    // Behind a proxy, or by a DNS name: the name the client used.
    let named = reg.request("GET", "/api/config", &[("Authorization", &bearer), ("Host", "gw.example:8080")], None);
    assert_eq!(
        named.json()["iceServers"].as_array().unwrap().last().unwrap()["urls"][0],
        format!("turn:gw.example:{port}?transport=udp")
    );

    // Without a token (the original's clients ask without one): no relay.
    let anonymous = reg.get("/api/config");
    assert_eq!(anonymous.status, 200);
    assert!(anonymous.json().get("relayWebSocket").is_none());
    assert!(!anonymous.body.contains(&port.to_string()), "{}", anonymous.body);
    // A token that does not verify: no relay either.
    let forged = reg.request("GET", "/api/config", &[("Authorization", "Bearer x.y.z")], None);
    assert!(forged.json().get("relayWebSocket").is_none());
}

#[test]
fn sidecars_allocate_over_their_websocket_and_old_clients_never_see_a_binary_frame() {
    let dir = Scratch::new("relay-ws");
    keys(&dir);
    let port = free_udp_tcp_port();
    let reg = Registry::start_in(dir.path(), &[], &[("RELAY_PORT", &port.to_string())]);
    block_on(async {
        // A client of the original protocol: text frames only.
        let mut old = reg.connect("key-charlie").await;
        assert!(old.register().await.is_empty());
        let alpha = Sidecar::start(&reg, dir.path(), "key-alpha", "alpha");
        let bravo = Sidecar::start(&reg, dir.path(), "key-bravo", "bravo");
        let (mut a, b) = (alpha.agent(), bravo.agent());
        a.wait_connected(&["bravo"]);
        b.wait_connected(&["alpha"]);
        a.send("bravo", mesh_message("hello", "r1", json!({"over": "loopback"})));
        assert_eq!(b.next_message()["message"]["payload"]["over"], "loopback");

        // Each sidecar holds allocations over UDP and over its WebSocket.
        let deadline = Instant::now() + Duration::from_secs(10);
        let (allocations, streams) = loop {
            let text = reg.get("/metrics").body;
            let allocations = metric(&text, "chatixia_relay_allocations").unwrap_or(0.0);
            let streams = metric(&text, "chatixia_relay_streams").unwrap_or(0.0);
            if (allocations >= 4.0 && streams >= 2.0) || Instant::now() > deadline {
                break (allocations, streams);
            }
            smol::Timer::after(Duration::from_millis(50)).await;
        };
        assert!(allocations >= 4.0 && streams >= 2.0, "allocations {allocations}, streams {streams}");
        for side in [&alpha, &bravo] {
            side.proc.wait_for_line("TURN the registry's relay over the signaling WebSocket: relayed address");
        }

        // Everything the old client got was text: among it, both sidecars'
        // offers (it is a listed peer to them).
        let mut offers = Vec::new();
        let until = Instant::now() + Duration::from_secs(2);
        while let Some(frame) = futures_lite::future::or(async { old.ws.next().await }, async {
            smol::Timer::at(until).await;
            None
        })
        .await
        {
            match frame.expect("frame") {
                Message::Text(text) => {
                    let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
                    if v["type"] == "offer" && !offers.contains(&v["peer_id"]) {
                        offers.push(v["peer_id"].clone());
                    }
                }
                Message::Binary(bytes) => panic!("a binary frame of {} bytes reached an old client", bytes.len()),
                _ => {}
            }
        }
        offers.sort_by_key(|p| p.to_string());
        assert_eq!(offers, ["alpha", "bravo"]);
    });
}
