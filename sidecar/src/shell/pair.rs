//! `chatixia-sidecar pair`: redeems a pairing code (docs/PROTOCOL.md §3.6) and keeps the
//! device token in the state directory, where the daemon finds it.
//!
//! The token is the device's only credential and the registry hands it out
//! once, so it is written atomically (a crash leaves the old file or the new
//! one, never half of one) and readable by the owner only.

use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::http;
use super::tls::Tls;
use chatixia_settings::text::printable;

/// Name of the token file in the state directory.
pub const TOKEN_FILE: &str = "device_token";
/// Longer than any token the registry issues (`dt_` + 32 hex), short enough
/// that a broken answer cannot fill the disk.
const MAX_TOKEN_LEN: usize = 256;
const TIMEOUT: Duration = Duration::from_secs(15);

/// What `POST /api/pairing/pair` answers (docs/PROTOCOL.md §3.6).
#[derive(Debug, Clone, Deserialize)]
pub struct Paired {
    pub id: String,
    pub status: String,
    pub peer_id: String,
    pub device_token: String,
}

/// Redeems `code` at the registry whose base URL is `registry` (`https://`
/// needs `tls`). A refusal comes back as the registry's own error text.
pub fn redeem(registry: &str, code: &str, name: &str, tls: Option<&Tls>) -> Result<Paired, String> {
    let base = registry.trim().trim_end_matches('/');
    let url = format!("{base}/api/pairing/pair");
    let request = http::Request {
        method: http::Method::Post,
        url: url.clone(),
        header: None,
        json: Some(serde_json::json!({"code": code, "agent_name": name})),
        timeout: TIMEOUT,
        tls: tls.cloned(),
    };
    let (status, body) = http::send_blocking(&request).map_err(|e| format!("cannot reach the registry: {e}"))?;
    if status != 200 {
        return Err(format!("the registry refused (HTTP {status}): {}", error_text(&body)));
    }
    let paired: Paired = serde_json::from_slice(&body).map_err(|e| format!("unexpected answer from {url}: {e}"))?;
    // The token goes into a file and then into an HTTP header: anything but
    // plain visible ASCII would be a broken or hostile registry.
    let token = &paired.device_token;
    if token.is_empty() || token.len() > MAX_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("the registry at {url} answered an unusable device token"));
    }
    Ok(paired)
}

/// The `error` field of a JSON refusal, else the start of the body, made
/// safe to print.
fn error_text(body: &[u8]) -> String {
    let text = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().chars().take(200).collect());
    printable(&text)
}

/// Writes `token` to `dir/device_token` with mode 0600: a temporary file,
/// fsync, rename over the old one, fsync of the directory (so the rename
/// itself survives a power cut). Creates `dir` (0700) if needed.
pub fn store_token(dir: &Path, token: &str) -> std::io::Result<PathBuf> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    chatixia_settings::durable::replace_file(dir, TOKEN_FILE, format!("{token}\n").as_bytes())?;
    Ok(dir.join(TOKEN_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn stores_the_token_privately_and_replaces_an_old_one() {
        let dir = std::env::temp_dir().join(format!("chatixia-pair-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let state = dir.join("nested/state");
        let path = store_token(&state, "dt_old").unwrap();
        assert_eq!(path, state.join(TOKEN_FILE));
        store_token(&state, "dt_0123").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "dt_0123\n");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(&state).unwrap().permissions().mode() & 0o777, 0o700);
        let names: Vec<_> = fs::read_dir(&state).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [TOKEN_FILE], "no temporary file is left behind");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refusals_are_reported_with_the_registry_text() {
        assert_eq!(error_text(br#"{"error":"invalid or expired pairing code"}"#), "invalid or expired pairing code");
        assert_eq!(error_text(b"plain\x1b[31m text"), "plain?[31m text");
        assert_eq!(error_text(b""), "");
    }

    #[test]
    fn unreachable_registries_and_https_without_roots_are_errors() {
        let err = redeem("https://127.0.0.1:9", "123456", "n", None).unwrap_err();
        assert!(err.contains("needs TLS trust roots"), "{err}");
        let tls = Tls::with_roots(Vec::new()).unwrap();
        let err = redeem("https://127.0.0.1:9", "123456", "n", Some(&tls)).unwrap_err();
        assert!(err.contains("cannot reach") && !err.contains("trust roots"), "{err}");
        let err = redeem("http://127.0.0.1:9/", "123456", "n", None).unwrap_err();
        assert!(err.contains("cannot reach"), "{err}");
    }
}
