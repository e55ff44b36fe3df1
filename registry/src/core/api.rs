//! The registry's HTTP API, sans-IO: the shell turns each HTTP request into
//! an [`ApiRequest`] and writes back the [`ApiResponse`] that [`handle_http`]
//! makes of it against the registry's state.

use crate::core::agents::{AgentInfo, Heartbeat};
use crate::core::dashboard::Asset;
use crate::core::ice;
use crate::core::now::Now;
use crate::core::pairing::{CodeError, PairError, PairingStore, Status};
use crate::core::state::{Counters, RegistryState};
use crate::core::tasks::{TaskSubmission, TaskUpdate, UpdateError};
use crate::core::token::Identity;
use crate::core::topology;
use chatixia_protocol::claims::{ROLE_ADMIN, ROLE_AGENT, ROLE_PENDING, TokenResponse};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::net::IpAddr;

/// Bodies larger than this are refused by the shell before parsing.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

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

/// Checks the `token` query parameter of a WebSocket upgrade. A token of
/// a rejected or revoked device is refused even before it expires, so
/// such a device cannot even hold a socket.
pub(in crate::core) fn authenticate_ws(
    state: &mut RegistryState,
    query: &str,
    now: Now,
) -> Result<Identity, ApiResponse> {
    let token = query_param(query, "token").unwrap_or_default();
    let refuse = |counters: &mut Counters, reason: &str| {
        counters.ws_refused += 1;
        log::info!("refused WebSocket upgrade: {reason}");
        ApiResponse::empty(401)
    };
    let id = state.tokens.verify(&token, now.unix_secs()).map_err(|reason| refuse(&mut state.counters, &reason))?;
    if state.pairing.is_shut_out(&id.peer_id) && !state.keys.has_peer(&id.peer_id) {
        let reason = format!("{} is a rejected or revoked device", id.peer_id);
        return Err(refuse(&mut state.counters, &reason));
    }
    Ok(id)
}

pub(in crate::core) fn handle_http(state: &mut RegistryState, req: &ApiRequest, now: Now) -> ApiResponse {
    let segments: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    let admin_route = is_admin_route(req.method, &segments);
    let mut resp = if req.method == "OPTIONS" {
        let mut r = ApiResponse::empty(204);
        r.headers.push(("access-control-allow-methods", "GET, POST, DELETE, OPTIONS".into()));
        r.headers
            .push(("access-control-allow-headers", "content-type, x-api-key, x-device-token, authorization".into()));
        r.headers.push(("access-control-max-age", "600".into()));
        r
    } else {
        route(state, req, &segments, admin_route, now)
    };
    if let Some(origin) = cors_origin(state, req.origin, admin_route) {
        resp.headers.push(("access-control-allow-origin", origin));
        resp.headers.push(("vary", "origin".into()));
    }
    resp
}

