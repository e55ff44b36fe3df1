//! A TLS-terminating proxy in front of a test registry, like the reverse
//! proxy a deployment would put there: TLS on 127.0.0.1:<ephemeral> with
//! the fixture certificate of tests/fixtures/tls (made by generate.sh
//! there), plain bytes to the registry's port, both ways.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, mpsc};

use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};
use futures_rustls::TlsAcceptor;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use smol::Async;

use crate::TIMEOUT;

/// The fixture directory (tests/fixtures/tls).
pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join("tls")
}

/// The test CA that signed the proxy's certificate: what a sidecar must be
/// given (`REGISTRY_CA_FILE`) to trust the proxy.
pub fn ca_file() -> PathBuf {
    fixture_dir().join("ca.pem")
}

/// A running proxy; stops when dropped.
pub struct TlsProxy {
    pub port: u16,
    stop: Option<smol::channel::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    failures: mpsc::Receiver<String>,
}

impl TlsProxy {
    /// Listens on 127.0.0.1 and forwards every connection, once its TLS
    /// handshake is done, to 127.0.0.1:`upstream`.
    pub fn start(upstream: u16) -> TlsProxy {
        let bind = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        Self::start_with(bind, SocketAddr::from((Ipv4Addr::LOCALHOST, upstream)), "server", Box::new(|| {}))
    }

    /// Listens on `bind` with the fixture certificate `cert` (`server` for
    /// 127.0.0.1, `lab-server` for the NAT lab's 203.0.113.1) and forwards
    /// to `upstream`; the proxy's thread runs `enter` first (to join a
    /// network namespace, say) and binds and connects from there.
    pub fn start_with(bind: SocketAddr, upstream: SocketAddr, cert: &str, enter: Box<dyn FnOnce() + Send>) -> TlsProxy {
        let dir = fixture_dir();
        let cert_file = dir.join(format!("{cert}.pem"));
        let cert = CertificateDer::from_pem_file(&cert_file).expect("fixture certificate");
        let key = PrivateKeyDer::from_pem_file(cert_file.with_extension("key")).expect("fixture key");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .expect("fixture certificate and key");
        let acceptor = TlsAcceptor::from(Arc::new(config));

        let (stop_tx, stop_rx) = smol::channel::bounded::<()>(1);
        let (fail_tx, failures) = mpsc::channel();
        let (port_tx, port_rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            enter();
            let listener = TcpListener::bind(bind).expect("bind proxy");
            let _ = port_tx.send(listener.local_addr().expect("proxy address").port());
            let listener = Async::new(listener).expect("non-blocking listener");
            let ex = smol::LocalExecutor::new();
            smol::block_on(ex.run(async {
                let accept_loop = async {
                    loop {
                        let Ok((client, _)) = listener.accept().await else { return };
                        let (acceptor, fail_tx) = (acceptor.clone(), fail_tx.clone());
                        ex.spawn(async move {
                            if let Err(e) = serve(acceptor, client, upstream).await {
                                let _ = fail_tx.send(e);
                            }
                        })
                        .detach();
                    }
                };
                accept_loop
                    .or(async {
                        let _ = stop_rx.recv().await;
                    })
                    .await;
            }));
        });
        let port = port_rx.recv().expect("the proxy's port");
        TlsProxy { port, stop: Some(stop_tx), thread: Some(thread), failures }
    }

    /// `https://127.0.0.1:<port><path>`.
    pub fn https(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// `wss://127.0.0.1:<port><path>`.
    pub fn wss(&self, path: &str) -> String {
        format!("wss://127.0.0.1:{}{path}", self.port)
    }

    /// Waits for a connection of the proxy to fail (a refused TLS
    /// handshake, say) and returns why.
    pub fn next_failure(&self) -> String {
        self.failures.recv_timeout(TIMEOUT).unwrap_or_else(|_| panic!("no proxy connection failed within {TIMEOUT:?}"))
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One connection: the TLS handshake, then bytes both ways until either
/// side closes.
async fn serve(acceptor: TlsAcceptor, client: Async<TcpStream>, upstream: SocketAddr) -> Result<(), String> {
    let _ = client.get_ref().set_nodelay(true);
    let handshake = async { acceptor.accept(client).await.map_err(|e| format!("TLS handshake failed: {e}")) };
    let tls = handshake
        .or(async {
            smol::Timer::after(TIMEOUT).await;
            Err("no TLS handshake within the timeout".to_owned())
        })
        .await?;
    let server = Async::<TcpStream>::connect(upstream).await.map_err(|e| format!("upstream {upstream}: {e}"))?;
    let _ = server.get_ref().set_nodelay(true);
    let (client_rd, client_wr) = futures_lite::io::split(tls);
    let (server_rd, server_wr) = futures_lite::io::split(server);
    pump(client_rd, server_wr).or(pump(server_rd, client_wr)).await;
    Ok(())
}

/// Copies until end of file or an error, flushing every chunk (the TLS
/// side holds records back until flushed).
async fn pump(mut from: impl futures_lite::AsyncRead + Unpin, mut to: impl futures_lite::AsyncWrite + Unpin) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() || to.flush().await.is_err() {
            break;
        }
    }
    // Half-close towards the other side; the caller then drops both.
    let _ = to.close().await;
}
