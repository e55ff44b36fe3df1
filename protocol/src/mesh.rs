//! The message carried on a `mesh` DataChannel (docs/PROTOCOL.md §5.2–5.3, compatible).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

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
    pub payload: Payload,
}

/// A message's `payload` as the JSON text its sender wrote. Sidecars only
/// carry it from one agent to another, so it is checked to be JSON but never
/// built into a tree and written out again (on a 16 KiB message that was
/// most of the sidecar's own work per message); it reaches the other agent
/// byte for byte.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Payload(Box<RawValue>);

impl Payload {
    pub fn null() -> Payload {
        Payload(RawValue::from_string("null".to_owned()).expect("null is JSON"))
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.get()).unwrap_or(Value::Null)
    }
}

impl From<Value> for Payload {
    fn from(value: Value) -> Payload {
        serde_json::value::to_raw_value(&value).map(Payload).unwrap_or_else(|_| Payload::null())
    }
}

impl Default for Payload {
    fn default() -> Payload {
        Payload::null()
    }
}

/// Equal when the JSON texts are: `{"a":1}` and `{ "a": 1 }` differ.
impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        self.get() == other.get()
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.get())
    }
}

impl MeshMessage {
    pub fn new(kind: &str, request_id: &str, payload: Value) -> Self {
        MeshMessage {
            kind: kind.to_owned(),
            request_id: request_id.to_owned(),
            source_agent: String::new(),
            target_agent: String::new(),
            payload: payload.into(),
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
    fn the_payload_passes_through_byte_for_byte_and_must_be_json() {
        let text = r#"{"type":"t","payload":{"z": [1.0e3, "\u00e9"], "a":null}}"#;
        let m: MeshMessage = serde_json::from_str(text).unwrap();
        assert_eq!(m.payload.get(), r#"{"z": [1.0e3, "\u00e9"], "a":null}"#);
        assert!(m.to_json().ends_with(r#","payload":{"z": [1.0e3, "\u00e9"], "a":null}}"#), "{}", m.to_json());
        assert_eq!(m.payload.to_value(), json!({"a": null, "z": [1000.0, "é"]}));
        assert!(serde_json::from_str::<MeshMessage>(r#"{"type":"t","payload":{"a":}}"#).is_err());
        let absent: MeshMessage = serde_json::from_str(r#"{"type":"t"}"#).unwrap();
        assert_eq!(absent.payload.get(), "null");
    }

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
