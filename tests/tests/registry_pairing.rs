//! Pairing, admin authentication and crash-safe state (docs/PROTOCOL.md §3.5, §4.3,
//! §4.4), registry side, against the real binary: codes, redemption, the
//! approval queue and its effects on open sockets, admin routes, the state
//! directory across `kill -9`, and `chatixia-registry admin`.
//!
//! A revoked or rejected device reaches nobody even with an unexpired JWT:
//! the registry refuses its WebSocket upgrade (401), and were it connected,
//! authorization is checked per decision anyway.

use chatixia_e2e::ws::WsClient;
use chatixia_e2e::{DEFAULT_KEYS, Proc, Registry, Reply, Scratch, bin_command, block_on, http_agent};
use serde_json::{Value, json};
use std::process::Command;
use std::sync::{Arc, Barrier};

const ADMIN: (&str, &str) = ("X-API-Key", "key-admin");

type Headers<'a> = Vec<(&'a str, &'a str)>;

fn generate_code(reg: &Registry, headers: &[(&str, &str)]) -> String {
    let reply = reg.request("POST", "/api/pairing/generate-code", headers, None);
    assert_eq!(reply.status, 200, "{reply:?}");
    let body = reply.json();
    assert_eq!(body["expires_in"], 300, "{body}");
    let code = body["code"].as_str().expect("code").to_owned();
    assert!(code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()), "{code}");
    code
}

fn pair_body(code: &str, name: &str) -> String {
    json!({"code": code, "agent_name": name}).to_string()
}

/// Generates a code with the admin key and redeems it; returns the answer.
fn pair(reg: &Registry, name: &str) -> Value {
    let code = generate_code(reg, &[ADMIN]);
    let reply = reg.post("/api/pairing/pair", &pair_body(&code, name));
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.json()
}

fn admin(reg: &Registry, method: &str, path: &str) -> Reply {
    reg.request(method, path, &[ADMIN], None)
}

fn device_token(reg: &Registry, token: &str) -> Reply {
    reg.request("POST", "/api/token", &[("X-Device-Token", token)], None)
}

