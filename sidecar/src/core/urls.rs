//! The URLs a sidecar is configured with, checked once at startup so that a
//! typo is reported then, not on every retry: the registry's token endpoint
//! (`http://`, `https://`), its WebSocket (`ws://`, `wss://`) and STUN
//! servers (`stun:`).

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Checks that `url` is something this build can request, so that a wrong
/// scheme is reported once, at startup, instead of on every retry.
pub fn check_url(url: &str) -> Result<(), String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("{url:?} is not a URL"))?;
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        other => return Err(format!("unsupported scheme {other:?} in {url:?}; expected http:// or https://")),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    split_host_port(authority, default_port).map(|_| ()).map_err(|e| format!("{e} in {url:?}"))
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

/// `base` with `token=<token>` added to its query, whether or not it
/// already has one (docs/PROTOCOL.md "Signaling client"). A fragment is dropped: it never reaches a
/// server.
pub fn url_with_token(base: &str, token: &str) -> String {
    let base = base.split('#').next().unwrap_or(base);
    let mut url = base.to_owned();
    if !url.contains('?') {
        url.push('?');
    } else if !url.ends_with('?') && !url.ends_with('&') {
        url.push('&');
    }
    url.push_str("token=");
    for b in token.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

/// Host and port of a `ws://` or `wss://` URL, and whether it is TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

pub fn ws_endpoint(url: &str) -> Result<Endpoint, String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("{url:?} is not a URL"))?;
    let (default_port, tls) = match scheme.to_ascii_lowercase().as_str() {
        "ws" => (80, false),
        "wss" => (443, true),
        other => return Err(format!("unsupported scheme {other:?} in SIGNALING_URL; expected ws:// or wss://")),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let (host, port) = split_host_port(authority, default_port).map_err(|e| format!("{e} in {url:?}"))?;
    Ok(Endpoint { host, port, tls })
}

/// The port of a `stun:` URL without one (RFC 7064).
pub const STUN_DEFAULT_PORT: u16 = 3478;

/// One STUN server from `STUN_URLS`, before name resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StunServer {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for StunServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl StunServer {
    /// The address, when the host is an IP literal (no lookup needed).
    pub fn literal(&self) -> Option<SocketAddr> {
        self.host.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, self.port))
    }
}

/// Why a `STUN_URLS` entry is not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlError {
    /// A valid kind of URL this sidecar cannot use (`stuns:`, `turn:`).
    Unsupported(String),
    Invalid(String),
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UrlError::Unsupported(m) | UrlError::Invalid(m) => f.write_str(m),
        }
    }
}

/// `stun:host`, `stun:host:port`, `stun:[v6]` or `stun:[v6]:port`
/// (RFC 7064; a `?transport=udp` query is tolerated).
pub fn parse_stun_url(url: &str) -> Result<StunServer, UrlError> {
    let url = url.trim();
    let (scheme, rest) = url.split_once(':').ok_or_else(|| UrlError::Invalid("no scheme".into()))?;
    let scheme = scheme.to_ascii_lowercase();
    match scheme.as_str() {
        "stun" => {}
        "stuns" | "turn" | "turns" => {
            return Err(UrlError::Unsupported(format!("{scheme}: is not a STUN URL (plain stun: only)")));
        }
        _ => return Err(UrlError::Invalid(format!("unknown scheme {scheme:?}"))),
    }
    let rest = match rest.split_once('?') {
        Some((r, query)) if query.eq_ignore_ascii_case("transport=udp") => r,
        Some(_) => return Err(UrlError::Invalid("only ?transport=udp is understood".into())),
        None => rest,
    };
    let (host, port) = host_and_port(rest, STUN_DEFAULT_PORT)?;
    Ok(StunServer { host, port })
}