fn route(state: &mut RegistryState, req: &ApiRequest, seg: &[&str], admin_route: bool, now: Now) -> ApiResponse {
    let admin = if admin_route {
        match require_admin(state, req, now) {
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
            let mut r = ApiResponse::text(200, metrics(state, now));
            r.content_type = "text/plain; version=0.0.4";
            r
        }
        ("GET", ["api", "config"]) => {
            let turn = state.config.turn.as_ref().map(|(u, s)| (u.as_str(), s.as_str()));
            ApiResponse::ok(ice::ice_config(&state.config.stun_urls, turn, now.unix_secs()))
        }
        ("POST", ["api", "token"]) => issue_token(state, req, now),
        ("POST", ["api", "registry", "agents"]) => with_body(req, |info: AgentInfo| {
            state.agents.upsert(info, now.wall);
            ApiResponse::ok(json!({"status": "ok"}))
        }),
        ("GET", ["api", "registry", "agents"]) => ApiResponse::ok(json!(state.agents.list(now.wall))),
        ("GET", ["api", "registry", "route"]) => {
            let skill = query_param(req.query, "skill").unwrap_or_default();
            match state.agents.route(&skill, now.wall) {
                Some(agent) => ApiResponse::ok(json!(agent)),
                None => ApiResponse::ok(json!({"error": "no agent found with skill", "skill": skill})),
            }
        }
        ("GET", ["api", "registry", "agents", id]) => match state.agents.get(id, now.wall) {
            Some(agent) => ApiResponse::ok(json!(agent)),
            None => ApiResponse::not_found_body(),
        },
        ("DELETE", ["api", "registry", "agents", id]) => {
            if state.agents.remove(id) {
                ApiResponse::ok(json!({"status": "ok"}))
            } else {
                ApiResponse::not_found_body()
            }
        }
        ("POST", ["api", "hub", "tasks"]) => {
            with_body(req, |sub: TaskSubmission| match state.tasks.submit(sub, now.wall) {
                Ok(id) => ApiResponse::ok(json!({"task_id": id})),
                Err(e) => ApiResponse::json(503, &json!({"error": e.to_string()})),
            })
        }
        ("GET", ["api", "hub", "tasks", "all"]) => ApiResponse::ok(json!(state.tasks.all(now.wall))),
        ("GET", ["api", "hub", "tasks", id]) => match state.tasks.get(id, now.wall) {
            Some(task) => ApiResponse::ok(json!(task)),
            None => ApiResponse::not_found_body(),
        },
        ("POST", ["api", "hub", "tasks", id]) => {
            with_body(req, |upd: TaskUpdate| match state.tasks.update(id, upd, now.wall) {
                Ok(()) => ApiResponse::ok(json!({"status": "ok"})),
                Err(UpdateError::NotFound) => ApiResponse::not_found_body(),
                Err(UpdateError::Final) => ApiResponse::ok(json!({"error": "task is final"})),
            })
        }
        ("POST", ["api", "hub", "heartbeat"]) => with_body(req, |hb: Heartbeat| {
            let agent_id = hb.agent_id.clone();
            state.agents.heartbeat(hb, now.wall);
            let skills = state.agents.skills_of(&agent_id);
            let pending = state.tasks.claim(&agent_id, &skills, now.wall);
            ApiResponse::ok(json!({"status": "ok", "pending_tasks": pending}))
        }),
        ("POST", ["api", "pairing", "generate-code"]) => generate_code(state, req, now),
        ("POST", ["api", "pairing", "pair"]) => pair(state, req, now),
        ("GET", ["api", "pairing", "pending"]) => ApiResponse::ok(json!(state.pairing.list(true))),
        ("GET", ["api", "pairing", "all"]) => ApiResponse::ok(json!(state.pairing.list(false))),
        ("POST", ["api", "pairing", id, "approve"]) => match state.pairing.approve(id, now.wall) {
            Ok(entry) => {
                log::info!("{admin} approved device {:?} ({}, entry {id})", entry.agent_name, entry.peer_id);
                let (hub, authz) = state.hub_with_authz();
                // Pushes a fresh peer_list to the device if it is connected.
                hub.handle_authorization_changed(&authz);
                ApiResponse::ok(json!({"id": entry.id, "status": entry.status, "peer_id": entry.peer_id}))
            }
            Err(_) => ApiResponse::json(404, &json!({"error": "not found or not pending"})),
        },
        ("POST", ["api", "pairing", id, "reject"]) => match state.pairing.reject(id, now.wall) {
            Ok(entry) => {
                log::info!("{admin} rejected device {:?} ({}, entry {id})", entry.agent_name, entry.peer_id);
                state.shut_out(&entry.peer_id);
                ApiResponse::ok(json!({"status": "ok"}))
            }
            Err(_) => ApiResponse::json(404, &json!({"error": "not found or not pending"})),
        },
        ("POST", ["api", "pairing", id, "revoke"]) => match state.pairing.revoke(id, now.wall) {
            Ok(entry) => {
                log::info!("{admin} revoked device {:?} ({}, entry {id})", entry.agent_name, entry.peer_id);
                state.shut_out(&entry.peer_id);
                ApiResponse::ok(json!({"status": "ok"}))
            }
            Err(_) => ApiResponse::json(404, &json!({"error": "not found or not approved"})),
        },
        ("GET", ["api", "hub", "network", "topology"]) => {
            let records = state.agents.list(now.wall);
            ApiResponse::ok(json!(topology::Topology::build(&records, state.hub.mesh_status())))
        }
        _ => ApiResponse::json(404, &json!({"error": "no such route"})),
    }
}

