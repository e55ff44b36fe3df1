//! Cross-origin requests (docs/PROTOCOL.md, CORS): which origins may read
//! an answer, and the answer to a preflight. Admin routes never get the
//! wildcard, only an origin the operator listed.

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
