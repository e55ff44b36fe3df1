//! HTTP requests into the registry's API: every route's body, query and
//! credential headers, as the HTTP shell hands them over.
#![no_main]

use chatixia_fuzz::{drain, messages, now, registry};
use chatixia_registry::core::api::request::ApiRequest;
use libfuzzer_sys::fuzz_target;
use std::time::Duration;

const ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/token"),
    ("POST", "/api/registry/agents"),
    ("GET", "/api/registry/agents"),
    ("GET", "/api/registry/agents/a1"),
    ("DELETE", "/api/registry/agents/a1"),
    ("GET", "/api/registry/route"),
    ("POST", "/api/hub/tasks"),
    ("GET", "/api/hub/tasks/all"),
    ("POST", "/api/hub/heartbeat"),
    ("GET", "/api/hub/network/topology"),
    ("GET", "/api/config"),
    ("POST", "/api/pairing/generate-code"),
    ("POST", "/api/pairing/pair"),
    ("GET", "/api/pairing/all"),
    ("GET", "/metrics"),
    ("OPTIONS", "/api/hub/tasks"),
];
const KEYS: &[Option<&str>] = &[None, Some("key-alpha"), Some("key-admin"), Some("nope")];

fuzz_target!(|data: &[u8]| {
    let mut r = registry();
    let mut task_ids: Vec<String> = Vec::new();
    for (i, m) in messages(data).enumerate() {
        let t = now(Duration::from_millis(100 * i as u64));
        let [route, flags, rest @ ..] = m else { continue };
        let (method, mut path) = ROUTES[usize::from(*route) % ROUTES.len()];
        // Some requests go to a task that exists, or to a fuzzed path.
        let owned;
        if flags & 0x30 == 0x10 && !task_ids.is_empty() {
            owned = format!("/api/hub/tasks/{}", task_ids[usize::from(*route) % task_ids.len()]);
            path = &owned;
        }
        let text = String::from_utf8_lossy(rest);
        let (query, body) = if flags & 0x40 != 0 { text.split_once('\n').unwrap_or((&text, "")) } else { ("", &*text) };
        let fuzzed_path;
        if flags & 0x30 == 0x20 {
            fuzzed_path = query.to_owned();
            path = &fuzzed_path;
        }
        let req = ApiRequest {
            method,
            path,
            query,
            api_key: KEYS[usize::from(flags & 3)],
            origin: (flags & 4 != 0).then_some("http://evil.example"),
            host: Some("gw.local:8080"),
            client: Some([198, 51, 100, flags >> 4].into()),
            body: body.as_bytes(),
            ..ApiRequest::default()
        };
        let resp = r.handle_http(&req, t);
        if resp.status == 200
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&resp.body)
            && let Some(id) = v["task_id"].as_str()
        {
            task_ids.push(id.to_owned());
        }
        drain(&mut r);
    }
});