/// A valid API key wins; otherwise a device token: an approved entry's
/// gets role `agent`, a pending one's role `pending` (it may hold a
/// socket but is authorized for nothing), any other 401 (compatible).
fn issue_token(state: &mut RegistryState, req: &ApiRequest, now: Now) -> ApiResponse {
    let client = client_address(&state.config.trusted_proxies, req);
    if let Some(ip) = client
        && !state.token_limiter.take(&ip, now.mono)
    {
        state.counters.tokens_rate_limited += 1;
        return ApiResponse::empty(429);
    }
    let by_key = req.api_key.and_then(|k| state.keys.lookup(k)).map(|e| (e.peer_id.clone(), e.role.clone()));
    let identity = by_key.or_else(|| {
        let entry = state.pairing.by_device_token(req.device_token?)?;
        let role = match entry.status {
            Status::Approved => ROLE_AGENT,
            Status::PendingApproval => ROLE_PENDING,
            Status::Rejected | Status::Revoked => return None,
        };
        Some((entry.peer_id.clone(), role.to_owned()))
    });
    let Some((peer_id, role)) = identity else {
        state.counters.tokens_refused += 1;
        log::info!("refused a token request from {client:?}: unknown credential");
        return ApiResponse::empty(401);
    };
    let token = state.tokens.mint(&peer_id, &role, now.unix_secs());
    state.counters.tokens_issued += 1;
    ApiResponse::ok(json!(TokenResponse { token, peer_id, role }))
}

