//! The smol shell: sockets, timers and signals around the sans-IO core.
//! Everything runs on one thread (plus async-io's reactor), so the core is
//! shared as `Rc<RefCell<_>>` and never borrowed across an `.await`.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod http;
mod keys_file;
mod persist;
mod rewind;
mod state_dir;
mod ws;

use crate::core::config::RegistryConfig;
use crate::core::hub::ConnId;
use crate::core::now::Now;
use crate::core::registry::{Registry, RegistryOutput};
use crate::core::token::TokenIssuer;
use async_tungstenite::tungstenite::Message;
use chatixia_settings::systemd::{Notifier, watchdog_interval};
use keys_file::load_keys;
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
}

/// A WebSocket's outgoing side, as the dispatcher sees it.
struct ConnHandle {
    /// Unbounded, but the dispatcher caps its length at `ws_send_queue`: a
    /// bounded channel allocates and writes every slot up front (256 × 64
    /// bytes = 16 KiB per client, 40 % of the registry's RSS with 1,000
    /// idle clients); this one grows in blocks of 31 as frames queue.
    tx: async_channel::Sender<Message>,
    close: Rc<Cell<Option<(u16, &'static str)>>>,
    /// Never carries a message; closing it ends the connection even while
    /// its writer is blocked on a client that does not read.
    stop: async_channel::Sender<()>,
}

impl ConnHandle {
    fn close(&self, code: u16, reason: &'static str) {
        if self.close.get().is_none() {
            self.close.set(Some((code, reason)));
        }
        self.tx.close();
        self.stop.close();
    }
}

struct Shared {
    registry: RefCell<Registry>,
    persister: persist::Persister,
    conns: RefCell<HashMap<ConnId, ConnHandle>>,
    next_conn: Cell<ConnId>,
    open_sockets: Cell<usize>,
    config: ShellConfig,
}

impl Shared {
    /// Moves every output of the registry to the sockets. A connection
    /// whose queue is full is reported: the relay never waits for one slow
    /// peer, and the registry closes it.
    fn dispatch(&self) {
        let mut registry = self.registry.borrow_mut();
        let conns = self.conns.borrow();
        while let Some(out) = registry.poll_output() {
            match out {
                RegistryOutput::Send { conn, text } => {
                    let Some(h) = conns.get(&conn) else { continue };
                    if h.tx.is_closed() {
                        continue;
                    }
                    if h.tx.len() >= self.config.ws_send_queue {
                        registry.handle_slow_consumer(conn);
                    } else {
                        let _ = h.tx.try_send(Message::text(text));
                    }
                }
                RegistryOutput::Ping { conn } => {
                    if let Some(h) = conns.get(&conn).filter(|h| h.tx.len() < self.config.ws_send_queue) {
                        let _ = h.tx.try_send(Message::Ping(Default::default()));
                    }
                }
                RegistryOutput::Close { conn, code, reason } => {
                    if let Some(h) = conns.get(&conn) {
                        h.close(code, reason);
                    }
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
    let keys = load_keys(&shell.keys_file, shell.dev)?;
    log::info!("loaded {} API keys from {}", keys.len(), shell.keys_file.display());
    let mut seed = [0u8; 8];
    os_random(&mut seed)?;
    let now = now();
    let mut registry = Registry::new(config, keys, tokens, u64::from_le_bytes(seed), Box::new(os_random), now);
    state_dir::restore(&state, &mut registry, now)?;
    serve(registry, state, shell)
}

fn serve(registry: Registry, state: StateDir, config: ShellConfig) -> Result<(), String> {
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
    });
    let ex = Rc::new(LocalExecutor::new());
    let signals =
        async_signal::Signals::new([async_signal::Signal::Hup, async_signal::Signal::Term, async_signal::Signal::Int])
            .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    log::info!("listening on http://{local} (WebSocket at ws://{local}/ws)");
    smol::block_on(ex.run(async {
        ex.spawn(accept_loop(ex.clone(), shared.clone(), listener)).detach();
        let notifier = Notifier::from_env();
        notifier.ready();
        ex.spawn(tick_loop(shared.clone(), notifier)).detach();
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
    loop {
        Timer::after(every).await;
        shared.registry.borrow_mut().handle_tick(now());
        shared.dispatch();
        notifier.watchdog();
        let connections = shared.registry.borrow().connection_count();
        notifier.status(format!("{connections} signaling connections"));
    }
}

const TICK: Duration = Duration::from_secs(5);

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
    for h in shared.conns.borrow().values() {
        h.close(1001, "registry shutting down");
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    while !shared.conns.borrow().is_empty() && Instant::now() < deadline {
        Timer::after(Duration::from_millis(10)).await;
    }
}
