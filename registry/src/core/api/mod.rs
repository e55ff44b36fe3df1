//! The registry's HTTP API, sans-IO (docs/PROTOCOL.md, Registry HTTP API):
//! the shell turns each HTTP request into an [`ApiRequest`] and writes back
//! the [`ApiResponse`] that [`handle_http`] makes of it. This file is the
//! route table; credentials, CORS, metrics, pairing and the dashboard's
//! assets each have their own module.

pub mod auth;
mod client;
mod cors;
pub mod dashboard;
mod metrics;
mod pairing;
pub mod request;
pub mod response;

use self::dashboard::Asset;
use self::pairing::ShutOut;
use self::request::{ApiRequest, query_param};
use self::response::ApiResponse;
use crate::core::agents::{AgentInfo, Heartbeat};
use crate::core::ice;
use crate::core::now::Now;
use crate::core::state::RegistryState;
use crate::core::tasks::{TaskSubmission, TaskUpdate, UpdateError};
use crate::core::topology::Topology;
use serde_json::json;

/// One HTTP request other than a WebSocket upgrade: CORS, then the admin
/// credential where the route needs one, then the route.
pub(in crate::core) fn handle_http(state: &mut RegistryState, req: &ApiRequest, now: Now) -> ApiResponse {
    let segments: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    let admin_route = auth::is_admin_route(req.method, &segments);
    let allowed = state.config.cors_origins.as_deref();
    let has_credential = req.api_key.is_some() || req.device_token.is_some() || req.authorization.is_some();
    let mut resp = if req.method == "OPTIONS" {
        cors::preflight()
    } else if cors::refuses_write(req.method, allowed, req.origin, req.host, has_credential) {
        let error = "writes from another web origin need a credential or the origin listed in CORS_ORIGINS";
        ApiResponse::json(403, &json!({ "error": error }))
    } else {
        route(state, req, &segments, admin_route, now)
    };
    cors::allow_origin(&mut resp, state.config.cors_origins.as_deref(), req.origin, admin_route);
    resp
}

