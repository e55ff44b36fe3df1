//! The registry client (docs/PROTOCOL.md §4.6): token exchange, the signaling WebSocket,
//! keepalive and reconnection. It only moves frames; what they mean is the
//! mesh core's business.
//!
//! `http://`/`ws://` or, with the trust roots of [`Tls`], `https://`/`wss://`
//! (rustls on the aws-lc-rs provider str0m links anyway). The WebSocket,
//! TLS included, runs on the event loop; the token exchange (ureq,
//! blocking) and name lookups each run on a short-lived thread that exits
//! when they are done (see [`http`]).

use std::time::{Duration, Instant};

use super::reactor::Timer;
use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use chatixia_protocol::claims::TokenResponse;
use futures_lite::StreamExt;

use super::http::{self, Stream};
use super::tls::Tls;
use crate::core::backoff::{BACKOFF_MAX, BACKOFF_MIN, Backoff};
use crate::core::node::SignalingEvent;
use crate::core::urls::{url_with_token, ws_endpoint};

/// A connection that lasted this long resets the backoff.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);
/// A refused credential is retried this slowly: an operator has to act.
pub const UNAUTHORIZED_RETRY: Duration = Duration::from_secs(60);
/// A router that reboots or flushes its NAT table kills the WebSocket's
/// TCP connection without a word; the next write learns it (a reset), so
/// pings are what bounds how long a sidecar stays unreachable for offers.
pub const PING_INTERVAL: Duration = Duration::from_secs(10);
pub const PONG_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds the token request and the WebSocket handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Registry frames are limited to 64 KiB (docs/PROTOCOL.md §4); this is only a cap on
/// what a broken server can make us buffer.
const MAX_FRAME: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    ApiKey(String),
    DeviceToken(String),
}

#[derive(Debug, Clone)]
pub struct SignalingConfig {
    pub token_url: String,
    pub signaling_url: String,
    pub credential: Credential,
    /// Trust roots; needed when either URL is `https://` or `wss://`.
    pub tls: Option<Tls>,
    /// `GET` this (with the JWT) at every connection and on request, when
    /// the TURN servers come from the registry.
    pub ice_config_url: Option<String>,
}

/// What the node asks of the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    Frame(String),
    /// TURN's stream bytes for the registry's relay, as a binary frame.
    Binary(Vec<u8>),
    /// Fetch the ICE configuration again (TURN credentials run out).
    FetchIceConfig,
    /// Close the WebSocket cleanly and stop.
    Close,
}

/// A JWT lives 300 s; one older than this is exchanged again before use.
const TOKEN_REUSE: Duration = Duration::from_secs(240);

/// The registry's ICE configuration URL next to its token endpoint:
/// `…/api/token` → `…/api/config`.
pub fn ice_config_url(token_url: &str) -> String {
    let base = token_url.split(['?', '#']).next().unwrap_or(token_url);
    match base.strip_suffix("/api/token") {
        Some(root) => format!("{root}/api/config"),
        None => format!("{}/api/config", base.trim_end_matches('/')),
    }
}

/// `GET` the ICE configuration with the JWT (docs/PROTOCOL.md §3.7).
async fn fetch_ice_config(url: String, token: String, tls: Option<Tls>) -> Result<String, String> {
    let request = http::Request {
        method: http::Method::Get,
        url,
        header: Some(("Authorization", format!("Bearer {token}"))),
        json: None,
        timeout: CONNECT_TIMEOUT,
        tls,
    };
    match http::send(request).await? {
        (200, body) => String::from_utf8(body).map_err(|_| "the answer is not UTF-8".to_owned()),
        (status, _) => Err(format!("answered HTTP {status}")),
    }
}

/// A fetch of the ICE configuration as an event for the node.
fn ice_config_event(result: Result<String, String>) -> SignalingEvent {
    let unix_now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    SignalingEvent::IceConfig { result, unix_now }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// 401: the credential is wrong, revoked or not yet known.
    Unauthorized,
    Other(String),
}

