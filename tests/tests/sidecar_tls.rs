//! Sidecars reaching the registry through TLS (`https://` token exchange,
//! `wss://` signaling, `pair` against an `https://` registry), with the
//! registry behind a TLS-terminating proxy whose certificate is signed by a
//! test CA (tests/fixtures/tls). The CA is trusted only through
//! `REGISTRY_CA_FILE`; `SSL_CERT_FILE` points at an empty file so the
//! machine's own trust store plays no part either way.

use chatixia_e2e::sidecar::{Sidecar, mesh_message};
use chatixia_e2e::tls_proxy::{TlsProxy, ca_file};
use chatixia_e2e::{Registry, Scratch, bin_command};
use serde_json::json;
use std::path::Path;

/// An empty trust store for `SSL_CERT_FILE`.
fn empty_store(dir: &Path) -> String {
    let path = dir.join("no-system-roots.pem");
    std::fs::write(&path, "").unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn two_sidecars_mesh_through_an_https_and_wss_registry() {
    let dir = Scratch::new("sc-tls");
    let reg = Registry::start_default(dir.path());
    let proxy = TlsProxy::start(reg.port);
    let store = empty_store(dir.path());
    let ca = ca_file();
    let ca = ca.to_str().unwrap();

    // alpha names the proxy by IP address (the certificate's IP SAN) ...
    let (token_url, signaling_url) = (proxy.https("/api/token"), proxy.wss("/ws"));
    let env = [
        ("TOKEN_URL", token_url.as_str()),
        ("SIGNALING_URL", signaling_url.as_str()),
        ("REGISTRY_CA_FILE", ca),
        ("SSL_CERT_FILE", store.as_str()),
    ];
    let alpha = Sidecar::start_with(reg.port, dir.path(), "key-alpha", "alpha", &env);
    let mut a = alpha.agent();
    alpha.proc.wait_for_line("connected to the registry as alpha");

    // ... bravo by name (its DNS SAN), and finds the CA through
    // SSL_CERT_FILE alone: the system-store path.
    let (token_url, signaling_url) = (
        format!("https://localhost:{}/api/token", proxy.port),
        format!("wss://localhost:{}/ws?client=bravo", proxy.port),
    );
    let env = [("TOKEN_URL", token_url.as_str()), ("SIGNALING_URL", signaling_url.as_str()), ("SSL_CERT_FILE", ca)];
    let bravo = Sidecar::start_with(reg.port, dir.path(), "key-bravo", "bravo", &env);
    let mut b = bravo.agent();
    bravo.proc.wait_for_line("connected to the registry as bravo");

    a.wait_peer_event("peer_connected", "bravo");
    b.wait_peer_event("peer_connected", "alpha");
    a.send("bravo", mesh_message("task_request", "r-1", json!({"over": "tls signaling"})));
    assert_eq!(
        b.next_message(),
        json!({"from_peer": "alpha", "message": mesh_message("task_request", "r-1", json!({"over": "tls signaling"}))})
    );
    b.send("alpha", mesh_message("task_result", "r-1", json!("done")));
    assert_eq!(a.next_message()["message"]["payload"], "done");
    assert_eq!(a.status()["registry"], "connected");
    for (name, proc) in [("alpha", &alpha.proc), ("bravo", &bravo.proc)] {
        let log = proc.log();
        let failed = log.contains("token exchange with") || log.contains("signaling connection to");
        assert!(!failed, "{name} had a failed registry connection:\n{log}");
    }
    // TLS adds no thread (docs/ARCHITECTURE.md, single-threaded): one thread once the short-lived
    // token-request thread is gone. Not under an emulator, whose own
    // threads would show in /proc.
    if std::env::var("CHATIXIA_BIN_RUNNER").unwrap_or_default().is_empty() {
        for proc in [&alpha.proc, &bravo.proc] {
            assert_eq!(settled_thread_count(proc.child.id()), 1, "{}", proc.log());
        }
    }
}

/// The thread count of `pid`, once the short-lived request threads have
/// ended (they end within a request timeout); the harness timeout bounds
/// the wait.
fn settled_thread_count(pid: u32) -> usize {
    let count = || std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/<pid>/task").count();
    let deadline = std::time::Instant::now() + chatixia_e2e::TIMEOUT;
    while count() > 1 && std::time::Instant::now() < deadline {
        std::thread::yield_now();
    }
    count()
}

#[test]
fn without_the_ca_the_registry_certificate_is_refused_on_both_paths() {
    let dir = Scratch::new("sc-tls-untrusted");
    let reg = Registry::start_default(dir.path());
    let proxy = TlsProxy::start(reg.port);
    let store = empty_store(dir.path());

    // The token exchange (ureq) over https:// refuses the certificate.
    let (token_url, signaling_url) = (proxy.https("/api/token"), proxy.wss("/ws"));
    let env = [
        ("TOKEN_URL", token_url.as_str()),
        ("SIGNALING_URL", signaling_url.as_str()),
        ("SSL_CERT_FILE", store.as_str()),
    ];
    let alpha = Sidecar::start_with(reg.port, dir.path(), "key-alpha", "alpha", &env);
    let line = alpha.proc.wait_for_line("token exchange with");
    assert!(line.contains(&token_url) && line.contains("invalid peer certificate: UnknownIssuer"), "{line}");
    assert!(proxy.next_failure().contains("TLS handshake failed"), "the proxy saw the client abort");

    // The WebSocket (futures-rustls) over wss:// refuses it too, after a
    // token exchange in plain http that works.
    let plain_token = format!("http://127.0.0.1:{}/api/token", reg.port);
    let env = [
        ("TOKEN_URL", plain_token.as_str()),
        ("SIGNALING_URL", signaling_url.as_str()),
        ("SSL_CERT_FILE", store.as_str()),
    ];
    let bravo = Sidecar::start_with(reg.port, dir.path(), "key-bravo", "bravo", &env);
    let line = bravo.proc.wait_for_line("signaling connection to");
    assert!(line.contains(&signaling_url) && line.contains("invalid peer certificate: UnknownIssuer"), "{line}");

    for (name, proc) in [("alpha", &alpha.proc), ("bravo", &bravo.proc)] {
        let log = proc.log();
        assert!(!log.contains("connected to the registry"), "{name} connected to an untrusted registry:\n{log}");
    }
    // And neither reports a registry connection to its agent.
    for sidecar in [&alpha, &bravo] {
        assert_ne!(sidecar.agent().status()["registry"], "connected");
    }
}

/// Runs `chatixia-sidecar pair` against `registry`; returns exit status,
/// stdout, stderr.
fn pair(dir: &Path, registry: &str, code: &str, state: &Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let out = bin_command("chatixia-sidecar")
        .current_dir(dir)
        .args(["pair", "--registry", registry, "--code", code, "--name", "tls-pi", "--state-dir"])
        .arg(state)
        .env_remove("STATE_DIRECTORY")
        .env_remove("STATE_DIR")
        .env_remove("REGISTRY_CA_FILE")
        .env_remove("SSL_CERT_DIR")
        .envs(env.iter().copied())
        .output()
        .expect("run chatixia-sidecar pair");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[test]
fn pair_redeems_a_code_at_an_https_registry_given_the_ca() {
    let dir = Scratch::new("sc-tls-pair");
    let reg = Registry::start_default(dir.path());
    let proxy = TlsProxy::start(reg.port);
    let store = empty_store(dir.path());
    let reply = reg.request("POST", "/api/pairing/generate-code", &[("X-API-Key", "key-admin")], None);
    assert_eq!(reply.status, 200, "{reply:?}");
    let code = reply.json()["code"].as_str().expect("code").to_owned();
    let state = dir.path().join("device-state");
    let registry = proxy.https("/");

    // Untrusted: refused before anything reaches the registry.
    let (status, stdout, stderr) = pair(dir.path(), &registry, &code, &state, &[("SSL_CERT_FILE", &store)]);
    assert_eq!(status, 1, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stderr.contains("cannot reach the registry") && stderr.contains("invalid peer certificate"), "{stderr}");
    assert!(!state.exists(), "nothing stored on failure");

    // A bad CA file is a usage error naming the file.
    let missing = dir.path().join("missing-ca.pem");
    let (status, _, stderr) =
        pair(dir.path(), &registry, &code, &state, &[("REGISTRY_CA_FILE", missing.to_str().unwrap())]);
    assert_eq!(status, 2, "{stderr}");
    assert!(stderr.contains("REGISTRY_CA_FILE") && stderr.contains(missing.to_str().unwrap()), "{stderr}");

    // Trusted: the same code (still unused) is redeemed.
    let ca = ca_file();
    let env = [("SSL_CERT_FILE", store.as_str()), ("REGISTRY_CA_FILE", ca.to_str().unwrap())];
    let (status, stdout, stderr) = pair(dir.path(), &registry, &code, &state, &env);
    assert_eq!(status, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("status:   pending_approval"), "{stdout}");
    let token = std::fs::read_to_string(state.join("device_token")).expect("stored token");
    assert!(token.trim().starts_with("dt_"), "{token:?}");
}
