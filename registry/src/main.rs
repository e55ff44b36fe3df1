//! `chatixia-registry`: settings and logging, then the smol shell; or, as
//! `chatixia-registry admin …`, a client of a running registry.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod admin;

use chatixia_registry::core::config::RegistryConfig;
use chatixia_registry::core::hub::HubConfig;
use chatixia_registry::core::ratelimit::Rate;
use chatixia_registry::shell::{self, ShellConfig};
use chatixia_settings::{Setting, Settings};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

const SETTINGS: &[Setting] = &[
    Setting::value("PORT", Some("8080"), "HTTP and WebSocket port"),
    Setting::value("BIND", Some("0.0.0.0"), "address to listen on"),
    Setting::value("SIGNALING_SECRET", None, "HS256 secret (default: generated into STATE_DIR)"),
    Setting::value("API_KEYS_FILE", Some("api_keys.json"), "API keys file; SIGHUP reloads it"),
    Setting::value("STATE_DIR", None, "state directory [default: $STATE_DIRECTORY or ./chatixia-state]"),
    Setting::value("STUN_URLS", Some("stun:stun.l.google.com:19302"), "comma-separated STUN URLs for /api/config"),
    Setting::value("TURN_URL", None, "TURN server for /api/config"),
    Setting::value("TURN_SECRET", None, "shared secret for TURN REST credentials"),
    Setting::value("CORS_ORIGINS", Some("*"), "comma-separated allowed origins; * = any (not for admin routes)"),
    Setting::value("TRUSTED_PROXIES", None, "comma-separated proxy addresses whose X-Forwarded-For is believed"),
    Setting::value("MAX_CONNECTIONS", Some("4096"), "open TCP connections at most"),
    Setting::value("WS_RATE_LIMIT", Some("200"), "signaling frames per second per connection (burst 2x; 0 = off)"),
    Setting::value("WS_SEND_QUEUE", Some("256"), "frames queued towards one client before it is closed as too slow"),
    Setting::value("RUST_LOG", Some("info"), "log filter (error, warn, info, debug, trace; per module)"),
    Setting::switch("CHATIXIA_DEV", "accept the original's development key ak_dev_001").with_flag("--dev"),
];

const ABOUT: &str = "rendezvous server of chatixia-mesh edge: tokens, pairing, signaling relay, REST API \
                     (`chatixia-registry admin --help`: manage a running one)";

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("admin") {
        return admin::main();
    }
    let settings = match chatixia_settings::daemon_settings("chatixia-registry", ABOUT, SETTINGS) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match start(&settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            log::error!("{msg}");
            eprintln!("chatixia-registry: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn list(settings: &Settings, name: &str) -> Vec<String> {
    settings
        .get(name)
        .map(|v| v.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
        .unwrap_or_default()
}

fn start(settings: &Settings) -> Result<(), String> {
    let port: u16 = settings.parse("PORT")?.unwrap_or(8080);
    let bind: IpAddr = settings.parse("BIND")?.unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let cors = list(settings, "CORS_ORIGINS");
    let trusted_proxies = list(settings, "TRUSTED_PROXIES")
        .iter()
        .map(|p| p.parse::<IpAddr>().map_err(|e| format!("TRUSTED_PROXIES: {p:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let ws_rate: f64 = settings.parse("WS_RATE_LIMIT")?.unwrap_or(200.0);
    let turn = match (settings.get("TURN_URL"), settings.get("TURN_SECRET")) {
        (Some(url), Some(secret)) => Some((url.to_owned(), secret.to_owned())),
        _ => None,
    };
    let config = RegistryConfig {
        hub: HubConfig { frame_rate: Rate::new(ws_rate, ws_rate * 2.0), ..HubConfig::default() },
        stun_urls: list(settings, "STUN_URLS"),
        turn,
        cors_origins: (!cors.iter().any(|o| o == "*")).then_some(cors),
        trusted_proxies,
        ..RegistryConfig::default()
    };
    shell::run(
        config,
        ShellConfig {
            bind: SocketAddr::new(bind, port),
            keys_file: PathBuf::from(settings.get("API_KEYS_FILE").unwrap_or("api_keys.json")),
            dev: settings.is_on("CHATIXIA_DEV"),
            max_connections: settings.parse("MAX_CONNECTIONS")?.unwrap_or(4096),
            ws_send_queue: settings.parse::<usize>("WS_SEND_QUEUE")?.unwrap_or(256).max(1),
            ws_hard_cap: 2 * 1024 * 1024,
            state_dir: chatixia_settings::systemd::state_dir(settings.get("STATE_DIR")),
            signaling_secret: settings.get("SIGNALING_SECRET").map(str::to_owned),
        },
    )
}
