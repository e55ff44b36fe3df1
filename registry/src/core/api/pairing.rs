//! The pairing routes (docs/PROTOCOL.md, Pairing): codes, redemption, and
//! the admin's decisions on the entries.

use super::auth::require_inviter;
use super::client::{client_address, rate_limit_key};
use super::request::ApiRequest;
use super::response::ApiResponse;
use crate::core::now::Now;
use crate::core::pairing::{CODE_TTL_SECS, CodeError, PairError, PairingStore};
use crate::core::state::RegistryState;
use serde::Deserialize;
use serde_json::json;

/// `POST /api/pairing/generate-code`.
pub(super) fn generate_code(state: &mut RegistryState, req: &ApiRequest, now: Now) -> ApiResponse {
    let creator = match require_inviter(state, req, now) {
        Ok(creator) => creator,
        Err(resp) => return resp,
    };
    match state.pairing.generate_code(&creator.peer_id, creator.admin, now.wall, &mut *state.rng) {
        Ok(code) => {
            log::info!("{} generated a pairing code", creator.peer_id);
            ApiResponse::ok(json!({"code": code, "expires_in": CODE_TTL_SECS}))
        }
        Err(e @ CodeError::Full) => ApiResponse::json(503, &json!({"error": e.to_string()})),
        Err(e @ CodeError::TooManyOwn) => ApiResponse::json(429, &json!({"error": e.to_string()})),
        Err(e @ CodeError::NoRandomness(_)) => {
            log::error!("cannot generate a pairing code: {e}");
            ApiResponse::json(500, &json!({"error": "cannot generate a code"}))
        }
    }
}

/// `POST /api/pairing/pair`. Every attempt counts against the client's
/// limit, whatever its body; only well-formed ones against the global
/// limit on code checks.
pub(super) fn pair(state: &mut RegistryState, req: &ApiRequest, now: Now) -> ApiResponse {
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
    req.with_body(|body: PairRequest| {
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

/// `POST /api/pairing/{id}/approve`: the device joins the mesh, and gets a
/// fresh `peer_list` at once if it is connected.
pub(super) fn approve(state: &mut RegistryState, id: &str, admin: &str, now: Now) -> ApiResponse {
    match state.pairing.approve(id, now.wall) {
        Ok(entry) => {
            log::info!("{admin} approved device {:?} ({}, entry {id})", entry.agent_name, entry.peer_id);
            state.authorization_changed();
            ApiResponse::ok(json!({"id": entry.id, "status": entry.status, "peer_id": entry.peer_id}))
        }
        Err(_) => ApiResponse::json(404, &json!({"error": "not found or not pending"})),
    }
}

/// The two ways an admin shuts a device out.
#[derive(Debug, Clone, Copy)]
pub(super) enum ShutOut {
    Reject,
    Revoke,
}

/// `POST /api/pairing/{id}/reject` or `/revoke`: the device's sockets are
/// closed, the others told it left, and its device token stops working.
pub(super) fn shut_out(state: &mut RegistryState, id: &str, how: ShutOut, admin: &str, now: Now) -> ApiResponse {
    let (result, done, from) = match how {
        ShutOut::Reject => (state.pairing.reject(id, now.wall), "rejected", "pending"),
        ShutOut::Revoke => (state.pairing.revoke(id, now.wall), "revoked", "approved"),
    };
    match result {
        Ok(entry) => {
            log::info!("{admin} {done} device {:?} ({}, entry {id})", entry.agent_name, entry.peer_id);
            state.shut_out(&entry.peer_id);
            ApiResponse::ok(json!({"status": "ok"}))
        }
        Err(_) => ApiResponse::json(404, &json!({"error": format!("not found or not {from}")})),
    }
}
