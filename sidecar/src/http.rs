//! The one HTTP request the sidecar makes: `POST TOKEN_URL` (SPEC §2.2).
//!
//! Written against the async socket directly instead of through an HTTP
//! client crate: it keeps the request on the event loop (no helper thread,
//! SPEC §6.3's thread budget) and costs a few KiB of the 4 MiB binary
//! budget instead of a few hundred. httparse is already linked for the
//! WebSocket handshake.

use std::net::{IpAddr, SocketAddr, TcpStream};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use smol::Async;

/// Responses larger than this are not token responses.
const MAX_RESPONSE: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;

/// Host, port and path of an `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    pub host: String,
    pub port: u16,
    /// Path and query, at least `/`.
    pub target: String,
}

impl HttpUrl {
    pub fn parse(url: &str) -> Result<HttpUrl, String> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("{url:?} is not a URL"))?;
        let default_port = match scheme.to_ascii_lowercase().as_str() {
            "http" => 80,
            "https" => {
                return Err("https:// is not supported by this build; use http:// (e.g. through a TLS tunnel)".into());
            }
            other => return Err(format!("unsupported scheme {other:?}; expected http://")),
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let (authority, target) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = split_host_port(authority, default_port).map_err(|e| format!("{e} in {url:?}"))?;
        let target = if target.starts_with('?') { format!("/{target}") } else { target.to_owned() };
        if target.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(format!("invalid characters in the path of {url:?}"));
        }
        Ok(HttpUrl { host, port, target })
    }

    /// The `Host` header value.
    fn host_header(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        if self.port == 80 { host } else { format!("{host}:{}", self.port) }
    }
}

/// Splits `host[:port]`, `[v6][:port]`, dropping any `user@`.
pub fn split_host_port(authority: &str, default_port: u16) -> Result<(String, u16), String> {
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or("bad IPv6 host")?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    if host.bytes().any(|b| b <= b' ' || b == b'/' || b == 0x7f) {
        return Err("invalid host".into());
    }
    let port = match port {
        Some(p) => p.parse().map_err(|_| "bad port")?,
        None => default_port,
    };
    Ok((host.to_owned(), port))
}

/// Resolves and connects, trying every address. Literal addresses need no
/// lookup; names are resolved on smol's blocking pool (getaddrinfo blocks).
pub async fn connect(host: &str, port: u16) -> Result<Async<TcpStream>, String> {
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => smol::net::resolve((host, port)).await.map_err(|e| format!("cannot resolve {host}: {e}"))?,
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

/// `POST url` with an empty body and one extra header; returns the status
/// and body.
pub async fn post_empty(url: &HttpUrl, header: (&str, &str)) -> Result<(u16, Vec<u8>), String> {
    if header.1.bytes().any(|b| b == b'\r' || b == b'\n') {
        return Err(format!("the {} value must not contain line breaks", header.0));
    }
    let mut tcp = connect(&url.host, url.port).await?;
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\n{}: {}\r\nContent-Length: 0\r\nAccept: application/json\r\n\
         Connection: close\r\nUser-Agent: chatixia-sidecar/{}\r\n\r\n",
        url.target,
        url.host_header(),
        header.0,
        header.1,
        env!("CARGO_PKG_VERSION")
    );
    tcp.write_all(request.as_bytes()).await.map_err(|e| format!("sending the request: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(done) = parse_response(&buf)? {
            return Ok(done);
        }
        if buf.len() > MAX_RESPONSE {
            return Err(format!("response larger than {MAX_RESPONSE} bytes"));
        }
        let n = tcp.read(&mut chunk).await.map_err(|e| format!("reading the response: {e}"))?;
        if n == 0 {
            return parse_response_at_eof(&buf);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A complete response in `buf`, `None` while more is needed.
fn parse_response(buf: &[u8]) -> Result<Option<(u16, Vec<u8>)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("malformed HTTP response: {e}")),
    };
    let status = resp.code.unwrap_or(0);
    let header = |name: &str| {
        resp.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| String::from_utf8_lossy(h.value))
    };
    let body = &buf[head_len..];
    if header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        return Ok(decode_chunked(body)?.map(|b| (status, b)));
    }
    match header("content-length") {
        Some(len) => {
            let len: usize = len.trim().parse().map_err(|_| "bad Content-Length".to_owned())?;
            Ok((body.len() >= len).then(|| (status, body[..len].to_vec())))
        }
        // Without a length the body ends with the connection.
        None => Ok(None),
    }
}

