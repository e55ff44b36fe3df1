//! The registry's signaling relay, driven over real WebSockets (docs/PROTOCOL.md §4).

use chatixia_e2e::ws::WsClient;
use chatixia_e2e::{Registry, Scratch, TEST_SECRET, block_on, jwt};
use serde_json::{Value, json};

/// A peer with a valid token but no key: authenticated, never authorized.
async fn connect_unauthorized(reg: &Registry, peer_id: &str) -> WsClient {
    let token = jwt::mint(TEST_SECRET.as_bytes(), peer_id, "agent");
    WsClient::connect(&reg.ws_url(&token), peer_id).await.expect("a valid token upgrades")
}

fn peer_left(peer: &str) -> Value {
    json!({"type":"peer_left","peer_id":"registry","payload":{"peer_id": peer}})
}

#[test]
fn three_clients_see_each_other_and_relay_exactly() {
    let dir = Scratch::new("relay");
    let reg = Registry::start_default(dir.path());
    block_on(async {
        let mut a = WsClient::connect(&reg.ws_url(&reg.token("key-alpha")), "alpha").await.unwrap();
        let mut b = WsClient::connect(&reg.ws_url(&reg.token("key-bravo")), "bravo").await.unwrap();
        assert_eq!(a.register().await, vec!["bravo".to_owned()]);
        let mut c = WsClient::connect(&reg.ws_url(&reg.token("key-charlie")), "charlie").await.unwrap();
        assert_eq!(c.register().await, vec!["alpha".to_owned(), "bravo".to_owned()]);
        for i in 0..20 {
            c.send("ice_candidate", Some("alpha"), json!({"candidate": format!("c{i}"), "sdpMid": "0"})).await;
        }
        for i in 0..20 {
            let f = a.next_json().await;
            assert_eq!(
                f,
                json!({"type":"ice_candidate","peer_id":"charlie","target_id":"alpha",
                       "payload":{"candidate": format!("c{i}"), "sdpMid": "0"}})
            );
        }
        // heartbeat gets no reply, and bravo saw none of the relays.
        b.send("heartbeat", None, json!(null)).await;
        b.expect_quiet().await;
        // register is repeatable and may carry a payload of features.
        b.send("register", None, json!({"version": 1, "features": ["mesh_status", "future"]})).await;
        let list = b.next_json().await;
        assert_eq!(list, json!({"type":"peer_list","peer_id":"registry","payload":{"peers":["alpha","charlie"]}}));
    });
}