/// `host`, `host:port`, `[v6]` or `[v6]:port` of a `stun:`/`turn:` URL.
fn host_and_port(rest: &str, default_port: u16) -> Result<(String, u16), UrlError> {
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| UrlError::Invalid("unclosed [".into()))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(UrlError::Invalid(format!("{host:?} is not an IPv6 address")));
        }
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':').ok_or_else(|| UrlError::Invalid("junk after ]".into()))?)),
        }
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    let valid_name = |h: &str| {
        !h.is_empty() && h.len() <= 253 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    };
    if !host.contains(':') && !valid_name(host) {
        return Err(UrlError::Invalid(format!("bad host {host:?}")));
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => return Err(UrlError::Invalid(format!("bad port {p:?}"))),
        },
    };
    Ok((host.to_owned(), port))
}

/// The usable servers of a comma-separated `STUN_URLS`; the others are
/// logged and skipped, never fatal.
pub fn parse_stun_urls(list: &str) -> Vec<StunServer> {
    let mut out: Vec<StunServer> = Vec::new();
    for url in list.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        match parse_stun_url(url) {
            Ok(s) if !out.contains(&s) => out.push(s),
            Ok(_) => {}
            Err(e) => log::warn!("STUN_URLS: ignoring {url:?}: {e}"),
        }
    }
    out
}

/// The port of a `turn:` URL without one (RFC 7065); `turns:` uses 5349.
pub const TURN_DEFAULT_PORT: u16 = 3478;
pub const TURNS_DEFAULT_PORT: u16 = 5349;

/// How a sidecar reaches a TURN server. The relayed leg, from the server to
/// the peers, is UDP in every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TurnTransport {
    Udp,
    Tcp,
    /// TCP with TLS (`turns:`), checked against the same trust roots as the
    /// registry's `https://`/`wss://`.
    Tls,
    /// The registry's own relay, reached over the signaling WebSocket
    /// (binary frames carrying TURN's stream framing): no URL, no address;
    /// works wherever the registry's WebSocket does.
    Signaling,
}

impl TurnTransport {
    pub fn as_str(self) -> &'static str {
        match self {
            TurnTransport::Udp => "udp",
            TurnTransport::Tcp => "tcp",
            TurnTransport::Tls => "tls",
            TurnTransport::Signaling => "websocket",
        }
    }
}

/// One TURN server from `TURN_URL` or the registry's ICE servers, before
/// name resolution.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TurnUrl {
    pub host: String,
    pub port: u16,
    pub transport: TurnTransport,
}

impl fmt::Display for TurnUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.transport == TurnTransport::Signaling {
            return f.write_str("the registry's relay over the signaling WebSocket");
        }
        let scheme = if self.transport == TurnTransport::Tls { "turns" } else { "turn" };
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        write!(f, "{scheme}:{host}:{}", self.port)?;
        if self.transport == TurnTransport::Tcp {
            f.write_str("?transport=tcp")?;
        }
        Ok(())
    }
}

impl TurnUrl {
    /// The registry's relay over the signaling WebSocket.
    pub fn signaling() -> TurnUrl {
        TurnUrl { host: String::new(), port: 0, transport: TurnTransport::Signaling }
    }

    /// The address, when the host is an IP literal (no lookup needed). The
    /// signaling WebSocket needs none: it stands for an unspecified one.
    pub fn literal(&self) -> Option<SocketAddr> {
        if self.transport == TurnTransport::Signaling {
            return Some(SocketAddr::from(([0, 0, 0, 0], 0)));
        }
        self.host.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, self.port))
    }
}