fn parse_response_at_eof(buf: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => Ok((resp.code.unwrap_or(0), buf[n..].to_vec())),
        _ => Err("connection closed before a complete response".into()),
    }
}

/// The body of a complete chunked encoding, `None` while incomplete.
fn decode_chunked(mut data: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
        let size_text = std::str::from_utf8(&data[..eol]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| format!("bad chunk size {size_text:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(Some(body));
        }
        if data.len() < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn parses_http_urls() {
        let u = HttpUrl::parse("http://localhost:8080/api/token").unwrap();
        assert_eq!(u, HttpUrl { host: "localhost".into(), port: 8080, target: "/api/token".into() });
        assert_eq!(u.host_header(), "localhost:8080");
        let u = HttpUrl::parse("HTTP://[::1]/t?x=1#f").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.target.as_str()), ("::1", 80, "/t?x=1"));
        assert_eq!(u.host_header(), "[::1]");
        assert_eq!(HttpUrl::parse("http://h").unwrap().target, "/");
        assert_eq!(HttpUrl::parse("http://h?q").unwrap().target, "/?q");
        assert!(HttpUrl::parse("https://h/").unwrap_err().contains("https://"));
        assert!(HttpUrl::parse("ftp://h/").is_err());
        assert!(HttpUrl::parse("http://h:x/").is_err());
        assert!(HttpUrl::parse("http:///x").is_err());
        assert!(HttpUrl::parse("http://h/a b").is_err());
    }

    #[test]
    fn parses_responses_by_length_chunks_or_eof() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse_response(r).unwrap(), Some((200, b"hello".to_vec())));
        assert_eq!(parse_response(&r[..r.len() - 1]).unwrap(), None);
        assert_eq!(
            parse_response(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n").unwrap(),
            Some((401, vec![]))
        );
        let c = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(c).unwrap(), Some((200, b"abcde".to_vec())));
        assert_eq!(parse_response(&c[..c.len() - 7]).unwrap(), None);
        let e = b"HTTP/1.0 200 OK\r\n\r\nuntil eof";
        assert_eq!(parse_response(e).unwrap(), None);
        assert_eq!(parse_response_at_eof(e).unwrap(), (200, b"until eof".to_vec()));
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
        assert!(parse_response_at_eof(b"HTTP/1.1 200").is_err());
        assert!(decode_chunked(b"zz\r\n").is_err());
    }

    #[test]
    fn posts_with_the_header_and_reads_the_answer() {
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
            // Answer in two pieces, as a slow server would.
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"a\"").unwrap();
            s.flush().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
            s.write_all(b":\"ok\"}").unwrap();
            String::from_utf8(req).unwrap()
        });
        let url = HttpUrl::parse(&format!("http://127.0.0.1:{port}/api/token?x=1")).unwrap();
        let (status, body) = smol::block_on(post_empty(&url, ("X-API-Key", "k-1"))).unwrap();
        assert_eq!((status, body.as_slice()), (200, &b"{\"a\":\"ok\"}"[..]));
        let req = server.join().unwrap();
        assert!(req.starts_with("POST /api/token?x=1 HTTP/1.1\r\n"), "{req}");
        assert!(req.contains(&format!("\r\nHost: 127.0.0.1:{port}\r\n")), "{req}");
        assert!(req.contains("\r\nX-API-Key: k-1\r\n"), "{req}");
        assert!(req.contains("\r\nContent-Length: 0\r\n"), "{req}");

        let err = smol::block_on(post_empty(&url, ("X-API-Key", "a\r\nX-Evil: 1"))).unwrap_err();
        assert!(err.contains("line breaks"), "{err}");
    }
}
