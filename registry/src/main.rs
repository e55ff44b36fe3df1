//! `chatixia-registry`: settings, logging and state, then the smol shell;
//! or, as `chatixia-registry admin …`, a client of a running registry.

mod admin;

use chatixia_registry::core::config::RegistryConfig;
use chatixia_registry::core::hub::HubConfig;
use chatixia_registry::core::now::Now;
use chatixia_registry::core::persist::{PAIRING_FILE, TASKS_FILE};
use chatixia_registry::core::ratelimit::Rate;
use chatixia_registry::core::registry::{Registry, SavedState};
use chatixia_registry::core::token::TokenIssuer;
use chatixia_registry::shell::StateDir;
use chatixia_registry::shell::{self, ShellConfig};
use chatixia_settings::{Setting, Settings};
use std::net::{IpAddr, SocketAddr};
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
    let state_dir = settings
        .get("STATE_DIR")
        .map(str::to_owned)
        .or_else(|| std::env::var("STATE_DIRECTORY").ok())
        .unwrap_or_else(|| "chatixia-state".into());
    let state = StateDir::open(&state_dir)?;
    let secret = match settings.get("SIGNALING_SECRET") {
        Some(s) => s.as_bytes().to_vec(),
        None => state.load_or_create_secret()?,
    };
    let tokens = TokenIssuer::new(&secret)?;
    let dev = settings.is_on("CHATIXIA_DEV");
    let keys_file = std::path::PathBuf::from(settings.get("API_KEYS_FILE").unwrap_or("api_keys.json"));
    let keys = shell::load_keys(&keys_file, dev)?;
    log::info!("loaded {} API keys from {}", keys.len(), keys_file.display());

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
    let mut seed = [0u8; 8];
    getrandom::fill(&mut seed).map_err(|e| e.to_string())?;
    let rng = Box::new(|buf: &mut [u8]| getrandom::fill(buf).map_err(|e| e.to_string()));
    let now = shell::now();
    let mut registry = Registry::new(config, keys, tokens, u64::from_le_bytes(seed), rng, now);
    load_state(&state, &mut registry, now)?;
    shell::run(
        registry,
        ShellConfig {
            bind: SocketAddr::new(bind, port),
            keys_file,
            dev,
            max_connections: settings.parse("MAX_CONNECTIONS")?.unwrap_or(4096),
            ws_send_queue: settings.parse::<usize>("WS_SEND_QUEUE")?.unwrap_or(256).max(1),
            ws_hard_cap: 2 * 1024 * 1024,
            state_dir: state,
        },
    )
}

/// Reads back what earlier runs saved. A file that cannot be read or
/// understood stops the start, and is left as it is.
fn load_state(state: &StateDir, registry: &mut Registry, now: Now) -> Result<(), String> {
    let saved = SavedState { pairing: state.read(PAIRING_FILE)?, tasks: state.read(TASKS_FILE)? };
    let restored = registry.restore(saved, now).map_err(|e| {
        format!(
            "{}: {}. Refusing to start; the file was left as it is. Repair it, or move it away to start \
             without the {} it holds",
            state.file(e.file).display(),
            e.reason,
            e.holds
        )
    })?;
    if let Some(entries) = restored.pairing_entries {
        log::info!("restored {entries} pairing entries from {}", state.file(PAIRING_FILE).display());
    }
    if let Some(tasks) = restored.tasks {
        log::info!("restored {tasks} tasks from {}", state.file(TASKS_FILE).display());
    }
    if restored.tasks_dropped > 0 {
        let dropped = restored.tasks_dropped;
        log::warn!("dropped the {dropped} newest unfinished tasks: more than the limit of open tasks");
    }
    Ok(())
}
