//! The registry as the shell sees it: one object, driven by `handle_*`
//! calls with the time the shell read, whose effects on WebSockets come out
//! of [`Registry::poll_output`]. The parts inside (hub, pairing, tasks,
//! agents, keys, tokens, limits) stay private to the core.

use crate::core::api::request::ApiRequest;
use crate::core::api::response::ApiResponse;
use crate::core::api::{self, auth};
use crate::core::config::RegistryConfig;
use crate::core::hub::{ConnId, HubOutput};
use crate::core::keys::KeyStore;
use crate::core::now::Now;
use crate::core::pairing::PairingStore;
use crate::core::persist::{self, Dirty, PAIRING_FILE, Revisions, TASKS_FILE};
use crate::core::relay::RelayOutput;
use crate::core::state::{RandomSource, RegistryState};
use crate::core::token::{Identity, TokenIssuer};
use std::net::SocketAddr;

/// Relay streams on TCP connections of `RELAY_PORT` are numbered from here;
/// below it, a relay stream is the WebSocket connection of that number
/// (TURN in binary frames).
pub const RELAY_TCP_STREAMS: u64 = 1 << 62;

/// What the registry wants done on the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryOutput {
    /// A signaling frame for a WebSocket.
    Send {
        conn: ConnId,
        text: String,
    },
    Ping {
        conn: ConnId,
    },
    Close {
        conn: ConnId,
        code: u16,
        reason: &'static str,
    },
    /// A datagram from the relay's UDP port.
    RelayDatagram {
        to: SocketAddr,
        bytes: Vec<u8>,
    },
    /// TURN bytes for a relay stream: a binary frame for a WebSocket, or
    /// bytes for a TCP connection ([`RELAY_TCP_STREAMS`]). Each is whole
    /// frames: when the stream cannot take it, drop it, as UDP would.
    RelayStream {
        conn: u64,
        bytes: Vec<u8>,
    },
    /// A relay TCP connection sent what is not TURN, or there is no room
    /// for it: close it. (A WebSocket hears an error frame instead.)
    RelayClose {
        conn: u64,
    },
}

impl From<HubOutput> for RegistryOutput {
    fn from(out: HubOutput) -> Self {
        match out {
            HubOutput::Send { conn, text } => RegistryOutput::Send { conn, text },
            HubOutput::Ping { conn } => RegistryOutput::Ping { conn },
            HubOutput::Close { conn, code, reason } => RegistryOutput::Close { conn, code, reason },
        }
    }
}

impl From<RelayOutput> for RegistryOutput {
    fn from(out: RelayOutput) -> Self {
        match out {
            RelayOutput::Datagram { to, bytes } => RegistryOutput::RelayDatagram { to, bytes },
            RelayOutput::Stream { conn, bytes } => RegistryOutput::RelayStream { conn, bytes },
            RelayOutput::CloseStream { conn } => RegistryOutput::RelayClose { conn },
        }
    }
}

/// The state files of an earlier run, as the shell read them: `None` where
/// there is no such file.
#[derive(Debug, Clone, Default)]
pub struct SavedState {
    pub pairing: Option<Vec<u8>>,
    pub tasks: Option<Vec<u8>>,
}

/// What [`Registry::restore`] took back, for the log; `None` where there
/// was no file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restored {
    pub pairing_entries: Option<usize>,
    pub tasks: Option<usize>,
    /// The newest unfinished tasks, beyond the limit of open tasks.
    pub tasks_dropped: usize,
}

/// A state file that cannot be taken back. Starting empty would lose what it
/// holds at the next save, and guessing would be worse, so the start stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreError {
    pub file: &'static str,
    /// What starting without the file would lose, in words.
    pub holds: &'static str,
    pub reason: String,
}

pub struct Registry {
    state: RegistryState,
}

impl Registry {
    pub fn new(
        config: RegistryConfig,
        keys: KeyStore,
        tokens: TokenIssuer,
        task_seed: u64,
        rng: RandomSource,
        now: Now,
    ) -> Self {
        Registry { state: RegistryState::new(config, keys, tokens, task_seed, rng, now) }
    }

    /// Takes back what an earlier run saved. Call it before anything else.
    pub fn restore(&mut self, saved: SavedState, now: Now) -> Result<Restored, RestoreError> {
        let mut restored = Restored::default();
        if let Some(bytes) = saved.pairing {
            let refuse = |reason| RestoreError { file: PAIRING_FILE, holds: "paired devices", reason };
            let snapshot = persist::decode_pairing(&bytes).map_err(refuse)?;
            let pairing = PairingStore::restore(snapshot, self.state.config.pairing, now.wall).map_err(refuse)?;
            restored.pairing_entries = Some(pairing.len());
            self.state.pairing = pairing;
        }
        if let Some(bytes) = saved.tasks {
            let refuse = |reason| RestoreError { file: TASKS_FILE, holds: "tasks", reason };
            let tasks = persist::decode_tasks(&bytes).map_err(refuse)?;
            restored.tasks_dropped = self.state.tasks.restore(tasks, now.wall);
            restored.tasks = Some(self.state.tasks.len());
        }
        Ok(restored)
    }

    /// One HTTP request other than a WebSocket upgrade.
    pub fn handle_http(&mut self, req: &ApiRequest, now: Now) -> ApiResponse {
        api::handle_http(&mut self.state, req, now)
    }

    /// The query string of a WebSocket upgrade: who the socket speaks for,
    /// or the answer that refuses it.
    pub fn handle_ws_upgrade(&mut self, query: &str, now: Now) -> Result<Identity, ApiResponse> {
        auth::authenticate_ws(&mut self.state, query, now)
    }

    /// The upgrade went through: `conn` is open for `identity`.
    pub fn handle_ws_open(&mut self, conn: ConnId, identity: &Identity, now: Now) {
        let (hub, authz) = self.state.hub_with_authz();
        hub.handle_connect(conn, identity, &authz, now.mono);
    }

    /// A text message from `conn`: a signaling frame.
    pub fn handle_ws_text(&mut self, conn: ConnId, text: &str, now: Now) {
        let (hub, authz) = self.state.hub_with_authz();
        hub.handle_frame(conn, text, &authz, now.mono, now.unix_ms());
    }