#[test]
fn offer_and_answer_are_relayed_with_all_four_fields() {
    let dir = Scratch::new("relay-sdp");
    let reg = Registry::start_default(dir.path());
    block_on(async {
        let mut a = reg.connect("key-alpha").await;
        let mut b = reg.connect("key-bravo").await;
        let sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\na=\"quoted\" \\ ünïcode\r\n";
        a.send("offer", Some("bravo"), json!({"sdp": sdp, "type": "offer", "extra": [1, {"x": null}]})).await;
        assert_eq!(
            b.next_json().await,
            json!({"type":"offer","peer_id":"alpha","target_id":"bravo",
                   "payload":{"sdp": sdp, "type": "offer", "extra": [1, {"x": null}]}})
        );
        b.send("answer", Some("alpha"), json!({"sdp": "v=0"})).await;
        assert_eq!(
            a.next_json().await,
            json!({"type":"answer","peer_id":"bravo","target_id":"alpha","payload":{"sdp":"v=0"}})
        );
        // A payload-less frame arrives with payload null.
        a.send_text(r#"{"type":"ice_candidate","peer_id":"alpha","target_id":"bravo"}"#.into()).await;
        let f = b.next_json().await;
        assert_eq!(
            (&f["type"], &f["peer_id"], &f["target_id"]),
            (&json!("ice_candidate"), &json!("alpha"), &json!("bravo"))
        );
        assert!(f.get("payload").is_none_or(Value::is_null), "{f}");
        a.expect_quiet().await;
    });
}

#[test]
fn a_forged_sender_is_refused_and_nothing_is_relayed() {
    let dir = Scratch::new("forged");
    let reg = Registry::start_default(dir.path());
    block_on(async {
        let mut a = reg.connect("key-alpha").await;
        let mut b = reg.connect("key-bravo").await;
        let mut c = reg.connect("key-charlie").await;
        // alpha claims to be bravo, towards charlie; then does the same for
        // a register (no peer_list for it either).
        let forged = json!({"type":"offer","peer_id":"bravo","target_id":"charlie","payload":{"sdp":"x"}});
        a.send_text(forged.to_string()).await;
        a.expect_error("peer_id_mismatch").await;
        a.send_text(json!({"type":"register","peer_id":"bravo"}).to_string()).await;
        a.expect_error("peer_id_mismatch").await;
        a.expect_quiet().await;
        // The first frame charlie sees from alpha is the honest one.
        a.send("offer", Some("charlie"), json!({"sdp":"honest"})).await;
        let f = c.next_json().await;
        assert_eq!((&f["peer_id"], &f["payload"]["sdp"]), (&json!("alpha"), &json!("honest")), "{f}");
        b.expect_quiet().await;
        c.expect_quiet().await;
    });
}

#[test]
fn an_unknown_or_missing_target_is_an_error_to_the_sender() {
    let dir = Scratch::new("unknown-target");
    let reg = Registry::start_default(dir.path());
    block_on(async {
        let mut a = reg.connect("key-alpha").await;
        let mut b = reg.connect("key-bravo").await;
        a.send("offer", Some("nobody"), json!({"sdp":"x"})).await;
        a.expect_error("unknown_target").await;
        // charlie has a key but no connection.
        a.send("ice_candidate", Some("charlie"), json!({"candidate":""})).await;
        a.expect_error("unknown_target").await;
        a.send("offer", None, json!({"sdp":"x"})).await;
        a.expect_error("invalid_frame").await;
        b.expect_quiet().await;
        a.send("answer", Some("bravo"), json!({"sdp":"ok"})).await;
        assert_eq!(b.next_json().await["payload"]["sdp"], "ok");
    });
}

#[test]
fn an_unauthorized_peer_sees_nobody_and_cannot_signal_or_be_signalled() {
    let dir = Scratch::new("unauthorized");
    let reg = Registry::start_with_secret(dir.path());
    block_on(async {
        let mut a = reg.connect("key-alpha").await;
        let mut m = connect_unauthorized(&reg, "mallory").await;
        assert!(m.register().await.is_empty(), "an unauthorized peer gets an empty peer_list");
        assert_eq!(a.register().await, Vec::<String>::new(), "mallory is not listed to others");

        m.send("offer", Some("alpha"), json!({"sdp":"x"})).await;
        m.expect_error("not_authorized").await;
        a.send("offer", Some("mallory"), json!({"sdp":"x"})).await;
        a.expect_error("not_authorized").await;
        a.expect_quiet().await;
        m.expect_quiet().await;

        // A disconnecting unauthorized peer is not announced.
        drop(m);
        reg.proc.wait_for_line("peer mallory disconnected");
        a.expect_quiet().await;
    });
}

#[test]
fn a_second_connection_replaces_the_first_without_a_peer_left() {
    let dir = Scratch::new("replace");
    let reg = Registry::start_default(dir.path());
    block_on(async {
        let mut old = reg.connect("key-alpha").await;
        let mut b = reg.connect("key-bravo").await;
        assert_eq!(old.register().await, ["bravo"]);

        let mut new = reg.connect("key-alpha").await;
        assert_eq!(old.expect_close().await, Some(4001), "the older socket is closed as replaced");
        // Wait until the registry has finished with the old socket: its
        // removal must not remove the new one.
        reg.proc.wait_for_line("peer alpha disconnected");

        b.send("offer", Some("alpha"), json!({"sdp":"to the new socket"})).await;
        assert_eq!(new.next_json().await["payload"]["sdp"], "to the new socket");
        assert_eq!(new.register().await, ["bravo"]);
        assert_eq!(b.register().await, ["alpha"], "bravo got no peer_left before its peer_list");
        new.send("answer", Some("bravo"), json!({"sdp":"back"})).await;
        assert_eq!(b.next_json().await["payload"]["sdp"], "back");
    });
}

#[test]
fn peers_that_disconnect_are_announced_to_the_others() {
    let dir = Scratch::new("peer-left");
    let reg = Registry::start_default(dir.path());
    block_on(async {
        let mut a = reg.connect("key-alpha").await;
        let mut b = reg.connect("key-bravo").await;
        let c = reg.connect("key-charlie").await;
        assert_eq!(a.register().await, ["bravo", "charlie"]);

        c.close().await; // clean close
        assert_eq!(a.next_json().await, peer_left("charlie"));
        assert_eq!(b.next_json().await, peer_left("charlie"));

        drop(b); // TCP gone without a close frame
        assert_eq!(a.next_json().await, peer_left("bravo"));
        assert!(a.register().await.is_empty());
        a.send("offer", Some("bravo"), json!({"sdp":"x"})).await;
        a.expect_error("unknown_target").await;
    });
}

#[test]
fn ping_and_mesh_health_are_answered() {
    let dir = Scratch::new("ping");
    let reg = Registry::start_with_secret(dir.path());
    block_on(async {
        let mut a = reg.connect("key-alpha").await;
        let _b = reg.connect("key-bravo").await;
        let _m = connect_unauthorized(&reg, "mallory").await;

        let before = jwt::now_unix() * 1000;
        a.send("ping", None, json!(null)).await;
        let pong = a.next_json().await;
        let after = (jwt::now_unix() + 1) * 1000;
        assert_eq!((&pong["type"], &pong["peer_id"]), (&json!("pong"), &json!("registry")), "{pong}");
        let ts = pong["payload"]["timestamp"].as_u64().expect("numeric timestamp");
        assert!((before..=after).contains(&ts), "timestamp {ts} ms not in [{before}, {after}]");

        a.send("mesh_health", None, json!(null)).await;
        let health = a.next_json().await;
        assert_eq!((&health["type"], &health["peer_id"]), (&json!("mesh_health"), &json!("registry")), "{health}");
        let p = &health["payload"];
        assert_eq!((&p["connected_peers"], &p["authorized_peers"]), (&json!(3), &json!(2)), "{health}");
        assert!(p["uptime_s"].as_u64().is_some_and(|s| s < 60), "{health}");
    });
}

#[test]
fn mesh_status_reports_become_topology_edges() {
    let dir = Scratch::new("mesh-status");
    let reg = Registry::start_default(dir.path());
    let edges = || reg.get("/api/hub/network/topology").json()["mesh_edges"].clone();
    let edge = |f: &str, t: &str| json!({"from_peer": f, "to_peer": t});
    block_on(async {
        assert_eq!(edges(), json!([]));
        let mut a = reg.connect("key-alpha").await;
        let mut b = reg.connect("key-bravo").await;
        a.send("mesh_status", None, json!({"peers": ["bravo"]})).await;
        b.send("mesh_status", None, json!({"peers": ["charlie", "alpha", "bravo"]})).await;
        // mesh_status has no reply; a ping after it is the barrier.
        a.expect_quiet().await;
        b.expect_quiet().await;
        assert_eq!(edges(), json!([edge("alpha", "bravo"), edge("bravo", "charlie")]));

        // Sidecars without an agent record are nodes of their own.
        let topo = reg.get("/api/hub/network/topology").json();
        let nodes: Vec<(&Value, &Value)> =
            topo["nodes"].as_array().unwrap().iter().map(|n| (&n["sidecar_peer_id"], &n["reported"])).collect();
        let expected = [(json!("alpha"), json!(true)), (json!("bravo"), json!(true)), (json!("charlie"), json!(false))];
        assert_eq!(nodes, expected.iter().map(|(p, r)| (p, r)).collect::<Vec<_>>(), "{topo}");

        // A new report replaces the old one.
        b.send("mesh_status", None, json!({"peers": []})).await;
        b.expect_quiet().await;
        assert_eq!(edges(), json!([edge("alpha", "bravo")]));

        a.send("mesh_status", None, json!({"peers": "not a list"})).await;
        a.expect_error("invalid_frame").await;

        // A disconnected sidecar's report is forgotten.
        a.close().await;
        assert_eq!(b.next_json().await, peer_left("alpha"));
        assert_eq!(edges(), json!([]));
    });
}
