//! The built-in dashboard (SPEC §8): a page, its script and its style sheet,
//! embedded in the binary and served at `/`, `/dashboard.js` and
//! `/dashboard.css`. The script reads the same REST API as everyone else:
//! agents, topology and tasks without a credential, the pairing routes with
//! the admin API key the user enters (kept in `sessionStorage`).
//!
//! Script and style are separate files rather than inline so that the
//! Content-Security-Policy can forbid every inline script and style.

use crate::core::api::ApiResponse;

pub const INDEX_HTML: &str = include_str!("index.html");
pub const APP_JS: &str = include_str!("app.js");
pub const STYLE_CSS: &str = include_str!("style.css");

/// Same-origin everything, nothing inline, no framing. `img-src data:` only
/// for the empty icon the page declares so the browser does not ask for
/// `/favicon.ico`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asset {
    Page,
    Script,
    Style,
}

impl Asset {
    pub fn content_type(self) -> &'static str {
        match self {
            Asset::Page => "text/html; charset=utf-8",
            Asset::Script => "text/javascript; charset=utf-8",
            Asset::Style => "text/css; charset=utf-8",
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            Asset::Page => INDEX_HTML,
            Asset::Script => APP_JS,
            Asset::Style => STYLE_CSS,
        }
    }

    /// The 200 answer, with headers that keep the page fresh after an
    /// upgrade, stop type sniffing and forbid framing and foreign content.
    pub fn response(self) -> ApiResponse {
        ApiResponse {
            status: 200,
            content_type: self.content_type(),
            body: self.text().as_bytes().to_vec(),
            headers: vec![
                ("cache-control", "no-cache".into()),
                ("x-content-type-options", "nosniff".into()),
                ("content-security-policy", CONTENT_SECURITY_POLICY.into()),
                ("x-frame-options", "DENY".into()),
                ("referrer-policy", "no-referrer".into()),
            ],
        }
    }
}
