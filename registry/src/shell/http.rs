//! One HTTP/1.1 connection served by hyper; `/ws` hands over to [`super::ws`].

use super::{Shared, SocketGuard, lean_stream::LeanStream, now, ws};
use crate::core::api::request::{ApiRequest, MAX_BODY_BYTES};
use crate::core::api::response::ApiResponse;
use async_tungstenite::tungstenite::handshake::derive_accept_key;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response};
use smol::{Async, LocalExecutor};
use smol_hyper::rt::{FuturesIo, SmolTimer};
use std::convert::Infallible;
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;

type Body = Full<Bytes>;

pub(super) async fn serve(
    ex: Rc<LocalExecutor<'static>>,
    shared: Rc<Shared>,
    stream: Async<TcpStream>,
    peer: SocketAddr,
    guard: Rc<SocketGuard>,
) {
    let http_timeout = shared.config.http_timeout;
    let service = hyper::service::service_fn(move |req| {
        let (ex, shared, guard) = (ex.clone(), shared.clone(), guard.clone());
        async move { Ok::<_, Infallible>(handle(ex, shared, req, peer, guard).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(SmolTimer::new())
        .header_read_timeout(http_timeout)
        .max_buf_size(64 * 1024)
        .serve_connection(FuturesIo::new(stream), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        log::debug!("HTTP connection from {peer} ended: {e}");
    }
}

async fn handle(
    ex: Rc<LocalExecutor<'static>>,
    shared: Rc<Shared>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    guard: Rc<SocketGuard>,
) -> Response<Body> {
    if req.uri().path() == "/ws" && req.method() == hyper::Method::GET {
        return upgrade(ex, shared, &mut req, peer, guard);
    }
    let (parts, body) = req.into_parts();
    let collect = async { Some(Limited::new(body, MAX_BODY_BYTES).collect().await) };
    let deadline = async {
        smol::Timer::after(shared.config.http_timeout).await;
        None
    };
    let body = match futures_lite::future::or(collect, deadline).await {
        Some(Ok(collected)) => collected.to_bytes(),
        Some(Err(_)) => return to_hyper(ApiResponse::text(413, format!("request body over {MAX_BODY_BYTES} bytes"))),
        None => {
            log::info!(
                "{} {} from {peer}: body not complete within {:?}",
                parts.method,
                parts.uri.path(),
                shared.config.http_timeout
            );
            // hyper closes a connection whose body was not read to the end.
            return to_hyper(ApiResponse::text(408, "request body not received in time"));
        }
    };
    let headers = &parts.headers;
    let api_req = ApiRequest {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        api_key: header_str(headers, "x-api-key"),
        device_token: header_str(headers, "x-device-token"),
        authorization: header_str(headers, "authorization"),
        origin: header_str(headers, "origin"),
        forwarded_for: header_str(headers, "x-forwarded-for"),
        host: header_str(headers, "host"),
        client: Some(peer.ip()),
        body: &body,
    };
    let (mut resp, changed) = {
        let mut registry = shared.registry.borrow_mut();
        let before = registry.revisions();
        let resp = registry.handle_http(&api_req, now());
        (resp, registry.revisions() != before)
    };
    // Effects on sockets (a revocation closing them) go out at once; the
    // answer only once the change is on disk, so that an acknowledged
    // change survives a crash.
    shared.dispatch();
    if changed && let Err(e) = shared.persister.save(&shared.registry).await {
        log::error!("{} {}: the change was made but could not be saved: {e}", api_req.method, api_req.path);
        let headers = std::mem::take(&mut resp.headers);
        resp = ApiResponse::json(
            500,
            &serde_json::json!({"error": "the change could not be saved; see the registry log"}),
        );
        resp.headers = headers;
    }
    to_hyper(resp)
}

/// Verifies the token, answers 101 and runs the WebSocket once hyper has
/// handed the socket over. A bad or missing token gets 401 and no upgrade.
fn upgrade(
    ex: Rc<LocalExecutor<'static>>,
    shared: Rc<Shared>,
    req: &mut Request<Incoming>,
    peer: SocketAddr,
    guard: Rc<SocketGuard>,
) -> Response<Body> {
    let query = req.uri().query().unwrap_or("").to_owned();
    let identity = match shared.registry.borrow_mut().handle_ws_upgrade(&query, now()) {
        Ok(id) => id,
        Err(resp) => return to_hyper(resp),
    };
    let headers = req.headers();
    let is_websocket = header_str(headers, "upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    let Some(key) = header_str(headers, "sec-websocket-key").filter(|_| is_websocket) else {
        return to_hyper(ApiResponse::text(400, "expected a WebSocket upgrade"));
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(req);
    ex.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => return log::info!("WebSocket upgrade from {peer} failed: {e}"),
        };
        let Ok(parts) = upgraded.downcast::<FuturesIo<Async<TcpStream>>>() else {
            return log::error!("upgraded connection from {peer} is not a TCP stream");
        };
        let stream = LeanStream::new(parts.read_buf, parts.io.into_inner());
        ws::run(shared, stream, identity, peer, guard).await;
    })
    .detach();
    let mut resp = Response::new(Body::default());
    *resp.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn to_hyper(resp: ApiResponse) -> Response<Body> {
    let mut out = Response::new(Body::new(Bytes::from(resp.body)));
    *out.status_mut() = hyper::StatusCode::from_u16(resp.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let h = out.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(resp.content_type));
    for (name, value) in resp.headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.append(name, v);
        }
    }
    out
}
