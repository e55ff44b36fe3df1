//! Cross-origin requests (docs/PROTOCOL.md, CORS): which origins may read
//! an answer, which may write without a credential, and the answer to a
//! preflight. Admin routes never get the wildcard, only an origin the
//! operator listed.

use super::response::ApiResponse;

/// The answer to an `OPTIONS` preflight, whatever the path.
pub(super) fn preflight() -> ApiResponse {
    let mut r = ApiResponse::empty(204);
    r.headers.push(("access-control-allow-methods", "GET, POST, DELETE, OPTIONS".into()));
    r.headers.push(("access-control-allow-headers", "content-type, x-api-key, x-device-token, authorization".into()));
    r.headers.push(("access-control-max-age", "600".into()));
    r
}

/// Adds the CORS headers `origin` is due. `allowed`: `None` for any origin.
pub(super) fn allow_origin(
    resp: &mut ApiResponse,
    allowed: Option<&[String]>,
    origin: Option<&str>,
    admin_route: bool,
) {
    let allow = match allowed {
        None if admin_route => None,
        None => Some("*".to_owned()),
        Some(list) => origin.filter(|o| list.iter().any(|allowed| allowed == o)).map(str::to_owned),
    };
    if let Some(origin) = allow {
        resp.headers.push(("access-control-allow-origin", origin));
        resp.headers.push(("vary", "origin".into()));
    }
}

/// Whether a write (`POST`, `DELETE`, …) from a web page at `origin` must be
/// refused: it carries no credential and comes from neither the registry's
/// own pages nor an origin the operator listed. The wildcard lets any page
/// read; it does not let any page on the network submit tasks or register
/// agents through a visitor's browser (a `text/plain` form post needs no
/// preflight, so answering one after the fact is too late).
pub(super) fn refuses_write(
    method: &str,
    allowed: Option<&[String]>,
    origin: Option<&str>,
    host: Option<&str>,
    has_credential: bool,
) -> bool {
    if matches!(method, "GET" | "HEAD" | "OPTIONS") || has_credential {
        return false;
    }
    let Some(origin) = origin else { return false };
    let authority = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
    let same_origin = authority.is_some_and(|a| host.is_some_and(|h| a.eq_ignore_ascii_case(h)));
    let listed = allowed.is_some_and(|list| list.iter().any(|o| o == origin));
    !(same_origin || listed)
}

#[cfg(test)]
mod tests {
    use super::refuses_write;

    #[test]
    fn writes_from_foreign_pages_need_a_credential_or_a_listed_origin() {
        let list = ["https://dash.example".to_owned()];
        let host = Some("gw.local:8080");
        // Not from a browser, or not a write.
        assert!(!refuses_write("POST", None, None, host, false));
        assert!(!refuses_write("GET", None, Some("https://evil.example"), host, false));
        // The registry's own dashboard.
        assert!(!refuses_write("POST", None, Some("http://gw.local:8080"), host, false));
        assert!(!refuses_write("POST", None, Some("http://GW.local:8080"), host, false));
        // A listed origin, and any origin with a credential.
        assert!(!refuses_write("POST", Some(&list), Some("https://dash.example"), host, false));
        assert!(!refuses_write("DELETE", None, Some("https://evil.example"), host, true));
        // Anything else, the wildcard included.
        assert!(refuses_write("POST", None, Some("https://evil.example"), host, false));
        assert!(refuses_write("POST", Some(&list), Some("https://evil.example"), host, false));
        assert!(refuses_write("POST", None, Some("null"), host, false));
        assert!(refuses_write("POST", None, Some("http://gw.local:8080"), None, false));
        assert!(refuses_write("POST", None, Some("http://gw.local"), host, false));
    }
}
