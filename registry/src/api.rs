//! The registry's state and its HTTP API (SPEC §2, §3), sans-IO: the shell
//! turns each HTTP request into an [`ApiRequest`] and writes back the
//! [`ApiResponse`]; WebSocket events go to [`Registry::hub`].

use crate::agents::{AgentInfo, AgentRegistry, Heartbeat};
use crate::hub::{Authorize, Hub, HubConfig};
use crate::ice;
use crate::keys::KeyStore;
use crate::ratelimit::{KeyedLimiter, Rate};
use crate::tasks::{TaskHub, TaskSubmission, TaskUpdate, UpdateError};
use crate::token::{Identity, TokenIssuer};
use crate::topology;
use chatixia_protocol::claims::{ROLE_ADMIN, TokenResponse};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Both clocks, read once by the shell per event.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub mono: Instant,
    pub wall: SystemTime,
}

impl Now {
    pub fn unix_secs(&self) -> u64 {
        self.wall.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    }
    pub fn unix_ms(&self) -> u64 {
        self.wall.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub hub: HubConfig,
    pub token_rate: Rate,
    pub stun_urls: Vec<String>,
    pub turn: Option<(String, String)>,
    /// `None` means any origin (`*`), for non-admin routes only.
    pub cors_origins: Option<Vec<String>>,
    pub trusted_proxies: Vec<IpAddr>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            hub: HubConfig::default(),
            token_rate: Rate::new(10.0, 20.0),
            stun_urls: vec!["stun:stun.l.google.com:19302".into()],
            turn: None,
            cors_origins: None,
            trusted_proxies: Vec::new(),
        }
    }
}

/// The parts of an HTTP request the API looks at.
#[derive(Debug, Clone, Default)]
pub struct ApiRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub api_key: Option<&'a str>,
    pub device_token: Option<&'a str>,
    pub authorization: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub forwarded_for: Option<&'a str>,
    pub client: Option<IpAddr>,
    pub body: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

impl ApiResponse {
    pub fn json(status: u16, value: &Value) -> Self {
        ApiResponse {
            status,
            content_type: "application/json",
            body: serde_json::to_vec(value).unwrap_or_default(),
            headers: Vec::new(),
        }
    }
    pub fn ok(value: Value) -> Self {
        Self::json(200, &value)
    }
    pub fn empty(status: u16) -> Self {
        ApiResponse { status, content_type: "text/plain", body: Vec::new(), headers: Vec::new() }
    }
    pub fn text(status: u16, text: impl Into<String>) -> Self {
        ApiResponse {
            status,
            content_type: "text/plain; charset=utf-8",
            body: text.into().into_bytes(),
            headers: Vec::new(),
        }
    }
    fn not_found_body() -> Self {
        Self::ok(json!({"error": "not found"}))
    }
}

/// Who may join the mesh: the peer_ids of the API keys (and, with pairing,
/// of approved entries).
pub struct Authorization<'a> {
    pub keys: &'a KeyStore,
}

impl Authorize for Authorization<'_> {
    fn is_authorized(&self, peer_id: &str) -> bool {
        self.keys.has_peer(peer_id)
    }
}

#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub tokens_issued: u64,
    pub tokens_refused: u64,
    pub tokens_rate_limited: u64,
    pub ws_refused: u64,
}

pub struct Registry {
    pub config: ApiConfig,
    pub keys: KeyStore,
    pub tokens: TokenIssuer,
    pub hub: Hub,
    pub agents: AgentRegistry,
    pub tasks: TaskHub,
    pub counters: Counters,
    token_limiter: KeyedLimiter<IpAddr>,
}

/// Bodies larger than this are refused by the shell before parsing.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

