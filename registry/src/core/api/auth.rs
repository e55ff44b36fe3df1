//! Who is asking, and what their credential allows (docs/PROTOCOL.md, Token
//! exchange and Admin authentication): API keys, device tokens and JWTs.

use super::client::client_address;
use super::request::{ApiRequest, query_param};
use super::response::ApiResponse;
use crate::core::hub::Authorize;
use crate::core::now::Now;
use crate::core::pairing::Status;
use crate::core::state::{Authorization, Counters, RegistryState};
use crate::core::token::Identity;
use chatixia_protocol::claims::{ROLE_ADMIN, ROLE_AGENT, ROLE_PENDING, TokenResponse};
use serde_json::json;

/// The routes that need an admin credential. On the pairing admin paths it
/// is checked even before the method.
pub(super) fn is_admin_route(method: &str, seg: &[&str]) -> bool {
    matches!((method, seg), (_, ["api", "pairing", "pending" | "all"]) | (_, ["api", "pairing", _, _]))
        && !matches!(seg, ["api", "pairing", "generate-code" | "pair"])
}

/// Admin routes: an API key with role admin, or a JWT with role admin.
/// Returns the admin's peer_id, for the log.
pub(super) fn require_admin(state: &RegistryState, req: &ApiRequest, now: Now) -> Result<String, ApiResponse> {
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

/// `generate-code` takes any valid API key (compatible) or an admin JWT.
/// Returns whose it is, for the entry's `invited_by`.
pub(super) fn require_inviter(state: &RegistryState, req: &ApiRequest, now: Now) -> Result<Inviter, ApiResponse> {
    match req.api_key {
        Some(key) => match state.keys.lookup(key) {
            Some(entry) => Ok(Inviter { peer_id: entry.peer_id.clone(), admin: entry.role == ROLE_ADMIN }),
            None => Err(ApiResponse::json(401, &json!({"error": "invalid credential"}))),
        },
        None => admin_bearer(state, req, now)
            .map(|r| r.map(|peer_id| Inviter { peer_id, admin: true }))
            .unwrap_or_else(|| Err(ApiResponse::json(401, &json!({"error": "API key or admin credential required"})))),
    }
}

/// Who asks for a pairing code.
pub(super) struct Inviter {
    pub peer_id: String,
    pub admin: bool,
}

/// The peer of a valid `Authorization: Bearer` JWT that may join the mesh
/// now; `None` otherwise.
pub(super) fn authorized_bearer(state: &RegistryState, req: &ApiRequest, now: Now) -> Option<String> {
    let bearer = req.authorization?.strip_prefix("Bearer ")?;
    let id = state.tokens.verify(bearer.trim(), now.unix_secs()).ok()?;
    let authz = Authorization { keys: &state.keys, pairing: &state.pairing };
    authz.is_authorized(&id.peer_id).then_some(id.peer_id)
}

/// Whoever a request's credential names, for the REST routes that need
/// one (docs/PROTOCOL.md, REST authentication).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Actor {
    pub peer_id: String,
    pub admin: bool,
}

/// The request's credential: an API key, an approved device's token, or a
/// JWT of an agent or admin that may still join. `Ok(None)` without one;
/// 401 for one that is not valid (never ignored in favour of another).
pub(super) fn actor(state: &RegistryState, req: &ApiRequest, now: Now) -> Result<Option<Actor>, ApiResponse> {
    let invalid = || ApiResponse::json(401, &json!({"error": "invalid credential"}));
    if let Some(key) = req.api_key {
        let e = state.keys.lookup(key).ok_or_else(invalid)?;
        return Ok(Some(Actor { peer_id: e.peer_id.clone(), admin: e.role == ROLE_ADMIN }));
    }
    if let Some(token) = req.device_token {
        let e = state.pairing.by_device_token(token).filter(|e| e.status == Status::Approved).ok_or_else(invalid)?;
        return Ok(Some(Actor { peer_id: e.peer_id.clone(), admin: false }));
    }
    if let Some(bearer) = req.authorization.and_then(|a| a.strip_prefix("Bearer ")) {
        let id = state.tokens.verify(bearer.trim(), now.unix_secs()).map_err(|_| invalid())?;
        let authz = Authorization { keys: &state.keys, pairing: &state.pairing };
        if id.role == ROLE_PENDING || !authz.is_authorized(&id.peer_id) {
            return Err(invalid());
        }
        return Ok(Some(Actor { peer_id: id.peer_id, admin: id.role == ROLE_ADMIN }));
    }
    Ok(None)
}

/// [`actor`], with a missing credential refused too.
pub(super) fn require_actor(state: &RegistryState, req: &ApiRequest, now: Now) -> Result<Actor, ApiResponse> {
    actor(state, req, now)?.ok_or_else(|| {
        ApiResponse::json(401, &json!({"error": "credential required (X-API-Key, X-Device-Token or Bearer token)"}))
    })
}

/// Whether `actor` may write for the agent `agent_id` (`owner`: its
/// owner per [`crate::core::agents::AgentRegistry::owner_of`]) claiming
/// `sidecar_peer_id` (empty: none): admins always; others for agents that
/// are theirs or new, and never for another peer's sidecar.
pub(super) fn may_act_for(
    actor: &Actor,
    owner: Option<&str>,
    agent_id: &str,
    sidecar_peer_id: &str,
) -> Result<(), ApiResponse> {
    if actor.admin {
        return Ok(());
    }
    let refuse = |why: String| Err(ApiResponse::json(403, &json!({ "error": why })));
    if !sidecar_peer_id.is_empty() && sidecar_peer_id != actor.peer_id {
        return refuse(format!("{} may not act for sidecar_peer_id {sidecar_peer_id:?}", actor.peer_id));
    }
    match owner {
        Some(owner) if !owner.is_empty() && owner != actor.peer_id => {
            refuse(format!("{} may not act for agent {agent_id:?}", actor.peer_id))
        }
        _ => Ok(()),
    }
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

/// `POST /api/token`. A valid API key wins; otherwise a device token: an
/// approved entry's gets role `agent`, a pending one's role `pending` (it
/// may hold a socket but is authorized for nothing), any other 401
/// (compatible).
pub(super) fn issue_token(state: &mut RegistryState, req: &ApiRequest, now: Now) -> ApiResponse {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_route_table_covers_every_pairing_admin_path() {
        let seg = |p: &'static str| -> Vec<&'static str> { p.trim_matches('/').split('/').collect() };
        for (method, path) in [
            ("GET", "/api/pairing/pending"),
            ("GET", "/api/pairing/all"),
            ("POST", "/api/pairing/x/approve"),
            ("POST", "/api/pairing/x/reject"),
            ("POST", "/api/pairing/x/revoke"),
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
            ("DELETE", "/api/registry/agents/x"),
        ] {
            assert!(!is_admin_route(method, &seg(path)), "{method} {path}");
        }
    }
}