/// `turn:host[:port][?transport=udp|tcp]` or `turns:host[:port]` (RFC 7065;
/// `?transport=tcp` is the only transport `turns:` takes).
pub fn parse_turn_url(url: &str) -> Result<TurnUrl, UrlError> {
    let url = url.trim();
    let (scheme, rest) = url.split_once(':').ok_or_else(|| UrlError::Invalid("no scheme".into()))?;
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "turn" => false,
        "turns" => true,
        "stun" | "stuns" => return Err(UrlError::Unsupported(format!("{scheme}: is not a TURN URL"))),
        other => return Err(UrlError::Invalid(format!("unknown scheme {other:?}"))),
    };
    let (rest, transport) = match rest.split_once('?') {
        None => (rest, if tls { TurnTransport::Tls } else { TurnTransport::Udp }),
        Some((r, query)) => match (query.to_ascii_lowercase().as_str(), tls) {
            ("transport=udp", false) => (r, TurnTransport::Udp),
            ("transport=tcp", false) => (r, TurnTransport::Tcp),
            ("transport=tcp", true) => (r, TurnTransport::Tls),
            _ => return Err(UrlError::Invalid(format!("unsupported query {query:?}"))),
        },
    };
    let default_port = if tls { TURNS_DEFAULT_PORT } else { TURN_DEFAULT_PORT };
    let (host, port) = host_and_port(rest, default_port)?;
    Ok(TurnUrl { host, port, transport })
}

