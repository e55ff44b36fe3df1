//! `chatixia-sidecar`: settings and logging, then the smol shell.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use chatixia_protocol::mesh::{DEFAULT_MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES_CEILING};
use chatixia_settings::systemd::{directory, state_dir};
use chatixia_settings::text::printable;
use chatixia_settings::{ParseError, Setting, Settings};
use chatixia_sidecar::core::ipc::IpcConfig;
use chatixia_sidecar::core::mesh::MeshConfig;
use chatixia_sidecar::core::outbox::OutboxLimits;
use chatixia_sidecar::core::peer::LinkConfig;
use chatixia_sidecar::core::turn::TurnServer;
use chatixia_sidecar::core::urls;
use chatixia_sidecar::shell::interfaces::local_host_addresses;
use chatixia_sidecar::shell::signaling::{Credential, SignalingConfig, ice_config_url};
use chatixia_sidecar::shell::{self, ShellConfig, TurnSource, pair, tls};

const SETTINGS: &[Setting] = &[
    Setting::value("API_KEY", None, "API key exchanged for a signaling token"),
    Setting::value("DEVICE_TOKEN", None, "device token of a paired device (used when API_KEY is unset)"),
    Setting::value(
        "TOKEN_URL",
        Some("http://localhost:8080/api/token"),
        "registry token endpoint (http:// or https://)",
    ),
    Setting::value("SIGNALING_URL", Some("ws://localhost:8080/ws"), "registry WebSocket (ws:// or wss://)"),
    Setting::value(
        "REGISTRY_CA_FILE",
        None,
        "PEM file of CA certificates trusted for https:// and wss:// registries, in addition to the system \
         store (SSL_CERT_FILE / SSL_CERT_DIR)",
    ),
    Setting::value(
        "IPC_SOCKET",
        None,
        "agent socket [default: $RUNTIME_DIRECTORY/sidecar.sock or /tmp/chatixia-sidecar.sock]",
    ),
    Setting::value(
        "STUN_URLS",
        Some("stun:stun.l.google.com:19302"),
        "comma-separated stun: URLs for server-reflexive candidates (empty: none)",
    ),
    Setting::value(
        "TURN_URL",
        None,
        "comma-separated turn:host[:port][?transport=udp|tcp] / turns:host[:port] URLs [default: the registry's]",
    ),
    Setting::value("TURN_SECRET", None, "coturn REST secret: credentials for TURN_URL are made from it"),
    Setting::value("TURN_USERNAME", None, "TURN username (with TURN_PASSWORD)"),
    Setting::value("TURN_PASSWORD", None, "TURN password"),
    Setting::value("ICE_TRANSPORT_POLICY", Some("all"), "all, or relay (relayed candidates only)"),
    Setting::value("ICE_HOST_ADDRESSES", None, "comma-separated local addresses for host candidates [default: all]"),
    Setting::switch("ICE_ALLOW_LOOPBACK", "offer loopback host candidates (tests on one machine)"),
    Setting::value("STATE_DIR", None, "state directory [default: $STATE_DIRECTORY or ./chatixia-state]"),
    Setting::value("MAX_MESSAGE_BYTES", Some("65000"), "largest DataChannel message (at most 262144)"),
    Setting::value(
        "OUTBOX_BYTES",
        Some("1048576"),
        "bytes kept per peer while its link is re-forming (then backpressure errors)",
    ),
    Setting::value("OUTBOX_TTL", Some("30"), "seconds a message may wait for a re-forming link (then expired)"),
    Setting::value("IPC_MAX_AGENTS", Some("8"), "agents attached to the IPC socket at once; more are refused"),
    Setting::value("RUST_LOG", Some("info"), "log filter (error, warn, info, debug, trace; per module)"),
    Setting::switch("CHATIXIA_DEV", "use the development key ak_dev_001 when no credential is set").with_flag("--dev"),
];

