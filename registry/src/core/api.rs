//! The registry's state and its HTTP API (SPEC §2, §3), sans-IO: the shell
//! turns each HTTP request into an [`ApiRequest`] and writes back the
//! [`ApiResponse`]; WebSocket events go to [`Registry::hub`].

use crate::core::agents::{AgentInfo, AgentRegistry, Heartbeat};
use crate::core::dashboard::Asset;
use crate::core::hub::{Authorize, Hub, HubConfig};
use crate::core::ice;
use crate::core::keys::KeyStore;
use crate::core::pairing::{CodeError, PairError, PairingLimits, PairingSnapshot, PairingStore, Status};
use crate::core::persist::{Dirty, Revisions};
use crate::core::ratelimit::{KeyedLimiter, Rate, TokenBucket};
use crate::core::tasks::{Task, TaskHub, TaskSubmission, TaskUpdate, UpdateError};
use crate::core::token::{Identity, TokenIssuer};
use crate::core::topology;
use chatixia_protocol::claims::{ROLE_ADMIN, ROLE_AGENT, ROLE_PENDING, TokenResponse};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Fills a buffer from a CSPRNG or says why it cannot; the shell passes the
/// operating system's, tests a deterministic one.
pub type RandomSource = Box<dyn FnMut(&mut [u8]) -> Result<(), String>>;

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
    pub pairing: PairingLimits,
    /// Pairing attempts per client address (IPv6: per /64).
    pub pair_rate: Rate,
    /// Code checks across all clients: a 6-digit code falls to guessing
    /// from enough addresses unless the total is bounded too.
    pub pair_global_rate: Rate,
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
            pairing: PairingLimits::default(),
            pair_rate: Rate::per_window(5, Duration::from_secs(60)),
            pair_global_rate: Rate::per_window(60, Duration::from_secs(60)),
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

/// Who may join the mesh: the peer_ids of the API keys and of approved
/// pairing entries.
pub struct Authorization<'a> {
    pub keys: &'a KeyStore,
    pub pairing: &'a PairingStore,
}

impl Authorize for Authorization<'_> {
    fn is_authorized(&self, peer_id: &str) -> bool {
        self.keys.has_peer(peer_id) || self.pairing.is_approved(peer_id)
    }
}

#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub tokens_issued: u64,
    pub tokens_refused: u64,
    pub tokens_rate_limited: u64,
    pub ws_refused: u64,
    pub pairings: u64,
    pub pairings_refused: u64,
    pub pairings_rate_limited: u64,
}

pub struct Registry {
    pub config: ApiConfig,
    pub keys: KeyStore,
    pub tokens: TokenIssuer,
    pub hub: Hub,
    pub agents: AgentRegistry,
    pub tasks: TaskHub,
    pub pairing: PairingStore,
    pub counters: Counters,
    token_limiter: KeyedLimiter<IpAddr>,
    pair_limiter: KeyedLimiter<IpAddr>,
    pair_checks: TokenBucket,
    rng: RandomSource,
}

/// Bodies larger than this are refused by the shell before parsing.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

impl Registry {
    pub fn new(
        config: ApiConfig,
        keys: KeyStore,
        tokens: TokenIssuer,
        task_seed: u64,
        rng: RandomSource,
        now: Now,
    ) -> Self {
        Registry {
            hub: Hub::new(config.hub.clone(), now.mono),
            token_limiter: KeyedLimiter::new(config.token_rate, 10_000),
            pair_limiter: KeyedLimiter::new(config.pair_rate, 10_000),
            pair_checks: TokenBucket::new(config.pair_global_rate, now.mono),
            pairing: PairingStore::new(config.pairing),
            config,
            keys,
            tokens,
            agents: AgentRegistry::new(),
            tasks: TaskHub::new(task_seed),
            counters: Counters::default(),
            rng,
        }
    }