fn route(state: &mut RegistryState, req: &ApiRequest, seg: &[&str], admin_route: bool, now: Now) -> ApiResponse {
    let admin = if admin_route {
        match auth::require_admin(state, req, now) {
            Ok(admin) => admin,
            Err(resp) => return resp,
        }
    } else {
        String::new()
    };
    if state.config.rest_auth_strict
        && !open_when_strict(seg)
        && let Err(resp) = auth::require_actor(state, req, now)
    {
        return resp;
    }
    match (req.method, seg) {
        ("GET", [""]) => asset(Asset::Page),
        ("GET", ["dashboard.js"]) => asset(Asset::Script),
        ("GET", ["dashboard.css"]) => asset(Asset::Style),
        ("GET", ["healthz"]) => ApiResponse::ok(json!({"status": "ok"})),
        ("GET", ["metrics"]) => {
            let mut r = ApiResponse::text(200, metrics::render(state, now));
            r.content_type = "text/plain; version=0.0.4";
            r
        }
        ("GET", ["api", "config"]) => {
            let turn = state.config.turn.as_ref().map(|(u, s)| (u.as_str(), s.as_str()));
            let mut config = ice::ice_config(&state.config.stun_urls, turn, now.unix_secs());
            if let Some(peer) = auth::authorized_bearer(state, req, now)
                && let Some((relay, port)) = &state.relay
            {
                let host = req.host.map_or_else(|| relay.config().relay_ip.to_string(), ice::host_of);
                let (username, credential) = relay.credentials(&peer, now.unix_secs());
                ice::add_relay(&mut config, &host, *port, &username, &credential, relay.config().instance);
            }
            ApiResponse::ok(config)
        }
        ("POST", ["api", "token"]) => auth::issue_token(state, req, now),
        ("POST", ["api", "registry", "agents"]) => {
            let actor = match auth::require_actor(state, req, now) {
                Ok(actor) => actor,
                Err(resp) => return resp,
            };
            req.with_body(|info: AgentInfo| {
                let owner = state.agents.owner_of(&info.agent_id);
                if let Err(resp) = auth::may_act_for(&actor, owner, &info.agent_id, &info.sidecar_peer_id) {
                    return resp;
                }
                match state.agents.upsert_as(info, &actor.peer_id, now.wall) {
                    Ok(()) => ApiResponse::ok(json!({"status": "ok"})),
                    Err(e) => ApiResponse::json(413, &json!({"error": e.to_string()})),
                }
            })
        }
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
            let allowed = auth::require_actor(state, req, now)
                .and_then(|actor| auth::may_act_for(&actor, state.agents.owner_of(id), id, ""));
            if let Err(resp) = allowed {
                return resp;
            }
            if state.agents.remove(id) {
                ApiResponse::ok(json!({"status": "ok"}))
            } else {
                ApiResponse::not_found_body()
            }
        }
        ("POST", ["api", "hub", "tasks"]) => {
            req.with_body(|sub: TaskSubmission| match state.tasks.submit(sub, now.wall) {
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
            if let Err(resp) = may_update_task(state, req, id, now) {
                return resp;
            }
            req.with_body(|upd: TaskUpdate| match state.tasks.update(id, upd, now.wall) {
                Ok(()) => ApiResponse::ok(json!({"status": "ok"})),
                Err(UpdateError::NotFound) => ApiResponse::not_found_body(),
                Err(UpdateError::Final) => ApiResponse::ok(json!({"error": "task is final"})),
                Err(e @ UpdateError::NoRoom) => ApiResponse::json(503, &json!({"error": e.to_string()})),
            })
        }
        ("POST", ["api", "hub", "heartbeat"]) => {
            let actor = match auth::require_actor(state, req, now) {
                Ok(actor) => actor,
                Err(resp) => return resp,
            };
            req.with_body(|hb: Heartbeat| heartbeat(state, &actor, hb, now))
        }
        ("POST", ["api", "pairing", "generate-code"]) => pairing::generate_code(state, req, now),
        ("POST", ["api", "pairing", "pair"]) => pairing::pair(state, req, now),
        ("GET", ["api", "pairing", "pending"]) => ApiResponse::ok(json!(state.pairing.list(true))),
        ("GET", ["api", "pairing", "all"]) => ApiResponse::ok(json!(state.pairing.list(false))),
        ("POST", ["api", "pairing", id, "approve"]) => pairing::approve(state, id, &admin, now),
        ("POST", ["api", "pairing", id, "reject"]) => pairing::shut_out(state, id, ShutOut::Reject, &admin, now),
        ("POST", ["api", "pairing", id, "revoke"]) => pairing::shut_out(state, id, ShutOut::Revoke, &admin, now),
        ("GET", ["api", "hub", "network", "topology"]) => {
            let records = state.agents.list(now.wall);
            let topology = Topology::build(&records, state.hub.mesh_status()).with_paths(state.hub.mesh_paths());
            ApiResponse::ok(json!(topology))
        }
        _ => ApiResponse::json(404, &json!({"error": "no such route"})),
    }
}

/// `POST /api/hub/heartbeat` by `actor`: refreshes (or creates) the agent
/// and hands it the tasks it may claim.
fn heartbeat(state: &mut RegistryState, actor: &auth::Actor, hb: Heartbeat, now: Now) -> ApiResponse {
    let agent_id = hb.agent_id.clone();
    let claimed = hb.sidecar_peer_id.as_deref().unwrap_or_default();
    if let Err(resp) = auth::may_act_for(actor, state.agents.owner_of(&agent_id), &agent_id, claimed) {
        return resp;
    }
    if let Err(e) = state.agents.heartbeat_as(hb, &actor.peer_id, now.wall) {
        return ApiResponse::json(413, &json!({"error": e.to_string()}));
    }
    let skills = state.agents.skills_of(&agent_id);
    let pending = state.tasks.claim(&agent_id, &skills, now.wall);
    ApiResponse::ok(json!({"status": "ok", "pending_tasks": pending}))
}

/// Routes that stay open with `REST_AUTH=strict`: health, the dashboard's
/// page and assets (the page then asks for a key), and the routes that
/// check their own credential or hand one out.
fn open_when_strict(seg: &[&str]) -> bool {
    matches!(
        seg,
        [""] | ["dashboard.js"]
            | ["dashboard.css"]
            | ["healthz"]
            | ["api", "token"]
            | ["api", "pairing", "pair" | "generate-code"]
    )
}

/// `POST /api/hub/tasks/{id}`: an admin, or the credential of the agent
/// the task is assigned to (or, unassigned, addressed to). An unknown task
/// is left to the route, which answers "not found".
fn may_update_task(state: &mut RegistryState, req: &ApiRequest, id: &str, now: Now) -> Result<(), ApiResponse> {
    let actor = auth::require_actor(state, req, now)?;
    let Some(task) = state.tasks.get(id, now.wall) else { return Ok(()) };
    if actor.admin {
        return Ok(());
    }
    let agent = if task.assigned_agent_id.is_empty() { &task.target_agent_id } else { &task.assigned_agent_id };
    let refused = || {
        let why = format!("{} may not update a task for agent {agent:?}", actor.peer_id);
        Err(ApiResponse::json(403, &json!({ "error": why })))
    };
    match state.agents.owner_of(agent) {
        _ if agent.is_empty() => refused(),
        Some(owner) => auth::may_act_for(&actor, Some(owner), agent, ""),
        None if *agent == actor.peer_id => Ok(()),
        None => refused(),
    }
}

/// A dashboard asset, with the headers that guard it.
fn asset(asset: Asset) -> ApiResponse {
    ApiResponse {
        status: 200,
        content_type: asset.content_type(),
        body: asset.text().as_bytes().to_vec(),
        headers: dashboard::HEADERS.iter().map(|&(name, value)| (name, value.to_owned())).collect(),
    }
}