/// `POST TOKEN_URL` with the credential header (docs/PROTOCOL.md §2.2, §3.4), off the event
/// loop (see [`http`]).
pub async fn exchange_token(
    url: &str,
    credential: &Credential,
    tls: Option<&Tls>,
) -> Result<TokenResponse, TokenError> {
    let header = match credential {
        Credential::ApiKey(k) => ("X-API-Key", k.clone()),
        Credential::DeviceToken(t) => ("X-Device-Token", t.clone()),
    };
    let request = http::Request {
        method: http::Method::Post,
        url: url.to_owned(),
        header: Some(header),
        json: None,
        timeout: CONNECT_TIMEOUT,
        tls: tls.cloned(),
    };
    let (status, body) = http::send(request).await.map_err(TokenError::Other)?;
    match status {
        200 => serde_json::from_slice(&body).map_err(|e| TokenError::Other(format!("bad token response: {e}"))),
        401 => Err(TokenError::Unauthorized),
        status => Err(TokenError::Other(format!("token request answered HTTP {status}"))),
    }
}

/// Keeps a signaling connection up until told to stop.
pub async fn run(
    config: SignalingConfig,
    events: async_channel::Sender<SignalingEvent>,
    outgoing: async_channel::Receiver<Outgoing>,
) {
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    loop {
        if events.send(SignalingEvent::Connecting).await.is_err() {
            return;
        }
        let wait = match exchange_token(&config.token_url, &config.credential, config.tls.as_ref()).await {
            Err(TokenError::Unauthorized) => {
                log::error!(
                    "the registry refused our credential (401 from {}); check API_KEY or DEVICE_TOKEN \
                     (a paired device must be approved). Retrying in {} s",
                    config.token_url,
                    UNAUTHORIZED_RETRY.as_secs()
                );
                backoff.reset();
                UNAUTHORIZED_RETRY
            }
            Err(TokenError::Other(e)) => {
                let wait = backoff.next_delay(fastrand::f64());
                log::warn!("token exchange with {} failed: {e}; retrying in {wait:.1?}", config.token_url);
                wait
            }
            Ok(token) => match connect_and_fetch(&config, &token.token).await {
                (Err(e), _) => {
                    let wait = backoff.next_delay(fastrand::f64());
                    log::warn!("signaling connection to {} failed: {e}; retrying in {wait:.1?}", config.signaling_url);
                    wait
                }
                (Ok(ws), fetched) => {
                    // Frames queued for a connection that is gone (answers
                    // to offers nobody waits for any more) are stale.
                    while outgoing.try_recv().is_ok() {}
                    log::info!("connected to the registry as {}", token.peer_id);
                    if events.send(SignalingEvent::Connected { peer_id: token.peer_id.clone() }).await.is_err() {
                        return;
                    }
                    // After the drain: what the configuration makes the node
                    // send (to the registry's relay) is for this connection.
                    if let Some(result) = fetched
                        && events.send(ice_config_event(result)).await.is_err()
                    {
                        return;
                    }
                    let started = Instant::now();
                    let end = session(ws, &config, token.token, &events, &outgoing).await;
                    let _ = events.send(SignalingEvent::Down).await;
                    if end == SessionEnd::Stop {
                        return;
                    }
                    if started.elapsed() >= STABLE_AFTER {
                        backoff.reset();
                    }
                    let wait = backoff.next_delay(fastrand::f64());
                    log::warn!("signaling connection lost ({end:?}); reconnecting in {wait:.1?}");
                    wait
                }
            },
        };
        // A stop request must not wait out a 60 s retry.
        let stop = async {
            loop {
                match outgoing.recv().await {
                    Ok(Outgoing::Close) | Err(_) => return true,
                    // The next connection fetches the configuration anyway.
                    Ok(Outgoing::Frame(_) | Outgoing::Binary(_) | Outgoing::FetchIceConfig) => {}
                }
            }
        };
        let sleep = async {
            Timer::after(wait).await;
            false
        };
        if futures_lite::future::or(stop, sleep).await {
            return;
        }
    }
}

/// Opens the WebSocket and, at the same time, fetches the ICE
/// configuration when it comes from the registry, so that relayed
/// candidates are on their way before the first offer.
async fn connect_and_fetch(
    config: &SignalingConfig,
    token: &str,
) -> (Result<WebSocketStream<Stream>, String>, Option<Result<String, String>>) {
    let fetch = async {
        let url = config.ice_config_url.clone()?;
        Some(fetch_ice_config(url, token.to_owned(), config.tls.clone()).await)
    };
    futures_lite::future::zip(connect(&config.signaling_url, token, config.tls.as_ref()), fetch).await
}