impl Registry {
    pub fn new(config: ApiConfig, keys: KeyStore, tokens: TokenIssuer, task_seed: u64, now: Now) -> Self {
        Registry {
            hub: Hub::new(config.hub.clone(), now.mono),
            token_limiter: KeyedLimiter::new(config.token_rate, 10_000),
            config,
            keys,
            tokens,
            agents: AgentRegistry::new(),
            tasks: TaskHub::new(task_seed),
            counters: Counters::default(),
        }
    }

    pub fn authz(&self) -> Authorization<'_> {
        Authorization { keys: &self.keys }
    }

    /// Swaps in a reloaded keys file and drops sockets that lost their key.
    pub fn replace_keys(&mut self, keys: KeyStore) {
        self.keys = keys;
        let Registry { hub, keys, .. } = self;
        hub.handle_authorization_changed(&Authorization { keys });
    }

    /// Checks the `token` query parameter of a WebSocket upgrade.
    pub fn authenticate_ws(&mut self, query: &str, now: Now) -> Result<Identity, ApiResponse> {
        let token = query_param(query, "token").unwrap_or_default();
        self.tokens.verify(&token, now.unix_secs()).map_err(|reason| {
            self.counters.ws_refused += 1;
            log::info!("refused WebSocket upgrade: {reason}");
            ApiResponse::empty(401)
        })
    }

    pub fn handle_http(&mut self, req: &ApiRequest, now: Now) -> ApiResponse {
        let segments: Vec<&str> = req.path.trim_matches('/').split('/').collect();
        let admin_route = is_admin_route(req.method, &segments);
        let mut resp = if req.method == "OPTIONS" {
            let mut r = ApiResponse::empty(204);
            r.headers.push(("access-control-allow-methods", "GET, POST, DELETE, OPTIONS".into()));
            r.headers.push((
                "access-control-allow-headers",
                "content-type, x-api-key, x-device-token, authorization".into(),
            ));
            r.headers.push(("access-control-max-age", "600".into()));
            r
        } else {
            self.route(req, &segments, admin_route, now)
        };
        if let Some(origin) = self.cors_origin(req.origin, admin_route) {
            resp.headers.push(("access-control-allow-origin", origin));
            resp.headers.push(("vary", "origin".into()));
        }
        resp
    }

    fn route(&mut self, req: &ApiRequest, seg: &[&str], admin_route: bool, now: Now) -> ApiResponse {
        if admin_route && let Err(resp) = self.require_admin(req, now) {
            return resp;
        }
        match (req.method, seg) {
            ("GET", ["healthz"]) => ApiResponse::ok(json!({"status": "ok"})),
            ("GET", ["metrics"]) => {
                let mut r = ApiResponse::text(200, self.metrics());
                r.content_type = "text/plain; version=0.0.4";
                r
            }
            ("GET", ["api", "config"]) => {
                let turn = self.config.turn.as_ref().map(|(u, s)| (u.as_str(), s.as_str()));
                ApiResponse::ok(ice::ice_config(&self.config.stun_urls, turn, now.unix_secs()))
            }
            ("POST", ["api", "token"]) => self.issue_token(req, now),
            ("POST", ["api", "registry", "agents"]) => with_body(req, |info: AgentInfo| {
                self.agents.upsert(info, now.wall);
                ApiResponse::ok(json!({"status": "ok"}))
            }),
            ("GET", ["api", "registry", "agents"]) => ApiResponse::ok(json!(self.agents.list(now.wall))),
            ("GET", ["api", "registry", "route"]) => {
                let skill = query_param(req.query, "skill").unwrap_or_default();
                match self.agents.route(&skill, now.wall) {
                    Some(agent) => ApiResponse::ok(json!(agent)),
                    None => ApiResponse::ok(json!({"error": "no agent found with skill", "skill": skill})),
                }
            }
            ("GET", ["api", "registry", "agents", id]) => match self.agents.get(id, now.wall) {
                Some(agent) => ApiResponse::ok(json!(agent)),
                None => ApiResponse::not_found_body(),
            },
            ("DELETE", ["api", "registry", "agents", id]) => {
                if self.agents.remove(id) {
                    ApiResponse::ok(json!({"status": "ok"}))
                } else {
                    ApiResponse::not_found_body()
                }
            }
            ("POST", ["api", "hub", "tasks"]) => {
                with_body(req, |sub: TaskSubmission| match self.tasks.submit(sub, now.wall) {
                    Ok(id) => ApiResponse::ok(json!({"task_id": id})),
                    Err(e) => ApiResponse::json(503, &json!({"error": e.to_string()})),
                })
            }
            ("GET", ["api", "hub", "tasks", "all"]) => ApiResponse::ok(json!(self.tasks.all(now.wall))),
            ("GET", ["api", "hub", "tasks", id]) => match self.tasks.get(id, now.wall) {
                Some(task) => ApiResponse::ok(json!(task)),
                None => ApiResponse::not_found_body(),
            },
            ("POST", ["api", "hub", "tasks", id]) => {
                with_body(req, |upd: TaskUpdate| match self.tasks.update(id, upd, now.wall) {
                    Ok(()) => ApiResponse::ok(json!({"status": "ok"})),
                    Err(UpdateError::NotFound) => ApiResponse::not_found_body(),
                    Err(UpdateError::Final) => ApiResponse::ok(json!({"error": "task is final"})),
                })
            }
            ("POST", ["api", "hub", "heartbeat"]) => with_body(req, |hb: Heartbeat| {
                let agent_id = hb.agent_id.clone();
                self.agents.heartbeat(hb, now.wall);
                let skills = self.agents.skills_of(&agent_id);
                let pending = self.tasks.claim(&agent_id, &skills, now.wall);
                ApiResponse::ok(json!({"status": "ok", "pending_tasks": pending}))
            }),
            ("GET", ["api", "hub", "network", "topology"]) => {
                let records = self.agents.list(now.wall);
                ApiResponse::ok(json!(topology::Topology::build(&records, self.hub.mesh_status())))
            }
            _ => ApiResponse::json(404, &json!({"error": "no such route"})),
        }
    }

    fn issue_token(&mut self, req: &ApiRequest, now: Now) -> ApiResponse {
        let client = self.client_address(req);
        if let Some(ip) = client
            && !self.token_limiter.take(&ip, now.mono)
        {
            self.counters.tokens_rate_limited += 1;
            return ApiResponse::empty(429);
        }
        let entry = req.api_key.and_then(|k| self.keys.lookup(k)).cloned();
        let Some(entry) = entry else {
            self.counters.tokens_refused += 1;
            log::info!("refused a token request from {client:?}: unknown credential");
            return ApiResponse::empty(401);
        };
        let token = self.tokens.mint(&entry.peer_id, &entry.role, now.unix_secs());
        self.counters.tokens_issued += 1;
        let body = TokenResponse { token, peer_id: entry.peer_id, role: entry.role };
        ApiResponse::ok(json!(body))
    }

    fn require_admin(&self, req: &ApiRequest, now: Now) -> Result<(), ApiResponse> {
        if let Some(key) = req.api_key {
            return match self.keys.lookup(key) {
                Some(e) if e.role == ROLE_ADMIN => Ok(()),
                Some(_) => Err(ApiResponse::json(403, &json!({"error": "admin role required"}))),
                None => Err(ApiResponse::json(401, &json!({"error": "invalid credential"}))),
            };
        }
        if let Some(bearer) = req.authorization.and_then(|a| a.strip_prefix("Bearer ")) {
            return match self.tokens.verify(bearer.trim(), now.unix_secs()) {
                Ok(id) if id.role == ROLE_ADMIN => Ok(()),
                Ok(_) => Err(ApiResponse::json(403, &json!({"error": "admin role required"}))),
                Err(_) => Err(ApiResponse::json(401, &json!({"error": "invalid credential"}))),
            };
        }
        Err(ApiResponse::json(401, &json!({"error": "admin credential required"})))
    }

    /// The address rate limits apply to: the peer, or, when the peer is a
    /// trusted proxy, the last `X-Forwarded-For` hop it did not add itself.
    fn client_address(&self, req: &ApiRequest) -> Option<IpAddr> {
        let peer = req.client?;
        if !self.config.trusted_proxies.contains(&peer) {
            return Some(peer);
        }
        let hops = req.forwarded_for.unwrap_or_default().split(',');
        let real = hops
            .rev()
            .filter_map(|h| h.trim().parse::<IpAddr>().ok())
            .find(|ip| !self.config.trusted_proxies.contains(ip));
        Some(real.unwrap_or(peer))
    }

    fn cors_origin(&self, origin: Option<&str>, admin_route: bool) -> Option<String> {
        match &self.config.cors_origins {
            None if admin_route => None,
            None => Some("*".into()),
            Some(list) => {
                let origin = origin?;
                list.iter().any(|o| o == origin).then(|| origin.to_owned())
            }
        }
    }

    fn metrics(&self) -> String {
        let mut m = String::new();
        let mut gauge = |name: &str, help: &str, kind: &str, value: u64| {
            let _ = writeln!(m, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        gauge("chatixia_ws_connections", "Open signaling WebSockets.", "gauge", self.hub.connection_count() as u64);
        gauge("chatixia_relayed_frames_total", "Signaling frames relayed.", "counter", self.hub.stats.relayed);
        gauge("chatixia_tokens_issued_total", "JWTs issued.", "counter", self.counters.tokens_issued);
        gauge("chatixia_tokens_refused_total", "Token requests refused.", "counter", self.counters.tokens_refused);
        gauge(
            "chatixia_tokens_rate_limited_total",
            "Token requests refused by the rate limit.",
            "counter",
            self.counters.tokens_rate_limited,
        );
        gauge("chatixia_ws_refused_total", "WebSocket upgrades refused.", "counter", self.counters.ws_refused);
        gauge("chatixia_agents", "Agents in the registry.", "gauge", self.agents.len() as u64);
        gauge("chatixia_api_keys", "Keys loaded from the keys file.", "gauge", self.keys.len() as u64);
        let _ = writeln!(
            m,
            "# HELP chatixia_dropped_frames_total Frames dropped, by reason.\n# TYPE chatixia_dropped_frames_total counter"
        );
        for (reason, count) in &self.hub.stats.drops {
            let _ = writeln!(m, "chatixia_dropped_frames_total{{reason=\"{reason}\"}} {count}");
        }
        m
    }
}

fn is_admin_route(method: &str, seg: &[&str]) -> bool {
    matches!(
        (method, seg),
        ("DELETE" | "OPTIONS", ["api", "registry", "agents", _])
            | (_, ["api", "pairing", "pending" | "all"])
            | (_, ["api", "pairing", _, _])
    ) && !matches!(seg, ["api", "pairing", "generate-code" | "pair"])
}

/// Parses a JSON body: not JSON → 400, JSON of the wrong shape → 422.
fn with_body<T: DeserializeOwned>(req: &ApiRequest, handle: impl FnOnce(T) -> ApiResponse) -> ApiResponse {
    match serde_json::from_slice::<T>(req.body) {
        Ok(value) => handle(value),
        Err(e) if e.is_data() => ApiResponse::text(422, format!("invalid request body: {e}")),
        Err(e) => ApiResponse::text(400, format!("request body is not JSON: {e}")),
    }
}

/// One query parameter, percent-decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = match bytes[i] {
            b'%' if i + 3 <= bytes.len() => hex(bytes[i + 1]).zip(hex(bytes[i + 2])).map(|(h, l)| h << 4 | l),
            _ => None,
        };
        match decoded {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const KEYS: &str =
        r#"{"keys":{"k-agent":{"peer_id":"alpha","role":"agent"},"k-admin":{"peer_id":"ops","role":"admin"}}}"#;

    fn now() -> Now {
        Now { mono: Instant::now(), wall: UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000) }
    }

    fn registry(config: ApiConfig) -> Registry {
        let keys = KeyStore::parse(KEYS).unwrap();
        Registry::new(config, keys, TokenIssuer::new(b"unit-test-secret").unwrap(), 1, now())
    }

    fn req<'a>(method: &'a str, path: &'a str) -> ApiRequest<'a> {
        ApiRequest { method, path, client: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)), ..Default::default() }
    }

    fn body(resp: &ApiResponse) -> Value {
        serde_json::from_slice(&resp.body).unwrap()
    }

    #[test]
    fn token_for_a_key_and_empty_401_otherwise() {
        let mut r = registry(ApiConfig::default());
        let t = now();
        let resp = r.handle_http(&ApiRequest { api_key: Some("k-agent"), ..req("POST", "/api/token") }, t);
        assert_eq!(resp.status, 200);
        let v = body(&resp);
        assert_eq!((v["peer_id"].as_str(), v["role"].as_str()), (Some("alpha"), Some("agent")));
        let id = r.tokens.verify(v["token"].as_str().unwrap(), t.unix_secs()).unwrap();
        assert_eq!(id.peer_id, "alpha");
        for key in [Some("nope"), None] {
            let resp = r.handle_http(&ApiRequest { api_key: key, ..req("POST", "/api/token") }, t);
            assert_eq!((resp.status, resp.body.len()), (401, 0));
        }
        assert_eq!((r.counters.tokens_issued, r.counters.tokens_refused), (1, 2));
    }

    #[test]
    fn token_endpoint_is_rate_limited_per_client() {
        let mut r = registry(ApiConfig { token_rate: Rate::new(1.0, 3.0), ..ApiConfig::default() });
        let t = now();
        let statuses: Vec<u16> = (0..5)
            .map(|_| r.handle_http(&ApiRequest { api_key: Some("k-agent"), ..req("POST", "/api/token") }, t).status)
            .collect();
        assert_eq!(statuses, vec![200, 200, 200, 429, 429]);
        let other = ApiRequest {
            api_key: Some("k-agent"),
            client: Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))),
            ..req("POST", "/api/token")
        };
        assert_eq!(r.handle_http(&other, t).status, 200);
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxy = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let r = registry(ApiConfig { trusted_proxies: vec![proxy], ..ApiConfig::default() });
        let via_proxy =
            ApiRequest { client: Some(proxy), forwarded_for: Some("1.1.1.1, 2.2.2.2, 10.0.0.1"), ..req("GET", "/") };
        assert_eq!(r.client_address(&via_proxy), Some("2.2.2.2".parse().unwrap()));
        let direct = ApiRequest { forwarded_for: Some("9.9.9.9"), ..req("GET", "/") };
        assert_eq!(r.client_address(&direct), Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }

    #[test]
    fn admin_routes_need_an_admin_credential() {
        let mut r = registry(ApiConfig::default());
        let t = now();
        let admin_jwt = format!("Bearer {}", r.tokens.mint("ops", "admin", t.unix_secs()));
        let agent_jwt = format!("Bearer {}", r.tokens.mint("alpha", "agent", t.unix_secs()));
        let path = "/api/registry/agents/x";
        let cases: [(Option<&str>, Option<&str>, u16); 6] = [
            (None, None, 401),
            (Some("k-agent"), None, 403),
            (Some("wrong"), None, 401),
            (None, Some(&agent_jwt), 403),
            (None, Some("Bearer garbage"), 401),
            (Some("k-admin"), None, 200),
        ];
        for (api_key, authorization, status) in cases {
            let resp = r.handle_http(&ApiRequest { api_key, authorization, ..req("DELETE", path) }, t);
            assert_eq!(resp.status, status, "{api_key:?} {authorization:?}");
        }
        let resp = r.handle_http(&ApiRequest { authorization: Some(&admin_jwt), ..req("DELETE", path) }, t);
        assert_eq!((resp.status, body(&resp)), (200, json!({"error": "not found"})));
    }

    #[test]
    fn bodies_400_for_non_json_and_422_for_wrong_types() {
        let mut r = registry(ApiConfig::default());
        let t = now();
        let bad = r.handle_http(&ApiRequest { body: b"{", ..req("POST", "/api/registry/agents") }, t);
        assert_eq!(bad.status, 400);
        let wrong = r.handle_http(&ApiRequest { body: br#"{"agent_id":1}"#, ..req("POST", "/api/registry/agents") }, t);
        assert_eq!(wrong.status, 422);
        let ok = r.handle_http(
            &ApiRequest { body: br#"{"agent_id":"a","hostname":"h"}"#, ..req("POST", "/api/registry/agents") },
            t,
        );
        assert_eq!(body(&ok), json!({"status": "ok"}));
        let missing = r.handle_http(&req("GET", "/api/registry/agents/zz"), t);
        assert_eq!((missing.status, body(&missing)), (200, json!({"error": "not found"})));
    }

    #[test]
    fn cors_any_origin_except_admin_routes() {
        let mut r = registry(ApiConfig::default());
        let t = now();
        let pre = r.handle_http(&ApiRequest { origin: Some("http://x"), ..req("OPTIONS", "/api/token") }, t);
        assert_eq!(pre.status, 204);
        assert!(pre.headers.contains(&("access-control-allow-origin", "*".into())));
        let admin =
            r.handle_http(&ApiRequest { origin: Some("http://x"), ..req("DELETE", "/api/registry/agents/a") }, t);
        assert!(!admin.headers.iter().any(|(h, _)| *h == "access-control-allow-origin"));
        let mut listed = registry(ApiConfig { cors_origins: Some(vec!["http://ok".into()]), ..ApiConfig::default() });
        let ok = listed.handle_http(&ApiRequest { origin: Some("http://ok"), ..req("GET", "/healthz") }, t);
        assert!(ok.headers.contains(&("access-control-allow-origin", "http://ok".into())));
        let no = listed.handle_http(&ApiRequest { origin: Some("http://evil"), ..req("GET", "/healthz") }, t);
        assert!(!no.headers.iter().any(|(h, _)| *h == "access-control-allow-origin"));
    }

    #[test]
    fn ws_authentication_reads_the_token_parameter() {
        let mut r = registry(ApiConfig::default());
        let t = now();
        let token = r.tokens.mint("alpha", "agent", t.unix_secs());
        assert_eq!(r.authenticate_ws(&format!("x=1&token={token}"), t).unwrap().peer_id, "alpha");
        assert_eq!(r.authenticate_ws("token=bad", t).unwrap_err().status, 401);
        assert_eq!(r.authenticate_ws("", t).unwrap_err().status, 401);
    }

    #[test]
    fn key_reload_closes_sockets_of_removed_keys() {
        let mut r = registry(ApiConfig::default());
        let t = now();
        let authz_keys = r.keys.clone();
        let id = Identity { peer_id: "alpha".into(), role: "agent".into() };
        r.hub.handle_connect(7, &id, &Authorization { keys: &authz_keys }, t.mono);
        r.replace_keys(KeyStore::parse(r#"{"keys":{}}"#).unwrap());
        assert_eq!(
            r.hub.poll_output(),
            Some(crate::hub::HubOutput::Close { conn: 7, code: 4003, reason: "not authorized" })
        );
    }

    #[test]
    fn query_params_are_percent_decoded() {
        assert_eq!(query_param("a=1&token=x%2By%20z+w", "token").as_deref(), Some("x+y z w"));
        assert_eq!(query_param("token=%zz%4", "token").as_deref(), Some("%zz%4"));
        assert_eq!(query_param("a=1", "token"), None);
        assert_eq!(query_param("token=é%C3%A9", "token").as_deref(), Some("éé"));
    }
}