    /// A binary message from `conn`: TURN for the relay when it is on, of
    /// no use to the signaling protocol otherwise.
    pub fn handle_ws_binary(&mut self, conn: ConnId, bytes: &[u8], now: Now) {
        match self.state.relay_with_authz() {
            Some((relay, authz)) if conn < RELAY_TCP_STREAMS => {
                relay.handle_stream_data(conn, bytes, now.mono, now.unix_secs(), &authz);
                self.state.hub.handle_activity(conn, now.mono);
            }
            _ => self.state.hub.handle_binary(conn, now.mono),
        }
    }

    /// A datagram on the relay's UDP port.
    pub fn handle_relay_datagram(&mut self, from: SocketAddr, bytes: &[u8], now: Now) {
        if let Some((relay, authz)) = self.state.relay_with_authz() {
            relay.handle_datagram(from, bytes, now.mono, now.unix_secs(), &authz);
        }
    }

    /// A TCP connection on the relay's port opened (`conn` at or above
    /// [`RELAY_TCP_STREAMS`]).
    pub fn handle_relay_stream_opened(&mut self, conn: u64, remote: SocketAddr) {
        if let Some((relay, _)) = &mut self.state.relay {
            relay.handle_stream_opened(conn, remote);
        }
    }

    /// Bytes from a TCP connection on the relay's port.
    pub fn handle_relay_stream_data(&mut self, conn: u64, bytes: &[u8], now: Now) {
        if let Some((relay, authz)) = self.state.relay_with_authz() {
            relay.handle_stream_data(conn, bytes, now.mono, now.unix_secs(), &authz);
        }
    }

    /// A TCP connection on the relay's port closed.
    pub fn handle_relay_stream_closed(&mut self, conn: u64) {
        if let Some((relay, _)) = &mut self.state.relay {
            relay.handle_stream_closed(conn);
        }
    }

    /// A WebSocket ping or pong from `conn`: proof of life.
    pub fn handle_ws_activity(&mut self, conn: ConnId, now: Now) {
        self.state.hub.handle_activity(conn, now.mono);
    }

    /// `conn` is gone, whoever closed it.
    pub fn handle_ws_closed(&mut self, conn: ConnId) {
        let (hub, authz) = self.state.hub_with_authz();
        hub.handle_disconnect(conn, &authz);
        if let Some((relay, _)) = &mut self.state.relay {
            relay.handle_stream_closed(conn);
        }
    }

    /// Whether departures wait to be announced: the shell then calls
    /// [`Registry::handle_departures`] a moment later.
    pub fn has_departures(&self) -> bool {
        self.state.hub.has_departures()
    }

    /// Announces the peers that left since the last call (docs/PROTOCOL.md, "Leaving").
    pub fn handle_departures(&mut self) {
        let (hub, authz) = self.state.hub_with_authz();
        hub.handle_departures(&authz);
    }

    /// The shell could not queue a frame for `conn`: its client stopped
    /// reading.
    pub fn handle_slow_consumer(&mut self, conn: ConnId) {
        self.state.hub.handle_slow_consumer(conn);
    }

    /// Time passed: pings that are due, closes of silent sockets.
    pub fn handle_tick(&mut self, now: Now) {
        self.state.hub.handle_tick(now.mono);
        if let Some((relay, _)) = &mut self.state.relay {
            relay.handle_timeout(now.mono);
        }
    }

    /// The keys file was read again; sockets whose key is gone are closed.
    pub fn handle_keys_reloaded(&mut self, keys: KeyStore) {
        self.state.keys = keys;
        self.state.authorization_changed();
    }

    pub fn poll_output(&mut self) -> Option<RegistryOutput> {
        if let Some(out) = self.state.hub.poll_output() {
            return Some(out.into());
        }
        match self.state.relay.as_mut()?.0.poll_output()? {
            // A WebSocket whose TURN the relay refused keeps its signaling:
            // its sender hears why instead of losing the socket.
            RelayOutput::CloseStream { conn } if conn < RELAY_TCP_STREAMS => {
                self.state.hub.handle_relay_refused(conn);
                self.state.hub.poll_output().map(Into::into)
            }
            out => Some(out.into()),
        }
    }

    /// Whether the relay is on, and the port it listens on.
    pub fn relay_port(&self) -> Option<u16> {
        self.state.relay.as_ref().map(|(_, port)| *port)
    }

    /// Where each persisted kind of state stands; compare before and after
    /// a call to know whether it changed anything that must be saved.
    pub fn revisions(&self) -> Revisions {
        Revisions { pairing: self.state.pairing.revision(), tasks: self.state.tasks.revision() }
    }

    /// The state files whose content moved on since `saved`.
    pub fn changed_since(&self, saved: Revisions) -> Vec<Dirty> {
        let mut dirty = Vec::new();
        if self.state.pairing.revision() != saved.pairing {
            dirty.push(Dirty::Pairing(self.state.pairing.snapshot()));
        }
        if self.state.tasks.revision() != saved.tasks {
            dirty.push(Dirty::Tasks(self.state.tasks.snapshot()));
        }
        dirty
    }

    /// Open signaling WebSockets.
    pub fn connection_count(&self) -> usize {
        self.state.hub.connection_count()
    }
}

