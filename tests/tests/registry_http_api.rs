//! The registry's REST API (docs/PROTOCOL.md §3): health and metrics, ICE config, agent
//! registry, task hub, body errors, admin auth and CORS.

use chatixia_e2e::{Registry, Scratch, block_on};
use serde_json::{Value, json};

fn rfc3339(v: &Value) -> bool {
    // 2024-01-02T03:04:05Z or with fraction/offset.
    v.as_str().is_some_and(|s| s.len() >= 20 && s.as_bytes()[4] == b'-' && s.as_bytes()[10] == b'T')
}

#[test]
fn healthz_and_metrics() {
    let dir = Scratch::new("http-health");
    let reg = Registry::start_default(dir.path());
    let h = reg.get("/healthz");
    assert_eq!((h.status, h.json()), (200, json!({"status": "ok"})));
    assert!(h.header("content-type").is_some_and(|t| t.starts_with("application/json")), "{h:?}");

    block_on(async {
        let mut a = reg.connect("key-alpha").await;
        let mut b = reg.connect("key-bravo").await;
        for i in 0..3 {
            a.send("ice_candidate", Some("bravo"), json!({"candidate": i})).await;
            b.next_json().await;
        }
        a.send("offer", Some("nobody"), json!(null)).await;
        a.expect_error("unknown_target").await;
        let m = reg.get("/metrics");
        assert_eq!(m.status, 200);
        assert!(m.header("content-type").is_some_and(|t| t.starts_with("text/plain")), "{m:?}");
        for line in [
            "# TYPE chatixia_ws_connections gauge",
            "chatixia_ws_connections 2",
            "# TYPE chatixia_relayed_frames_total counter",
            "chatixia_relayed_frames_total 3",
            "chatixia_tokens_issued_total 2",
            "chatixia_dropped_frames_total{reason=\"unknown_target\"} 1",
        ] {
            assert!(m.body.lines().any(|l| l == line), "no line {line:?} in\n{}", m.body);
        }
    });
}

#[test]
fn ice_config_has_stun_and_optional_turn() {
    let dir = Scratch::new("http-config");
    let reg = Registry::start_default(dir.path());
    assert_eq!(reg.get("/api/config").json(), json!({"iceServers": [{"urls": ["stun:stun.l.google.com:19302"]}]}));

    let dir = Scratch::new("http-config-turn");
    std::fs::write(dir.path().join("api_keys.json"), chatixia_e2e::DEFAULT_KEYS).unwrap();
    let env = [
        ("TURN_URL", "turn:turn.example.org:3478"),
        ("TURN_SECRET", "turn-shared-secret"),
        ("STUN_URLS", "stun:a.example:3478, stun:b.example:3478"),
    ];
    let reg = Registry::start_in(dir.path(), &[], &env);
    let before = chatixia_e2e::jwt::now_unix();
    let config = reg.get("/api/config").json();
    let after = chatixia_e2e::jwt::now_unix();
    let servers = config["iceServers"].as_array().expect("iceServers");
    assert_eq!(servers.len(), 2, "{config}");
    assert_eq!(servers[0], json!({"urls": ["stun:a.example:3478", "stun:b.example:3478"]}));
    let turn = &servers[1];
    assert_eq!(turn["urls"], json!(["turn:turn.example.org:3478"]), "{config}");
    let username = turn["username"].as_str().expect("username");
    let expiry: u64 = username.strip_suffix(":mesh").and_then(|t| t.parse().ok()).expect("<expiry>:mesh");
    assert!((before + 86_400..=after + 86_400).contains(&expiry), "{username}");
    // coturn REST: base64(HMAC-SHA1(secret, username)), computed here
    // independently.
    use ct_codecs::Encoder as _;
    let mac = hmac_sha1_compact::HMAC::mac(username.as_bytes(), b"turn-shared-secret");
    assert_eq!(turn["credential"], ct_codecs::Base64::encode_to_string(mac).unwrap());
}