/// The usable servers of a comma-separated `TURN_URL`; the others are
/// logged and skipped, never fatal.
pub fn parse_turn_urls(list: &str) -> Vec<TurnUrl> {
    let mut out: Vec<TurnUrl> = Vec::new();
    for url in list.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        match parse_turn_url(url) {
            Ok(t) if !out.contains(&t) => out.push(t),
            Ok(_) => {}
            Err(e) => log::warn!("TURN_URL: ignoring {url:?}: {e}"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_http_and_https_urls_pass() {
        assert!(check_url("http://localhost:8080/api/token").is_ok());
        assert!(check_url("HTTP://[::1]/t?x=1#f").is_ok());
        assert!(check_url("http://h").is_ok());
        assert!(check_url("https://h/").is_ok());
        assert!(check_url("HTTPS://127.0.0.1:8443/api/token").is_ok());
        assert!(check_url("https://[::1]:x/").is_err());
        assert!(check_url("ftp://h/").unwrap_err().contains("expected http:// or https://"));
        assert!(check_url("http://h:x/").is_err());
        assert!(check_url("http:///x").is_err());
        assert!(check_url("nonsense").is_err());
    }

    #[test]
    fn token_is_appended_to_any_query() {
        assert_eq!(url_with_token("ws://h:8080/ws", "a.b-c_d"), "ws://h:8080/ws?token=a.b-c_d");
        assert_eq!(url_with_token("ws://h/ws?room=1", "t"), "ws://h/ws?room=1&token=t");
        assert_eq!(url_with_token("ws://h/ws?", "t"), "ws://h/ws?token=t");
        assert_eq!(url_with_token("ws://h/ws?a=1&", "t"), "ws://h/ws?a=1&token=t");
        assert_eq!(url_with_token("ws://h/ws#frag", "t+/="), "ws://h/ws?token=t%2B%2F%3D");
    }

    #[test]
    fn endpoints_of_ws_urls() {
        let e = |u: &str| ws_endpoint(u);
        let plain = |host: &str, port| Endpoint { host: host.into(), port, tls: false };
        let tls = |host: &str, port| Endpoint { host: host.into(), port, tls: true };
        assert_eq!(e("ws://localhost:8080/ws").unwrap(), plain("localhost", 8080));
        assert_eq!(e("ws://example.org/ws?x=1").unwrap(), plain("example.org", 80));
        assert_eq!(e("WS://[::1]:9000").unwrap(), plain("::1", 9000));
        assert_eq!(e("ws://u:p@h:1/").unwrap(), plain("h", 1));
        assert_eq!(e("wss://h/ws").unwrap(), tls("h", 443));
        assert_eq!(e("WSS://127.0.0.1:8443/ws?x=1").unwrap(), tls("127.0.0.1", 8443));
        assert_eq!(e("wss://[::1]:9/").unwrap(), tls("::1", 9));
        assert!(e("http://h/ws").unwrap_err().contains("expected ws:// or wss://"));
        assert!(e("ws://:80/").is_err());
        assert!(e("ws://h:99999/").is_err());
        assert!(e("nonsense").is_err());
    }

    #[test]
    fn urls() {
        let ok = |u: &str| parse_stun_url(u).unwrap();
        assert_eq!(ok("stun:stun.l.google.com:19302"), StunServer { host: "stun.l.google.com".into(), port: 19302 });
        assert_eq!(ok("stun:example.org"), StunServer { host: "example.org".into(), port: 3478 });
        assert_eq!(ok(" STUN:192.0.2.1:1 "), StunServer { host: "192.0.2.1".into(), port: 1 });
        assert_eq!(ok("stun:[::1]:3479"), StunServer { host: "::1".into(), port: 3479 });
        assert_eq!(ok("stun:[2001:db8::1]"), StunServer { host: "2001:db8::1".into(), port: 3478 });
        assert_eq!(ok("stun:h:5?transport=udp").port, 5);
        assert_eq!(ok("stun:[::1]:3479").to_string(), "[::1]:3479");
        assert_eq!(ok("stun:[::1]:3479").literal(), Some(addr("[::1]:3479")));
        assert_eq!(ok("stun:example.org").literal(), None);
        for u in ["stuns:x:5349", "turn:x:3478", "TURNS:x"] {
            assert!(matches!(parse_stun_url(u), Err(UrlError::Unsupported(_))), "{u}");
        }
        for u in [
            "",
            "stun",
            "stun:",
            "http://x",
            "stun:host:0",
            "stun:host:99999",
            "stun:host:port",
            "stun:[::1",
            "stun:[nothost]:1",
            "stun:[::1]x",
            "stun:::1",
            "stun:ho st",
            "stun:h:5?transport=tcp",
            "stun:a:1:2",
        ] {
            assert!(matches!(parse_stun_url(u), Err(UrlError::Invalid(_))), "{u:?}");
        }
        let list = parse_stun_urls("stun:a:1, turn:b, bogus,,stun:a:1 ,stun:[::1]");
        assert_eq!(list.iter().map(|s| s.to_string()).collect::<Vec<_>>(), ["a:1", "[::1]:3478"]);
        assert!(parse_stun_urls("").is_empty());
    }

    #[test]
    fn turn_urls() {
        let ok = |u: &str| parse_turn_url(u).unwrap();
        let t = |host: &str, port, transport| TurnUrl { host: host.into(), port, transport };
        assert_eq!(ok("turn:turn.example.org"), t("turn.example.org", 3478, TurnTransport::Udp));
        assert_eq!(ok("turn:192.0.2.1:3479?transport=udp"), t("192.0.2.1", 3479, TurnTransport::Udp));
        assert_eq!(ok("TURN:h:1?transport=TCP"), t("h", 1, TurnTransport::Tcp));
        assert_eq!(ok("turns:h"), t("h", 5349, TurnTransport::Tls));
        assert_eq!(ok("turns:[2001:db8::1]:443?transport=tcp"), t("2001:db8::1", 443, TurnTransport::Tls));
        assert_eq!(ok("turns:[2001:db8::1]:443").to_string(), "turns:[2001:db8::1]:443");
        assert_eq!(ok("turn:h:5?transport=tcp").to_string(), "turn:h:5?transport=tcp");
        assert_eq!(ok("turn:192.0.2.1").literal(), Some(addr("192.0.2.1:3478")));
        assert!(matches!(parse_turn_url("stun:h"), Err(UrlError::Unsupported(_))));
        for u in ["", "turn:", "turn:h:0", "turns:h?transport=udp", "turn:h?transport=sctp", "http://h", "turn:h h"] {
            assert!(matches!(parse_turn_url(u), Err(UrlError::Invalid(_))), "{u:?}");
        }
        let list = parse_turn_urls("turn:a, turns:a, bogus, turn:a:3478");
        assert_eq!(list, [t("a", 3478, TurnTransport::Udp), t("a", 5349, TurnTransport::Tls)]);
    }
}