// The tests need a real clock: an Instant can only be had from it.
#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use crate::core::ratelimit::Rate;
    use serde_json::{Value, json};
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::{Duration, Instant, UNIX_EPOCH};

    const KEYS: &str = r#"{"keys":{"k-agent":{"peer_id":"alpha","role":"agent"},"k-bravo":{"peer_id":"bravo","role":"agent"},"k-admin":{"peer_id":"ops","role":"admin"}}}"#;

    /// Signs tokens as the registry under test does, with its secret.
    fn issuer() -> TokenIssuer {
        TokenIssuer::new(b"unit-test-secret").unwrap()
    }

    fn now() -> Now {
        Now { mono: Instant::now(), wall: UNIX_EPOCH + Duration::from_secs(1_800_000_000) }
    }

    fn registry(config: RegistryConfig) -> Registry {
        let keys = KeyStore::parse(KEYS).unwrap();
        Registry::new(config, keys, issuer(), 1, counter_rng(), now())
    }

    /// A deterministic random source: splitmix64 over a counter.
    fn counter_rng() -> RandomSource {
        let mut n = 0u64;
        Box::new(move |buf: &mut [u8]| {
            for b in buf.iter_mut() {
                n += 1;
                let mut z = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                *b = (z ^ (z >> 31)) as u8;
            }
            Ok(())
        })
    }

    fn req<'a>(method: &'a str, path: &'a str) -> ApiRequest<'a> {
        ApiRequest { method, path, client: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)), ..Default::default() }
    }

    fn body(resp: &ApiResponse) -> Value {
        serde_json::from_slice(&resp.body).unwrap()
    }

    fn post_json<'a>(path: &'a str, body: &'a str) -> ApiRequest<'a> {
        ApiRequest { body: body.as_bytes(), ..req("POST", path) }
    }

    fn admin<'a>(method: &'a str, path: &'a str) -> ApiRequest<'a> {
        ApiRequest { api_key: Some("k-admin"), ..req(method, path) }
    }

    /// Generates a code with the agent key and redeems it; returns the answer.
    fn pair_device(r: &mut Registry, name: &str, t: Now) -> Value {
        let code =
            r.handle_http(&ApiRequest { api_key: Some("k-agent"), ..req("POST", "/api/pairing/generate-code") }, t);
        assert_eq!(code.status, 200, "{:?}", String::from_utf8_lossy(&code.body));
        let code = body(&code)["code"].as_str().unwrap().to_owned();
        let pair_body = json!({"code": code, "agent_name": name}).to_string();
        let resp = r.handle_http(&post_json("/api/pairing/pair", &pair_body), t);
        assert_eq!(resp.status, 200, "{:?}", String::from_utf8_lossy(&resp.body));
        body(&resp)
    }

    fn device_token_exchange(r: &mut Registry, token: &str, t: Now) -> ApiResponse {
        r.handle_http(&ApiRequest { device_token: Some(token), ..req("POST", "/api/token") }, t)
    }

    fn outputs(r: &mut Registry) -> Vec<RegistryOutput> {
        std::iter::from_fn(|| r.poll_output()).collect()
    }

    fn sent_to(outs: &[RegistryOutput], conn: ConnId) -> Vec<Value> {
        outs.iter()
            .filter_map(|o| match o {
                RegistryOutput::Send { conn: c, text } if *c == conn => Some(serde_json::from_str(text).unwrap()),
                _ => None,
            })
            .collect()
    }

    /// The value of one line of `/metrics`.
    fn metric(r: &mut Registry, name: &str) -> u64 {
        let text = String::from_utf8(r.handle_http(&req("GET", "/metrics"), now()).body).unwrap();
        let line = text.lines().find(|l| l.split(' ').next() == Some(name)).unwrap_or_else(|| panic!("no {name}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    /// The peers "alpha", connected as 1, is told of when it registers.
    fn peers_seen_by_alpha(r: &mut Registry, t: Now) -> Value {
        outputs(r);
        r.handle_ws_text(1, &json!({"type": "register", "peer_id": "alpha"}).to_string(), t);
        let outs = outputs(r);
        sent_to(&outs, 1)[0]["payload"]["peers"].clone()
    }

    #[test]
    fn token_for_a_key_and_empty_401_otherwise() {
        let mut r = registry(RegistryConfig::default());
        let t = now();
        let resp = r.handle_http(&ApiRequest { api_key: Some("k-agent"), ..req("POST", "/api/token") }, t);
        assert_eq!(resp.status, 200);
        let v = body(&resp);
        assert_eq!((v["peer_id"].as_str(), v["role"].as_str()), (Some("alpha"), Some("agent")));
        let id = issuer().verify(v["token"].as_str().unwrap(), t.unix_secs()).unwrap();
        assert_eq!(id.peer_id, "alpha");
        for key in [Some("nope"), None] {
            let resp = r.handle_http(&ApiRequest { api_key: key, ..req("POST", "/api/token") }, t);
            assert_eq!((resp.status, resp.body.len()), (401, 0));
        }
        assert_eq!(
            (metric(&mut r, "chatixia_tokens_issued_total"), metric(&mut r, "chatixia_tokens_refused_total")),
            (1, 2)
        );
    }

    #[test]
    fn token_endpoint_is_rate_limited_per_client() {
        let mut r = registry(RegistryConfig { token_rate: Rate::new(1.0, 3.0), ..RegistryConfig::default() });
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
    fn admin_routes_need_an_admin_credential() {
        let mut r = registry(RegistryConfig::default());
        let t = now();
        let admin_jwt = format!("Bearer {}", issuer().mint("ops", "admin", t.unix_secs()));
        let agent_jwt = format!("Bearer {}", issuer().mint("alpha", "agent", t.unix_secs()));
        let path = "/api/pairing/x/approve";
        let cases: [(Option<&str>, Option<&str>, u16); 6] = [
            (None, None, 401),
            (Some("k-agent"), None, 403),
            (Some("wrong"), None, 401),
            (None, Some(&agent_jwt), 403),
            (None, Some("Bearer garbage"), 401),
            (Some("k-admin"), None, 404),
        ];
        for (api_key, authorization, status) in cases {
            let resp = r.handle_http(&ApiRequest { api_key, authorization, ..req("POST", path) }, t);
            assert_eq!(resp.status, status, "{api_key:?} {authorization:?}");
        }
        let resp = r.handle_http(&ApiRequest { authorization: Some(&admin_jwt), ..req("POST", path) }, t);
        assert_eq!(resp.status, 404, "past the credential check: no such entry");
    }

    /// Agent registry and task hub writes need a credential whose peer may
    /// act for the agent (docs/PROTOCOL.md §3.3); admins may act for any.
    #[test]
    fn rest_writes_need_a_credential_that_may_act_for_the_agent() {
        let mut r = registry(RegistryConfig::default());
        let t = now();
        let post = |r: &mut Registry, path: &str, key: Option<&str>, body: &str| {
            let resp = r.handle_http(&ApiRequest { api_key: key, body: body.as_bytes(), ..req("POST", path) }, t);
            (resp.status, serde_json::from_slice::<Value>(&resp.body).unwrap_or(Value::Null))
        };
        let agents = "/api/registry/agents";
        let info = r#"{"agent_id":"a1","hostname":"h","sidecar_peer_id":"alpha"}"#;
        assert_eq!(post(&mut r, agents, None, info).0, 401);
        assert_eq!(post(&mut r, agents, Some("nope"), info).0, 401);
        // bravo may not claim alpha's sidecar, alpha may.
        assert_eq!(post(&mut r, agents, Some("k-bravo"), info).0, 403);
        assert_eq!(post(&mut r, agents, Some("k-agent"), info), (200, json!({"status": "ok"})));
        // Nor take over alpha's agent by leaving the sidecar out.
        let takeover = r#"{"agent_id":"a1","hostname":"evil"}"#;
        assert_eq!(post(&mut r, agents, Some("k-bravo"), takeover).0, 403);
        let hb = "/api/hub/heartbeat";
        assert_eq!(post(&mut r, hb, Some("k-bravo"), r#"{"agent_id":"a1"}"#).0, 403);
        assert_eq!(post(&mut r, hb, None, r#"{"agent_id":"a1"}"#).0, 401);
        // An agent created before its sidecar is known belongs to its creator.
        assert_eq!(post(&mut r, hb, Some("k-bravo"), r#"{"agent_id":"b1","sidecar_peer_id":""}"#).0, 200);
        assert_eq!(post(&mut r, hb, Some("k-agent"), r#"{"agent_id":"b1"}"#).0, 403);
        assert_eq!(post(&mut r, agents, Some("k-admin"), takeover).0, 200);

        // Task updates: the agent the task is for, or an admin.
        let (status, sub) = post(&mut r, "/api/hub/tasks", None, r#"{"skill":"s","target_agent_id":"b1"}"#);
        assert_eq!(status, 200, "submission stays open");
        let task = format!("/api/hub/tasks/{}", sub["task_id"].as_str().unwrap());
        let done = r#"{"state":"completed","result":"r"}"#;
        assert_eq!(post(&mut r, &task, None, done).0, 401);
        assert_eq!(post(&mut r, &task, Some("k-agent"), done).0, 403);
        assert_eq!(post(&mut r, &task, Some("k-bravo"), done), (200, json!({"status": "ok"})));
        // Reads stay open.
        assert_eq!(r.handle_http(&req("GET", "/api/hub/tasks/all"), t).status, 200);
    }

    #[test]
    fn strict_rest_auth_closes_reads_and_submission_but_not_health_or_the_page() {
        let mut r = registry(RegistryConfig { rest_auth_strict: true, ..RegistryConfig::default() });
        let t = now();
        for (method, path) in [
            ("GET", "/api/registry/agents"),
            ("GET", "/api/hub/tasks/all"),
            ("GET", "/api/hub/network/topology"),
            ("GET", "/api/config"),
            ("GET", "/metrics"),
            ("POST", "/api/hub/tasks"),
        ] {
            assert_eq!(r.handle_http(&req(method, path), t).status, 401, "{method} {path}");
            let keyed = r.handle_http(&ApiRequest { api_key: Some("k-agent"), body: b"{}", ..req(method, path) }, t);
            assert_eq!(keyed.status, 200, "{method} {path}");
        }
        for path in ["/", "/dashboard.js", "/healthz"] {
            assert_eq!(r.handle_http(&req("GET", path), t).status, 200, "{path}");
        }
        assert_eq!(r.handle_http(&ApiRequest { api_key: Some("k-agent"), ..req("POST", "/api/token") }, t).status, 200);
    }

    #[test]
    fn bodies_400_for_non_json_and_422_for_wrong_types() {
        let mut r = registry(RegistryConfig::default());
        let t = now();
        let agents = ApiRequest { api_key: Some("k-agent"), ..req("POST", "/api/registry/agents") };
        let bad = r.handle_http(&ApiRequest { body: b"{", ..agents.clone() }, t);
        assert_eq!(bad.status, 400);
        let wrong = r.handle_http(&ApiRequest { body: br#"{"agent_id":1}"#, ..agents.clone() }, t);
        assert_eq!(wrong.status, 422);
        let ok = r.handle_http(&ApiRequest { body: br#"{"agent_id":"a","hostname":"h"}"#, ..agents }, t);
        assert_eq!(body(&ok), json!({"status": "ok"}));
        let missing = r.handle_http(&req("GET", "/api/registry/agents/zz"), t);
        assert_eq!((missing.status, body(&missing)), (200, json!({"error": "not found"})));
    }

    #[test]
    fn cors_any_origin_except_admin_routes() {
        let mut r = registry(RegistryConfig::default());
        let t = now();
        let pre = r.handle_http(&ApiRequest { origin: Some("http://x"), ..req("OPTIONS", "/api/token") }, t);
        assert_eq!(pre.status, 204);
        assert!(pre.headers.contains(&("access-control-allow-origin", "*".into())));
        let admin = r.handle_http(&ApiRequest { origin: Some("http://x"), ..req("GET", "/api/pairing/pending") }, t);
        assert!(!admin.headers.iter().any(|(h, _)| *h == "access-control-allow-origin"));
        let mut listed =
            registry(RegistryConfig { cors_origins: Some(vec!["http://ok".into()]), ..RegistryConfig::default() });
        let ok = listed.handle_http(&ApiRequest { origin: Some("http://ok"), ..req("GET", "/healthz") }, t);
        assert!(ok.headers.contains(&("access-control-allow-origin", "http://ok".into())));
        let no = listed.handle_http(&ApiRequest { origin: Some("http://evil"), ..req("GET", "/healthz") }, t);
        assert!(!no.headers.iter().any(|(h, _)| *h == "access-control-allow-origin"));
    }

    #[test]
    fn the_dashboard_and_its_assets_are_served_with_strict_headers() {
        let mut r = registry(RegistryConfig::default());
        let t = now();
        for (path, content_type, needle) in [
            ("/", "text/html; charset=utf-8", r#"<script src="/dashboard.js" defer></script>"#),
            ("/dashboard.js", "text/javascript; charset=utf-8", "sessionStorage"),
            ("/dashboard.css", "text/css; charset=utf-8", "svg.mesh"),
        ] {
            let resp = r.handle_http(&req("GET", path), t);
            assert_eq!((resp.status, resp.content_type), (200, content_type), "{path}");
            let header = |name: &str| resp.headers.iter().find(|(h, _)| *h == name).map(|(_, v)| v.as_str());
            assert_eq!(header("cache-control"), Some("no-cache"), "{path}");
            assert_eq!(header("x-content-type-options"), Some("nosniff"), "{path}");
            assert_eq!(header("x-frame-options"), Some("DENY"), "{path}");
            let csp = header("content-security-policy").unwrap();
            assert!(csp.starts_with("default-src 'self';"), "{csp}");
            assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
            assert!(!csp.contains("unsafe-") && !csp.contains('*'), "{csp}");
            assert!(String::from_utf8(resp.body).unwrap().contains(needle), "{path}");
            // CORS as on any other non-admin route.
            assert!(resp.headers.contains(&("access-control-allow-origin", "*".into())), "{path}");
        }
        for (method, path) in [("POST", "/"), ("DELETE", "/"), ("GET", "/index.html"), ("GET", "/dashboard.js/x")] {
            assert_eq!(r.handle_http(&req(method, path), t).status, 404, "{method} {path}");
        }
        let mut listed =
            registry(RegistryConfig { cors_origins: Some(vec!["http://ok".into()]), ..RegistryConfig::default() });
        let evil = listed.handle_http(&ApiRequest { origin: Some("http://evil"), ..req("GET", "/") }, t);
        assert_eq!(evil.status, 200);
        assert!(!evil.headers.iter().any(|(h, _)| *h == "access-control-allow-origin"));
    }

    #[test]
    fn ws_authentication_reads_the_token_parameter() {
        let mut r = registry(RegistryConfig::default());
        let t = now();
        let token = issuer().mint("alpha", "agent", t.unix_secs());
        assert_eq!(r.handle_ws_upgrade(&format!("x=1&token={token}"), t).unwrap().peer_id, "alpha");
        assert_eq!(r.handle_ws_upgrade("token=bad", t).unwrap_err().status, 401);
        assert_eq!(r.handle_ws_upgrade("", t).unwrap_err().status, 401);
    }

    #[test]
    fn key_reload_closes_sockets_of_removed_keys() {
        let mut r = registry(RegistryConfig::default());
        let t = now();
        let id = Identity { peer_id: "alpha".into(), role: "agent".into() };
        r.handle_ws_open(7, &id, t);
        r.handle_keys_reloaded(KeyStore::parse(r#"{"keys":{}}"#).unwrap());
        assert_eq!(r.poll_output(), Some(RegistryOutput::Close { conn: 7, code: 4003, reason: "not authorized" }));
    }

    #[test]
    fn pairing_flow_through_tokens_and_the_hub() {
        let mut r = registry(RegistryConfig::default());
        let t = now();
        let paired = pair_device(&mut r, "pi", t);
        let fields: Vec<&String> = paired.as_object().unwrap().keys().collect();
        assert_eq!(fields, ["device_token", "id", "peer_id", "status"]);
        assert_eq!(paired["status"], "pending_approval");
        let (id, peer, dt) = (
            paired["id"].as_str().unwrap(),
            paired["peer_id"].as_str().unwrap(),
            paired["device_token"].as_str().unwrap(),
        );

        // Pending: a JWT with role "pending", a socket, and nobody to see.
        let tok = device_token_exchange(&mut r, dt, t);
        assert_eq!((body(&tok)["role"].as_str(), body(&tok)["peer_id"].as_str()), (Some("pending"), Some(peer)));
        let pending_jwt = body(&tok)["token"].as_str().unwrap().to_owned();
        let dev = r.handle_ws_upgrade(&format!("token={pending_jwt}"), t).unwrap();
        let alpha = Identity { peer_id: "alpha".into(), role: "agent".into() };
        r.handle_ws_open(1, &alpha, t);
        r.handle_ws_open(2, &dev, t);
        let register = json!({"type": "register", "peer_id": peer}).to_string();
        r.handle_ws_text(2, &register, t);
        let outs = outputs(&mut r);
        assert_eq!(sent_to(&outs, 2)[0]["payload"]["peers"], json!([]));

        // Approval: a fresh peer_list on the open socket.
        let resp = r.handle_http(&admin("POST", &format!("/api/pairing/{id}/approve")), t);
        assert_eq!(body(&resp), json!({"id": id, "status": "approved", "peer_id": peer}));
        let outs = outputs(&mut r);
        assert_eq!(sent_to(&outs, 2).len(), 1, "{outs:?}");
        assert_eq!(sent_to(&outs, 2)[0]["type"], "peer_list");
        assert_eq!(sent_to(&outs, 2)[0]["payload"]["peers"], json!(["alpha"]));
        assert_eq!(peers_seen_by_alpha(&mut r, t), json!([peer]));
        let tok = device_token_exchange(&mut r, dt, t);
        assert_eq!(body(&tok)["role"], "agent");
        let agent_jwt = body(&tok)["token"].as_str().unwrap().to_owned();

        // Revocation: closed with 4003, alpha told, token and socket refused.
        let resp = r.handle_http(&admin("POST", &format!("/api/pairing/{id}/revoke")), t);
        assert_eq!((resp.status, body(&resp)), (200, json!({"status": "ok"})));
        let outs = outputs(&mut r);
        assert!(outs.contains(&RegistryOutput::Close { conn: 2, code: 4003, reason: "not authorized" }));
        assert_eq!(
            sent_to(&outs, 1),
            [json!({"type": "peer_left", "peer_id": "registry", "payload": {"peer_id": peer}})]
        );
        let tok = device_token_exchange(&mut r, dt, t);
        assert_eq!((tok.status, tok.body.len()), (401, 0));
        for jwt in [&agent_jwt, &pending_jwt] {
            assert_eq!(r.handle_ws_upgrade(&format!("token={jwt}"), t).unwrap_err().status, 401);
        }
        assert_eq!(peers_seen_by_alpha(&mut r, t), json!([]));
        let again = r.handle_http(&admin("POST", &format!("/api/pairing/{id}/revoke")), t);
        assert_eq!((again.status, body(&again)), (404, json!({"error": "not found or not approved"})));
    }

    #[test]
    fn rejection_closes_the_pending_socket_and_is_final() {
        let mut r = registry(RegistryConfig::default());
        let t = now();
        let paired = pair_device(&mut r, "pi", t);
        let (id, peer) = (paired["id"].as_str().unwrap(), paired["peer_id"].as_str().unwrap());
        let dev = Identity { peer_id: peer.into(), role: "pending".into() };
        r.handle_ws_open(2, &dev, t);
        let resp = r.handle_http(&admin("POST", &format!("/api/pairing/{id}/reject")), t);
        assert_eq!((resp.status, body(&resp)), (200, json!({"status": "ok"})));
        assert!(outputs(&mut r).contains(&RegistryOutput::Close { conn: 2, code: 4003, reason: "not authorized" }));
        for op in ["approve", "reject"] {
            let resp = r.handle_http(&admin("POST", &format!("/api/pairing/{id}/{op}")), t);
            assert_eq!((resp.status, body(&resp)), (404, json!({"error": "not found or not pending"})), "{op}");
        }
        let resp = r.handle_http(&admin("POST", "/api/pairing/nope/approve"), t);
        assert_eq!((resp.status, body(&resp)), (404, json!({"error": "not found or not pending"})));
        let dt = paired["device_token"].as_str().unwrap();
        assert_eq!(device_token_exchange(&mut r, dt, t).status, 401);
    }

    #[test]
    fn an_api_key_wins_over_a_device_token() {
        let mut r = registry(RegistryConfig::default());
        let t = now();
        let paired = pair_device(&mut r, "pi", t);
        let dt = paired["device_token"].as_str().unwrap();
        let both = ApiRequest { api_key: Some("k-agent"), device_token: Some(dt), ..req("POST", "/api/token") };
        assert_eq!(body(&r.handle_http(&both, t))["peer_id"], "alpha");
        // A wrong key falls back to the device token, as in the original.
        let wrong = ApiRequest { api_key: Some("nope"), device_token: Some(dt), ..req("POST", "/api/token") };
        assert_eq!(body(&r.handle_http(&wrong, t))["peer_id"], paired["peer_id"]);
    }

    #[test]
    fn pair_errors_have_the_compatible_bodies() {
        let mut r = registry(RegistryConfig::default());
        let t = now();
        let cases: [(&str, u16, Value); 6] = [
            (r#"{"code":"12345","agent_name":"x"}"#, 400, json!({"error": "code must be exactly 6 digits"})),
            (r#"{"agent_name":"x"}"#, 400, json!({"error": "code must be exactly 6 digits"})),
            (r#"{"code":"123456","agent_name":"  "}"#, 400, json!({"error": "agent_name is required"})),
            (r#"{"code":"123456"}"#, 400, json!({"error": "agent_name is required"})),
            (r#"{"code":"123456","agent_name":"x"}"#, 401, json!({"error": "invalid or expired pairing code"})),
            (
                r#"{"code":"123456","agent_name":"x"}"#,
                429,
                json!({"error": "too many pairing attempts, try again later"}),
            ),
        ];
        for (pair_body, status, want) in cases {
            let resp = r.handle_http(&post_json("/api/pairing/pair", pair_body), t);
            assert_eq!((resp.status, body(&resp)), (status, want), "{pair_body}");
        }
        assert_eq!(metric(&mut r, "chatixia_pairings_rate_limited_total"), 1);
    }

    #[test]
    fn pairing_is_limited_per_address_and_v6_per_slash_64() {
        let mut r = registry(RegistryConfig::default());
        let t = now();
        let attempt = |r: &mut Registry, ip: &str, at: Now| {
            let client = Some(ip.parse().unwrap());
            let bad = ApiRequest { client, body: b"not json", ..req("POST", "/api/pairing/pair") };
            r.handle_http(&bad, at).status
        };
        let statuses: Vec<u16> = (0..6).map(|_| attempt(&mut r, "10.0.0.1", t)).collect();
        assert_eq!(statuses, [400, 400, 400, 400, 400, 429], "every attempt counts, even a malformed one");
        assert_eq!(attempt(&mut r, "10.0.0.2", t), 400);
        let later = Now { mono: t.mono + Duration::from_secs(12), ..t };
        assert_eq!(attempt(&mut r, "10.0.0.1", later), 400, "one attempt back after 12 s");
        for i in 0..5 {
            assert_eq!(attempt(&mut r, &format!("2001:db8::{i}"), t), 400);
        }
        assert_eq!(attempt(&mut r, "2001:db8::ffff:1", t), 429, "same /64");
        assert_eq!(attempt(&mut r, "2001:db8:0:1::1", t), 400, "another /64");
    }

    #[test]
    fn code_checks_are_limited_across_all_addresses() {
        let config = RegistryConfig {
            pair_global_rate: Rate::per_window(3, Duration::from_secs(60)),
            ..RegistryConfig::default()
        };
        let mut r = registry(config);
        let t = now();
        let statuses: Vec<u16> = (0..5u8)
            .map(|i| {
                let client = Some(IpAddr::V4(Ipv4Addr::new(10, 1, 0, i)));
                let b = br#"{"code":"000000","agent_name":"x"}"#;
                r.handle_http(&ApiRequest { client, body: b, ..req("POST", "/api/pairing/pair") }, t).status
            })
            .collect();
        assert_eq!(statuses, [401, 401, 401, 429, 429]);
    }

    #[test]
    fn generate_code_needs_any_api_key_or_an_admin_jwt() {
        let mut r = registry(RegistryConfig::default());
        let t = now();
        let admin_jwt = format!("Bearer {}", issuer().mint("ops", "admin", t.unix_secs()));
        let agent_jwt = format!("Bearer {}", issuer().mint("alpha", "agent", t.unix_secs()));
        let pending_jwt = format!("Bearer {}", issuer().mint("agent-000000", "pending", t.unix_secs()));
        let cases: [(Option<&str>, Option<&str>, u16); 8] = [
            (None, None, 401),
            (Some("nope"), None, 401),
            (Some("nope"), Some(&admin_jwt), 401),
            (None, Some("Bearer garbage"), 401),
            (None, Some(&agent_jwt), 403),
            (None, Some(&pending_jwt), 403),
            (Some("k-agent"), None, 200),
            (None, Some(&admin_jwt), 200),
        ];
        for (api_key, authorization, status) in cases {
            let before = metric(&mut r, "chatixia_pairing_codes_live");
            let resp =
                r.handle_http(&ApiRequest { api_key, authorization, ..req("POST", "/api/pairing/generate-code") }, t);
            assert_eq!(resp.status, status, "{api_key:?} {authorization:?}");
            let made = metric(&mut r, "chatixia_pairing_codes_live") - before;
            assert_eq!(made, u64::from(status == 200), "{api_key:?} {authorization:?}");
            if status == 200 {
                let v = body(&resp);
                assert_eq!(v["expires_in"], 300);
                assert!(v["code"].as_str().unwrap().bytes().all(|b| b.is_ascii_digit()));
            }
        }
    }

    #[test]
    fn every_pairing_admin_route_is_guarded_and_the_handler_does_not_run() {
        let mut r = registry(RegistryConfig::default());
        let t = now();
        let pending = pair_device(&mut r, "p", t)["id"].as_str().unwrap().to_owned();
        let approved = pair_device(&mut r, "a", t)["id"].as_str().unwrap().to_owned();
        r.handle_http(&admin("POST", &format!("/api/pairing/{approved}/approve")), t);
        let agent_jwt = format!("Bearer {}", issuer().mint("alpha", "agent", t.unix_secs()));
        let routes = [
            ("GET", "/api/pairing/pending".to_owned()),
            ("GET", "/api/pairing/all".to_owned()),
            ("POST", format!("/api/pairing/{pending}/approve")),
            ("POST", format!("/api/pairing/{pending}/reject")),
            ("POST", format!("/api/pairing/{approved}/revoke")),
        ];
        let creds: [(Option<&str>, Option<&str>, u16); 3] =
            [(None, None, 401), (Some("k-agent"), None, 403), (None, Some(&agent_jwt), 403)];
        let before = r.revisions();
        for (method, path) in &routes {
            for (api_key, authorization, status) in creds {
                let resp = r.handle_http(&ApiRequest { api_key, authorization, ..req(method, path) }, t);
                assert_eq!(resp.status, status, "{method} {path} {api_key:?}");
                assert!(body(&resp)["error"].is_string());
            }
        }
        assert_eq!(r.revisions(), before, "no handler ran");
        // With the admin key they run (the reject finds the entry approved).
        let statuses: Vec<u16> = routes.iter().map(|(m, p)| r.handle_http(&admin(m, p), t).status).collect();
        assert_eq!(statuses, [200, 200, 200, 404, 200]);
    }

    #[test]
    fn websocket_events_reach_the_hub_and_its_answers_come_out() {
        let mut r = registry(RegistryConfig::default());
        let t = now();
        let alpha = r.handle_ws_upgrade(&format!("token={}", issuer().mint("alpha", "agent", t.unix_secs())), t);
        let alpha = alpha.unwrap();
        let ops = Identity { peer_id: "ops".into(), role: "admin".into() };
        r.handle_ws_open(1, &alpha, t);
        r.handle_ws_open(2, &ops, t);
        assert_eq!(r.connection_count(), 2);

        r.handle_ws_binary(1, b"\x00\x01", t);
        assert_eq!(sent_to(&outputs(&mut r), 1)[0]["payload"]["code"], "invalid_frame");

        let later = Now { mono: t.mono + Duration::from_secs(31), ..t };
        r.handle_ws_activity(2, later);
        r.handle_tick(later);
        let mut pings = outputs(&mut r);
        pings.sort_by_key(|o| format!("{o:?}"));
        assert_eq!(pings, [RegistryOutput::Ping { conn: 1 }, RegistryOutput::Ping { conn: 2 }]);

        r.handle_ws_text(1, &json!({"type": "ping", "peer_id": "alpha"}).to_string(), t);
        r.handle_slow_consumer(1);
        let outs = outputs(&mut r);
        assert_eq!(outs[0], RegistryOutput::Close { conn: 1, code: 1008, reason: "too slow" });
        assert_eq!(metric(&mut r, "chatixia_dropped_frames_total{reason=\"slow_consumer\"}"), 1);

        r.handle_ws_closed(1);
        assert!(r.has_departures());
        r.handle_departures();
        assert_eq!(
            sent_to(&outputs(&mut r), 2),
            [json!({"type": "peer_left", "peer_id": "registry", "payload": {"peer_id": "alpha"}})]
        );
        assert_eq!(r.connection_count(), 1);
    }

    #[test]
    fn the_relay_speaks_turn_in_binary_frames_and_its_credentials_go_to_token_holders() {
        use crate::core::relay::RelayConfig;
        let relay = RelayConfig::new("chatixia", b"relay-secret", IpAddr::from([192, 0, 2, 1]));
        let mut r = registry(RegistryConfig { relay: Some((relay, 3478)), ..RegistryConfig::default() });
        let t = now();
        let jwt = issuer().mint("alpha", "agent", t.unix_secs());
        let alpha = r.handle_ws_upgrade(&format!("token={jwt}"), t).unwrap();
        r.handle_ws_open(1, &alpha, t);
        assert_eq!(r.relay_port(), Some(3478));

        // A STUN Binding request, cut in two frames: one answer, in a
        // binary frame to the same socket.
        let mut binding = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        binding.extend_from_slice(&[7; 12]);
        r.handle_ws_binary(1, &binding[..5], t);
        r.handle_ws_binary(1, &binding[5..], t);
        let outs = outputs(&mut r);
        let [RegistryOutput::RelayStream { conn: 1, bytes }] = outs.as_slice() else { panic!("{outs:?}") };
        assert_eq!((&bytes[..2], &bytes[8..20]), (&[0x01, 0x01][..], &[7; 12][..]), "a Binding success");

        // What is not TURN resets the relay stream; the signaling goes on.
        r.handle_ws_binary(1, &[0xff; 24], t);
        assert_eq!(sent_to(&outputs(&mut r), 1)[0]["payload"]["code"], "invalid_frame");
        r.handle_ws_text(1, &json!({"type": "ping", "peer_id": "alpha"}).to_string(), t);
        assert!(outputs(&mut r).iter().all(|o| !matches!(o, RegistryOutput::Close { .. })));
        r.handle_ws_binary(1, &binding, t);
        assert!(matches!(outputs(&mut r).as_slice(), [RegistryOutput::RelayStream { conn: 1, .. }]));

        // /api/config: the relay for a caller with a token, by the name it
        // used to reach the registry; nothing of it without one.
        let bearer = format!("Bearer {jwt}");
        let with =
            ApiRequest { authorization: Some(&bearer), host: Some("gw.local:8080"), ..req("GET", "/api/config") };
        let config = body(&r.handle_http(&with, t));
        let relay_entry = config["iceServers"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(
            relay_entry["urls"],
            json!(["turn:gw.local:3478?transport=udp", "turn:gw.local:3478?transport=tcp"])
        );
        assert!(relay_entry["username"].as_str().unwrap().ends_with(":alpha"));
        assert_eq!(config["relayWebSocket"]["username"], relay_entry["username"]);
        let without = body(&r.handle_http(&req("GET", "/api/config"), t));
        assert!(without.get("relayWebSocket").is_none());
        assert!(!without.to_string().contains("3478"));

        let metrics = String::from_utf8(r.handle_http(&req("GET", "/metrics"), t).body).unwrap();
        assert!(metrics.contains("chatixia_relay_allocations 0"), "{metrics}");
        assert!(metrics.contains("chatixia_relay_refused_total{reason="), "{metrics}");
    }

    /// Runs a turn-client-proto client over WebSocket `conn` until it and
    /// the registry have nothing more to say; returns its events.
    fn turn_over_ws(
        r: &mut Registry,
        conn: ConnId,
        client: &mut turn_client_proto::tcp::TurnClientTcp,
        t: Now,
    ) -> Vec<turn_client_proto::api::TurnEvent> {
        use turn_client_proto::api::TurnClientApi;
        use turn_client_proto::stun::agent::Transmit;
        use turn_client_proto::stun::types::TransportType;
        let mut events = Vec::new();
        // turn-client-proto paces its requests (one per 50 ms): its clock
        // moves on 100 ms per round; the registry's needs not.
        for round in 0..100 {
            let ct = turn_client_proto::stun::Instant::from_nanos(round * 100_000_000);
            let _ = client.poll(ct);
            let mut moved = false;
            while let Some(transmit) = client.poll_transmit(ct) {
                moved = true;
                r.handle_ws_binary(conn, &transmit.data, t);
            }
            for out in outputs(r) {
                if let RegistryOutput::RelayStream { conn: c, bytes } = out
                    && c == conn
                {
                    moved = true;
                    let (local, remote) = (client.local_addr(), client.remote_addr());
                    let _ = client.recv(Transmit::new(bytes.as_slice(), TransportType::Tcp, remote, local), ct);
                }
            }
            events.extend(std::iter::from_fn(|| client.poll_event()));
            if !moved && round > 0 {
                break;
            }
        }
        events
    }

    #[test]
    fn revoking_a_device_deletes_its_relay_allocation_at_once() {
        use crate::core::relay::RelayConfig;
        use turn_client_proto::api::{TurnConfig, TurnEvent};
        use turn_client_proto::types::TurnCredentials;
        let relay = RelayConfig::new("chatixia", b"relay-secret", IpAddr::from([192, 0, 2, 1]));
        let mut r = registry(RegistryConfig { relay: Some((relay, 3478)), ..RegistryConfig::default() });
        let t = now();
        let paired = pair_device(&mut r, "pi", t);
        let (id, peer) = (paired["id"].as_str().unwrap().to_owned(), paired["peer_id"].as_str().unwrap().to_owned());
        r.handle_http(&admin("POST", &format!("/api/pairing/{id}/approve")), t);
        let tok = device_token_exchange(&mut r, paired["device_token"].as_str().unwrap(), t);
        let jwt = body(&tok)["token"].as_str().unwrap().to_owned();
        let device = r.handle_ws_upgrade(&format!("token={jwt}"), t).unwrap();
        r.handle_ws_open(7, &device, t);

        let bearer = format!("Bearer {jwt}");
        let config = body(&r.handle_http(&ApiRequest { authorization: Some(&bearer), ..req("GET", "/api/config") }, t));
        let creds = &config["relayWebSocket"];
        let credentials =
            TurnCredentials::new(creds["username"].as_str().unwrap(), creds["credential"].as_str().unwrap());
        let (local, server) = ("198.51.100.7:40000".parse().unwrap(), "192.0.2.1:3478".parse().unwrap());
        let mut client = turn_client_proto::tcp::TurnClientTcp::allocate(local, server, TurnConfig::new(credentials));
        let events = turn_over_ws(&mut r, 7, &mut client, t);
        assert!(events.iter().any(|e| matches!(e, TurnEvent::AllocationCreated(..))), "{events:?}");
        assert_eq!(metric(&mut r, "chatixia_relay_allocations"), 1);

        let resp = r.handle_http(&admin("POST", &format!("/api/pairing/{id}/revoke")), t);
        assert_eq!(resp.status, 200);
        assert_eq!(metric(&mut r, "chatixia_relay_allocations"), 0, "{peer}'s allocation outlived the revocation");
    }

    #[test]
    fn what_was_saved_comes_back_and_a_damaged_file_is_named() {
        let mut r = registry(RegistryConfig::default());
        let t = now();
        let paired = pair_device(&mut r, "pi", t);
        r.handle_http(&post_json("/api/hub/tasks", r#"{"skill":"s"}"#), t);
        let files = r.changed_since(Revisions::default());
        let bytes = |name| files.iter().find(|d| d.file() == name).map(Dirty::encode);
        let saved = SavedState { pairing: bytes(PAIRING_FILE), tasks: bytes(TASKS_FILE) };

        let mut back = registry(RegistryConfig::default());
        let restored = back.restore(saved, t).unwrap();
        assert_eq!(restored, Restored { pairing_entries: Some(1), tasks: Some(1), tasks_dropped: 0 });
        let tok = device_token_exchange(&mut back, paired["device_token"].as_str().unwrap(), t);
        assert_eq!((tok.status, body(&tok)["role"].as_str()), (200, Some("pending")));
        let tasks = back.handle_http(&req("GET", "/api/hub/tasks/all"), t);
        assert_eq!(body(&tasks)[0]["skill"], "s");

        let nothing = registry(RegistryConfig::default()).restore(SavedState::default(), t);
        assert_eq!(nothing, Ok(Restored::default()));
        let damaged = [
            (SavedState { pairing: Some(b"{".to_vec()), ..SavedState::default() }, PAIRING_FILE, "paired devices"),
            (SavedState { tasks: Some(b"{".to_vec()), ..SavedState::default() }, TASKS_FILE, "tasks"),
        ];
        for (saved, file, holds) in damaged {
            let e = registry(RegistryConfig::default()).restore(saved, t).unwrap_err();
            assert_eq!((e.file, e.holds), (file, holds));
            assert!(e.reason.contains("not a valid state document"), "{}", e.reason);
        }
    }

    #[test]
    fn revisions_report_which_files_changed() {
        let mut r = registry(RegistryConfig::default());
        let t = now();
        let saved = r.revisions();
        r.handle_http(&req("GET", "/api/pairing/all"), t);
        r.handle_http(&req("GET", "/healthz"), t);
        assert_eq!(r.revisions(), saved);
        pair_device(&mut r, "pi", t);
        let files: Vec<&str> = r.changed_since(saved).iter().map(|d| d.file()).collect();
        assert_eq!(files, ["pairing.json"]);
        let saved = r.revisions();
        r.handle_http(&post_json("/api/hub/tasks", r#"{"skill":"s"}"#), t);
        let files: Vec<&str> = r.changed_since(saved).iter().map(|d| d.file()).collect();
        assert_eq!(files, ["tasks.json"]);
    }

    #[test]
    fn metrics_count_pairing() {
        let mut r = registry(RegistryConfig::default());
        let t = now();
        pair_device(&mut r, "pi", t);
        let text = String::from_utf8(r.handle_http(&req("GET", "/metrics"), t).body).unwrap();
        for line in [
            "chatixia_pairing_entries{status=\"pending_approval\"} 1",
            "chatixia_pairing_entries{status=\"approved\"} 0",
            "chatixia_pairing_codes_live 0",
            "chatixia_pairings_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }
}
