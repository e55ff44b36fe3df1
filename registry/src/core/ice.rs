//! `GET /api/config` (docs/PROTOCOL.md, compatible): STUN servers, and the
//! TURN servers of `TURN_URL` (a comma-separated list) with coturn REST
//! credentials when `TURN_SECRET` is set.

use serde_json::{Value, json};

/// coturn's REST scheme: username `<expiry>:mesh`, credential
/// base64(HMAC-SHA1(secret, username)).
pub fn turn_credentials(secret: &str, now_unix: u64) -> (String, String) {
    use ct_codecs::Encoder as _;
    let username = format!("{}:mesh", now_unix + 86_400);
    let mac = hmac_sha1_compact::HMAC::mac(username.as_bytes(), secret.as_bytes());
    let credential = ct_codecs::Base64::encode_to_string(mac).unwrap_or_default();
    (username, credential)
}

/// The registry's own relay, for a caller with a valid JWT: a TURN entry
/// with `host` (the name it reached us by) and the relay's port over UDP
/// and TCP, and `relayWebSocket` for sidecars that speak TURN over their
/// signaling WebSocket (ours; other clients ignore the field). Its
/// `instance` changes when the relay restarts, which ends all allocations.
pub fn add_relay(config: &mut Value, host: &str, port: u16, username: &str, credential: &str, instance: u64) {
    let host = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
    let urls = [format!("turn:{host}:{port}?transport=udp"), format!("turn:{host}:{port}?transport=tcp")];
    if let Some(servers) = config["iceServers"].as_array_mut() {
        servers.push(json!({"urls": urls, "username": username, "credential": credential}));
    }
    config["relayWebSocket"] =
        json!({"username": username, "credential": credential, "instance": format!("{instance:016x}")});
}

/// The host of a `Host` header: without its port, without IPv6 brackets.
pub fn host_of(header: &str) -> String {
    let header = header.trim();
    if let Some(v6) = header.strip_prefix('[') {
        return v6.split(']').next().unwrap_or_default().to_owned();
    }
    header.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(header, |(h, _)| h).to_owned()
}

pub fn ice_config(stun_urls: &[String], turn: Option<(&str, &str)>, now_unix: u64) -> Value {
    let mut servers = Vec::new();
    if !stun_urls.is_empty() {
        servers.push(json!({"urls": stun_urls}));
    }
    if let Some((url, secret)) = turn {
        let (username, credential) = turn_credentials(secret, now_unix);
        let urls: Vec<&str> = url.split(',').map(str::trim).filter(|u| !u.is_empty()).collect();
        servers.push(json!({"urls": urls, "username": username, "credential": credential}));
    }
    json!({"iceServers": servers})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_credentials_follow_coturn_rest() {
        let (user, cred) = turn_credentials("s3cret", 1_000);
        assert_eq!(user, "87400:mesh");
        // HMAC-SHA1("s3cret", "87400:mesh"), computed independently with
        // Python's hmac module.
        assert_eq!(cred, "Z1pc+7Tkq6nfQA+ASqRaqc1D9gM=");
    }

    #[test]
    fn config_has_stun_and_optional_turn() {
        let stun = vec!["stun:stun.l.google.com:19302".to_owned()];
        assert_eq!(ice_config(&stun, None, 0), json!({"iceServers":[{"urls":["stun:stun.l.google.com:19302"]}]}));
        let v = ice_config(&stun, Some(("turn:t:3478", "k")), 0);
        assert_eq!(v["iceServers"][1]["urls"], json!(["turn:t:3478"]));
        assert_eq!(v["iceServers"][1]["username"], "86400:mesh");
        let v = ice_config(&stun, Some(("turn:t:3478, turns:t:5349,", "k")), 0);
        assert_eq!(v["iceServers"][1]["urls"], json!(["turn:t:3478", "turns:t:5349"]));
    }
}
