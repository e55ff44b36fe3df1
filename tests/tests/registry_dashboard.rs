//! The built-in dashboard (README, dashboard) served by the real registry: the page,
//! the assets it references, their headers, and the API routes its script
//! reads.

use chatixia_e2e::{Registry, Reply, Scratch};

/// The value of every `attr="…"` in `html`.
fn attribute_values<'a>(html: &'a str, attr: &str) -> Vec<&'a str> {
    let needle = format!(" {attr}=\"");
    html.match_indices(&needle)
        .filter_map(|(at, _)| {
            let rest = &html[at + needle.len()..];
            rest.find('"').map(|end| &rest[..end])
        })
        .collect()
}

fn assert_strict_headers(reply: &Reply, what: &str) {
    assert_eq!(reply.status, 200, "{what}: {reply:?}");
    assert_eq!(reply.header("cache-control"), Some("no-cache"), "{what}");
    assert_eq!(reply.header("x-content-type-options"), Some("nosniff"), "{what}");
    assert_eq!(reply.header("x-frame-options"), Some("DENY"), "{what}");
    let csp = reply.header("content-security-policy").unwrap_or_default();
    assert!(csp.starts_with("default-src 'self';") && !csp.contains("unsafe-"), "{what}: {csp}");
}

#[test]
fn the_page_and_every_asset_it_references_come_from_the_registry() {
    let dir = Scratch::new("dashboard-page");
    let reg = Registry::start_default(dir.path());
    let page = reg.get("/");
    assert_strict_headers(&page, "/");
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(page.body.starts_with("<!doctype html>"), "{}", &page.body[..page.body.len().min(200)]);

    let mut assets: Vec<&str> = attribute_values(&page.body, "src");
    assets.extend(attribute_values(&page.body, "href").into_iter().filter(|h| *h != "data:,"));
    assets.sort();
    assert_eq!(assets, ["/dashboard.css", "/dashboard.js"], "the page loads exactly its own two assets");
    for (path, content_type) in [("/dashboard.js", "text/javascript"), ("/dashboard.css", "text/css")] {
        let reply = reg.get(path);
        assert_strict_headers(&reply, path);
        assert_eq!(reply.header("content-type"), Some(&*format!("{content_type}; charset=utf-8")), "{path}");
        assert!(reply.body.len() > 1000, "{path} is {} bytes", reply.body.len());
    }
    // The page is not an admin route: no credential, CORS as configured.
    assert_eq!(
        reg.request("GET", "/", &[("Origin", "http://elsewhere")], None).header("access-control-allow-origin"),
        Some("*")
    );
    assert_eq!(reg.request("POST", "/", &[], Some("")).status, 404);
}

#[test]
fn the_routes_the_script_reads_answer_as_it_expects() {
    let dir = Scratch::new("dashboard-routes");
    let reg = Registry::start_default(dir.path());
    let script = reg.get("/dashboard.js").body;
    // Every `call("METHOD", "/path"` with a literal path.
    let calls: Vec<(&str, &str)> = script
        .match_indices("call(\"")
        .filter_map(|(at, _)| {
            let rest = &script[at + 6..];
            let (method, rest) = rest.split_once("\", \"")?;
            let path = rest.split_once('"')?.0;
            let is_method = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
            (is_method && path.starts_with('/')).then_some((method, path))
        })
        .collect();
    let mut paths: Vec<&str> = calls.iter().map(|(_, p)| *p).collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/api/hub/network/topology",
            "/api/hub/tasks/all",
            "/api/pairing/all",
            "/api/pairing/generate-code",
            "/api/registry/agents"
        ],
        "{calls:?}"
    );
    let admin = [("X-API-Key", "key-admin")];
    for (method, path) in calls {
        let reply = reg.request(method, path, &admin, None);
        assert_eq!(reply.status, 200, "{method} {path}: {reply:?}");
        let body = reply.json();
        assert!(body.get("error").is_none(), "{method} {path}: {body}");
        if path == "/api/pairing/generate-code" {
            assert_eq!(body["expires_in"], 300);
        } else if path.starts_with("/api/pairing/") {
            // Admin only: the page sends its stored key and clears it on 401/403.
            assert_eq!(reg.request(method, path, &[], None).status, 401, "{path}");
            assert_eq!(reg.request(method, path, &[("X-API-Key", "key-alpha")], None).status, 403, "{path}");
        } else {
            assert_eq!(reg.get(path).status, 200, "{path} needs no credential");
        }
    }
}
