//! The smol shell: sockets, timers and signals around the sans-IO core.
//! Everything runs on one thread (plus async-io's reactor), so the core is
//! shared as `Rc<RefCell<_>>` and never borrowed across an `.await`.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod http;
mod keys_file;
mod lean_stream;
mod mailbox;
mod persist;
mod relay;
mod state_dir;
mod ws;

use crate::core::config::RegistryConfig;
use crate::core::hub::ConnId;
use crate::core::now::Now;
use crate::core::registry::{RELAY_TCP_STREAMS, Registry, RegistryOutput};
use crate::core::relay::RelayConfig;
use crate::core::token::TokenIssuer;
use async_tungstenite::tungstenite::Message;
use chatixia_settings::systemd::{Notifier, watchdog_interval};
use keys_file::load_keys;
use mailbox::Mailbox;
pub use relay::RelaySettings;
use smol::{Async, LocalExecutor, Timer};
use state_dir::StateDir;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, Clone)]
pub struct ShellConfig {
    pub bind: SocketAddr,
    pub keys_file: PathBuf,
    pub dev: bool,
    /// Open TCP connections (HTTP and WebSocket) at most.
    pub max_connections: usize,
    /// Time a client has for a request's headers, and again for its body:
    /// a request that never finishes must not hold a connection slot and
    /// its buffers for ever.
    pub http_timeout: Duration,
    /// Frames queued towards one WebSocket before it counts as too slow.
    pub ws_send_queue: usize,
    /// Frames above this are not even buffered: the socket is closed (1009).
    pub ws_hard_cap: usize,
    /// Where changes are saved before they are acknowledged, and the
    /// generated signing secret kept.
    pub state_dir: PathBuf,
    /// The HS256 secret when the operator gives one; otherwise it is
    /// generated into the state directory.
    pub signaling_secret: Option<String>,
    /// The TURN relay on `RELAY_PORT`; `None` when it is off.
    pub relay: Option<RelaySettings>,
}

struct Shared {
    registry: RefCell<Registry>,
    persister: persist::Persister,
    conns: RefCell<HashMap<ConnId, Rc<Mailbox>>>,
    next_conn: Cell<ConnId>,
    open_sockets: Cell<usize>,
    config: ShellConfig,
    /// The relay's sockets, when it is on.
    relay: Option<relay::RelaySockets>,
    /// Writers of the relay's TCP connections.
    relay_streams: RefCell<HashMap<u64, async_channel::Sender<Vec<u8>>>>,
    next_relay_stream: Cell<u64>,
    /// Wakes [`departures_loop`].
    departures: (async_channel::Sender<()>, async_channel::Receiver<()>),
    /// When departures were last announced.
    departures_announced: Cell<Option<Instant>>,
}

impl Shared {
    /// A peer left: announced at once, unless departures were announced
    /// less than [`DEPARTURE_DELAY`] ago; then [`departures_loop`] announces
    /// it with the others that leave meanwhile.
    fn departures_due(&self) {
        let recent = self.departures_announced.get().is_some_and(|at| at.elapsed() < DEPARTURE_DELAY);
        if recent {
            let _ = self.departures.0.try_send(());
        } else {
            self.announce_departures();
        }
    }

    fn announce_departures(&self) {
        if self.registry.borrow().has_departures() {
            self.registry.borrow_mut().handle_departures();
            self.dispatch();
            self.departures_announced.set(Some(Instant::now()));
        }
    }

