//! One signaling WebSocket: frames in go to the hub, the hub's frames for
//! this connection come out of a bounded queue.

use super::{ConnHandle, Shared, SocketGuard, now};
use crate::token::Identity;
use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use async_tungstenite::tungstenite::{Error as WsError, Message};
use futures_lite::{AsyncRead, AsyncWrite};
use futures_util::{SinkExt, StreamExt};
use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;

/// Frames handled before yielding, so one flooding client cannot hold the
/// thread while others wait.
const BURST: usize = 32;

pub(super) async fn run<S>(shared: Rc<Shared>, stream: S, identity: Identity, peer: SocketAddr, _guard: Rc<SocketGuard>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Small buffers: the 128 KiB default read buffer per client would be
    // most of the memory of an idle registry with many clients.
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = 4096;
    config.write_buffer_size = 0;
    config.max_write_buffer_size = 4 * 1024 * 1024;
    config.max_message_size = Some(shared.config.ws_hard_cap);
    config.max_frame_size = Some(shared.config.ws_hard_cap);
    let ws = WebSocketStream::from_raw_socket(stream, Role::Server, Some(config)).await;

    let conn = shared.next_conn.get();
    shared.next_conn.set(conn + 1);
    let (tx, rx) = async_channel::bounded(shared.config.ws_send_queue);
    let close = Rc::new(Cell::new(None));
    shared.conns.borrow_mut().insert(conn, ConnHandle { tx, close: close.clone() });
    {
        let mut registry = shared.registry.borrow_mut();
        let registry = &mut *registry;
        let authz = crate::api::Authorization { keys: &registry.keys };
        registry.hub.handle_connect(conn, &identity, &authz, now().mono);
    }
    shared.dispatch();
    log::info!("peer {} connected from {peer} (connection {conn})", identity.peer_id);

    let (mut sink, mut source) = ws.split();
    let reader = async {
        let mut handled = 0usize;
        while let Some(msg) = source.next().await {
            let t = now();
            match msg {
                Ok(Message::Text(text)) => {
                    let mut registry = shared.registry.borrow_mut();
                    let registry = &mut *registry;
                    let authz = crate::api::Authorization { keys: &registry.keys };
                    registry.hub.handle_frame(conn, text.as_str(), &authz, t.mono, t.unix_ms());
                }
                Ok(Message::Binary(_)) => shared.registry.borrow_mut().hub.handle_binary(conn, t.mono),
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {
                    shared.registry.borrow_mut().hub.handle_activity(conn, t.mono)
                }
                Ok(Message::Close(_)) => return None,
                Err(WsError::Capacity(e)) => {
                    log::info!("connection {conn}: {e}; closing");
                    return Some((CloseCode::Size, "frame too large"));
                }
                Err(e) => {
                    log::debug!("connection {conn}: {e}");
                    return None;
                }
            }
            shared.dispatch();
            handled += 1;
            if handled.is_multiple_of(BURST) {
                futures_lite::future::yield_now().await;
            }
        }
        None
    };
    let writer = async {
        while let Ok(msg) = rx.recv().await {
            if close.get().is_some() {
                break;
            }
            let mut result = sink.feed(msg).await;
            while result.is_ok() && close.get().is_none() {
                match rx.try_recv() {
                    Ok(more) => result = sink.feed(more).await,
                    Err(_) => break,
                }
            }
            if result.is_err() || sink.flush().await.is_err() {
                return None;
            }
        }
        close.get().map(|(code, reason)| (CloseCode::from(code), reason))
    };
    let close_with = futures_lite::future::or(reader, writer).await;
    let frame = close_with.map(|(code, reason)| CloseFrame { code, reason: reason.into() });
    let _ = sink.close(frame).await;

    shared.conns.borrow_mut().remove(&conn);
    {
        let mut registry = shared.registry.borrow_mut();
        let registry = &mut *registry;
        let authz = crate::api::Authorization { keys: &registry.keys };
        registry.hub.handle_disconnect(conn, &authz);
    }
    shared.dispatch();
    log::info!("peer {} disconnected (connection {conn})", identity.peer_id);
}
