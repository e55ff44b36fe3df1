//! One signaling WebSocket: frames in go to the registry, its frames for
//! this connection come out of a bounded queue.

use super::mailbox::Mailbox;
use super::{Shared, SocketGuard, now};
use crate::core::token::Identity;
use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::protocol::frame::Frame;
use async_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data as OpData, OpCode};
use async_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use async_tungstenite::tungstenite::{Error as WsError, Message};
use futures_lite::{AsyncRead, AsyncWrite};
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

/// Frames handled before yielding, so one flooding client cannot hold the
/// thread while others wait.
const BURST: usize = 32;

/// Longer outgoing messages go out fragmented (a text frame, then
/// continuation frames) into frames of this many bytes. tungstenite's write
/// buffer keeps the capacity of the largest frame it ever wrote, for the
/// life of the connection (a `peer_list` of 1,000 peers is 13 KB, and
/// sidecars re-register); the frames of one flush still leave together
/// (see `lean_stream.rs`).
const MAX_OUT_FRAME: usize = 1024;
/// tungstenite's read buffer, kept for the life of the connection: it reads
/// at most this much per call, from bytes `LeanStream` already holds.
const READ_BUFFER: usize = 1024;

/// How long a closing connection may take to send its close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

pub(super) async fn run<S>(shared: Rc<Shared>, stream: S, identity: Identity, peer: SocketAddr, _guard: Rc<SocketGuard>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Small buffers: the 128 KiB default read buffer per client would be
    // most of the memory of an idle registry with many clients. Each frame
    // is handed to the stream at once, which gathers them until a flush.
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = READ_BUFFER;
    config.write_buffer_size = 0;
    config.max_write_buffer_size = 4 * 1024 * 1024;
    config.max_message_size = Some(shared.config.ws_hard_cap);
    config.max_frame_size = Some(shared.config.ws_hard_cap);
    let ws = WebSocketStream::from_raw_socket(stream, Role::Server, Some(config)).await;

    let conn = shared.next_conn.get();
    shared.next_conn.set(conn + 1);
    // At most ws_send_queue frames: the dispatcher checks.
    let mailbox = Rc::new(Mailbox::default());
    shared.conns.borrow_mut().insert(conn, mailbox.clone());
    shared.registry.borrow_mut().handle_ws_open(conn, &identity, now());
    shared.dispatch();
    log::info!("peer {} connected from {peer} (connection {conn})", identity.peer_id);

    let (mut sink, mut source) = ws.split();
    let reader = async {
        let mut handled = 0usize;
        while let Some(msg) = source.next().await {
            let t = now();
            match msg {
                Ok(Message::Text(text)) => shared.registry.borrow_mut().handle_ws_text(conn, text.as_str(), t),
                Ok(Message::Binary(bytes)) => shared.registry.borrow_mut().handle_ws_binary(conn, &bytes, t),
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {
                    shared.registry.borrow_mut().handle_ws_activity(conn, t)
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
        while let Some(msg) = mailbox.next().await {
            let mut result = feed(&mut sink, msg).await;
            while result.is_ok() {
                match mailbox.try_next() {
                    Some(more) => result = feed(&mut sink, more).await,
                    None => break,
                }
            }
            if result.is_err() || sink.flush().await.is_err() {
                return None;
            }
        }
        mailbox.close_reason().map(|(code, reason)| (CloseCode::from(code), reason))
    };
    // The writer notices a close only between frames; a client that stopped
    // reading leaves it blocked in a write, so the close also comes this way.
    let stop = async {
        let (code, reason) = mailbox.closing().await;
        Some((CloseCode::from(code), reason))
    };
    let close_with = futures_lite::future::or(futures_lite::future::or(reader, writer), stop).await;
    let frame = close_with.map(|(code, reason)| CloseFrame { code, reason: reason.into() });
    // Such a client would not take the close frame either.
    futures_lite::future::or(
        async {
            let _ = sink.close(frame).await;
        },
        async {
            smol::Timer::after(CLOSE_TIMEOUT).await;
            log::info!("connection {conn}: close frame not taken within {CLOSE_TIMEOUT:?}; dropping the socket");
        },
    )
    .await;

    shared.conns.borrow_mut().remove(&conn);
    shared.registry.borrow_mut().handle_ws_closed(conn);
    shared.dispatch();
    shared.departures_due();
    log::info!("peer {} disconnected (connection {conn})", identity.peer_id);
}

/// Queues `msg`, as fragments of [`MAX_OUT_FRAME`] bytes if it is a longer
/// text. Receivers reassemble them; the JSON is split at any byte.
async fn feed<Si>(sink: &mut Si, msg: Message) -> Result<(), WsError>
where
    Si: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    let text = match msg {
        Message::Text(text) if text.len() > MAX_OUT_FRAME => bytes::Bytes::from(text),
        other => return sink.feed(other).await,
    };
    let mut start = 0;
    while start < text.len() {
        let end = (start + MAX_OUT_FRAME).min(text.len());
        let kind = if start == 0 { OpData::Text } else { OpData::Continue };
        let frame = Frame::message(text.slice(start..end), OpCode::Data(kind), end == text.len());
        sink.feed(Message::Frame(frame)).await?;
        start = end;
    }
    Ok(())
}