async fn connect(base: &str, token: &str, tls: Option<&Tls>) -> Result<WebSocketStream<Stream>, String> {
    let endpoint = ws_endpoint(base)?;
    let tls = match (endpoint.tls, tls) {
        (false, _) => None,
        (true, Some(tls)) => Some(tls),
        (true, None) => return Err(format!("{base}: wss:// needs TLS trust roots")),
    };
    let url = url_with_token(base, token);
    let attempt = async {
        // TCP_NODELAY is set on the socket under the TLS layer too.
        let tcp = http::connect_stream(&endpoint.host, endpoint.port, tls).await?;
        let mut config = WebSocketConfig::default();
        config.read_buffer_size = 8192;
        config.write_buffer_size = 0;
        config.max_message_size = Some(MAX_FRAME);
        config.max_frame_size = Some(MAX_FRAME);
        async_tungstenite::client_async_with_config(url.as_str(), tcp, Some(config)).await.map(|(ws, _)| ws).map_err(
            |e| match e {
                async_tungstenite::tungstenite::Error::Http(r) => {
                    format!("WebSocket upgrade refused with HTTP {}", r.status())
                }
                e => format!("WebSocket handshake failed: {e}"),
            },
        )
    };
    futures_lite::future::or(attempt, async {
        Timer::after(CONNECT_TIMEOUT).await;
        Err(format!("no connection within {CONNECT_TIMEOUT:?}"))
    })
    .await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionEnd {
    Stop,
    ClosedByRegistry,
    NoPong,
    Error,
}

enum Wake {
    Incoming(Option<Result<Message, async_tungstenite::tungstenite::Error>>),
    Outgoing(Result<Outgoing, async_channel::RecvError>),
    Fetched(Result<(String, Instant), String>),
    Tick,
}

/// A fetch of the ICE configuration in progress: its text, and the token it
/// used with when that was minted.
type Fetch = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(String, Instant), String>>>>;

async fn session(
    mut ws: WebSocketStream<Stream>,
    config: &SignalingConfig,
    token: String,
    events: &async_channel::Sender<SignalingEvent>,
    outgoing: &async_channel::Receiver<Outgoing>,
) -> SessionEnd {
    let mut next_ping = Instant::now() + PING_INTERVAL;
    let mut ping_sent: Option<Instant> = None;
    let mut token = (token, Instant::now());
    // Runs beside the session, so signaling never waits for it.
    let mut fetch: Option<Fetch> = None;
    loop {
        let deadline = match ping_sent {
            Some(at) => at + PONG_TIMEOUT,
            None => next_ping,
        };
        let fetching = async {
            match fetch.as_mut() {
                Some(f) => Wake::Fetched(f.await),
                None => futures_lite::future::pending().await,
            }
        };
        let wake = futures_lite::future::or(async { Wake::Incoming(ws.next().await) }, async {
            futures_lite::future::or(async { Wake::Outgoing(outgoing.recv().await) }, async {
                futures_lite::future::or(fetching, async {
                    Timer::at(deadline).await;
                    Wake::Tick
                })
                .await
            })
            .await
        })
        .await;
        match wake {
            Wake::Fetched(result) => {
                fetch = None;
                let result = result.map(|(text, minted)| {
                    token.1 = token.1.max(minted);
                    text
                });
                if events.send(ice_config_event(result)).await.is_err() {
                    let _ = ws.close(None).await;
                    return SessionEnd::Stop;
                }
            }
            Wake::Outgoing(Ok(Outgoing::FetchIceConfig)) => {
                let Some(url) = config.ice_config_url.clone() else { continue };
                if fetch.is_some() {
                    continue;
                }
                let (credential, token_url, tls) =
                    (config.credential.clone(), config.token_url.clone(), config.tls.clone());
                let (current, minted) = token.clone();
                fetch = Some(Box::pin(async move {
                    let (jwt, minted) = if minted.elapsed() < TOKEN_REUSE {
                        (current, minted)
                    } else {
                        let fresh = exchange_token(&token_url, &credential, tls.as_ref())
                            .await
                            .map_err(|e| format!("token exchange: {e:?}"))?;
                        (fresh.token, Instant::now())
                    };
                    Ok((fetch_ice_config(url, jwt, tls).await?, minted))
                }));
            }
            Wake::Incoming(Some(Ok(Message::Text(text)))) => {
                if events.send(SignalingEvent::Frame(text.as_str().to_owned())).await.is_err() {
                    let _ = ws.close(None).await;
                    return SessionEnd::Stop;
                }
            }
            Wake::Incoming(Some(Ok(Message::Pong(_)))) => ping_sent = None,
            Wake::Incoming(Some(Ok(Message::Binary(bytes)))) => {
                if events.send(SignalingEvent::Binary(bytes.to_vec())).await.is_err() {
                    let _ = ws.close(None).await;
                    return SessionEnd::Stop;
                }
            }
            Wake::Incoming(Some(Ok(Message::Close(frame)))) => {
                if let Some(f) = frame {
                    log::info!("registry closed the connection: {} {}", f.code, f.reason);
                }
                return SessionEnd::ClosedByRegistry;
            }
            // Pings are answered by tungstenite on the next write or read.
            Wake::Incoming(Some(Ok(_))) => {}
            Wake::Incoming(Some(Err(e))) => {
                log::debug!("signaling read failed: {e}");
                return SessionEnd::Error;
            }
            Wake::Incoming(None) => return SessionEnd::ClosedByRegistry,
            Wake::Outgoing(Ok(Outgoing::Frame(text))) => {
                if let Err(e) = ws.send(Message::text(text)).await {
                    log::debug!("signaling write failed: {e}");
                    return SessionEnd::Error;
                }
            }
            Wake::Outgoing(Ok(Outgoing::Binary(bytes))) => {
                if let Err(e) = ws.send(Message::binary(bytes)).await {
                    log::debug!("signaling write failed: {e}");
                    return SessionEnd::Error;
                }
            }
            Wake::Outgoing(Ok(Outgoing::Close) | Err(_)) => {
                let _ = ws.close(None).await;
                return SessionEnd::Stop;
            }
            Wake::Tick => {
                if ping_sent.is_some() {
                    return SessionEnd::NoPong;
                }
                if ws.send(Message::Ping(Default::default())).await.is_err() {
                    return SessionEnd::Error;
                }
                ping_sent = Some(Instant::now());
                next_ping = Instant::now() + PING_INTERVAL;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_exchange_reports_unreachable_registries() {
        // Port 9 (discard) on loopback: nothing listens there in a sandbox.
        let key = Credential::ApiKey("k".into());
        let err =
            crate::shell::reactor::block_on(exchange_token("http://127.0.0.1:9/api/token", &key, None)).unwrap_err();
        assert!(matches!(err, TokenError::Other(_)), "{err:?}");
        // https without trust roots is refused before anything is sent.
        let err =
            crate::shell::reactor::block_on(exchange_token("https://127.0.0.1:9/api/token", &key, None)).unwrap_err();
        assert!(matches!(&err, TokenError::Other(m) if m.contains("needs TLS trust roots")), "{err:?}");
        // With roots it is tried (and fails to connect, as plain http did).
        let tls = Tls::with_roots(Vec::new()).unwrap();
        let err = crate::shell::reactor::block_on(exchange_token("https://127.0.0.1:9/api/token", &key, Some(&tls)))
            .unwrap_err();
        assert!(matches!(&err, TokenError::Other(m) if !m.contains("trust roots")), "{err:?}");
    }

    #[test]
    fn wss_to_a_server_that_is_not_tls_fails_cleanly() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let err = crate::shell::reactor::block_on(async {
            let server = std::thread::spawn(move || {
                let (mut s, _) = listener.accept().unwrap();
                // Not a TLS server at all: the client must report it.
                let _ = std::io::Write::write_all(&mut s, b"HTTP/1.1 400 Bad Request\r\n\r\n");
            });
            let tls = Tls::with_roots(Vec::new()).unwrap();
            let r = connect(&format!("wss://127.0.0.1:{port}/ws"), "t", Some(&tls)).await;
            server.join().unwrap();
            r.map(|_| ()).unwrap_err()
        });
        assert!(err.contains("TLS handshake with 127.0.0.1:") && err.contains("failed"), "{err}");
        let err = crate::shell::reactor::block_on(connect("wss://127.0.0.1:9/ws", "t", None)).map(|_| ()).unwrap_err();
        assert!(err.contains("needs TLS trust roots"), "{err}");
    }
}