    /// Moves every output of the registry to the sockets. A connection
    /// whose queue is full is reported: the relay never waits for one slow
    /// peer, and the registry closes it.
    fn dispatch(&self) {
        let mut registry = self.registry.borrow_mut();
        let conns = self.conns.borrow();
        while let Some(out) = registry.poll_output() {
            match out {
                RegistryOutput::Send { conn, text } => {
                    let Some(mb) = conns.get(&conn) else { continue };
                    if mb.is_closing() {
                        continue;
                    }
                    if mb.len() >= self.config.ws_send_queue {
                        registry.handle_slow_consumer(conn);
                    } else {
                        mb.push(Message::text(text));
                    }
                }
                RegistryOutput::Ping { conn } => {
                    if let Some(mb) = conns.get(&conn).filter(|mb| mb.len() < self.config.ws_send_queue) {
                        mb.push(Message::Ping(Default::default()));
                    }
                }
                RegistryOutput::Close { conn, code, reason } => {
                    if let Some(mb) = conns.get(&conn) {
                        mb.close(code, reason);
                    }
                }
                RegistryOutput::RelayDatagram { to, bytes } => {
                    if let Some(sockets) = &self.relay
                        && let Err(e) = sockets.udp.get_ref().send_to(&bytes, to)
                    {
                        log::debug!("relay UDP send to {to}: {e}");
                    }
                }
                // Whole frames: one that does not fit is lost, as on UDP;
                // the signaling on the same WebSocket is never held up.
                RegistryOutput::RelayStream { conn, bytes } if conn >= RELAY_TCP_STREAMS => {
                    if let Some(w) = self.relay_streams.borrow().get(&conn) {
                        let _ = w.try_send(bytes);
                    }
                }
                RegistryOutput::RelayStream { conn, bytes } => {
                    if let Some(mb) = conns.get(&conn).filter(|mb| mb.len() < self.config.ws_send_queue) {
                        mb.push(Message::binary(bytes));
                    }
                }
                // Only TCP connections are closed; dropping the writer
                // ends the connection's task.
                RegistryOutput::RelayClose { conn } => {
                    self.relay_streams.borrow_mut().remove(&conn);
                }
            }
        }
    }
}

/// Both clocks, read once for the event at hand.
fn now() -> Now {
    Now { mono: Instant::now(), wall: SystemTime::now() }
}

/// The operating system's CSPRNG.
fn os_random(buf: &mut [u8]) -> Result<(), String> {
    getrandom::fill(buf).map_err(|e| e.to_string())
}

/// Starts the registry: its state directory, signing secret and keys, then
/// what earlier runs saved; then serves until SIGTERM or SIGINT.
pub fn run(config: RegistryConfig, mut shell: ShellConfig) -> Result<(), String> {
    let state = StateDir::open(&shell.state_dir)?;
    // Taken out, so the clear secret does not stay in the config for the
    // life of the process.
    let secret = match shell.signaling_secret.take() {
        Some(s) => s.as_bytes().to_vec(),
        None => state.load_or_create_secret()?,
    };
    let tokens = TokenIssuer::new(&secret)?;
    let (config, sockets) = start_relay(config, &shell, &secret)?;
    let keys = load_keys(&shell.keys_file, shell.dev)?;
    log::info!("loaded {} API keys from {}", keys.len(), shell.keys_file.display());
    let mut seed = [0u8; 8];
    os_random(&mut seed)?;
    let now = now();
    let mut registry = Registry::new(config, keys, tokens, u64::from_le_bytes(seed), Box::new(os_random), now);
    state_dir::restore(&state, &mut registry, now)?;
    serve(registry, state, shell, sockets)
}

