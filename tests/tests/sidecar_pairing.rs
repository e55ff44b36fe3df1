//! A paired device, sidecar side (docs/PROTOCOL.md §3.6, §6.4): `chatixia-sidecar pair`
//! stores the device token, the daemon waits unseen while pending, joins
//! the mesh on approval without a restart, and is shut out on revocation.

use chatixia_e2e::sidecar::{Agent, Sidecar, mesh_message};
use chatixia_e2e::{Registry, Scratch, bin_command};
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

const ADMIN: (&str, &str) = ("X-API-Key", "key-admin");
/// How long a peer that must stay away is watched for. Not a
/// synchronisation: the events that must happen are awaited before.
const QUIET: Duration = Duration::from_secs(2);

fn generate_code(reg: &Registry) -> String {
    let reply = reg.request("POST", "/api/pairing/generate-code", &[ADMIN], None);
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.json()["code"].as_str().expect("code").to_owned()
}

/// Runs `chatixia-sidecar pair`; returns exit status, stdout, stderr.
fn pair(dir: &Path, reg: &Registry, code: &str, state: &Path) -> (i32, String, String) {
    let out = bin_command("chatixia-sidecar")
        .current_dir(dir)
        .args(["pair", "--registry", &reg.http("/"), "--code", code, "--name", "kitchen-pi", "--state-dir"])
        .arg(state)
        .env_remove("STATE_DIRECTORY")
        .env_remove("STATE_DIR")
        .output()
        .expect("run chatixia-sidecar pair");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// The value after `label` on its line of `text`.
fn field(text: &str, label: &str) -> String {
    let line = text.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("no {label} in {text}"));
    line[label.len()..].trim().to_owned()
}

/// Panics if `agent` reports `peer_connected` within [`QUIET`].
fn assert_no_peer_connected(agent: &Agent, who: &str) {
    let deadline = Instant::now() + QUIET;
    while let Some(event) = agent.next_within(deadline.saturating_duration_since(Instant::now())) {
        assert_ne!(event["type"], "peer_connected", "{who} saw a peer it must not see: {event}");
    }
}

#[test]
fn a_paired_sidecar_waits_unseen_joins_on_approval_and_is_shut_out_on_revocation() {
    let dir = Scratch::new("sc-pairing");
    let reg = Registry::start_default(dir.path());
    let state = dir.path().join("device-state");

    // Redeem a code with the CLI: it reports the entry, never the token.
    let code = generate_code(&reg);
    let (status, stdout, stderr) = pair(dir.path(), &reg, &code, &state);
    assert_eq!(status, 0, "stdout: {stdout}\nstderr: {stderr}");
    let id = field(&stdout, "entry id:");
    let peer = field(&stdout, "peer_id:");
    assert_eq!(field(&stdout, "status:"), "pending_approval");
    assert!(peer.starts_with("agent-"), "{stdout}");
    assert!(!stdout.contains("dt_") && !stderr.contains("dt_"), "the token was printed: {stdout}{stderr}");
    let token_file = state.join("device_token");
    let token = std::fs::read_to_string(&token_file).expect("stored token");
    assert!(token.trim().starts_with("dt_"), "{token:?}");
    assert_eq!(std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777, 0o600);

    // A used code is refused with the registry's words, and exit status 1.
    let (status, _, stderr) = pair(dir.path(), &reg, &code, &dir.path().join("other-state"));
    assert_eq!(status, 1, "{stderr}");
    assert!(stderr.contains("invalid or expired pairing code"), "{stderr}");
    assert!(!dir.path().join("other-state").exists(), "nothing stored on refusal");

    let alpha = Sidecar::start(&reg, dir.path(), "key-alpha", "alpha");
    let mut a = alpha.agent();
    alpha.proc.wait_for_line("connected to the registry as alpha");

    // No API key: the stored device token. Debug logs of the mesh show when
    // the registry has answered its `register`.
    let env = [("STATE_DIR", state.to_str().unwrap()), ("RUST_LOG", "info,chatixia_sidecar::core::mesh=debug")];
    let device = Sidecar::start_with(reg.port, dir.path(), "", &peer, &env);
    let mut d = device.agent();
    // Logged before the IPC socket is bound, so before the harness returns.
    assert!(device.proc.log().contains("using the device token stored in"), "{}", device.proc.log());
    device.proc.wait_for_line(&format!("connected to the registry as {peer}"));
    device.proc.wait_for_line("registry lists 0 peers");

    // Pending: registered, yet alpha's registry does not list it, and
    // nobody links.
    a.command("connect", json!({"target_peer_id": peer}));
    let e = a.next_error();
    assert_eq!((&e["code"], &e["target_peer"]), (&json!("unknown_peer"), &json!(peer)));
    assert_no_peer_connected(&a, "alpha");
    assert_no_peer_connected(&d, "the pending device");

    // Approval: the device's open socket gets a fresh peer_list and it
    // offers; nothing is restarted.
    let approved = reg.request("POST", &format!("/api/pairing/{id}/approve"), &[ADMIN], None);
    assert_eq!(approved.status, 200, "{approved:?}");
    a.wait_peer_event("peer_connected", &peer);
    d.wait_peer_event("peer_connected", "alpha");
    a.send(&peer, mesh_message("task_request", "r-1", json!("to the device")));
    assert_eq!(
        d.next_message(),
        json!({"from_peer": "alpha", "message": mesh_message("task_request", "r-1", json!("to the device"))})
    );
    d.send("alpha", mesh_message("task_result", "r-1", json!("from the device")));
    assert_eq!(
        a.next_message(),
        json!({"from_peer": peer, "message": mesh_message("task_result", "r-1", json!("from the device"))})
    );

    // Revocation: the registry closes the device's socket (4003) and tells
    // alpha, whose sidecar closes the link; the device's token is now
    // refused and it stays out.
    let revoked = reg.request("POST", &format!("/api/pairing/{id}/revoke"), &[ADMIN], None);
    assert_eq!(revoked.status, 200, "{revoked:?}");
    a.wait_peer_event("peer_disconnected", &peer);
    d.wait_peer_event("peer_disconnected", "alpha");
    device.proc.wait_for_line("4003");
    device.proc.wait_for_line("the registry refused our credential (401");
    assert_no_peer_connected(&d, "the revoked device");
    assert_no_peer_connected(&a, "alpha");
    assert_eq!(a.list_peers(), Vec::<String>::new());
}