#[test]
fn agents_upsert_list_get_and_route() {
    let dir = Scratch::new("http-agents");
    let reg = Registry::start_default(dir.path());
    assert_eq!(reg.get("/api/registry/agents").json(), json!([]));

    let r = reg.post_as("key-alpha", "/api/registry/agents", r#"{"agent_id":"a1","hostname":"pi-1"}"#);
    assert_eq!((r.status, r.json()), (200, json!({"status": "ok"})));
    let rec = reg.get("/api/registry/agents/a1").json();
    // Every default of AgentInfo, flattened, plus health and timestamps.
    for (k, v) in [
        ("agent_id", json!("a1")),
        ("hostname", json!("pi-1")),
        ("ip", json!("")),
        ("port", json!(8000)),
        ("sidecar_peer_id", json!("")),
        ("capabilities", json!({"skills": [], "mcp_servers": [], "goals_count": 0, "mode": ""})),
        ("status", json!("")),
        ("mode", json!("")),
        ("health", json!("active")),
    ] {
        assert_eq!(rec[k], v, "{k} in {rec}");
    }
    assert!(rfc3339(&rec["registered_at"]) && rfc3339(&rec["last_heartbeat"]), "{rec}");

    // Upsert replaces the fields and keeps one record.
    let full = json!({"agent_id":"a1","hostname":"pi-1b","ip":"10.0.0.5","port":9000,"sidecar_peer_id":"alpha",
        "capabilities":{"skills":["summarize","translate"],"mcp_servers":["fs"],"goals_count":2,"mode":"auto"},
        "status":"busy","mode":"auto","unknown_key":"ignored"});
    assert_eq!(reg.post_as("key-alpha", "/api/registry/agents", &full.to_string()).json(), json!({"status": "ok"}));
    reg.post_as(
        "key-alpha",
        "/api/registry/agents",
        r#"{"agent_id":"a2","hostname":"pi-2","capabilities":{"skills":["translate"]}}"#,
    );
    let list = reg.get("/api/registry/agents").json();
    let ids: Vec<&str> = list.as_array().unwrap().iter().map(|r| r["agent_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a1", "a2"]);
    let a1 = &list[0];
    assert_eq!((&a1["hostname"], &a1["port"], &a1["status"]), (&json!("pi-1b"), &json!(9000), &json!("busy")));
    assert_eq!(a1["capabilities"]["skills"], json!(["summarize", "translate"]));
    assert_eq!(a1.get("unknown_key"), None);

    let nf = reg.get("/api/registry/agents/nope");
    assert_eq!((nf.status, nf.json()), (200, json!({"error": "not found"})));

    let routed = reg.get("/api/registry/route?skill=summarize").json();
    assert_eq!(routed["agent_id"], "a1", "{routed}");
    let routed = reg.get("/api/registry/route?skill=translate").json();
    assert!(routed["agent_id"] == "a1" || routed["agent_id"] == "a2", "{routed}");
    let none = reg.get("/api/registry/route?skill=juggle%20balls");
    assert_eq!(
        (none.status, none.json()),
        (200, json!({"error": "no agent found with skill", "skill": "juggle balls"}))
    );
}

#[test]
fn heartbeats_create_agents_and_claim_their_tasks() {
    let dir = Scratch::new("http-heartbeat");
    let reg = Registry::start_default(dir.path());
    let submit =
        |body: Value| reg.post("/api/hub/tasks", &body.to_string()).json()["task_id"].as_str().unwrap().to_owned();
    let heartbeat = |body: Value| {
        let r = reg.post_as("key-alpha", "/api/hub/heartbeat", &body.to_string());
        assert_eq!(r.status, 200, "{r:?}");
        let v = r.json();
        assert_eq!(v["status"], "ok", "{v}");
        v["pending_tasks"].as_array().expect("pending_tasks").clone()
    };

    // Unknown agent → created, the documented defaults for what it left out.
    assert!(heartbeat(json!({"agent_id": "w1", "hostname": "box", "skill_names": ["s"]})).is_empty());
    let w1 = reg.get("/api/registry/agents/w1").json();
    assert_eq!((&w1["hostname"], &w1["port"], &w1["health"]), (&json!("box"), &json!(8000), &json!("active")), "{w1}");
    assert_eq!(w1["capabilities"]["skills"], json!(["s"]));

    let for_w2 = submit(json!({"skill": "s", "target_agent_id": "w2", "payload": {"n": 1}}));
    let for_anyone = submit(json!({"skill": "s", "source_agent_id": "w9"}));
    let other_skill = submit(json!({"skill": "t"}));

    // w1 has skill s: takes the untargeted task only, never w2's.
    let claimed = heartbeat(json!({"agent_id": "w1"}));
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    assert_eq!(claimed[0]["id"], for_anyone.as_str());
    assert_eq!((&claimed[0]["state"], &claimed[0]["assigned_agent_id"]), (&json!("assigned"), &json!("w1")));
    // Fields absent from that heartbeat kept their values.
    assert_eq!(reg.get("/api/registry/agents/w1").json()["hostname"], "box");

    // w2 is unknown until its heartbeat, which creates it and hands over its
    // targeted task whatever its skills.
    let claimed = heartbeat(json!({"agent_id": "w2"}));
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    let t = &claimed[0];
    assert_eq!((&t["id"], &t["state"], &t["assigned_agent_id"]), (&json!(for_w2), &json!("assigned"), &json!("w2")));
    assert_eq!(t["payload"], json!({"n": 1}));
    assert_eq!(reg.get("/api/registry/agents/w2").json()["agent_id"], "w2");

    // Claimed once only; the task with no taker stays pending.
    assert!(heartbeat(json!({"agent_id": "w2"})).is_empty());
    assert!(heartbeat(json!({"agent_id": "w1"})).is_empty());
    assert_eq!(reg.get(&format!("/api/hub/tasks/{other_skill}")).json()["state"], "pending");
}

#[test]
fn tasks_submit_get_update_and_stay_final() {
    let dir = Scratch::new("http-tasks");
    let reg = Registry::start_default(dir.path());
    let r = reg.post("/api/hub/tasks", r#"{"skill":"echo","target_agent_id":"w1","payload":{"q":[1,2]},"ttl":60}"#);
    assert_eq!(r.status, 200, "{r:?}");
    let id = r.json()["task_id"].as_str().expect("task_id").to_owned();
    assert!(!id.is_empty());

    let task = reg.get(&format!("/api/hub/tasks/{id}")).json();
    for (k, v) in [
        ("id", json!(id)),
        ("skill", json!("echo")),
        ("target_agent_id", json!("w1")),
        ("source_agent_id", json!("")),
        ("assigned_agent_id", json!("")),
        ("payload", json!({"q": [1, 2]})),
        ("state", json!("pending")),
        ("result", json!("")),
        ("error", json!("")),
        ("ttl", json!(60)),
    ] {
        assert_eq!(task[k], v, "{k} in {task}");
    }
    let created = task["created_at"].as_f64().expect("float created_at");
    let now = chatixia_e2e::jwt::now_unix() as f64;
    assert!((now - 5.0..=now + 5.0).contains(&created), "{task}");

    let update = |body: &str| reg.post_as("key-admin", &format!("/api/hub/tasks/{id}"), body);
    assert_eq!(update(r#"{"state":"running"}"#).json(), json!({"status": "ok"}));
    assert_eq!(update(r#"{"state":"completed","result":"42"}"#).json(), json!({"status": "ok"}));
    let done = reg.get(&format!("/api/hub/tasks/{id}")).json();
    assert_eq!((&done["state"], &done["result"], &done["error"]), (&json!("completed"), &json!("42"), &json!("")));
    assert!(done["updated_at"].as_f64().unwrap() >= created);

    let r = update(r#"{"state":"running","result":"changed"}"#);
    assert_eq!((r.status, r.json()), (200, json!({"error": "task is final"})));
    assert_eq!(reg.get(&format!("/api/hub/tasks/{id}")).json()["result"], "42");

    let all = reg.get("/api/hub/tasks/all").json();
    assert!(all.as_array().unwrap().iter().any(|t| t["id"] == id.as_str()), "{all}");
    let nf = reg.get("/api/hub/tasks/doesnotexist");
    assert_eq!((nf.status, nf.json()), (200, json!({"error": "not found"})));
    let nf = reg.post_as("key-admin", "/api/hub/tasks/doesnotexist", r#"{"state":"completed"}"#);
    assert_eq!((nf.status, nf.json()), (200, json!({"error": "not found"})));
}

#[test]
fn bodies_that_are_not_json_get_400_and_wrong_types_422() {
    let dir = Scratch::new("http-bodies");
    let reg = Registry::start_default(dir.path());
    let id = reg.post("/api/hub/tasks", "{}").json()["task_id"].as_str().unwrap().to_owned();
    let task_path = format!("/api/hub/tasks/{id}");
    let cases: [(&str, &str, u16); 10] = [
        ("/api/registry/agents", "not json", 400),
        ("/api/registry/agents", "", 400),
        ("/api/registry/agents", r#"{"agent_id":"a","hostname":"h","#, 400),
        ("/api/registry/agents", r#"{"agent_id":5,"hostname":"h"}"#, 422),
        ("/api/registry/agents", r#"{"agent_id":"a","hostname":"h","port":70000}"#, 422),
        ("/api/registry/agents", r#"{"hostname":"h"}"#, 422),
        ("/api/hub/heartbeat", r#"{"agent_id":"a","skill_names":"s"}"#, 422),
        ("/api/hub/tasks", r#"{"ttl":"soon"}"#, 422),
        (&task_path, r#"{"result":"no state"}"#, 422),
        (&task_path, "<xml/>", 400),
    ];
    for (path, body, status) in cases {
        let r = reg.post_as("key-admin", path, body);
        assert_eq!(r.status, status, "POST {path} {body:?}: {r:?}");
        assert!(!r.body.is_empty(), "a short text says why");
    }
    let huge = json!({"agent_id": "big", "hostname": "x".repeat(70_000)}).to_string();
    assert_eq!(reg.post_as("key-alpha", "/api/registry/agents", &huge).status, 413);
    assert_eq!(reg.get("/api/nothing/here").status, 404);
    // Nothing was stored by the refused requests.
    assert_eq!(reg.get("/api/registry/agents").json(), json!([]));
    assert_eq!(reg.get(&task_path).json()["state"], "pending");
}

#[test]
fn deleting_an_agent_needs_its_own_key_or_an_admin() {
    let dir = Scratch::new("http-admin");
    let reg = Registry::start_default(dir.path());
    for id in ["a1", "a2", "a3"] {
        reg.post_as("key-alpha", "/api/registry/agents", &json!({"agent_id": id, "hostname": "h"}).to_string());
    }
    let delete = |id: &str, headers: &[(&str, &str)]| {
        reg.request("DELETE", &format!("/api/registry/agents/{id}"), headers, None)
    };
    let agent_jwt = format!("Bearer {}", reg.token("key-alpha"));
    let bravo_jwt = format!("Bearer {}", reg.token("key-bravo"));
    let admin_jwt = format!("Bearer {}", reg.token("key-admin"));

    assert_eq!(delete("a1", &[]).status, 401, "no credential");
    assert_eq!(delete("a1", &[("X-API-Key", "key-nope")]).status, 401, "unknown key");
    assert_eq!(delete("a1", &[("Authorization", "Bearer not.a.jwt")]).status, 401, "bad JWT");
    assert_eq!(delete("a1", &[("Authorization", "Basic a2V5LWFkbWluOg==")]).status, 401, "not a bearer");
    assert_eq!(delete("a1", &[("X-API-Key", "key-bravo")]).status, 403, "another agent's key");
    assert_eq!(delete("a1", &[("Authorization", &bravo_jwt)]).status, 403, "another agent's JWT");
    assert_eq!(reg.get("/api/registry/agents").json().as_array().unwrap().len(), 3, "nothing deleted yet");

    let r = delete("a1", &[("X-API-Key", "key-admin")]);
    assert_eq!((r.status, r.json()), (200, json!({"status": "ok"})));
    let r = delete("a2", &[("Authorization", &admin_jwt)]);
    assert_eq!((r.status, r.json()), (200, json!({"status": "ok"})));
    let r = delete("a3", &[("Authorization", &agent_jwt)]);
    assert_eq!((r.status, r.json()), (200, json!({"status": "ok"})), "its own agent");
    let r = delete("a1", &[("X-API-Key", "key-admin")]);
    assert_eq!((r.status, r.json()), (200, json!({"error": "not found"})));
    assert_eq!(reg.get("/api/registry/agents").json(), json!([]));
}

#[test]
fn cors_preflights_and_origins() {
    let dir = Scratch::new("http-cors");
    let reg = Registry::start_default(dir.path());
    let origin = [("Origin", "https://dash.example"), ("Access-Control-Request-Method", "POST")];
    let pre = reg.request("OPTIONS", "/api/registry/agents", &origin, None);
    assert_eq!(pre.status, 204, "{pre:?}");
    assert_eq!(pre.header("access-control-allow-origin"), Some("*"));
    let methods = pre.header("access-control-allow-methods").unwrap_or_default();
    assert!(methods.contains("POST") && methods.contains("DELETE"), "{pre:?}");
    let allowed = pre.header("access-control-allow-headers").unwrap_or_default().to_ascii_lowercase();
    assert!(allowed.contains("content-type") && allowed.contains("x-api-key"), "{pre:?}");
    // A preflight needs no credential, even for an admin route.
    assert_eq!(reg.request("OPTIONS", "/api/pairing/pending", &origin, None).status, 204);

    let get = reg.request("GET", "/api/registry/agents", &origin[..1], None);
    assert_eq!(get.header("access-control-allow-origin"), Some("*"));
    // Admin routes get no wildcard.
    let admin = reg.request("GET", "/api/pairing/pending", &[origin[0], ("X-API-Key", "key-admin")], None);
    assert_eq!(admin.status, 200);
    assert_eq!(admin.header("access-control-allow-origin"), None, "{admin:?}");

    // Configured origins are echoed, others get nothing.
    let dir = Scratch::new("http-cors-list");
    let reg = Registry::start_in(dir.path(), &[], &[("CORS_ORIGINS", "https://dash.example,https://b.example")]);
    let ok = reg.request("GET", "/healthz", &[("Origin", "https://b.example")], None);
    assert_eq!(ok.header("access-control-allow-origin"), Some("https://b.example"));
    let other = reg.request("GET", "/healthz", &[("Origin", "https://evil.example")], None);
    assert_eq!((other.status, other.header("access-control-allow-origin")), (200, None));
    let admin = reg.request("GET", "/api/pairing/all", &[("Origin", "https://dash.example")], None);
    assert_eq!((admin.status, admin.header("access-control-allow-origin")), (401, Some("https://dash.example")));
}

/// What an unauthenticated client can make the registry keep is bounded in
/// bytes, not only in count: big task payloads fill `TASKS_MAX_BYTES` and
/// are then refused (503), the state file stays within it, `ttl` is capped
/// at a day, and agent records over 8 KiB are refused (413) without
/// touching the stored one.
#[test]
fn stored_tasks_and_agents_are_bounded_in_bytes() {
    let dir = Scratch::new("http-store-bounds");
    std::fs::write(dir.path().join("api_keys.json"), chatixia_e2e::DEFAULT_KEYS).unwrap();
    let reg = Registry::start_in(dir.path(), &[], &[("TASKS_MAX_BYTES", "262144")]);
    // A 60 KB array of zeros: over 1 MB once parsed into a JSON tree.
    let zeros = vec!["0"; 30_000].join(",");
    let body = format!(r#"{{"skill":"s","ttl":99999999999,"payload":[{zeros}]}}"#);
    let mut accepted = Vec::new();
    let mut refused = 0;
    for _ in 0..8 {
        let r = reg.post("/api/hub/tasks", &body);
        match r.status {
            200 => accepted.push(r.json()["task_id"].as_str().expect("task_id").to_owned()),
            503 => {
                assert_eq!(r.json()["error"], "task store full", "{r:?}");
                refused += 1;
            }
            _ => panic!("{r:?}"),
        }
    }
    assert_eq!((accepted.len(), refused), (4, 4), "4 tasks of 60 KB fit in 256 KiB");
    let task = reg.get(&format!("/api/hub/tasks/{}", accepted[0])).json();
    assert_eq!(task["ttl"], 86_400);
    assert_eq!(task["payload"].as_array().map(Vec::len), Some(30_000));
    let file = std::fs::metadata(dir.path().join("chatixia-state/tasks.json")).expect("tasks.json").len();
    assert!(file < 262_144 + 4_096, "tasks.json is {file} bytes");
    // A small task still fits.
    assert_eq!(reg.post("/api/hub/tasks", r#"{"skill":"s"}"#).status, 200);

    let agent = json!({"agent_id": "a1", "hostname": "h", "capabilities": {"skills": ["search"]}});
    assert_eq!(reg.post_as("key-alpha", "/api/registry/agents", &agent.to_string()).status, 200);
    let skills: Vec<String> = (0..3_000).map(|i| (i % 10).to_string()).collect();
    let big = json!({"agent_id": "a1", "hostname": "h", "capabilities": {"skills": skills}});
    let r = reg.post_as("key-alpha", "/api/registry/agents", &big.to_string());
    assert_eq!(r.status, 413, "{r:?}");
    assert!(r.json()["error"].as_str().is_some_and(|e| e.contains("exceeds 8192")), "{r:?}");
    let r =
        reg.post_as("key-alpha", "/api/hub/heartbeat", &json!({"agent_id": "a1", "skill_names": skills}).to_string());
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(reg.get("/api/registry/agents/a1").json()["capabilities"]["skills"], json!(["search"]));
}

/// A web page on another origin cannot write through a visitor's browser:
/// a `text/plain` post (which needs no preflight) is refused with 403 and
/// nothing is stored, while the registry's own pages, listed origins,
/// requests with a credential and non-browser clients are served.
#[test]
fn writes_from_foreign_web_pages_are_refused() {
    let dir = Scratch::new("http-cors-writes");
    std::fs::write(dir.path().join("api_keys.json"), chatixia_e2e::DEFAULT_KEYS).unwrap();
    let reg = Registry::start_in(dir.path(), &[], &[("CORS_ORIGINS", "https://dash.example")]);
    let task = r#"{"skill":"s"}"#;
    let plain = |origin: &str| {
        reg.request("POST", "/api/hub/tasks", &[("Origin", origin), ("Content-Type", "text/plain")], Some(task))
    };
    let r = plain("http://evil.example");
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.json()["error"].as_str().is_some_and(|e| e.contains("CORS_ORIGINS")), "{r:?}");
    let agent = r#"{"agent_id":"x","hostname":"h"}"#;
    let r = reg.request("POST", "/api/registry/agents", &[("Origin", "http://evil.example")], Some(agent));
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(reg.get("/api/hub/tasks/all").json(), json!([]));
    assert_eq!(reg.get("/api/registry/agents").json(), json!([]));
    // Reads from anywhere still work.
    let read = reg.request("GET", "/api/hub/tasks/all", &[("Origin", "http://evil.example")], None);
    assert_eq!(read.status, 200);

    let own = format!("http://127.0.0.1:{}", reg.port);
    assert_eq!(plain(&own).status, 200);
    assert_eq!(plain("https://dash.example").status, 200);
    let keyed = reg.request(
        "POST",
        "/api/hub/tasks",
        &[("Origin", "http://evil.example"), ("X-API-Key", "key-alpha")],
        Some(task),
    );
    assert_eq!(keyed.status, 200, "{keyed:?}");
    assert_eq!(reg.post("/api/hub/tasks", task).status, 200);
    assert_eq!(reg.get("/api/hub/tasks/all").json().as_array().map(Vec::len), Some(4));
}

/// The original agent's writes, in its request shapes: its key's peer is
/// `<agent_id>-sidecar`, which it names as `sidecar_peer_id`. With that key
/// registration, heartbeats and updates of its tasks go through; without a
/// key they get 401, with another agent's 403 (JSON errors), and nothing
/// changes.
#[test]
fn agent_registry_and_task_writes_need_the_agents_own_key() {
    let dir = Scratch::new("http-rest-auth");
    std::fs::write(
        dir.path().join("api_keys.json"),
        r#"{"keys":{"key-w1":{"peer_id":"worker-1-sidecar","role":"agent"},
                    "key-w2":{"peer_id":"worker-2-sidecar","role":"agent"}}}"#,
    )
    .unwrap();
    let reg = Registry::start_in(dir.path(), &[], &[]);
    let register = json!({"agent_id": "worker-1", "hostname": "pi-1", "ip": "10.0.0.7", "port": 8000,
        "sidecar_peer_id": "worker-1-sidecar", "capabilities": {"skills": ["echo"], "mcp_servers": [],
        "goals_count": 0, "mode": "auto"}, "status": "active", "mode": "auto"})
    .to_string();
    let heartbeat = json!({"agent_id": "worker-1", "hostname": "pi-1", "ip": "10.0.0.7", "port": 8000,
        "status": "active", "mode": "auto", "sidecar_peer_id": "worker-1-sidecar", "skills_count": 1,
        "goals_count": 0, "uptime_seconds": 12.5, "skill_names": ["echo"]})
    .to_string();
    let refused = |r: chatixia_e2e::Reply, status: u16| {
        assert_eq!(r.status, status, "{r:?}");
        assert!(r.json()["error"].is_string(), "{r:?}");
    };
    refused(reg.post("/api/registry/agents", &register), 401);
    refused(reg.post_as("key-w2", "/api/registry/agents", &register), 403);
    refused(reg.post_as("key-nope", "/api/registry/agents", &register), 401);
    assert_eq!(reg.get("/api/registry/agents").json(), json!([]));
    assert_eq!(reg.post_as("key-w1", "/api/registry/agents", &register).json(), json!({"status": "ok"}));

    let task = reg.post("/api/hub/tasks", r#"{"skill":"echo","payload":{"text":"hi"},"source_agent_id":"cli"}"#);
    let task_path = format!("/api/hub/tasks/{}", task.json()["task_id"].as_str().expect("task_id"));
    refused(reg.post("/api/hub/heartbeat", &heartbeat), 401);
    refused(reg.post_as("key-w2", "/api/hub/heartbeat", &heartbeat), 403);
    assert_eq!(reg.get(&task_path).json()["state"], "pending", "not claimed by the refused heartbeats");
    let hb = reg.post_as("key-w1", "/api/hub/heartbeat", &heartbeat).json();
    assert_eq!(hb["pending_tasks"][0]["assigned_agent_id"], "worker-1");

    let update = r#"{"state":"completed","result":"hi","error":""}"#;
    refused(reg.post(&task_path, update), 401);
    refused(reg.post_as("key-w2", &task_path, update), 403);
    assert_eq!(reg.get(&task_path).json()["state"], "assigned");
    assert_eq!(reg.post_as("key-w1", &task_path, update).json(), json!({"status": "ok"}));
    assert_eq!(reg.get(&task_path).json()["result"], "hi");

    let delete = |key: &str| reg.request("DELETE", "/api/registry/agents/worker-1", &[("X-API-Key", key)], None);
    refused(delete("key-w2"), 403);
    assert_eq!(delete("key-w1").json(), json!({"status": "ok"}));
}

/// `REST_AUTH=strict`: reads, task submission and the topology need a
/// credential too; health, the dashboard's page and the credential
/// exchange stay open (the page asks for a key).
#[test]
fn strict_rest_auth_needs_a_credential_everywhere_but_health_and_the_page() {
    let dir = Scratch::new("http-rest-strict");
    std::fs::write(dir.path().join("api_keys.json"), chatixia_e2e::DEFAULT_KEYS).unwrap();
    let reg = Registry::start_in(dir.path(), &[], &[("REST_AUTH", "strict")]);
    for path in ["/api/registry/agents", "/api/hub/tasks/all", "/api/hub/network/topology", "/metrics", "/api/config"] {
        let r = reg.get(path);
        assert_eq!(r.status, 401, "{path}: {r:?}");
        assert_eq!(reg.request("GET", path, &[("X-API-Key", "key-alpha")], None).status, 200, "{path}");
    }
    assert_eq!(reg.post("/api/hub/tasks", "{}").status, 401);
    assert_eq!(reg.post_as("key-alpha", "/api/hub/tasks", "{}").status, 200);
    for path in ["/", "/dashboard.js", "/dashboard.css", "/healthz"] {
        assert_eq!(reg.get(path).status, 200, "{path}");
    }
    assert!(reg.token("key-alpha").len() > 20);
    let bad = Registry::command(dir.path(), &[], &[("REST_AUTH", "sometimes")]).output().expect("run");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("REST_AUTH"), "{bad:?}");
}