    pub fn authz(&self) -> Authorization<'_> {
        Authorization { keys: &self.keys, pairing: &self.pairing }
    }

    /// The hub together with the authorization it must consult, borrowed
    /// apart so a hub call can read the keys and pairing entries.
    pub fn hub_with_authz(&mut self) -> (&mut Hub, Authorization<'_>) {
        (&mut self.hub, Authorization { keys: &self.keys, pairing: &self.pairing })
    }

    /// Swaps in a reloaded keys file and drops sockets that lost their key.
    pub fn replace_keys(&mut self, keys: KeyStore) {
        self.keys = keys;
        let (hub, authz) = self.hub_with_authz();
        hub.handle_authorization_changed(&authz);
    }

    /// Replaces the pairing store with one read back from the state
    /// directory; an inconsistent snapshot is an error.
    pub fn restore_pairing(&mut self, snapshot: PairingSnapshot, now: Now) -> Result<(), String> {
        self.pairing = PairingStore::restore(snapshot, self.config.pairing, now.wall)?;
        Ok(())
    }

    /// Replaces the tasks with ones read back from the state directory;
    /// returns how many were dropped by the bounds.
    pub fn restore_tasks(&mut self, tasks: Vec<Task>, now: Now) -> usize {
        self.tasks.restore(tasks, now.wall)
    }

    /// Where each persisted kind of state stands; compare before and after
    /// a call to know whether it changed anything that must be saved.
    pub fn revisions(&self) -> Revisions {
        Revisions { pairing: self.pairing.revision(), tasks: self.tasks.revision() }
    }

    /// The state files whose content moved on since `saved`.
    pub fn changed_since(&self, saved: Revisions) -> Vec<Dirty> {
        let mut dirty = Vec::new();
        if self.pairing.revision() != saved.pairing {
            dirty.push(Dirty::Pairing(self.pairing.snapshot()));
        }
        if self.tasks.revision() != saved.tasks {
            dirty.push(Dirty::Tasks(self.tasks.snapshot()));
        }
        dirty
    }

    /// Checks the `token` query parameter of a WebSocket upgrade. A token of
    /// a rejected or revoked device is refused even before it expires, so
    /// such a device cannot even hold a socket.
    pub fn authenticate_ws(&mut self, query: &str, now: Now) -> Result<Identity, ApiResponse> {
        let token = query_param(query, "token").unwrap_or_default();
        let refuse = |counters: &mut Counters, reason: &str| {
            counters.ws_refused += 1;
            log::info!("refused WebSocket upgrade: {reason}");
            ApiResponse::empty(401)
        };
        let id = self.tokens.verify(&token, now.unix_secs()).map_err(|reason| refuse(&mut self.counters, &reason))?;
        if self.pairing.is_shut_out(&id.peer_id) && !self.keys.has_peer(&id.peer_id) {
            let reason = format!("{} is a rejected or revoked device", id.peer_id);
            return Err(refuse(&mut self.counters, &reason));
        }
        Ok(id)
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
        let admin = if admin_route {
            match self.require_admin(req, now) {
                Ok(admin) => admin,
                Err(resp) => return resp,
            }
        } else {
            String::new()
        };
        match (req.method, seg) {
            ("GET", [""]) => Asset::Page.response(),
            ("GET", ["dashboard.js"]) => Asset::Script.response(),
            ("GET", ["dashboard.css"]) => Asset::Style.response(),
            ("GET", ["healthz"]) => ApiResponse::ok(json!({"status": "ok"})),
            ("GET", ["metrics"]) => {
                let mut r = ApiResponse::text(200, self.metrics(now));
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
            ("POST", ["api", "pairing", "generate-code"]) => self.generate_code(req, now),
            ("POST", ["api", "pairing", "pair"]) => self.pair(req, now),
            ("GET", ["api", "pairing", "pending"]) => ApiResponse::ok(json!(self.pairing.list(true))),
            ("GET", ["api", "pairing", "all"]) => ApiResponse::ok(json!(self.pairing.list(false))),
            ("POST", ["api", "pairing", id, "approve"]) => match self.pairing.approve(id, now.wall) {
                Ok(entry) => {
                    log::info!("{admin} approved device {:?} ({}, entry {id})", entry.agent_name, entry.peer_id);
                    let (hub, authz) = self.hub_with_authz();
                    // Pushes a fresh peer_list to the device if it is connected.
                    hub.handle_authorization_changed(&authz);
                    ApiResponse::ok(json!({"id": entry.id, "status": entry.status, "peer_id": entry.peer_id}))
                }
                Err(_) => ApiResponse::json(404, &json!({"error": "not found or not pending"})),
            },
            ("POST", ["api", "pairing", id, "reject"]) => match self.pairing.reject(id, now.wall) {
                Ok(entry) => {
                    log::info!("{admin} rejected device {:?} ({}, entry {id})", entry.agent_name, entry.peer_id);
                    self.shut_out(&entry.peer_id);
                    ApiResponse::ok(json!({"status": "ok"}))
                }
                Err(_) => ApiResponse::json(404, &json!({"error": "not found or not pending"})),
            },
            ("POST", ["api", "pairing", id, "revoke"]) => match self.pairing.revoke(id, now.wall) {
                Ok(entry) => {
                    log::info!("{admin} revoked device {:?} ({}, entry {id})", entry.agent_name, entry.peer_id);
                    self.shut_out(&entry.peer_id);
                    ApiResponse::ok(json!({"status": "ok"}))
                }
                Err(_) => ApiResponse::json(404, &json!({"error": "not found or not approved"})),
            },
            ("GET", ["api", "hub", "network", "topology"]) => {
                let records = self.agents.list(now.wall);
                ApiResponse::ok(json!(topology::Topology::build(&records, self.hub.mesh_status())))
            }
            _ => ApiResponse::json(404, &json!({"error": "no such route"})),
        }
    }

    /// A valid API key wins; otherwise a device token: an approved entry's
    /// gets role `agent`, a pending one's role `pending` (it may hold a
    /// socket but is authorized for nothing), any other 401 (compatible).
    fn issue_token(&mut self, req: &ApiRequest, now: Now) -> ApiResponse {
        let client = self.client_address(req);
        if let Some(ip) = client
            && !self.token_limiter.take(&ip, now.mono)
        {
            self.counters.tokens_rate_limited += 1;
            return ApiResponse::empty(429);
        }
        let by_key = req.api_key.and_then(|k| self.keys.lookup(k)).map(|e| (e.peer_id.clone(), e.role.clone()));
        let identity = by_key.or_else(|| {
            let entry = self.pairing.by_device_token(req.device_token?)?;
            let role = match entry.status {
                Status::Approved => ROLE_AGENT,
                Status::PendingApproval => ROLE_PENDING,
                Status::Rejected | Status::Revoked => return None,
            };
            Some((entry.peer_id.clone(), role.to_owned()))
        });
        let Some((peer_id, role)) = identity else {
            self.counters.tokens_refused += 1;
            log::info!("refused a token request from {client:?}: unknown credential");
            return ApiResponse::empty(401);
        };
        let token = self.tokens.mint(&peer_id, &role, now.unix_secs());
        self.counters.tokens_issued += 1;
        ApiResponse::ok(json!(TokenResponse { token, peer_id, role }))
    }

    /// Closes the sockets of a device that was just rejected or revoked and
    /// tells the others it left.
    fn shut_out(&mut self, peer_id: &str) {
        let (hub, authz) = self.hub_with_authz();
        hub.handle_revoked(peer_id, &authz);
    }

    /// `generate-code` needs any valid API key (compatible) or an admin JWT;
    /// the code remembers whose, for the entry's `invited_by`.
    fn generate_code(&mut self, req: &ApiRequest, now: Now) -> ApiResponse {
        let creator = match req.api_key {
            Some(key) => match self.keys.lookup(key) {
                Some(entry) => entry.peer_id.clone(),
                None => return ApiResponse::json(401, &json!({"error": "invalid credential"})),
            },
            None => match self.admin_bearer(req, now) {
                Some(Ok(admin)) => admin,
                Some(Err(resp)) => return resp,
                None => return ApiResponse::json(401, &json!({"error": "API key or admin credential required"})),
            },
        };
        match self.pairing.generate_code(&creator, now.wall, &mut *self.rng) {
            Ok(code) => {
                log::info!("{creator} generated a pairing code");
                ApiResponse::ok(json!({"code": code, "expires_in": crate::core::pairing::CODE_TTL_SECS}))
            }
            Err(e @ CodeError::Full) => ApiResponse::json(503, &json!({"error": e.to_string()})),
            Err(e @ CodeError::NoRandomness(_)) => {
                log::error!("cannot generate a pairing code: {e}");
                ApiResponse::json(500, &json!({"error": "cannot generate a code"}))
            }
        }
    }

    /// `POST /api/pairing/pair`. Every attempt counts against the client's
    /// limit, whatever its body; only well-formed ones against the global
    /// limit on code checks.
    fn pair(&mut self, req: &ApiRequest, now: Now) -> ApiResponse {
        let too_many = || ApiResponse::json(429, &json!({"error": "too many pairing attempts, try again later"}));
        let client = self.client_address(req);
        if let Some(ip) = client
            && !self.pair_limiter.take(&rate_limit_key(ip), now.mono)
        {
            self.counters.pairings_rate_limited += 1;
            log::warn!("refused a pairing attempt from {ip}: over the limit");
            return too_many();
        }
        #[derive(Deserialize)]
        struct PairRequest {
            #[serde(default)]
            code: String,
            #[serde(default)]
            agent_name: String,
        }
        let from = client.map_or_else(|| "an unknown address".to_owned(), |ip| ip.to_string());
        with_body(req, |body: PairRequest| {
            if let Err(e) = PairingStore::check_request(&body.code, &body.agent_name) {
                return ApiResponse::json(400, &json!({"error": e.to_string()}));
            }
            if !self.pair_checks.take(self.config.pair_global_rate, now.mono) {
                self.counters.pairings_rate_limited += 1;
                log::warn!("refused a pairing attempt from {from}: over the global limit on code checks");
                return too_many();
            }
            let keys = &self.keys;
            let result =
                self.pairing.redeem(&body.code, &body.agent_name, now.wall, &mut *self.rng, &|p| keys.has_peer(p));
            match result {
                Ok(paired) => {
                    let e = &paired.entry;
                    self.counters.pairings += 1;
                    log::info!(
                        "device {:?} paired from {from} as {} (entry {}, invited by {}); awaiting approval",
                        e.agent_name,
                        e.peer_id,
                        e.id,
                        e.invited_by
                    );
                    ApiResponse::ok(json!({
                        "id": e.id,
                        "status": e.status,
                        "peer_id": e.peer_id,
                        "device_token": paired.device_token,
                    }))
                }
                Err(e @ PairError::InvalidCode) => {
                    self.counters.pairings_refused += 1;
                    log::info!("refused a pairing attempt from {from}: {e}");
                    ApiResponse::json(401, &json!({"error": e.to_string()}))
                }
                Err(e @ PairError::Full) => ApiResponse::json(503, &json!({"error": e.to_string()})),
                Err(e @ PairError::NoRandomness(_)) => {
                    log::error!("cannot pair a device: {e}");
                    ApiResponse::json(500, &json!({"error": "cannot pair now"}))
                }
                Err(e) => ApiResponse::json(400, &json!({"error": e.to_string()})),
            }
        })
    }

    /// Admin routes: an API key with role admin, or a JWT with role admin.
    /// Returns the admin's peer_id, for the log.
    fn require_admin(&self, req: &ApiRequest, now: Now) -> Result<String, ApiResponse> {
        if let Some(key) = req.api_key {
            return match self.keys.lookup(key) {
                Some(e) if e.role == ROLE_ADMIN => Ok(e.peer_id.clone()),
                Some(_) => Err(ApiResponse::json(403, &json!({"error": "admin role required"}))),
                None => Err(ApiResponse::json(401, &json!({"error": "invalid credential"}))),
            };
        }
        self.admin_bearer(req, now)
            .unwrap_or_else(|| Err(ApiResponse::json(401, &json!({"error": "admin credential required"}))))
    }

    /// `None` without an `Authorization: Bearer` header.
    fn admin_bearer(&self, req: &ApiRequest, now: Now) -> Option<Result<String, ApiResponse>> {
        let bearer = req.authorization?.strip_prefix("Bearer ")?;
        Some(match self.tokens.verify(bearer.trim(), now.unix_secs()) {
            Ok(id) if id.role == ROLE_ADMIN => Ok(id.peer_id),
            Ok(_) => Err(ApiResponse::json(403, &json!({"error": "admin role required"}))),
            Err(_) => Err(ApiResponse::json(401, &json!({"error": "invalid credential"}))),
        })
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

    fn metrics(&self, now: Now) -> String {
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
        let _ = writeln!(
            m,
            "# HELP chatixia_pairing_entries Pairing entries, by status.\n# TYPE chatixia_pairing_entries gauge"
        );
        for status in Status::ALL {
            let _ = writeln!(
                m,
                "chatixia_pairing_entries{{status=\"{}\"}} {}",
                status.as_str(),
                self.pairing.count(status)
            );
        }
        let mut gauge = |name: &str, help: &str, kind: &str, value: u64| {
            let _ = writeln!(m, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        gauge(
            "chatixia_pairing_codes_live",
            "Pairing codes that can still be redeemed.",
            "gauge",
            self.pairing.live_codes(now.wall) as u64,
        );
        gauge("chatixia_pairings_total", "Codes redeemed.", "counter", self.counters.pairings);
        gauge(
            "chatixia_pairings_refused_total",
            "Pairing attempts with an invalid or expired code.",
            "counter",
            self.counters.pairings_refused,
        );
        gauge(
            "chatixia_pairings_rate_limited_total",
            "Pairing attempts refused by the rate limits.",
            "counter",
            self.counters.pairings_rate_limited,
        );
        m
    }
}

/// The key of the pairing limit: the address, or for IPv6 its /64, since
/// one host commonly holds a whole /64.
fn rate_limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
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
        Registry::new(config, keys, TokenIssuer::new(b"unit-test-secret").unwrap(), 1, counter_rng(), now())
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
    fn the_dashboard_and_its_assets_are_served_with_strict_headers() {
        let mut r = registry(ApiConfig::default());
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
        let mut listed = registry(ApiConfig { cors_origins: Some(vec!["http://ok".into()]), ..ApiConfig::default() });
        let evil = listed.handle_http(&ApiRequest { origin: Some("http://evil"), ..req("GET", "/") }, t);
        assert_eq!(evil.status, 200);
        assert!(!evil.headers.iter().any(|(h, _)| *h == "access-control-allow-origin"));
    }

    #[test]
    fn the_dashboard_loads_nothing_from_elsewhere_and_never_parses_server_text_as_markup() {
        use crate::core::dashboard::{APP_JS, INDEX_HTML, STYLE_CSS};
        // The SVG namespace name is an identifier for createElementNS, not
        // something the browser loads; it is the only URL allowed.
        let svg_ns = "\"http://www.w3.org/2000/svg\"";
        assert_eq!(APP_JS.matches(svg_ns).count(), 1);
        let js = APP_JS.replace(svg_ns, "");
        for (name, text) in [("index.html", INDEX_HTML), ("app.js", js.as_str()), ("style.css", STYLE_CSS)] {
            for banned in ["http://", "https://", "//cdn", "@import", "url("] {
                assert!(!text.contains(banned), "{name} contains {banned:?}");
            }
        }
        for banned in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function("] {
            assert!(!APP_JS.contains(banned), "app.js uses {banned}");
        }
        // Nothing inline, which the Content-Security-Policy would block.
        assert_eq!(INDEX_HTML.matches("<script").count(), 1);
        assert!(!INDEX_HTML.contains("<style") && !INDEX_HTML.contains("style="));
        let inline_handler = INDEX_HTML.split(" on").skip(1).any(|rest| {
            let name: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert!(!inline_handler, "an on…= attribute in index.html");
        let total = INDEX_HTML.len() + APP_JS.len() + STYLE_CSS.len();
        assert!(total < 30 * 1024, "the dashboard is {total} bytes");
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
        let pairing = PairingStore::default();
        r.hub.handle_connect(7, &id, &Authorization { keys: &authz_keys, pairing: &pairing }, t.mono);
        r.replace_keys(KeyStore::parse(r#"{"keys":{}}"#).unwrap());
        assert_eq!(
            r.hub.poll_output(),
            Some(crate::core::hub::HubOutput::Close { conn: 7, code: 4003, reason: "not authorized" })
        );
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

    fn outputs(r: &mut Registry) -> Vec<crate::core::hub::HubOutput> {
        std::iter::from_fn(|| r.hub.poll_output()).collect()
    }

    fn sent_to(outs: &[crate::core::hub::HubOutput], conn: crate::core::hub::ConnId) -> Vec<Value> {
        outs.iter()
            .filter_map(|o| match o {
                crate::core::hub::HubOutput::Send { conn: c, text } if *c == conn => {
                    Some(serde_json::from_str(text).unwrap())
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn pairing_flow_through_tokens_and_the_hub() {
        let mut r = registry(ApiConfig::default());
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
        let dev = r.authenticate_ws(&format!("token={pending_jwt}"), t).unwrap();
        let alpha = Identity { peer_id: "alpha".into(), role: "agent".into() };
        let Registry { hub, keys, pairing, .. } = &mut r;
        hub.handle_connect(1, &alpha, &Authorization { keys, pairing }, t.mono);
        hub.handle_connect(2, &dev, &Authorization { keys, pairing }, t.mono);
        let register = json!({"type": "register", "peer_id": peer}).to_string();
        hub.handle_frame(2, &register, &Authorization { keys, pairing }, t.mono, 0);
        let outs = outputs(&mut r);
        assert_eq!(sent_to(&outs, 2)[0]["payload"]["peers"], json!([]));

        // Approval: a fresh peer_list on the open socket.
        let resp = r.handle_http(&admin("POST", &format!("/api/pairing/{id}/approve")), t);
        assert_eq!(body(&resp), json!({"id": id, "status": "approved", "peer_id": peer}));
        let outs = outputs(&mut r);
        assert_eq!(sent_to(&outs, 2).len(), 1, "{outs:?}");
        assert_eq!(sent_to(&outs, 2)[0]["type"], "peer_list");
        assert_eq!(sent_to(&outs, 2)[0]["payload"]["peers"], json!(["alpha"]));
        assert!(r.authz().is_authorized(peer));
        let tok = device_token_exchange(&mut r, dt, t);
        assert_eq!(body(&tok)["role"], "agent");
        let agent_jwt = body(&tok)["token"].as_str().unwrap().to_owned();

        // Revocation: closed with 4003, alpha told, token and socket refused.
        let resp = r.handle_http(&admin("POST", &format!("/api/pairing/{id}/revoke")), t);
        assert_eq!((resp.status, body(&resp)), (200, json!({"status": "ok"})));
        let outs = outputs(&mut r);
        assert!(outs.contains(&crate::core::hub::HubOutput::Close { conn: 2, code: 4003, reason: "not authorized" }));
        assert_eq!(
            sent_to(&outs, 1),
            [json!({"type": "peer_left", "peer_id": "registry", "payload": {"peer_id": peer}})]
        );
        let tok = device_token_exchange(&mut r, dt, t);
        assert_eq!((tok.status, tok.body.len()), (401, 0));
        for jwt in [&agent_jwt, &pending_jwt] {
            assert_eq!(r.authenticate_ws(&format!("token={jwt}"), t).unwrap_err().status, 401);
        }
        assert!(!r.authz().is_authorized(peer));
        let again = r.handle_http(&admin("POST", &format!("/api/pairing/{id}/revoke")), t);
        assert_eq!((again.status, body(&again)), (404, json!({"error": "not found or not approved"})));
    }

    #[test]
    fn rejection_closes_the_pending_socket_and_is_final() {
        let mut r = registry(ApiConfig::default());
        let t = now();
        let paired = pair_device(&mut r, "pi", t);
        let (id, peer) = (paired["id"].as_str().unwrap(), paired["peer_id"].as_str().unwrap());
        let dev = Identity { peer_id: peer.into(), role: "pending".into() };
        let Registry { hub, keys, pairing, .. } = &mut r;
        hub.handle_connect(2, &dev, &Authorization { keys, pairing }, t.mono);
        let resp = r.handle_http(&admin("POST", &format!("/api/pairing/{id}/reject")), t);
        assert_eq!((resp.status, body(&resp)), (200, json!({"status": "ok"})));
        assert!(outputs(&mut r).contains(&crate::core::hub::HubOutput::Close {
            conn: 2,
            code: 4003,
            reason: "not authorized"
        }));
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
        let mut r = registry(ApiConfig::default());
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
        let mut r = registry(ApiConfig::default());
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
        assert_eq!(r.counters.pairings_rate_limited, 1);
    }

    #[test]
    fn pairing_is_limited_per_address_and_v6_per_slash_64() {
        let mut r = registry(ApiConfig::default());
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
        assert_eq!(rate_limit_key("::ffff:10.0.0.1".parse().unwrap()), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn code_checks_are_limited_across_all_addresses() {
        let config =
            ApiConfig { pair_global_rate: Rate::per_window(3, Duration::from_secs(60)), ..ApiConfig::default() };
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
        let mut r = registry(ApiConfig::default());
        let t = now();
        let admin_jwt = format!("Bearer {}", r.tokens.mint("ops", "admin", t.unix_secs()));
        let agent_jwt = format!("Bearer {}", r.tokens.mint("alpha", "agent", t.unix_secs()));
        let pending_jwt = format!("Bearer {}", r.tokens.mint("agent-000000", "pending", t.unix_secs()));
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
            let before = r.pairing.live_codes(t.wall);
            let resp =
                r.handle_http(&ApiRequest { api_key, authorization, ..req("POST", "/api/pairing/generate-code") }, t);
            assert_eq!(resp.status, status, "{api_key:?} {authorization:?}");
            let made = r.pairing.live_codes(t.wall) - before;
            assert_eq!(made, usize::from(status == 200), "{api_key:?} {authorization:?}");
            if status == 200 {
                let v = body(&resp);
                assert_eq!(v["expires_in"], 300);
                assert!(v["code"].as_str().unwrap().bytes().all(|b| b.is_ascii_digit()));
            }
        }
    }

    #[test]
    fn every_pairing_admin_route_is_guarded_and_the_handler_does_not_run() {
        let mut r = registry(ApiConfig::default());
        let t = now();
        let pending = pair_device(&mut r, "p", t)["id"].as_str().unwrap().to_owned();
        let approved = pair_device(&mut r, "a", t)["id"].as_str().unwrap().to_owned();
        r.handle_http(&admin("POST", &format!("/api/pairing/{approved}/approve")), t);
        let agent_jwt = format!("Bearer {}", r.tokens.mint("alpha", "agent", t.unix_secs()));
        let routes = [
            ("GET", "/api/pairing/pending".to_owned()),
            ("GET", "/api/pairing/all".to_owned()),
            ("POST", format!("/api/pairing/{pending}/approve")),
            ("POST", format!("/api/pairing/{pending}/reject")),
            ("POST", format!("/api/pairing/{approved}/revoke")),
            ("DELETE", "/api/registry/agents/a".to_owned()),
        ];
        let creds: [(Option<&str>, Option<&str>, u16); 3] =
            [(None, None, 401), (Some("k-agent"), None, 403), (None, Some(&agent_jwt), 403)];
        let before = r.pairing.snapshot();
        for (method, path) in &routes {
            for (api_key, authorization, status) in creds {
                let resp = r.handle_http(&ApiRequest { api_key, authorization, ..req(method, path) }, t);
                assert_eq!(resp.status, status, "{method} {path} {api_key:?}");
                assert!(body(&resp)["error"].is_string());
            }
        }
        assert_eq!(r.pairing.snapshot(), before, "no handler ran");
        // With the admin key they run (the reject finds the entry approved).
        let statuses: Vec<u16> = routes.iter().map(|(m, p)| r.handle_http(&admin(m, p), t).status).collect();
        assert_eq!(statuses, [200, 200, 200, 404, 200, 200]);
    }

    #[test]
    fn admin_route_table_covers_every_pairing_admin_path() {
        let seg = |p: &'static str| -> Vec<&'static str> { p.trim_matches('/').split('/').collect() };
        for (method, path) in [
            ("GET", "/api/pairing/pending"),
            ("GET", "/api/pairing/all"),
            ("POST", "/api/pairing/x/approve"),
            ("POST", "/api/pairing/x/reject"),
            ("POST", "/api/pairing/x/revoke"),
            ("DELETE", "/api/registry/agents/x"),
            // Wrong methods on admin paths still need the credential first.
            ("POST", "/api/pairing/pending"),
            ("GET", "/api/pairing/x/approve"),
        ] {
            assert!(is_admin_route(method, &seg(path)), "{method} {path}");
        }
        for (method, path) in [
            ("POST", "/api/pairing/generate-code"),
            ("POST", "/api/pairing/pair"),
            ("POST", "/api/token"),
            ("GET", "/api/registry/agents/x"),
        ] {
            assert!(!is_admin_route(method, &seg(path)), "{method} {path}");
        }
    }

    #[test]
    fn revisions_report_which_files_changed() {
        let mut r = registry(ApiConfig::default());
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
        let mut r = registry(ApiConfig::default());
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

    #[test]
    fn query_params_are_percent_decoded() {
        assert_eq!(query_param("a=1&token=x%2By%20z+w", "token").as_deref(), Some("x+y z w"));
        assert_eq!(query_param("token=%zz%4", "token").as_deref(), Some("%zz%4"));
        assert_eq!(query_param("a=1", "token"), None);
        assert_eq!(query_param("token=é%C3%A9", "token").as_deref(), Some("éé"));
    }
}