/// `generate-code` needs any valid API key (compatible) or an admin JWT;
/// the code remembers whose, for the entry's `invited_by`.
fn generate_code(state: &mut RegistryState, req: &ApiRequest, now: Now) -> ApiResponse {
    let creator = match req.api_key {
        Some(key) => match state.keys.lookup(key) {
            Some(entry) => entry.peer_id.clone(),
            None => return ApiResponse::json(401, &json!({"error": "invalid credential"})),
        },
        None => match admin_bearer(state, req, now) {
            Some(Ok(admin)) => admin,
            Some(Err(resp)) => return resp,
            None => return ApiResponse::json(401, &json!({"error": "API key or admin credential required"})),
        },
    };
    match state.pairing.generate_code(&creator, now.wall, &mut *state.rng) {
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
fn pair(state: &mut RegistryState, req: &ApiRequest, now: Now) -> ApiResponse {
    let too_many = || ApiResponse::json(429, &json!({"error": "too many pairing attempts, try again later"}));
    let client = client_address(&state.config.trusted_proxies, req);
    if let Some(ip) = client
        && !state.pair_limiter.take(&rate_limit_key(ip), now.mono)
    {
        state.counters.pairings_rate_limited += 1;
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
        if !state.pair_checks.take(state.config.pair_global_rate, now.mono) {
            state.counters.pairings_rate_limited += 1;
            log::warn!("refused a pairing attempt from {from}: over the global limit on code checks");
            return too_many();
        }
        let keys = &state.keys;
        let result =
            state.pairing.redeem(&body.code, &body.agent_name, now.wall, &mut *state.rng, &|p| keys.has_peer(p));
        match result {
            Ok(paired) => {
                let e = &paired.entry;
                state.counters.pairings += 1;
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
                state.counters.pairings_refused += 1;
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
fn require_admin(state: &RegistryState, req: &ApiRequest, now: Now) -> Result<String, ApiResponse> {
    if let Some(key) = req.api_key {
        return match state.keys.lookup(key) {
            Some(e) if e.role == ROLE_ADMIN => Ok(e.peer_id.clone()),
            Some(_) => Err(ApiResponse::json(403, &json!({"error": "admin role required"}))),
            None => Err(ApiResponse::json(401, &json!({"error": "invalid credential"}))),
        };
    }
    admin_bearer(state, req, now)
        .unwrap_or_else(|| Err(ApiResponse::json(401, &json!({"error": "admin credential required"}))))
}

/// `None` without an `Authorization: Bearer` header.
fn admin_bearer(state: &RegistryState, req: &ApiRequest, now: Now) -> Option<Result<String, ApiResponse>> {
    let bearer = req.authorization?.strip_prefix("Bearer ")?;
    Some(match state.tokens.verify(bearer.trim(), now.unix_secs()) {
        Ok(id) if id.role == ROLE_ADMIN => Ok(id.peer_id),
        Ok(_) => Err(ApiResponse::json(403, &json!({"error": "admin role required"}))),
        Err(_) => Err(ApiResponse::json(401, &json!({"error": "invalid credential"}))),
    })
}

/// The address rate limits apply to: the peer, or, when the peer is a
/// trusted proxy, the last `X-Forwarded-For` hop it did not add itstate.
fn client_address(trusted_proxies: &[IpAddr], req: &ApiRequest) -> Option<IpAddr> {
    let peer = req.client?;
    if !trusted_proxies.contains(&peer) {
        return Some(peer);
    }
    let hops = req.forwarded_for.unwrap_or_default().split(',');
    let real = hops.rev().filter_map(|h| h.trim().parse::<IpAddr>().ok()).find(|ip| !trusted_proxies.contains(ip));
    Some(real.unwrap_or(peer))
}

fn cors_origin(state: &RegistryState, origin: Option<&str>, admin_route: bool) -> Option<String> {
    match &state.config.cors_origins {
        None if admin_route => None,
        None => Some("*".into()),
        Some(list) => {
            let origin = origin?;
            list.iter().any(|o| o == origin).then(|| origin.to_owned())
        }
    }
}

fn metrics(state: &RegistryState, now: Now) -> String {
    let mut m = String::new();
    let mut gauge = |name: &str, help: &str, kind: &str, value: u64| {
        let _ = writeln!(m, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    };
    gauge("chatixia_ws_connections", "Open signaling WebSockets.", "gauge", state.hub.connection_count() as u64);
    gauge("chatixia_relayed_frames_total", "Signaling frames relayed.", "counter", state.hub.stats.relayed);
    gauge("chatixia_tokens_issued_total", "JWTs issued.", "counter", state.counters.tokens_issued);
    gauge("chatixia_tokens_refused_total", "Token requests refused.", "counter", state.counters.tokens_refused);
    gauge(
        "chatixia_tokens_rate_limited_total",
        "Token requests refused by the rate limit.",
        "counter",
        state.counters.tokens_rate_limited,
    );
    gauge("chatixia_ws_refused_total", "WebSocket upgrades refused.", "counter", state.counters.ws_refused);
    gauge("chatixia_agents", "Agents in the registry.", "gauge", state.agents.len() as u64);
    gauge("chatixia_api_keys", "Keys loaded from the keys file.", "gauge", state.keys.len() as u64);
    let _ = writeln!(
        m,
        "# HELP chatixia_dropped_frames_total Frames dropped, by reason.\n# TYPE chatixia_dropped_frames_total counter"
    );
    for (reason, count) in &state.hub.stats.drops {
        let _ = writeln!(m, "chatixia_dropped_frames_total{{reason=\"{reason}\"}} {count}");
    }
    let _ = writeln!(
        m,
        "# HELP chatixia_pairing_entries Pairing entries, by status.\n# TYPE chatixia_pairing_entries gauge"
    );
    for status in Status::ALL {
        let _ =
            writeln!(m, "chatixia_pairing_entries{{status=\"{}\"}} {}", status.as_str(), state.pairing.count(status));
    }
    let mut gauge = |name: &str, help: &str, kind: &str, value: u64| {
        let _ = writeln!(m, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    };
    gauge(
        "chatixia_pairing_codes_live",
        "Pairing codes that can still be redeemed.",
        "gauge",
        state.pairing.live_codes(now.wall) as u64,
    );
    gauge("chatixia_pairings_total", "Codes redeemed.", "counter", state.counters.pairings);
    gauge(
        "chatixia_pairings_refused_total",
        "Pairing attempts with an invalid or expired code.",
        "counter",
        state.counters.pairings_refused,
    );
    gauge(
        "chatixia_pairings_rate_limited_total",
        "Pairing attempts refused by the rate limits.",
        "counter",
        state.counters.pairings_rate_limited,
    );
    m
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

    fn req<'a>(method: &'a str, path: &'a str) -> ApiRequest<'a> {
        ApiRequest { method, path, client: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)), ..Default::default() }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxy = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let trusted = [proxy];
        let via_proxy =
            ApiRequest { client: Some(proxy), forwarded_for: Some("1.1.1.1, 2.2.2.2, 10.0.0.1"), ..req("GET", "/") };
        assert_eq!(client_address(&trusted, &via_proxy), Some("2.2.2.2".parse().unwrap()));
        let direct = ApiRequest { forwarded_for: Some("9.9.9.9"), ..req("GET", "/") };
        assert_eq!(client_address(&trusted, &direct), Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }

    #[test]
    fn pairing_limits_count_v6_per_slash_64_and_mapped_v4_as_v4() {
        assert_eq!(rate_limit_key("::ffff:10.0.0.1".parse().unwrap()), "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(rate_limit_key("2001:db8::ffff:1".parse().unwrap()), "2001:db8::".parse::<IpAddr>().unwrap());
        assert_eq!(rate_limit_key("10.0.0.1".parse().unwrap()), "10.0.0.1".parse::<IpAddr>().unwrap());
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
    fn query_params_are_percent_decoded() {
        assert_eq!(query_param("a=1&token=x%2By%20z+w", "token").as_deref(), Some("x+y z w"));
        assert_eq!(query_param("token=%zz%4", "token").as_deref(), Some("%zz%4"));
        assert_eq!(query_param("a=1", "token"), None);
        assert_eq!(query_param("token=é%C3%A9", "token").as_deref(), Some("éé"));
    }
}
