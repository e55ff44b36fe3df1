//! `POST /api/token` and the API keys file (docs/PROTOCOL.md §2–§3.4): exchange, hashed
//! keys, reload on SIGHUP with revocation of open sockets, rate limit, and
//! startup errors.

use chatixia_e2e::ws::WsClient;
use chatixia_e2e::{DEFAULT_KEYS, Proc, Registry, Scratch, block_on, jwt};
use serde_json::json;

fn token_request(reg: &Registry, key: Option<&str>) -> chatixia_e2e::Reply {
    let headers: Vec<(&str, &str)> = key.map(|k| ("X-API-Key", k)).into_iter().collect();
    reg.request("POST", "/api/token", &headers, None)
}

#[test]
fn good_key_gets_a_jwt_with_the_compatible_claims() {
    let dir = Scratch::new("tok-good");
    let reg = Registry::start_default(dir.path());
    for (key, peer, role) in [("key-alpha", "alpha", "agent"), ("key-admin", "admin-1", "admin")] {
        let before = jwt::now_unix();
        // The body is ignored, whatever it is.
        let reply = reg.request("POST", "/api/token", &[("X-API-Key", key)], Some("{\"peer_id\":\"evil\"}"));
        let after = jwt::now_unix();
        assert_eq!(reply.status, 200, "{reply:?}");
        let body = reply.json();
        let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["peer_id", "role", "token"], "{body}");
        assert_eq!(body["peer_id"], peer);
        assert_eq!(body["role"], role);

        let (header, claims) = jwt::decode(body["token"].as_str().unwrap());
        assert_eq!(header["alg"], "HS256", "{header}");
        let iat = claims["iat"].as_u64().expect("numeric iat");
        assert!((before..=after).contains(&iat), "iat {iat} not in [{before}, {after}]");
        assert_eq!(claims, json!({"sub": peer, "role": role, "iat": iat, "exp": iat + 300}));
    }
}

#[test]
fn bad_or_missing_credentials_get_401_with_an_empty_body() {
    let dir = Scratch::new("tok-bad");
    let reg = Registry::start_default(dir.path());
    let cases: [(&str, Vec<(&str, &str)>); 5] = [
        ("unknown key", vec![("X-API-Key", "key-nope")]),
        ("no credential", vec![]),
        ("empty key", vec![("X-API-Key", "")]),
        ("key of another case", vec![("X-API-Key", "KEY-ALPHA")]),
        ("unknown device token", vec![("X-Device-Token", "dt_00000000000000000000000000000000")]),
    ];
    for (what, headers) in cases {
        let reply = reg.request("POST", "/api/token", &headers, None);
        assert_eq!(reply.status, 401, "{what}: {reply:?}");
        assert_eq!(reply.body, "", "{what}: body must be empty");
    }
    // The refusals did not break anything: the good key still works.
    assert_eq!(token_request(&reg, Some("key-bravo")).status, 200);
}

#[test]
fn hashed_and_bare_key_entries_match() {
    let dir = Scratch::new("tok-hashed");
    let digest: String = hmac_sha256_hex(b"hashed-secret-key");
    // The bare map shape (no "keys" wrapper) of the original's guide.
    let keys = format!(
        r#"{{"sha256:{digest}": {{"peer_id": "hashed-peer", "role": "agent"}},
            "plain-key": {{"peer_id": "plain-peer", "role": "agent"}}}}"#
    );
    std::fs::write(dir.path().join("api_keys.json"), keys).unwrap();
    let reg = Registry::start_in(dir.path(), &[], &[]);

    let reply = token_request(&reg, Some("hashed-secret-key"));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["peer_id"], "hashed-peer");
    assert_eq!(token_request(&reg, Some("plain-key")).json()["peer_id"], "plain-peer");
    // The stored digest is not itself a key.
    assert_eq!(token_request(&reg, Some(&format!("sha256:{digest}"))).status, 401);
    assert_eq!(token_request(&reg, Some(&digest)).status, 401);
}

fn hmac_sha256_hex(data: &[u8]) -> String {
    hmac_sha256::Hash::hash(data).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn sighup_reloads_keys_and_closes_sockets_that_lost_theirs() {
    let dir = Scratch::new("tok-reload");
    let reg = Registry::start_default(dir.path());
    block_on(async {
        let mut a = reg.connect("key-alpha").await;
        let mut b = reg.connect("key-bravo").await;
        let mut c = reg.connect("key-charlie").await;
        assert_eq!(c.register().await, ["alpha", "bravo"]);
        assert_eq!(token_request(&reg, Some("key-delta")).status, 401);

        // bravo's key goes, delta's comes.
        reg.reload_keys(
            r#"{"keys":{
                "key-alpha":{"peer_id":"alpha","role":"agent"},
                "key-charlie":{"peer_id":"charlie","role":"agent"},
                "key-delta":{"peer_id":"delta","role":"agent"}}}"#,
        );
        let reply = token_request(&reg, Some("key-delta"));
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.json()["peer_id"], "delta");
        let reply = token_request(&reg, Some("key-bravo"));
        assert_eq!((reply.status, reply.body.as_str()), (401, ""));

        assert_eq!(b.expect_close().await, Some(4003), "bravo lost its key");
        for other in [&mut a, &mut c] {
            let frame = other.next_json().await;
            assert_eq!(frame, json!({"type":"peer_left","peer_id":"registry","payload":{"peer_id":"bravo"}}));
            other.expect_quiet().await;
        }
        let mut d = reg.connect("key-delta").await;
        assert_eq!(d.register().await, ["alpha", "charlie"]);
        assert_eq!(a.register().await, ["charlie", "delta"]);
        d.send("offer", Some("alpha"), json!({"sdp": "v=0"})).await;
        assert_eq!(a.next_json().await["peer_id"], "delta");
    });
}

