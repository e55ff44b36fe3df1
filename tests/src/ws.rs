//! A small signaling WebSocket client for tests and benchmarks.

use crate::TIMEOUT;
use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::protocol::CloseFrame;
use futures_util::StreamExt;
use serde_json::{Value, json};
use smol::Async;
use std::net::TcpStream;
use std::time::Duration;

pub struct WsClient {
    pub ws: WebSocketStream<Async<TcpStream>>,
    pub peer_id: String,
}

/// What the next frame was.
#[derive(Debug)]
pub enum Incoming {
    Json(Value),
    Closed(Option<CloseFrame>),
}

impl WsClient {
    /// Opens `url` (`ws://127.0.0.1:PORT/ws?token=…`).
    pub async fn connect(url: &str, peer_id: &str) -> Result<WsClient, async_tungstenite::tungstenite::Error> {
        let addr = url.trim_start_matches("ws://").split('/').next().unwrap_or_default().to_owned();
        let tcp = Async::<TcpStream>::connect(addr.parse::<std::net::SocketAddr>().expect("addr")).await?;
        tcp.get_ref().set_nodelay(true)?;
        let (ws, _) = async_tungstenite::client_async(url, tcp).await?;
        Ok(WsClient { ws, peer_id: peer_id.to_owned() })
    }

    /// Opens `url` expecting the upgrade to be refused; returns the HTTP
    /// status and body of the refusal.
    pub async fn refused(url: &str) -> (u16, Vec<u8>) {
        match WsClient::connect(url, "refused").await {
            Err(async_tungstenite::tungstenite::Error::Http(resp)) => {
                (resp.status().as_u16(), resp.body().clone().unwrap_or_default())
            }
            Err(e) => panic!("upgrade failed without an HTTP answer: {e}"),
            Ok(_) => panic!("upgrade to {url} was accepted"),
        }
    }

    pub async fn send_text(&mut self, text: String) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    pub async fn send_binary(&mut self, data: Vec<u8>) {
        self.ws.send(Message::binary(data)).await.expect("send");
    }

    /// Closes with a close frame (a clean disconnect).
    pub async fn close(mut self) {
        self.ws.close(None).await.expect("close");
    }

    /// Sends a frame from this client's identity.
    pub async fn send(&mut self, kind: &str, target: Option<&str>, payload: Value) {
        let mut frame = json!({"type": kind, "peer_id": self.peer_id, "payload": payload});
        if let Some(t) = target {
            frame["target_id"] = json!(t);
        }
        self.send_text(frame.to_string()).await;
    }

    /// The next text frame as JSON, or the close; panics after [`TIMEOUT`].
    pub async fn next(&mut self) -> Incoming {
        self.next_within(TIMEOUT).await.expect("no frame within the timeout")
    }

    /// Like [`WsClient::next`] but `None` when nothing arrives within `wait`
    /// (for asserting that nothing is delivered).
    pub async fn next_within(&mut self, wait: Duration) -> Option<Incoming> {
        let recv = async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        return Some(Incoming::Json(serde_json::from_str(t.as_str()).expect("json frame")));
                    }
                    Some(Ok(Message::Close(frame))) => return Some(Incoming::Closed(frame)),
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return Some(Incoming::Closed(None)),
                }
            }
        };
        futures_lite::future::or(recv, async {
            smol::Timer::after(wait).await;
            None
        })
        .await
    }

    /// The next JSON frame; panics if the socket closed instead.
    pub async fn next_json(&mut self) -> Value {
        match self.next().await {
            Incoming::Json(v) => v,
            Incoming::Closed(frame) => panic!("{}: socket closed: {frame:?}", self.peer_id),
        }
    }

    /// The next frame must be a close; returns its code (`None`: the
    /// connection ended without a close frame).
    pub async fn expect_close(&mut self) -> Option<u16> {
        match self.next().await {
            Incoming::Closed(frame) => frame.map(|f| u16::from(f.code)),
            Incoming::Json(v) => panic!("{}: expected a close, got {v}", self.peer_id),
        }
    }

    /// The next frame must be a registry `error` with `code`.
    pub async fn expect_error(&mut self, code: &str) {
        let frame = self.next_json().await;
        assert_eq!(frame["type"], "error", "{}: expected error {code}, got {frame}", self.peer_id);
        assert_eq!(frame["peer_id"], "registry", "{frame}");
        assert_eq!(frame["payload"]["code"], code, "{}: {frame}", self.peer_id);
        assert!(frame["payload"]["message"].is_string(), "{frame}");
    }

    /// Asserts that nothing is queued for this client: sends `ping` and
    /// requires its `pong` to be the very next frame. Whatever the registry
    /// decided before it handled the ping arrives before the pong, so this
    /// is a barrier, not a guess about timing.
    pub async fn expect_quiet(&mut self) {
        self.send("ping", None, Value::Null).await;
        let frame = self.next_json().await;
        assert_eq!(frame["type"], "pong", "{}: expected nothing before the pong, got {frame}", self.peer_id);
    }

    /// Sends `register` and returns the peers of the `peer_list` answer.
    pub async fn register(&mut self) -> Vec<String> {
        self.send("register", None, Value::Null).await;
        let reply = self.next_json().await;
        assert_eq!(reply["type"], "peer_list", "{reply}");
        serde_json::from_value(reply["payload"]["peers"].clone()).expect("peers")
    }
}