/// Binds the relay's port and completes its configuration: the address
/// relayed addresses are given on, and the secret of its credentials,
/// derived from the signing secret so that it survives a restart. A port
/// that cannot be bound stops the start when `RELAY_PORT` was set, and turns
/// the relay off (with a warning) when it is the default.
fn start_relay(
    mut config: RegistryConfig,
    shell: &ShellConfig,
    secret: &[u8],
) -> Result<(RegistryConfig, Option<relay::RelaySockets>), String> {
    let Some(settings) = &shell.relay else {
        log::info!("relay off (RELAY_PORT=0)");
        return Ok((config, None));
    };
    let sockets = match relay::bind(shell.bind.ip(), settings.port) {
        Ok(sockets) => sockets,
        Err(e) if settings.explicit => return Err(format!("cannot open the relay port: {e}")),
        Err(e) => {
            log::warn!("relay off: cannot open port {} ({e}); set RELAY_PORT to another port, or 0", settings.port);
            return Ok((config, None));
        }
    };
    let port = sockets.udp.get_ref().local_addr().map_err(|e| e.to_string())?.port();
    let address = settings.address.unwrap_or_else(|| match shell.bind.ip() {
        ip if ip.is_unspecified() => relay::outward_address(),
        ip => ip,
    });
    let relay_secret = hmac_sha256::HMAC::mac(b"chatixia-mesh relay credentials", secret);
    let mut relay = RelayConfig::new("chatixia", &relay_secret, address);
    relay.ports = settings.ports;
    relay.allocation_rate = settings.allocation_rate;
    relay.total_rate = settings.total_rate;
    let mut instance = [0u8; 8];
    os_random(&mut instance)?;
    relay.instance = u64::from_le_bytes(instance);
    log::info!("relay on UDP and TCP port {port}; relayed addresses on {address}");
    config.relay = Some((relay, port));
    Ok((config, Some(sockets)))
}

fn serve(
    registry: Registry,
    state: StateDir,
    config: ShellConfig,
    relay: Option<relay::RelaySockets>,
) -> Result<(), String> {
    let listener = TcpListener::bind(config.bind).map_err(|e| format!("cannot listen on {}: {e}", config.bind))?;
    let listener = Async::new(listener).map_err(|e| e.to_string())?;
    let local = listener.get_ref().local_addr().map_err(|e| e.to_string())?;
    let shared = Rc::new(Shared {
        persister: persist::Persister::new(state, registry.revisions()),
        registry: RefCell::new(registry),
        conns: RefCell::new(HashMap::new()),
        next_conn: Cell::new(1),
        open_sockets: Cell::new(0),
        config,
        relay,
        relay_streams: RefCell::new(HashMap::new()),
        departures: async_channel::bounded(1),
        departures_announced: Cell::new(None),
        next_relay_stream: Cell::new(0),
    });
    let ex = Rc::new(LocalExecutor::new());
    let signals =
        async_signal::Signals::new([async_signal::Signal::Hup, async_signal::Signal::Term, async_signal::Signal::Int])
            .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    log::info!("listening on http://{local} (WebSocket at ws://{local}/ws)");
    smol::block_on(ex.run(async {
        ex.spawn(accept_loop(ex.clone(), shared.clone(), listener)).detach();
        ex.spawn(relay::udp_loop(shared.clone())).detach();
        ex.spawn(relay::accept_loop(ex.clone(), shared.clone())).detach();
        let notifier = Notifier::from_env();
        notifier.ready();
        ex.spawn(tick_loop(shared.clone(), notifier)).detach();
        ex.spawn(departures_loop(shared.clone())).detach();
        wait_for_shutdown(&shared, signals).await;
        Notifier::from_env().stopping();
        shutdown(&shared).await;
    }));
    log::info!("stopped");
    Ok(())
}

async fn accept_loop(ex: Rc<LocalExecutor<'static>>, shared: Rc<Shared>, listener: Async<TcpListener>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                // Usually EMFILE: back off instead of spinning.
                log::warn!("accept failed: {e}");
                Timer::after(Duration::from_millis(100)).await;
                continue;
            }
        };
        if shared.open_sockets.get() >= shared.config.max_connections {
            log::warn!("refusing connection from {peer}: {} connections open", shared.open_sockets.get());
            continue;
        }
        let _ = stream.get_ref().set_nodelay(true);
        let guard = SocketGuard::new(&shared);
        ex.spawn(http::serve(ex.clone(), shared.clone(), stream, peer, guard)).detach();
    }
}

/// Counts an open socket for as long as any part of its handling lives.
struct SocketGuard(Rc<Shared>);

