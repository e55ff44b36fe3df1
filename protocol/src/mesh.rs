//! The message carried on a `mesh` DataChannel (docs/PROTOCOL.md §5.2–5.3, compatible).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Label of the DataChannel the offerer creates.
pub const DATA_CHANNEL_LABEL: &str = "mesh";

/// Largest serialized message sent by default (`MAX_MESSAGE_BYTES`): every
/// IPC `message` line then stays under the 64 KiB the original Python agent
/// reads, and every message fits the original sidecar's 65,535-byte limit.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 65_000;
/// No setting raises the message limit beyond this (docs/PROTOCOL.md).
pub const MAX_MESSAGE_BYTES_CEILING: usize = 256 * 1024;

/// The path one link's data takes, as a sidecar reports it in IPC `status`
/// and in `mesh_status` (docs/PROTOCOL.md §5.4). New: old peers ignore it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathReport {
    /// Our end: `host` (any of our addresses) or `relay` (a TURN server's).
    pub local: String,
    /// The remote end: `host`, `srflx`, `prflx` or `relay`.
    pub remote: String,
    /// How we reach our end: `udp`, or for a relay `udp`, `tcp` or `tls` to
    /// the TURN server.
    pub local_transport: String,
    /// How the remote end is reached from ours: always `udp` (ICE).
    pub remote_transport: String,
    /// Round trip of the last ICE check on the pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
}

/// One text DataChannel message. Defaults are filled and all five keys are
/// always emitted; unknown keys are dropped; a missing or non-string `type`
/// is rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeshMessage {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub request_id: String,
    #[serde(default)]
    pub source_agent: String,
    #[serde(default)]
    pub target_agent: String,
    #[serde(default)]
    pub payload: Value,
}

impl MeshMessage {
    pub fn new(kind: &str, request_id: &str, payload: Value) -> Self {
        MeshMessage {
            kind: kind.to_owned(),
            request_id: request_id.to_owned(),
            source_agent: String::new(),
            target_agent: String::new(),
            payload,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fills_defaults_and_emits_all_five_keys() {
        let m: MeshMessage = serde_json::from_str(r#"{"type":"ping","extra":true}"#).unwrap();
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            json!({"type":"ping","request_id":"","source_agent":"","target_agent":"","payload":null})
        );
    }

    #[test]
    fn rejects_missing_or_non_string_type() {
        let err = serde_json::from_str::<MeshMessage>(r#"{"payload":1}"#).unwrap_err();
        assert!(err.to_string().contains("missing field `type`"), "{err}");
        assert!(serde_json::from_str::<MeshMessage>(r#"{"type":7}"#).is_err());
    }

    #[test]
    fn round_trips_a_full_message() {
        let text = json!({"type":"task_request","request_id":"r1","source_agent":"a",
                          "target_agent":"b","payload":{"skill":"x","n":[1,2]}});
        let m: MeshMessage = serde_json::from_value(text.clone()).unwrap();
        assert_eq!(serde_json::to_value(&m).unwrap(), text);
    }
}
