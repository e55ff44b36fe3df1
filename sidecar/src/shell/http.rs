//! The sidecar's HTTP requests — the token exchange (docs/PROTOCOL.md §2.2, §3.4) and
//! redeeming a pairing code (§4.3) — plus the TCP connect (and TLS
//! handshake, on the event loop) the signaling WebSocket uses.
//!
//! HTTP goes through ureq, which blocks: [`post`] runs it on a thread of its
//! own so the event loop never waits on the network. Not `smol::unblock`:
//! the `blocking` crate (1.7) keeps an idle pool thread for good — its exit
//! test `Some(thread_count) > thread_limit` never holds below the 500-thread
//! limit — which would break the one-thread steady state (docs/ARCHITECTURE.md, single-threaded). A
//! thread per request (one every few seconds at worst, each bounded by the
//! request timeout) exits when the request is done.
//!
//! `https://` and `wss://` go through rustls with the trust roots of
//! [`super::tls::Tls`], loaded once at startup; plain `http://`/`ws://`
//! need none. ureq verifies the token/pairing server; [`connect_stream`]
//! the WebSocket's, by the URL host (a name or an IP address).

use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use super::reactor::Async;
use futures_lite::{AsyncRead, AsyncWrite};

use super::tls::{self, Tls};
use crate::core::urls::check_url;

/// Answers larger than this are not token or pairing answers.
const MAX_RESPONSE: u64 = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// A request: one extra header and, for a `POST`, an optional JSON body.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub url: String,
    pub header: Option<(&'static str, String)>,
    pub json: Option<serde_json::Value>,
    /// Bounds the whole request, connect to last byte.
    pub timeout: Duration,
    /// Trust roots for `https://`; `None` refuses https.
    pub tls: Option<Tls>,
}

/// Runs `request` off the event loop; returns the status and body.
/// Non-2xx statuses are answers, not errors.
pub async fn send(request: Request) -> Result<(u16, Vec<u8>), String> {
    off_loop(move || send_blocking(&request)).await?
}

/// Runs blocking `work` on a short-lived thread and awaits its result. If
/// the caller stops waiting, the thread still ends when `work` does (every
/// use here is bounded by a timeout) and its result is dropped.
pub async fn off_loop<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    let (tx, rx) = async_channel::bounded(1);
    std::thread::Builder::new()
        .name("chatixia-http".into())
        .spawn(move || {
            let _ = tx.try_send(work());
        })
        .map_err(|e| format!("cannot start a thread for the request: {e}"))?;
    rx.recv().await.map_err(|_| "the request thread died".to_owned())
}

