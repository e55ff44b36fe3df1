//! `chatixia-registry`: settings and logging, then the smol shell; or, as
//! `chatixia-registry admin …`, a client of a running registry.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod admin;

use chatixia_registry::core::config::RegistryConfig;
use chatixia_registry::core::hub::HubConfig;
use chatixia_registry::core::ratelimit::Rate;
use chatixia_registry::core::tasks::Limits as TaskLimits;
use chatixia_registry::shell::{self, RelaySettings, ShellConfig};
use chatixia_settings::{Setting, Settings};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const SETTINGS: &[Setting] = &[
    Setting::value("PORT", Some("8080"), "HTTP and WebSocket port"),
    Setting::value("BIND", Some("0.0.0.0"), "address to listen on"),
    Setting::value("SIGNALING_SECRET", None, "HS256 secret (default: generated into STATE_DIR)"),
    Setting::value("API_KEYS_FILE", Some("api_keys.json"), "API keys file; SIGHUP reloads it"),
    Setting::value("STATE_DIR", None, "state directory [default: $STATE_DIRECTORY or ./chatixia-state]"),
    Setting::value("STUN_URLS", Some("stun:stun.l.google.com:19302"), "comma-separated STUN URLs for /api/config"),
    Setting::value("TURN_URL", None, "TURN server for /api/config"),
    Setting::value("TURN_SECRET", None, "shared secret for TURN REST credentials"),
    Setting::value(
        "RELAY_PORT",
        Some("3478"),
        "UDP and TCP port of the registry's own TURN relay (0 = off; the default is skipped with a warning when taken)",
    ),
    Setting::value(
        "RELAY_ADDRESS",
        None,
        "address the relay gives relayed addresses on [default: BIND, or this host's outward address]",
    ),
    Setting::value("RELAY_PORTS", Some("49152-65535"), "range relayed ports are numbered from"),
    Setting::value(
        "RELAY_BANDWIDTH",
        Some("2000000"),
        "relayed bytes per second per allocation, bursts of 2 s (0 = no limit)",
    ),
    Setting::value(
        "RELAY_TOTAL_BANDWIDTH",
        Some("20000000"),
        "relayed bytes per second over all allocations (0 = no limit)",
    ),
    Setting::value("CORS_ORIGINS", Some("*"), "comma-separated allowed origins; * = any (not for admin routes)"),
    Setting::value("TRUSTED_PROXIES", None, "comma-separated proxy addresses whose X-Forwarded-For is believed"),
    Setting::value("MAX_CONNECTIONS", Some("4096"), "open TCP connections at most"),
    Setting::value("HTTP_TIMEOUT", Some("10"), "seconds a client has to send a request's headers, and again its body"),
    Setting::value(
        "TASKS_MAX_BYTES",
        Some("8388608"),
        "bytes all hub tasks may take together (finished ones make room first)",
    ),
    Setting::value(
        "REST_AUTH",
        Some("writes"),
        "writes: agent/task writes need a credential; strict: every route but health and the page",
    ),
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
        rest_auth_strict: match settings.get("REST_AUTH").unwrap_or("writes") {
            "writes" => false,
            "strict" => true,
            other => return Err(format!("REST_AUTH: {other:?} is neither writes nor strict")),
        },
        task_limits: TaskLimits {
            max_bytes: settings.parse("TASKS_MAX_BYTES")?.unwrap_or(TaskLimits::default().max_bytes),
            ..TaskLimits::default()
        },
        ..RegistryConfig::default()
    };
    shell::run(
        config,
        ShellConfig {
            bind: SocketAddr::new(bind, port),
            keys_file: PathBuf::from(settings.get("API_KEYS_FILE").unwrap_or("api_keys.json")),
            dev: settings.is_on("CHATIXIA_DEV"),
            max_connections: settings.parse("MAX_CONNECTIONS")?.unwrap_or(4096),
            http_timeout: Duration::from_secs_f64(
                settings.parse::<f64>("HTTP_TIMEOUT")?.unwrap_or(10.0).clamp(0.1, 3600.0),
            ),
            ws_send_queue: settings.parse::<usize>("WS_SEND_QUEUE")?.unwrap_or(256).max(1),
            ws_hard_cap: 2 * 1024 * 1024,
            state_dir: chatixia_settings::systemd::state_dir(settings.get("STATE_DIR")),
            signaling_secret: settings.get("SIGNALING_SECRET").map(str::to_owned),
            relay: relay_settings(settings)?,
        },
    )
}

/// `RELAY_PORT` (3478 by default, 0 turns the relay off), `RELAY_ADDRESS`
/// and `RELAY_PORTS` (`low-high`).
fn relay_settings(settings: &Settings) -> Result<Option<RelaySettings>, String> {
    let port: u16 = settings.parse("RELAY_PORT")?.unwrap_or(3478);
    if port == 0 {
        return Ok(None);
    }
    let explicit = std::env::var_os("RELAY_PORT").is_some() || std::env::args().any(|a| a.starts_with("--relay-port"));
    let address: Option<IpAddr> = settings.parse("RELAY_ADDRESS")?;
    let range = settings.get("RELAY_PORTS").unwrap_or("49152-65535");
    let ports = range
        .split_once('-')
        .and_then(|(low, high)| Some((low.trim().parse::<u16>().ok()?, high.trim().parse::<u16>().ok()?)))
        .filter(|(low, high)| low <= high && *low > 0)
        .ok_or_else(|| format!("RELAY_PORTS: {range:?} is not a range like 49152-65535"))?;
    let rate = |name| -> Result<Rate, String> {
        // 0 is no limit (a Rate of 0 per second is unlimited).
        let per_second: u32 = settings.parse(name)?.unwrap_or(0);
        Ok(Rate::new(f64::from(per_second), 2.0 * f64::from(per_second)))
    };
    let (allocation_rate, total_rate) = (rate("RELAY_BANDWIDTH")?, rate("RELAY_TOTAL_BANDWIDTH")?);
    Ok(Some(RelaySettings { port, address, ports, explicit, allocation_rate, total_rate }))
}