#[test]
fn a_failed_reload_keeps_the_current_keys() {
    let dir = Scratch::new("tok-reload-bad");
    let reg = Registry::start_default(dir.path());
    block_on(async {
        let mut a = reg.connect("key-alpha").await;
        let mut b = reg.connect("key-bravo").await;
        reg.write_keys("{\"keys\": {\"key-alpha\": ");
        reg.proc.signal("HUP");
        let line = reg.proc.wait_for_line("reload failed");
        assert!(line.contains("api_keys.json"), "{line}");
        assert_eq!(token_request(&reg, Some("key-charlie")).status, 200);
        // The open sockets were left alone and are still authorized.
        assert_eq!(a.register().await, ["bravo"]);
        b.expect_quiet().await;
    });
}

#[test]
fn token_endpoint_is_rate_limited_per_client() {
    let dir = Scratch::new("tok-rate");
    let reg = Registry::start_default(dir.path());
    let statuses: Vec<u16> = (0..40).map(|_| token_request(&reg, Some("key-alpha")).status).collect();
    // Burst 20: the first 20 always pass; 40 requests cannot all fit in the
    // burst plus 10/s refill unless they take 2 s.
    assert!(statuses[..20].iter().all(|&s| s == 200), "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(statuses.iter().all(|&s| s == 200 || s == 429), "{statuses:?}");
    let refused = token_request(&reg, Some("key-nope"));
    assert!(refused.status == 429 || refused.status == 401, "{refused:?}");
    let metrics = reg.get("/metrics").body;
    let limited = metrics
        .lines()
        .find_map(|l| l.strip_prefix("chatixia_tokens_rate_limited_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("rate-limit counter");
    assert!(limited >= 1, "{metrics}");
}

#[test]
fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let with_xff = |reg: &Registry, client: &str| {
        reg.request("POST", "/api/token", &[("X-API-Key", "key-alpha"), ("X-Forwarded-For", client)], None).status
    };
    // Untrusted: a made-up X-Forwarded-For does not get a fresh bucket.
    let dir = Scratch::new("tok-xff");
    let reg = Registry::start_default(dir.path());
    let statuses: Vec<u16> = (0..40).map(|i| with_xff(&reg, &format!("10.0.0.{i}"))).collect();
    assert!(statuses.contains(&429), "{statuses:?}");

    // Behind a trusted proxy, each forwarded client has its own bucket.
    let dir = Scratch::new("tok-xff-trusted");
    std::fs::write(dir.path().join("api_keys.json"), DEFAULT_KEYS).unwrap();
    let reg = Registry::start_in(dir.path(), &[], &[("TRUSTED_PROXIES", "127.0.0.1")]);
    let statuses: Vec<u16> = (0..40).map(|_| with_xff(&reg, "203.0.113.7")).collect();
    assert!(statuses.contains(&429), "{statuses:?}");
    assert_eq!(with_xff(&reg, "198.51.100.2"), 200, "another client, another bucket");
    // The proxy appends the address it saw: hops a client put in front
    // of it choose no bucket.
    let statuses: Vec<u16> = (0..40).map(|i| with_xff(&reg, &format!("10.9.9.{i}, 192.0.2.1"))).collect();
    assert!(statuses.contains(&429), "{statuses:?}");
}

#[test]
fn a_malformed_keys_file_is_a_startup_error_naming_the_file() {
    let cases = [
        ("not JSON", "{\"keys\": {"),
        ("keys not an object", r#"{"keys": ["key-alpha"]}"#),
        ("entry without peer_id", r#"{"keys": {"k": {"role": "agent"}}}"#),
        ("unknown role", r#"{"keys": {"k": {"peer_id": "a", "role": "root"}}}"#),
    ];
    for (what, text) in cases {
        let dir = Scratch::new("tok-malformed");
        std::fs::write(dir.path().join("api_keys.json"), text).unwrap();
        let mut proc = Proc::spawn(Registry::command(dir.path(), &[], &[]));
        let code = proc.wait_exit();
        assert!(code.is_some_and(|c| c != 0), "{what}: exit {code:?}");
        let log = proc.log();
        assert!(log.contains("api_keys.json"), "{what}: log does not name the file:\n{log}");
        assert!(!log.contains("listening on"), "{what}: it listened:\n{log}");
    }
}

#[test]
fn without_a_keys_file_there_is_no_dev_key_unless_asked() {
    let dir = Scratch::new("tok-nofile");
    let reg = Registry::start_in(dir.path(), &[], &[]);
    assert!(reg.proc.log().contains("no API keys file"), "{}", reg.proc.log());
    assert_eq!(token_request(&reg, Some("ak_dev_001")).status, 401);
    // A keys file created later is picked up by SIGHUP.
    reg.reload_keys(DEFAULT_KEYS);
    assert_eq!(token_request(&reg, Some("key-alpha")).status, 200);

    let dev_dir = Scratch::new("tok-dev");
    let dev = Registry::start_in(dev_dir.path(), &["--dev"], &[]);
    let reply = token_request(&dev, Some("ak_dev_001"));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!((reply.json()["peer_id"].as_str(), reply.json()["role"].as_str()), (Some("agent-001"), Some("agent")));
    block_on(async {
        let token = reply.json()["token"].as_str().unwrap().to_owned();
        let mut c = WsClient::connect(&dev.ws_url(&token), "agent-001").await.unwrap();
        assert!(c.register().await.is_empty());
    });
}