/// [`send`] on the calling thread (the `pair` command has no event loop).
pub fn send_blocking(request: &Request) -> Result<(u16, Vec<u8>), String> {
    check_url(&request.url)?;
    if let Some((name, value)) = &request.header
        && value.bytes().any(|b| b == b'\r' || b == b'\n')
    {
        return Err(format!("the {name} value must not contain line breaks"));
    }
    let mut config = ureq::Agent::config_builder();
    if tls::needs_tls(&request.url) {
        let tls = request.tls.as_ref().ok_or_else(|| format!("{}: https:// needs TLS trust roots", request.url))?;
        config = config.tls_config(tls.ureq_config());
    }
    let agent: ureq::Agent = config
        .http_status_as_error(false)
        .timeout_global(Some(request.timeout))
        // Like the signaling WebSocket, which connects directly: a proxy
        // from the environment would make the two disagree.
        .proxy(None)
        // The credential header must not follow a redirect elsewhere.
        .max_redirects(0)
        .user_agent(concat!("chatixia-sidecar/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let header = request.header.as_ref().map(|(name, value)| (*name, value.as_str()));
    let result = match request.method {
        Method::Get => {
            let mut builder = agent.get(&request.url).header("Accept", "application/json");
            if let Some((name, value)) = header {
                builder = builder.header(name, value);
            }
            builder.call()
        }
        Method::Post => {
            let mut builder = agent.post(&request.url).header("Accept", "application/json");
            if let Some((name, value)) = header {
                builder = builder.header(name, value);
            }
            match &request.json {
                Some(body) => builder.send_json(body),
                None => builder.send_empty(),
            }
        }
    };
    let mut response = result.map_err(|e| format!("request to {} failed: {e}", request.url))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE)
        .read_to_vec()
        .map_err(|e| format!("reading the answer of {}: {e}", request.url))?;
    Ok((status, body))
}

/// Resolves and connects, trying every address (the signaling WebSocket,
/// which stays on the event loop). Literal addresses need no lookup; names
/// are resolved on a short-lived thread (getaddrinfo blocks; see
/// [`off_loop`] for why not smol's pool).
pub async fn connect(host: &str, port: u16) -> Result<Async<TcpStream>, String> {
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => {
            let name = host.to_owned();
            off_loop(move || std::net::ToSocketAddrs::to_socket_addrs(&(name.as_str(), port)).map(Vec::from_iter))
                .await?
                .map_err(|e| format!("cannot resolve {host}: {e}"))?
        }
    };
    let mut last = format!("no address for {host}");
    for addr in addrs {
        match Async::<TcpStream>::connect(addr).await {
            Ok(tcp) => {
                let _ = tcp.get_ref().set_nodelay(true);
                return Ok(tcp);
            }
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(last)
}

/// The signaling WebSocket's byte stream: TCP, or TLS over TCP.
pub enum Stream {
    Plain(Async<TcpStream>),
    Tls(Box<futures_rustls::client::TlsStream<Async<TcpStream>>>),
}

/// [`connect`], then a TLS handshake with `tls` when given; the server
/// certificate must match `host` (a name or an IP address).
pub async fn connect_stream(host: &str, port: u16, tls: Option<&Tls>) -> Result<Stream, String> {
    let tcp = connect(host, port).await?;
    match tls {
        Some(tls) => {
            handshake(tcp, tls, host).await.map_err(|e| format!("TLS handshake with {host}:{port} failed: {e}"))
        }
        None => Ok(Stream::Plain(tcp)),
    }
}

/// A stream to `addr` (a TURN server's), with TLS when `tls` is given: its
/// certificate must match `name`, the host of the URL.
pub async fn open_stream(addr: SocketAddr, tls: Option<(&Tls, &str)>) -> Result<Stream, String> {
    let tcp = Async::<TcpStream>::connect(addr).await.map_err(|e| format!("{addr}: {e}"))?;
    let _ = tcp.get_ref().set_nodelay(true);
    match tls {
        Some((tls, name)) => {
            handshake(tcp, tls, name).await.map_err(|e| format!("TLS handshake with {name} at {addr} failed: {e}"))
        }
        None => Ok(Stream::Plain(tcp)),
    }
}

async fn handshake(tcp: Async<TcpStream>, tls: &Tls, name: &str) -> Result<Stream, String> {
    let server = tls::server_name(name)?;
    let stream = futures_rustls::TlsConnector::from(tls.client_config())
        .connect(server, tcp)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Stream::Tls(Box::new(stream)))
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// The e2e fixtures: a test CA and a server certificate it signed for
    /// localhost and 127.0.0.1 (tests/fixtures/tls/generate.sh).
    const TEST_CA: &[u8] = include_bytes!("../../../tests/fixtures/tls/ca.pem");
    const TEST_CERT: &[u8] = include_bytes!("../../../tests/fixtures/tls/server.pem");
    const TEST_KEY: &[u8] = include_bytes!("../../../tests/fixtures/tls/server.key");

    /// A one-shot TLS server with the fixture certificate: completes the
    /// handshake, echoes one line; returns the handshake's outcome.
    fn tls_echo_once() -> (u16, std::thread::JoinHandle<Result<(), String>>) {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![CertificateDer::from_pem_slice(TEST_CERT).unwrap()],
                    PrivateKeyDer::from_pem_slice(TEST_KEY).unwrap(),
                )
                .unwrap();
            let (tcp, _) = listener.accept().unwrap();
            let conn = rustls::ServerConnection::new(std::sync::Arc::new(config)).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut line = [0u8; 6];
            tls.read_exact(&mut line).map_err(|e| e.to_string())?;
            tls.write_all(&line).map_err(|e| e.to_string())?;
            tls.flush().map_err(|e| e.to_string())
        });
        (port, server)
    }

    #[test]
    fn tls_streams_verify_the_server_certificate_by_name_or_address() {
        use futures_lite::{AsyncReadExt, AsyncWriteExt};
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let ca: Vec<_> = CertificateDer::pem_slice_iter(TEST_CA).map(Result::unwrap).collect();
        let trusting = Tls::with_roots(ca).unwrap();
        let untrusting = Tls::with_roots(Vec::new()).unwrap();
        for host in ["127.0.0.1", "localhost"] {
            let (port, server) = tls_echo_once();
            let echoed = crate::shell::reactor::block_on(async {
                let mut s = connect_stream(host, port, Some(&trusting)).await.unwrap();
                assert!(matches!(s, Stream::Tls(_)));
                s.write_all(b"hello\n").await.unwrap();
                let mut back = [0u8; 6];
                s.read_exact(&mut back).await.unwrap();
                back
            });
            assert_eq!(&echoed, b"hello\n");
            server.join().unwrap().unwrap();
        }

        let (port, server) = tls_echo_once();
        let err = crate::shell::reactor::block_on(connect_stream("127.0.0.1", port, Some(&untrusting)))
            .map(|_| ())
            .unwrap_err();
        assert!(err.contains("invalid peer certificate") && err.contains("UnknownIssuer"), "{err}");
        assert!(server.join().unwrap().is_err(), "the server saw the client give up");
    }

    /// A one-shot server: returns the request it read; answers `answer`.
    fn serve_once(answer: &'static [u8]) -> (u16, std::thread::JoinHandle<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut b).unwrap();
                req.extend_from_slice(&b[..n]);
            }
            let text = String::from_utf8(req).unwrap();
            // The rest of a JSON body, if one was announced.
            let len = text
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            let head_len = text.find("\r\n\r\n").unwrap() + 4;
            let mut body = text.as_bytes()[head_len..].to_vec();
            while body.len() < len {
                let n = s.read(&mut b).unwrap();
                body.extend_from_slice(&b[..n]);
            }
            s.write_all(answer).unwrap();
            format!("{}{}", &text[..head_len], String::from_utf8_lossy(&body))
        });
        (port, server)
    }

    #[test]
    fn posts_with_the_header_off_the_event_loop() {
        let (port, server) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{\"a\":\"ok\"}");
        let request = Request {
            method: Method::Post,
            url: format!("http://127.0.0.1:{port}/api/token?x=1"),
            header: Some(("X-API-Key", "k-1".into())),
            json: None,
            timeout: Duration::from_secs(10),
            tls: None,
        };
        let (status, body) = crate::shell::reactor::block_on(send(request.clone())).unwrap();
        assert_eq!((status, body.as_slice()), (200, &b"{\"a\":\"ok\"}"[..]));
        let req = server.join().unwrap();
        assert!(req.starts_with("POST /api/token?x=1 HTTP/1.1\r\n"), "{req}");
        assert!(req.to_ascii_lowercase().contains("\r\nx-api-key: k-1\r\n"), "{req}");

        let evil = Request { header: Some(("X-API-Key", "a\r\nX-Evil: 1".into())), ..request };
        let err = crate::shell::reactor::block_on(send(evil)).unwrap_err();
        assert!(err.contains("line breaks"), "{err}");
    }

    #[test]
    fn sends_json_and_returns_error_statuses_as_answers() {
        let (port, server) = serve_once(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 13\r\n\r\n{\"error\":\"x\"}");
        let request = Request {
            method: Method::Post,
            url: format!("http://127.0.0.1:{port}/api/pairing/pair"),
            header: None,
            json: Some(serde_json::json!({"code": "123456"})),
            timeout: Duration::from_secs(10),
            tls: None,
        };
        let (status, body) = send_blocking(&request).unwrap();
        assert_eq!((status, body.as_slice()), (401, &b"{\"error\":\"x\"}"[..]));
        let req = server.join().unwrap();
        let body: serde_json::Value = serde_json::from_str(&req[req.find("\r\n\r\n").unwrap() + 4..]).unwrap();
        assert_eq!(body, serde_json::json!({"code": "123456"}), "{req}");
        assert!(req.to_ascii_lowercase().contains("content-type: application/json"), "{req}");
    }
}
