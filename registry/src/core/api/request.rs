//! An HTTP request as the API sees it: the shell has already taken it apart
//! and bounded the body (docs/PROTOCOL.md, Registry HTTP API).

use super::response::ApiResponse;
use serde::de::DeserializeOwned;
use std::net::IpAddr;

/// Bodies larger than this are refused by the shell before parsing.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The parts of an HTTP request the API looks at.
#[derive(Debug, Clone, Default)]
pub struct ApiRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub api_key: Option<&'a str>,
    pub device_token: Option<&'a str>,
    pub authorization: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub forwarded_for: Option<&'a str>,
    /// The `Host` header: the name or address the client reached us by.
    pub host: Option<&'a str>,
    pub client: Option<IpAddr>,
    pub body: &'a [u8],
}

impl ApiRequest<'_> {
    /// Parses the JSON body for `handle`: not JSON → 400, JSON of the wrong
    /// shape → 422.
    pub fn with_body<T: DeserializeOwned>(&self, handle: impl FnOnce(T) -> ApiResponse) -> ApiResponse {
        match serde_json::from_slice::<T>(self.body) {
            Ok(value) => handle(value),
            Err(e) if e.is_data() => ApiResponse::text(422, format!("invalid request body: {e}")),
            Err(e) => ApiResponse::text(400, format!("request body is not JSON: {e}")),
        }
    }
}

/// One query parameter, percent-decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

/// `%XX` escapes and `+` for a space; a malformed escape stays as it is.
fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = match bytes[i] {
            b'%' if i + 3 <= bytes.len() => hex(bytes[i + 1]).zip(hex(bytes[i + 2])).map(|(h, l)| h << 4 | l),
            _ => None,
        };
        match decoded {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_percent_decoded() {
        assert_eq!(query_param("a=1&token=x%2By%20z+w", "token").as_deref(), Some("x+y z w"));
        assert_eq!(query_param("token=%zz%4", "token").as_deref(), Some("%zz%4"));
        assert_eq!(query_param("a=1", "token"), None);
        assert_eq!(query_param("token=é%C3%A9", "token").as_deref(), Some("éé"));
    }
}