impl SocketGuard {
    fn new(shared: &Rc<Shared>) -> Rc<Self> {
        shared.open_sockets.set(shared.open_sockets.get() + 1);
        Rc::new(SocketGuard(shared.clone()))
    }
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        self.0.open_sockets.set(self.0.open_sockets.get().saturating_sub(1));
    }
}

/// Drives the hub's pings and idle timeouts, and tells systemd the event
/// loop is alive: the watchdog is petted from here, so a stuck loop gets the
/// service restarted.
async fn tick_loop(shared: Rc<Shared>, mut notifier: Notifier) {
    let every = watchdog_interval().map_or(TICK, |w| w.min(TICK));
    // The most connections since the count last held still for a tick,
    // and the count at the last tick.
    let (mut peak, mut previous) = (0, 0);
    loop {
        Timer::after(every).await;
        shared.registry.borrow_mut().handle_tick(now());
        shared.dispatch();
        notifier.watchdog();
        let connections = shared.registry.borrow().connection_count();
        notifier.status(format!("{connections} signaling connections"));
        // After clients left, the registry gives back what their
        // connections had used, instead of keeping the peak resident for
        // good: at every tick while the count is below its peak, and once
        // more a tick after it held still, for what the last departures
        // freed after the count fell (their announcements, closing tasks).
        // Trimming only after a crowd's first few hundred had left kept
        // what the rest freed (10,000 leaving: 14 MB resident instead of
        // 9); a trim costs a system call per free region, well under a
        // millisecond.
        peak = peak.max(connections);
        if connections < peak {
            shared.conns.borrow_mut().shrink_to_fit();
            chatixia_settings::release_free_memory();
        }
        if connections == previous {
            peak = connections;
        }
        previous = connections;
    }
}

const TICK: Duration = Duration::from_secs(5);
/// A lone departure is announced at once; those that follow within this
/// time wait until this long passes without another (at most
/// [`DEPARTURE_WAIT_MAX`]) and go out together, to whoever is still
/// connected then. When a crowd leaves together most of it has gone by then
/// and is told nothing (see `Hub::handle_departures`).
const DEPARTURE_DELAY: Duration = Duration::from_millis(200);
const DEPARTURE_WAIT_MAX: Duration = Duration::from_secs(1);

/// Announces the departures that came too soon after the last announcement.
async fn departures_loop(shared: Rc<Shared>) {
    while shared.departures.1.recv().await.is_ok() {
        let first = Instant::now();
        Timer::after(DEPARTURE_DELAY).await;
        // More came meanwhile: the crowd is still leaving.
        while shared.departures.1.try_recv().is_ok() && first.elapsed() < DEPARTURE_WAIT_MAX {
            Timer::after(DEPARTURE_DELAY).await;
        }
        shared.announce_departures();
    }
}

async fn wait_for_shutdown(shared: &Shared, mut signals: async_signal::Signals) {
    use futures_lite::StreamExt;
    while let Some(Ok(signal)) = signals.next().await {
        match signal {
            async_signal::Signal::Hup => reload_keys(shared),
            other => {
                log::info!("received {other:?}; shutting down");
                return;
            }
        }
    }
}

fn reload_keys(shared: &Shared) {
    match load_keys(&shared.config.keys_file, shared.config.dev) {
        Ok(keys) => {
            let count = keys.len();
            shared.registry.borrow_mut().handle_keys_reloaded(keys);
            shared.dispatch();
            log::info!("reloaded {count} API keys from {}", shared.config.keys_file.display());
        }
        Err(e) => log::error!("keeping the current keys; reload failed: {e}"),
    }
}

/// Closes every WebSocket with "going away" and gives them a moment to flush.
async fn shutdown(shared: &Shared) {
    for mb in shared.conns.borrow().values() {
        mb.close(1001, "registry shutting down");
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    while !shared.conns.borrow().is_empty() && Instant::now() < deadline {
        Timer::after(Duration::from_millis(10)).await;
    }
}