/// The entry `id` as `/api/pairing/all` lists it.
fn entry(reg: &Registry, id: &str) -> Value {
    let all = admin(reg, "GET", "/api/pairing/all");
    assert_eq!(all.status, 200, "{all:?}");
    all.json().as_array().unwrap().iter().find(|e| e["id"] == id).cloned().unwrap_or(Value::Null)
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn metric(reg: &Registry, name: &str) -> String {
    let text = reg.get("/metrics").body;
    let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in\n{text}"));
    line.rsplit(' ').next().unwrap().to_owned()
}

#[test]
fn a_paired_device_waits_then_joins_then_is_revoked() {
    let dir = Scratch::new("pair-flow");
    let reg = Registry::start_default(dir.path());
    // Any valid API key may invite (compatible).
    let code = generate_code(&reg, &[("X-API-Key", "key-alpha")]);
    let reply = reg.post("/api/pairing/pair", &pair_body(&code, "kitchen-pi"));
    assert_eq!(reply.status, 200, "{reply:?}");
    let paired = reply.json();
    let fields: Vec<&String> = paired.as_object().unwrap().keys().collect();
    assert_eq!(fields, ["device_token", "id", "peer_id", "status"], "{paired}");
    assert_eq!(paired["status"], "pending_approval");
    let id = paired["id"].as_str().unwrap().to_owned();
    let peer = paired["peer_id"].as_str().unwrap().to_owned();
    let dt = paired["device_token"].as_str().unwrap().to_owned();
    assert!(is_hex(&id, 8), "{id}");
    assert!(is_hex(peer.strip_prefix("agent-").unwrap(), 6), "{peer}");
    assert!(is_hex(dt.strip_prefix("dt_").unwrap(), 32), "{dt}");

    // The listings show the entry, never its token.
    let pending = admin(&reg, "GET", "/api/pairing/pending");
    assert_eq!(pending.status, 200);
    let list = pending.json();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(
        (&list[0]["id"], &list[0]["status"], &list[0]["peer_id"]),
        (&json!(id), &json!("pending_approval"), &json!(peer))
    );
    assert_eq!(list[0]["agent_name"], "kitchen-pi");
    assert_eq!(list[0]["invited_by"], "alpha");
    assert!(list[0]["created_at"].is_f64() && list[0]["updated_at"].is_f64(), "{list}");
    for body in [&pending.body, &admin(&reg, "GET", "/api/pairing/all").body] {
        assert!(!body.contains("device_token") && !body.contains(&dt[3..]), "{body}");
    }

    // Pending: a JWT with role "pending"; an API key wins over the token.
    let tok = device_token(&reg, &dt);
    assert_eq!(tok.status, 200, "{tok:?}");
    assert_eq!((tok.json()["peer_id"].as_str(), tok.json()["role"].as_str()), (Some(peer.as_str()), Some("pending")));
    let pending_jwt = tok.json()["token"].as_str().unwrap().to_owned();
    let both = reg.request("POST", "/api/token", &[("X-API-Key", "key-bravo"), ("X-Device-Token", &dt)], None);
    assert_eq!(both.json()["peer_id"], "bravo");

    block_on(async {
        let mut alpha = reg.connect("key-alpha").await;
        assert!(alpha.register().await.is_empty());
        let mut dev = WsClient::connect(&reg.ws_url(&pending_jwt), &peer).await.expect("a pending device may connect");
        assert!(dev.register().await.is_empty(), "a pending device sees nobody");
        assert!(alpha.register().await.is_empty(), "and nobody sees it");
        dev.send("offer", Some("alpha"), json!({"sdp": "too early"})).await;
        dev.expect_error("not_authorized").await;
        alpha.send("offer", Some(&peer), json!({"sdp": "too early"})).await;
        alpha.expect_error("not_authorized").await;

        // Approval reaches the open socket: a fresh peer_list, no reconnect.
        let approved = admin(&reg, "POST", &format!("/api/pairing/{id}/approve"));
        assert_eq!((approved.status, approved.json()), (200, json!({"id": id, "status": "approved", "peer_id": peer})));
        let list = dev.next_json().await;
        assert_eq!((&list["type"], &list["peer_id"]), (&json!("peer_list"), &json!("registry")), "{list}");
        assert_eq!(list["payload"]["peers"], json!(["alpha"]));
        // As the newcomer it offers; signaling flows both ways.
        dev.send("offer", Some("alpha"), json!({"sdp": "offer from the device"})).await;
        let offer = alpha.next_json().await;
        assert_eq!((&offer["type"], &offer["peer_id"]), (&json!("offer"), &json!(peer)), "{offer}");
        assert_eq!(offer["payload"]["sdp"], "offer from the device");
        alpha.send("answer", Some(&peer), json!({"sdp": "answer"})).await;
        assert_eq!(dev.next_json().await["type"], "answer");
        assert_eq!(alpha.register().await, [peer.as_str()]);
        let tok = device_token(&reg, &dt);
        assert_eq!(tok.json()["role"], "agent", "{tok:?}");
        let agent_jwt = tok.json()["token"].as_str().unwrap().to_owned();

        // Revocation: the socket closes with 4003, the others are told.
        let revoked = admin(&reg, "POST", &format!("/api/pairing/{id}/revoke"));
        assert_eq!((revoked.status, revoked.json()), (200, json!({"status": "ok"})));
        assert_eq!(dev.expect_close().await, Some(4003));
        let left = alpha.next_json().await;
        assert_eq!(left, json!({"type": "peer_left", "peer_id": "registry", "payload": {"peer_id": peer}}));
        let tok = device_token(&reg, &dt);
        assert_eq!((tok.status, tok.body.as_str()), (401, ""), "the device token is dead");
        for jwt in [&agent_jwt, &pending_jwt] {
            let (status, body) = WsClient::refused(&reg.ws_url(jwt)).await;
            assert_eq!((status, body.len()), (401, 0), "an unexpired JWT of a revoked device");
        }
        assert!(alpha.register().await.is_empty());
    });

    let again = admin(&reg, "POST", &format!("/api/pairing/{id}/revoke"));
    assert_eq!((again.status, again.json()), (404, json!({"error": "not found or not approved"})));
    for op in ["approve", "reject"] {
        let r = admin(&reg, "POST", &format!("/api/pairing/{id}/{op}"));
        assert_eq!((r.status, r.json()), (404, json!({"error": "not found or not pending"})), "{op}");
    }
    assert_eq!(entry(&reg, &id)["status"], "revoked");
    assert!(admin(&reg, "GET", "/api/pairing/pending").json().as_array().unwrap().is_empty());
    assert_eq!(metric(&reg, "chatixia_pairing_entries{status=\"revoked\"}"), "1");
}

#[test]
fn a_rejected_device_is_shut_out() {
    let dir = Scratch::new("pair-reject");
    let reg = Registry::start_default(dir.path());
    let paired = pair(&reg, "stranger");
    let (id, peer, dt) =
        (paired["id"].as_str().unwrap(), paired["peer_id"].as_str().unwrap(), paired["device_token"].as_str().unwrap());
    let pending_jwt = device_token(&reg, dt).json()["token"].as_str().unwrap().to_owned();
    block_on(async {
        let mut alpha = reg.connect("key-alpha").await;
        let mut dev = WsClient::connect(&reg.ws_url(&pending_jwt), peer).await.unwrap();
        assert!(dev.register().await.is_empty());
        let r = admin(&reg, "POST", &format!("/api/pairing/{id}/reject"));
        assert_eq!((r.status, r.json()), (200, json!({"status": "ok"})));
        assert_eq!(dev.expect_close().await, Some(4003));
        // The others are told it is gone, as after a revocation.
        let left = alpha.next_json().await;
        assert_eq!(left, json!({"type": "peer_left", "peer_id": "registry", "payload": {"peer_id": peer}}));
        alpha.expect_quiet().await;
        let (status, _) = WsClient::refused(&reg.ws_url(&pending_jwt)).await;
        assert_eq!(status, 401);
    });
    assert_eq!(device_token(&reg, dt).status, 401);
    for op in ["approve", "reject"] {
        let r = admin(&reg, "POST", &format!("/api/pairing/{id}/{op}"));
        assert_eq!((r.status, r.json()), (404, json!({"error": "not found or not pending"})), "{op}");
    }
    let r = admin(&reg, "POST", &format!("/api/pairing/{id}/revoke"));
    assert_eq!((r.status, r.json()), (404, json!({"error": "not found or not approved"})));
    assert_eq!(entry(&reg, id)["status"], "rejected");
}

#[test]
fn redemption_errors_and_the_rate_limit_have_the_compatible_bodies() {
    let dir = Scratch::new("pair-errors");
    std::fs::write(dir.path().join("api_keys.json"), DEFAULT_KEYS).unwrap();
    // Behind a trusted proxy, X-Forwarded-For picks the client address.
    let reg = Registry::start_in(dir.path(), &[], &[("TRUSTED_PROXIES", "127.0.0.1")]);
    let from = |ip: &str, body: &str| {
        reg.request(
            "POST",
            "/api/pairing/pair",
            &[("Content-Type", "application/json"), ("X-Forwarded-For", ip)],
            Some(body),
        )
    };
    let code = generate_code(&reg, &[ADMIN]);
    let wrong = if code == "000000" { "000001" } else { "000000" };
    let cases: [(String, u16, Value); 5] = [
        (pair_body("12345", "x"), 400, json!({"error": "code must be exactly 6 digits"})),
        (pair_body("abcdef", "x"), 400, json!({"error": "code must be exactly 6 digits"})),
        (pair_body(&code, "   "), 400, json!({"error": "agent_name is required"})),
        (pair_body(wrong, "x"), 401, json!({"error": "invalid or expired pairing code"})),
        (pair_body(&code, "x"), 429, json!({"error": "too many pairing attempts, try again later"})),
    ];
    // Four refused attempts plus a malformed body make five; the sixth,
    // even with the right code, is over the limit.
    assert_eq!(from("10.1.1.1", "not json").status, 400);
    for (body, status, want) in &cases {
        let r = from("10.1.1.1", body);
        assert_eq!((r.status, r.json()), (*status, want.clone()), "{body}");
    }
    // Another address is not limited, and the code was never spent.
    let ok = from("10.1.1.2", &pair_body(&code, "x"));
    assert_eq!(ok.status, 200, "{ok:?}");
    let again = from("10.1.1.3", &pair_body(&code, "y"));
    assert_eq!((again.status, again.json()), (401, json!({"error": "invalid or expired pairing code"})), "single use");
    assert_eq!(metric(&reg, "chatixia_pairings_rate_limited_total"), "1");
}

#[test]
fn every_admin_route_refuses_missing_and_non_admin_credentials_without_running() {
    let dir = Scratch::new("pair-admin-auth");
    let reg = Registry::start_default(dir.path());
    let pending = pair(&reg, "pending-one");
    let approved = pair(&reg, "approved-one");
    let (p_id, a_id) = (pending["id"].as_str().unwrap(), approved["id"].as_str().unwrap());
    assert_eq!(admin(&reg, "POST", &format!("/api/pairing/{a_id}/approve")).status, 200);
    let agent = r#"{"agent_id":"a1","hostname":"h"}"#;
    assert_eq!(reg.post_as("key-alpha", "/api/registry/agents", agent).status, 200);

    let agent_jwt = format!("Bearer {}", reg.token("key-alpha"));
    let pending_dt = pending["device_token"].as_str().unwrap();
    let approved_dt = approved["device_token"].as_str().unwrap();
    let pending_jwt = format!("Bearer {}", device_token(&reg, pending_dt).json()["token"].as_str().unwrap());
    let approved_jwt = format!("Bearer {}", device_token(&reg, approved_dt).json()["token"].as_str().unwrap());
    let none: Vec<(&str, &str)> = vec![];
    let credentials: Vec<(&str, Headers, u16)> = vec![
        ("no credential", none.clone(), 401),
        ("unknown key", vec![("X-API-Key", "key-nope")], 401),
        ("garbage bearer", vec![("Authorization", "Bearer not-a-jwt")], 401),
        ("a device token is no admin credential", vec![("X-Device-Token", approved_dt)], 401),
        ("agent key", vec![("X-API-Key", "key-alpha")], 403),
        ("agent JWT", vec![("Authorization", &agent_jwt)], 403),
        ("pending device JWT", vec![("Authorization", &pending_jwt)], 403),
        ("approved device JWT", vec![("Authorization", &approved_jwt)], 403),
    ];
    let routes = [
        ("GET", "/api/pairing/pending".to_owned()),
        ("GET", "/api/pairing/all".to_owned()),
        ("POST", format!("/api/pairing/{p_id}/approve")),
        ("POST", format!("/api/pairing/{p_id}/reject")),
        ("POST", format!("/api/pairing/{a_id}/revoke")),
    ];
    let before = admin(&reg, "GET", "/api/pairing/all").json();
    for (method, path) in &routes {
        for (what, headers, status) in &credentials {
            let r = reg.request(method, path, headers, None);
            assert_eq!(r.status, *status, "{method} {path}: {what}: {r:?}");
            assert!(r.json()["error"].is_string(), "{method} {path}: {what}: {r:?}");
            assert!(!r.body.contains("pending-one") && !r.body.contains("agent-"), "{method} {path}: {what}: leaked");
        }
    }
    // No handler ran: the entries are exactly as they were (status and
    // updated_at), and the agent is still registered.
    assert_eq!(admin(&reg, "GET", "/api/pairing/all").json(), before);
    assert_eq!(reg.get("/api/registry/agents/a1").json()["agent_id"], "a1");
    assert_eq!(device_token(&reg, approved_dt).json()["role"], "agent");

    // generate-code: any API key or an admin JWT; no code is made otherwise.
    for (what, headers, status) in &credentials {
        let status = if *what == "agent key" { 200 } else { *status };
        let live = metric(&reg, "chatixia_pairing_codes_live").parse::<u32>().unwrap();
        let r = reg.request("POST", "/api/pairing/generate-code", headers, None);
        assert_eq!(r.status, status, "generate-code: {what}: {r:?}");
        let now_live = metric(&reg, "chatixia_pairing_codes_live").parse::<u32>().unwrap();
        assert_eq!(now_live - live, u32::from(status == 200), "generate-code: {what}");
    }
    let admin_jwt = format!("Bearer {}", reg.token("key-admin"));
    let r = reg.request("POST", "/api/pairing/generate-code", &[("Authorization", &admin_jwt)], None);
    assert_eq!(r.status, 200, "{r:?}");

    // The same table with the admin key (and an admin JWT) runs them all.
    let statuses: Vec<u16> = routes.iter().map(|(m, p)| admin(&reg, m, p).status).collect();
    assert_eq!(statuses, [200, 200, 200, 404, 200], "the reject finds the entry approved already");
    assert_eq!(entry(&reg, p_id)["status"], "approved");
    assert_eq!(entry(&reg, a_id)["status"], "revoked");
    let listed = reg.request("GET", "/api/pairing/all", &[("Authorization", &admin_jwt)], None);
    assert_eq!(listed.status, 200);
}

#[test]
fn a_code_redeemed_concurrently_is_spent_exactly_once() {
    const N: usize = 16;
    let dir = Scratch::new("pair-race");
    std::fs::write(dir.path().join("api_keys.json"), DEFAULT_KEYS).unwrap();
    // Distinct client addresses through a trusted proxy: the per-address
    // limit of 5 is not what decides here.
    let reg = Registry::start_in(dir.path(), &[], &[("TRUSTED_PROXIES", "127.0.0.1")]);
    let code = generate_code(&reg, &[ADMIN]);
    let url = reg.http("/api/pairing/pair");
    let barrier = Arc::new(Barrier::new(N));
    let replies: Vec<(u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|i| {
                let (barrier, url, code) = (barrier.clone(), url.clone(), code.clone());
                s.spawn(move || {
                    let agent = http_agent();
                    let body = pair_body(&code, &format!("racer-{i}"));
                    barrier.wait();
                    let mut r = agent
                        .post(&url)
                        .header("Content-Type", "application/json")
                        .header("X-Forwarded-For", &format!("10.7.0.{i}"))
                        .send(body.as_str())
                        .expect("request");
                    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winners: Vec<&(u16, String)> = replies.iter().filter(|(s, _)| *s == 200).collect();
    assert_eq!(winners.len(), 1, "{replies:?}");
    for (status, body) in replies.iter().filter(|(s, _)| *s != 200) {
        assert_eq!((*status, body.as_str()), (401, r#"{"error":"invalid or expired pairing code"}"#));
    }
    assert_eq!(admin(&reg, "GET", "/api/pairing/all").json().as_array().unwrap().len(), 1);
}

#[test]
fn acknowledged_pairing_changes_survive_kill_9() {
    let dir = Scratch::new("pair-crash");
    let mut reg = Registry::start_default(dir.path());
    let approved = pair(&reg, "approved");
    let pending = pair(&reg, "pending");
    let spare_code = generate_code(&reg, &[ADMIN]);
    let a_id = approved["id"].as_str().unwrap();
    let r = admin(&reg, "POST", &format!("/api/pairing/{a_id}/approve"));
    assert_eq!(r.status, 200);
    reg.restart(); // SIGKILL right after the answer, then start again

    assert_eq!(entry(&reg, a_id)["status"], "approved");
    assert_eq!(entry(&reg, pending["id"].as_str().unwrap())["status"], "pending_approval");
    let tok = device_token(&reg, approved["device_token"].as_str().unwrap());
    assert_eq!((tok.json()["role"].as_str(), &tok.json()["peer_id"]), (Some("agent"), &approved["peer_id"]));
    assert_eq!(device_token(&reg, pending["device_token"].as_str().unwrap()).json()["role"], "pending");
    // An unused code is still good after the crash, and still single use.
    let r = reg.post("/api/pairing/pair", &pair_body(&spare_code, "late"));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(reg.post("/api/pairing/pair", &pair_body(&spare_code, "later")).status, 401);
    // The approved device is in the mesh again.
    block_on(async {
        let jwt = tok.json()["token"].as_str().unwrap().to_owned();
        let mut dev = WsClient::connect(&reg.ws_url(&jwt), approved["peer_id"].as_str().unwrap()).await.unwrap();
        let mut alpha = reg.connect("key-alpha").await;
        assert_eq!(alpha.register().await, [approved["peer_id"].as_str().unwrap()]);
        assert_eq!(dev.register().await, ["alpha"]);
    });

    // On disk: mode 0600, no secret in the clear.
    use std::os::unix::fs::PermissionsExt;
    let file = dir.path().join("chatixia-state/pairing.json");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&file).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["version"], 1);
    let mut strings = Vec::new();
    collect_strings(&doc, &mut strings);
    for secret in [&approved["device_token"], &pending["device_token"], &json!(spare_code)] {
        let secret = secret.as_str().unwrap();
        assert!(!strings.iter().any(|s| s.contains(secret)), "{secret} in {text}");
    }
    assert!(!text.contains(&approved["device_token"].as_str().unwrap()[3..]));
}

fn collect_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|v| collect_strings(v, out)),
        Value::Object(o) => o.iter().for_each(|(k, v)| {
            out.push(k.clone());
            collect_strings(v, out)
        }),
        _ => {}
    }
}

#[test]
fn tasks_survive_kill_9() {
    let dir = Scratch::new("pair-tasks");
    let mut reg = Registry::start_default(dir.path());
    let submit = |reg: &Registry, body: Value| reg.post("/api/hub/tasks", &body.to_string()).json()["task_id"].clone();
    let waiting = submit(&reg, json!({"skill": "echo", "target_agent_id": "worker", "payload": {"n": [1, 2]}}));
    let done = submit(&reg, json!({"skill": "echo"}));
    let done_id = done.as_str().unwrap();
    let update = json!({"state": "completed", "result": "42"}).to_string();
    assert_eq!(reg.post_as("key-admin", &format!("/api/hub/tasks/{done_id}"), &update).json(), json!({"status": "ok"}));
    let before = reg.get("/api/hub/tasks/all").json();
    assert_eq!(before.as_array().unwrap().len(), 2);
    reg.restart();

    assert_eq!(reg.get("/api/hub/tasks/all").json(), before);
    // Finality survives too, and the waiting task is claimed by its target.
    let again =
        reg.post_as("key-admin", &format!("/api/hub/tasks/{done_id}"), &json!({"state": "pending"}).to_string());
    assert_eq!(again.json(), json!({"error": "task is final"}));
    let hb = reg.post_as("key-alpha", "/api/hub/heartbeat", &json!({"agent_id": "worker"}).to_string()).json();
    assert_eq!(hb["pending_tasks"][0]["id"], waiting);
    assert_eq!(hb["pending_tasks"][0]["payload"], json!({"n": [1, 2]}));
    reg.restart();
    assert_eq!(reg.get(&format!("/api/hub/tasks/{}", waiting.as_str().unwrap())).json()["state"], "assigned");
}

#[test]
fn a_corrupt_state_file_stops_the_start_and_is_left_untouched() {
    let truncated = br#"{"version":1,"codes":[],"entries":[{"id":"0a0b0c0d","agent_name":"pi","#.to_vec();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("pairing.json", truncated, "not a valid state document"),
        ("pairing.json", vec![0, 159, 146, 150, 0xff], "not a valid state document"),
        ("pairing.json", Vec::new(), "not a valid state document"),
        ("pairing.json", br#"{"version":7,"codes":[],"entries":[]}"#.to_vec(), "version 7"),
        ("tasks.json", br#"{"version":1,"tasks":[{"id":"t"}]}"#.to_vec(), "malformed"),
        ("tasks.json", b"{\"version\":1,\"tasks\":[".to_vec(), "not a valid state document"),
    ];
    for (name, bytes, why) in cases {
        let dir = Scratch::new("pair-corrupt");
        std::fs::write(dir.path().join("api_keys.json"), DEFAULT_KEYS).unwrap();
        let state = dir.path().join("chatixia-state");
        std::fs::create_dir_all(&state).unwrap();
        let file = state.join(name);
        std::fs::write(&file, &bytes).unwrap();
        let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();

        let mut proc = Proc::spawn(Registry::command(dir.path(), &[], &[]));
        assert_eq!(proc.wait_exit(), Some(1), "{name}: {:?}", String::from_utf8_lossy(&bytes));
        let log = proc.log();
        assert!(log.contains(&format!("chatixia-state/{name}")), "names the file: {log}");
        assert!(log.contains(why) && log.contains("Refusing to start"), "{log}");
        assert!(!log.contains("listening on"), "{log}");
        assert_eq!(std::fs::read(&file).unwrap(), bytes, "{name} byte for byte untouched");
        assert_eq!(std::fs::metadata(&file).unwrap().modified().unwrap(), mtime);
        let others: Vec<String> = std::fs::read_dir(&state)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != name && n != "signaling-secret")
            .collect();
        assert!(others.is_empty(), "nothing else written: {others:?}");
    }
}

/// Runs `chatixia-registry admin ARGS` in `dir`; returns exit code, stdout
/// and stderr.
fn admin_cli(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd: Command = bin_command("chatixia-registry");
    cmd.current_dir(dir).arg("admin").args(args).env_remove("ADMIN_KEY").env_remove("REGISTRY_URL");
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("run chatixia-registry admin");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[test]
fn the_admin_command_line_drives_a_running_registry() {
    let dir = Scratch::new("pair-cli");
    let reg = Registry::start_default(dir.path());
    let url = format!("http://127.0.0.1:{}", reg.port);
    let run = |args: &[&str]| {
        admin_cli(dir.path(), &[&["--url", url.as_str(), "--key", "key-admin"][..], args].concat(), &[])
    };

    // The key may come from the environment instead of the command line.
    let (status, out, err) = admin_cli(dir.path(), &["--url", &url, "code"], &[("ADMIN_KEY", "key-admin")]);
    assert_eq!(status, 0, "{err}");
    let code = out.split_whitespace().nth(2).unwrap().to_owned();
    assert!(code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()), "{out}");
    assert!(out.contains(&format!("chatixia-sidecar pair --registry {url} --code {code}")), "{out}");

    let paired = reg.post("/api/pairing/pair", &pair_body(&code, "cli-device")).json();
    let (id, peer) = (paired["id"].as_str().unwrap(), paired["peer_id"].as_str().unwrap());
    let (status, out, _) = run(&["list"]);
    assert_eq!(status, 0);
    let row = out.lines().find(|l| l.starts_with(id)).unwrap_or_else(|| panic!("{id} not in\n{out}"));
    assert!(row.contains("pending_approval") && row.contains(peer) && row.contains("cli-device"), "{out}");
    assert!(!out.contains("dt_"), "{out}");

    let (status, out, err) = run(&["approve", id]);
    assert_eq!((status, out.trim()), (0, format!("Approved {id}: {peer} is now part of the mesh.").as_str()), "{err}");
    assert_eq!(entry(&reg, id)["status"], "approved");
    assert_eq!(run(&["list"]).1, "No devices awaiting approval.\n");
    let (_, all, _) = run(&["list", "--all"]);
    assert!(all.lines().any(|l| l.starts_with(id) && l.contains("approved")), "{all}");

    let (status, out, err) = run(&["approve", id]);
    assert_eq!((status, out.as_str()), (1, ""));
    assert!(err.contains("HTTP 404: not found or not pending"), "{err}");
    let (status, out, _) = run(&["revoke", id]);
    assert_eq!(status, 0);
    assert!(out.starts_with(&format!("Revoked {id}")), "{out}");
    assert_eq!(entry(&reg, id)["status"], "revoked");

    let second = pair(&reg, "second");
    let second_id = second["id"].as_str().unwrap();
    let (status, out, _) = run(&["reject", second_id]);
    assert_eq!((status, out.starts_with(&format!("Rejected {second_id}"))), (0, true), "{out}");
    assert_eq!(entry(&reg, second_id)["status"], "rejected");

    // Refusals and mistakes: exit 1 when the registry says no or is not
    // there, 2 for bad usage.
    let (status, _, err) = admin_cli(dir.path(), &["--url", &url, "--key", "key-alpha", "list"], &[]);
    assert_eq!(status, 1);
    assert!(err.contains("HTTP 403") && err.contains("not an admin key"), "{err}");
    let (status, _, err) = admin_cli(dir.path(), &["--url", &url, "--key", "key-nope", "approve", id], &[]);
    assert!(status == 1 && err.contains("HTTP 401"), "{err}");
    let (status, _, err) = admin_cli(dir.path(), &["--url", &url, "list"], &[]);
    assert!(status == 2 && err.contains("ADMIN_KEY"), "{err}");
    let (status, _, err) = run(&["approve", "../../x"]);
    assert!(status == 2 && err.contains("not an entry id"), "{err}");
    let (status, _, err) = run(&["dance"]);
    assert!(status == 2 && err.contains("unknown command"), "{err}");
    let (status, _, err) = admin_cli(dir.path(), &["--url", "http://127.0.0.1:1", "--key", "k", "list"], &[]);
    assert!(status == 1 && err.contains("cannot reach"), "{err}");
    let (status, out, _) = admin_cli(dir.path(), &["--help"], &[]);
    assert!(status == 0 && out.contains("approve ID") && out.contains("--url"), "{out}");
}