const PAIR_SETTINGS: &[Setting] = &[
    Setting::value("REGISTRY_URL", None, "the registry, e.g. http://gateway:8080 or https://gateway")
        .with_flag("--registry"),
    Setting::value("PAIRING_CODE", None, "the 6-digit code an admin generated").with_flag("--code"),
    Setting::value("DEVICE_NAME", None, "a name for this device, shown to the admin").with_flag("--name"),
    Setting::value("STATE_DIR", None, "where the device token goes [default: $STATE_DIRECTORY or ./chatixia-state]"),
    Setting::value(
        "REGISTRY_CA_FILE",
        None,
        "PEM file of CA certificates trusted for an https:// registry, in addition to the system store",
    ),
];

const PAIR_ABOUT: &str = "redeem a pairing code and store the device token for the daemon (exit 0 paired, \
                          1 refused or unreachable, 2 bad usage)";

const ABOUT: &str = "per-agent daemon of chatixia-mesh edge: WebRTC DataChannel mesh bridged to a Unix socket";

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("pair") {
        return pair_main();
    }
    let settings = match chatixia_settings::daemon_settings("chatixia-sidecar", ABOUT, SETTINGS) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let config = match configure(&settings) {
        Ok(c) => c,
        Err(msg) => {
            log::error!("{msg}");
            eprintln!("chatixia-sidecar: {msg}");
            return ExitCode::from(2);
        }
    };
    match shell::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            log::error!("{msg}");
            eprintln!("chatixia-sidecar: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// `chatixia-sidecar pair --registry URL --code NNNNNN --name NAME`
/// (docs/PROTOCOL.md §3.6). Prints what the admin needs to approve, never the token.
fn pair_main() -> ExitCode {
    let dotenv = std::fs::read_to_string(".env").map(|t| chatixia_settings::parse_dotenv(&t)).unwrap_or_default();
    let args = std::env::args().skip(2);
    let program = "chatixia-sidecar pair";
    let settings = match chatixia_settings::resolve(
        program,
        PAIR_ABOUT,
        PAIR_SETTINGS,
        args,
        |k| std::env::var(k).ok(),
        &dotenv,
    ) {
        Ok(s) => s,
        Err(ParseError::Help(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(ParseError::Invalid(msg)) => {
            eprintln!("{program}: {msg}");
            return ExitCode::from(2);
        }
    };
    let (Some(registry), Some(code), Some(name)) =
        (settings.get("REGISTRY_URL"), settings.get("PAIRING_CODE"), settings.get("DEVICE_NAME"))
    else {
        eprintln!("{program}: --registry, --code and --name are required (see --help)");
        return ExitCode::from(2);
    };
    if let Some(extra) = settings.positional.first() {
        eprintln!("{program}: unexpected argument {extra:?} (see --help)");
        return ExitCode::from(2);
    }
    let tls = match tls::for_urls(&[registry], settings.get("REGISTRY_CA_FILE").map(Path::new)) {
        Ok(tls) => tls,
        Err(msg) => {
            eprintln!("{program}: {msg}");
            return ExitCode::from(2);
        }
    };
    let paired = match pair::redeem(registry, code, name, tls.as_ref()) {
        Ok(p) => p,
        Err(msg) => {
            eprintln!("{program}: {msg}");
            return ExitCode::FAILURE;
        }
    };
    let dir = state_dir(settings.get("STATE_DIR"));
    let path = match pair::store_token(&dir, &paired.device_token) {
        Ok(path) => path,
        Err(e) => {
            // The registry will not hand the token out again: the entry is
            // useless now, and the admin should reject it.
            eprintln!(
                "{program}: paired as entry {}, but storing the device token in {} failed: {e}; ask the admin to \
                 reject entry {} and pair again",
                printable(&paired.id),
                dir.display(),
                printable(&paired.id)
            );
            return ExitCode::FAILURE;
        }
    };
    println!("entry id: {}", printable(&paired.id));
    println!("peer_id:  {}", printable(&paired.peer_id));
    println!("status:   {}", printable(&paired.status));
    println!("device token stored in {} (mode 0600)", path.display());
    println!(
        "Start the sidecar with the same state directory; it joins the mesh once an admin runs \
         `chatixia-registry admin approve {}`.",
        printable(&paired.id)
    );
    ExitCode::SUCCESS
}

fn list(settings: &Settings, name: &str) -> Vec<String> {
    settings
        .get(name)
        .map(|v| v.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
        .unwrap_or_default()
}

fn configure(settings: &Settings) -> Result<ShellConfig, String> {
    if let Some(extra) = settings.positional.first() {
        return Err(format!("unexpected argument {extra:?} (see --help)"));
    }
    let state_dir = state_dir(settings.get("STATE_DIR"));
    let credential = credential(settings, &state_dir)?;
    let token_url = settings.get("TOKEN_URL").unwrap_or("http://localhost:8080/api/token");
    let signaling_url = settings.get("SIGNALING_URL").unwrap_or("ws://localhost:8080/ws");
    // Said once here: the retry loop would otherwise repeat it forever.
    urls::check_url(token_url).map_err(|e| format!("TOKEN_URL: {e}"))?;
    urls::ws_endpoint(signaling_url).map_err(|e| format!("SIGNALING_URL: {e}"))?;
    let tls = tls::for_urls(&[token_url, signaling_url], settings.get("REGISTRY_CA_FILE").map(Path::new))?;

    let ipc_socket = match settings.get("IPC_SOCKET") {
        Some(p) => PathBuf::from(p),
        None => directory("RUNTIME_DIRECTORY")
            .map_or_else(|| PathBuf::from("/tmp/chatixia-sidecar.sock"), |dir| dir.join("sidecar.sock")),
    };

    let max_message_bytes: usize = settings.parse("MAX_MESSAGE_BYTES")?.unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
    if max_message_bytes == 0 || max_message_bytes > MAX_MESSAGE_BYTES_CEILING {
        return Err(format!("MAX_MESSAGE_BYTES must be between 1 and {MAX_MESSAGE_BYTES_CEILING}"));
    }
    if max_message_bytes > 65_535 {
        log::warn!(
            "MAX_MESSAGE_BYTES={max_message_bytes}: messages over 65535 bytes reach only peers that advertise a \
             larger a=max-message-size, and the original agent reads lines of at most 64 KiB"
        );
    }

    let allow_loopback = settings.is_on("ICE_ALLOW_LOOPBACK");
    let host_addresses = match settings.get("ICE_HOST_ADDRESSES") {
        Some(_) => {
            let mut addrs = Vec::new();
            for a in list(settings, "ICE_HOST_ADDRESSES") {
                let ip: IpAddr = a.parse().map_err(|e| format!("ICE_HOST_ADDRESSES: {a:?}: {e}"))?;
                if ip.is_loopback() && !allow_loopback {
                    log::warn!("ICE_HOST_ADDRESSES: skipping loopback {ip} (set ICE_ALLOW_LOOPBACK=1 to use it)");
                } else if !addrs.contains(&ip) {
                    addrs.push(ip);
                }
            }
            addrs
        }
        None => local_host_addresses(allow_loopback),
    };

    // Empty disables; bad entries are logged and skipped.
    let stun_servers = urls::parse_stun_urls(settings.get("STUN_URLS").unwrap_or(""));
    if stun_servers.is_empty() {
        log::info!("no STUN servers: links use host and peer-reflexive candidates only");
    } else {
        log::info!(
            "STUN servers for server-reflexive candidates: {}",
            stun_servers.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    let relay_only = match settings.get("ICE_TRANSPORT_POLICY").map(str::to_ascii_lowercase).as_deref() {
        None | Some("all") => false,
        Some("relay") => true,
        Some(other) => return Err(format!("ICE_TRANSPORT_POLICY: {other:?} is neither all nor relay")),
    };
    let turn = turn_source(settings)?;
    match &turn {
        TurnSource::Registry => log::info!("TURN servers: those the registry offers (GET /api/config)"),
        TurnSource::Static(servers) => {
            log::info!("TURN servers: {}", servers.iter().map(|s| s.url.to_string()).collect::<Vec<_>>().join(", "))
        }
        TurnSource::Secret { urls, .. } => log::info!(
            "TURN servers, with credentials from TURN_SECRET: {}",
            urls.iter().map(|u| u.to_string()).collect::<Vec<_>>().join(", ")
        ),
    }
    if relay_only {
        log::info!("ICE_TRANSPORT_POLICY=relay: links use relayed candidates only");
    }
    let ice_config_url = matches!(turn, TurnSource::Registry).then(|| ice_config_url(token_url));

    let outbox_bytes: usize = settings.parse("OUTBOX_BYTES")?.unwrap_or(1 << 20);
    let outbox_ttl: f64 = settings.parse("OUTBOX_TTL")?.unwrap_or(30.0);
    if !(0.0..=86_400.0).contains(&outbox_ttl) {
        return Err("OUTBOX_TTL must be between 0 and 86400 seconds".into());
    }
    let outbox = OutboxLimits { bytes: outbox_bytes, ttl: Duration::from_secs_f64(outbox_ttl) };

    let link = LinkConfig { max_message_bytes, ..LinkConfig::default() };
    Ok(ShellConfig {
        ipc_socket,
        host_addresses,
        stun_servers,
        mesh: MeshConfig { link, relay_only, outbox, ..MeshConfig::default() },
        ipc: IpcConfig {
            max_agents: settings.parse::<usize>("IPC_MAX_AGENTS")?.unwrap_or(IpcConfig::default().max_agents).max(1),
            ..IpcConfig::default()
        },
        signaling: SignalingConfig {
            token_url: token_url.to_owned(),
            signaling_url: signaling_url.to_owned(),
            credential,
            tls,
            ice_config_url,
        },
        turn,
        ca_file: settings.get("REGISTRY_CA_FILE").map(PathBuf::from),
    })
}

/// `TURN_URL` with `TURN_USERNAME` and `TURN_PASSWORD`, or with
/// `TURN_SECRET`; without `TURN_URL`, the registry's ICE configuration.
fn turn_source(settings: &Settings) -> Result<TurnSource, String> {
    let Some(list) = settings.get("TURN_URL") else {
        if settings.get("TURN_SECRET").is_some() || settings.get("TURN_USERNAME").is_some() {
            log::warn!("TURN credentials without TURN_URL are ignored");
        }
        return Ok(TurnSource::Registry);
    };
    let urls = urls::parse_turn_urls(list);
    if urls.is_empty() {
        return Err(format!("TURN_URL: no usable turn: or turns: URL in {list:?}"));
    }
    match (settings.get("TURN_USERNAME"), settings.get("TURN_PASSWORD"), settings.get("TURN_SECRET")) {
        (Some(username), Some(password), _) => {
            Ok(TurnSource::Static(urls.into_iter().map(|url| TurnServer::new(url, username, password)).collect()))
        }
        (_, _, Some(secret)) => Ok(TurnSource::Secret { urls, secret: secret.to_owned() }),
        _ => Err("TURN_URL needs TURN_USERNAME and TURN_PASSWORD, or TURN_SECRET".into()),
    }
}

/// API key first (the registry prefers it too), then a device token from the
/// environment or the state directory, then the dev key with `--dev`.
fn credential(settings: &Settings, state_dir: &std::path::Path) -> Result<Credential, String> {
    if let Some(key) = settings.get("API_KEY") {
        return Ok(Credential::ApiKey(key.to_owned()));
    }
    if let Some(token) = settings.get("DEVICE_TOKEN") {
        return Ok(Credential::DeviceToken(token.to_owned()));
    }
    let stored = state_dir.join(pair::TOKEN_FILE);
    if let Ok(text) = std::fs::read_to_string(&stored)
        && !text.trim().is_empty()
    {
        log::info!("using the device token stored in {}", stored.display());
        return Ok(Credential::DeviceToken(text.trim().to_owned()));
    }
    if settings.is_on("CHATIXIA_DEV") {
        log::warn!("--dev: using the well-known development key ak_dev_001");
        return Ok(Credential::ApiKey("ak_dev_001".into()));
    }
    Err("no credential: set API_KEY or DEVICE_TOKEN (or pass --dev for the development key)".into())
}
