//! The built-in dashboard: a page, its script and its style sheet, embedded
//! in the binary and served at `/`, `/dashboard.js` and `/dashboard.css`.
//! The script reads the same REST API as everyone else: agents, topology
//! and tasks without a credential, the pairing routes with the admin API
//! key the user enters (kept in `sessionStorage`).
//!
//! Script and style are separate files rather than inline so that the
//! Content-Security-Policy can forbid every inline script and style.

pub const INDEX_HTML: &str = include_str!("index.html");
pub const APP_JS: &str = include_str!("app.js");
pub const STYLE_CSS: &str = include_str!("style.css");

/// Same-origin everything, nothing inline, no framing. `img-src data:` only
/// for the empty icon the page declares so the browser does not ask for
/// `/favicon.ico`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// Headers of every asset's answer: they keep the page fresh after an
/// upgrade, stop type sniffing and forbid framing and foreign content.
pub const HEADERS: [(&str, &str); 5] = [
    ("cache-control", "no-cache"),
    ("x-content-type-options", "nosniff"),
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
];

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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dashboard_loads_nothing_from_elsewhere_and_never_parses_server_text_as_markup() {
        // The SVG namespace name is an identifier for createElementNS, not
        // something the browser loads; it is the only URL allowed.
        let svg_ns = "\"http://www.w3.org/2000/svg\"";
        assert_eq!(APP_JS.matches(svg_ns).count(), 1);
        let js = APP_JS.replace(svg_ns, "");
        for (name, text) in [("index.html", INDEX_HTML), ("app.js", js.as_str()), ("style.css", STYLE_CSS)] {
            for banned in ["http://", "https://", "//cdn", "@import", "url("] {
                assert!(!text.contains(banned), "{name} contains {banned:?}");
            }
        }
        for banned in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function("] {
            assert!(!APP_JS.contains(banned), "app.js uses {banned}");
        }
        // Nothing inline, which the Content-Security-Policy would block.
        assert_eq!(INDEX_HTML.matches("<script").count(), 1);
        assert!(!INDEX_HTML.contains("<style") && !INDEX_HTML.contains("style="));
        let inline_handler = INDEX_HTML.split(" on").skip(1).any(|rest| {
            let name: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert!(!inline_handler, "an on…= attribute in index.html");
        let total = INDEX_HTML.len() + APP_JS.len() + STYLE_CSS.len();
        assert!(total < 30 * 1024, "the dashboard is {total} bytes");
    }
}
