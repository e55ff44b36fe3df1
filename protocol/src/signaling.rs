//! The signaling envelope relayed by the registry (docs/PROTOCOL.md §4.2, compatible) and
//! the payloads the registry itself produces (docs/PROTOCOL.md §4, fixed).

use crate::mesh::PathReport;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// `peer_id` the registry uses for frames it originates.
pub const REGISTRY_PEER_ID: &str = "registry";

pub mod types {
    pub const REGISTER: &str = "register";
    pub const PEER_LIST: &str = "peer_list";
    pub const OFFER: &str = "offer";
    pub const ANSWER: &str = "answer";
    pub const ICE_CANDIDATE: &str = "ice_candidate";
    pub const HEARTBEAT: &str = "heartbeat";
    pub const PEER_LEFT: &str = "peer_left";
    pub const PING: &str = "ping";
    pub const PONG: &str = "pong";
    pub const MESH_HEALTH: &str = "mesh_health";
    pub const MESH_STATUS: &str = "mesh_status";
    pub const ERROR: &str = "error";
}

/// Codes of registry `error` frames.
pub mod error_codes {
    pub const PEER_ID_MISMATCH: &str = "peer_id_mismatch";
    pub const INVALID_FRAME: &str = "invalid_frame";
    pub const UNKNOWN_TARGET: &str = "unknown_target";
    pub const NOT_AUTHORIZED: &str = "not_authorized";
    pub const TOO_LARGE: &str = "too_large";
    pub const RATE_LIMITED: &str = "rate_limited";
}

/// WebSocket close codes the registry uses.
pub mod close_codes {
    /// Another connection with the same identity took over.
    pub const REPLACED: u16 = 4001;
    /// The identity lost its authorization (revoked, rejected, key removed).
    pub const REVOKED: u16 = 4003;
}

/// One signaling frame, owned. `target_id` is omitted when absent and
/// `payload` defaults to null; unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(rename = "type")]
    pub kind: String,
    pub peer_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_id: Option<String>,
    #[serde(default)]
    pub payload: Value,
}

impl Envelope {
    pub fn new(kind: &str, peer_id: &str, target_id: Option<&str>, payload: Value) -> Self {
        Envelope {
            kind: kind.to_owned(),
            peer_id: peer_id.to_owned(),
            target_id: target_id.map(str::to_owned),
            payload,
        }
    }

    /// A frame originated by the registry itself.
    pub fn from_registry(kind: &str, payload: impl Serialize) -> Self {
        let payload = serde_json::to_value(payload).unwrap_or(Value::Null);
        Envelope::new(kind, REGISTRY_PEER_ID, None, payload)
    }

    pub fn to_json(&self) -> String {
        // Serializing a struct of strings and a Value cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A borrowed view of a frame for the relay's hot path: the payload stays raw
/// text and is never turned into a tree.
#[derive(Debug, Deserialize)]
pub struct EnvelopeRef<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow)]
    pub peer_id: Cow<'a, str>,
    #[serde(default, borrow)]
    pub target_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub payload: Option<&'a RawValue>,
}

impl<'a> EnvelopeRef<'a> {
    pub fn parse(text: &'a str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerListPayload {
    pub peers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerLeftPayload {
    pub peer_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PongPayload {
    pub timestamp: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshHealthPayload {
    pub connected_peers: usize,
    pub authorized_peers: usize,
    pub uptime_s: u64,
}

/// Sent by a sidecar: the peers it has an open DataChannel with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeshStatusPayload {
    #[serde(default)]
    pub peers: Vec<String>,
    /// The path of each open link (new: old registries ignore it).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub paths: BTreeMap<String, PathReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorPayload {
    pub code: String,
    pub message: String,
}

/// Optional payload of `register`; unknown keys are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterPayload {
    #[serde(default)]
    pub version: u32,
    #[serde(default)]
    pub features: Vec<String>,
}

/// Payload of `offer` and `answer`. An extra `type` key is accepted and ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SdpPayload {
    pub sdp: String,
}

/// Payload of `ice_candidate` (docs/PROTOCOL.md §4.6, §5.1). An empty `candidate` means end of
/// candidates; `sdpMid` may be empty or missing, `sdpMLineIndex` missing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceCandidatePayload {
    #[serde(default)]
    pub candidate: String,
    #[serde(rename = "sdpMid", default)]
    pub sdp_mid: Option<String>,
    #[serde(rename = "sdpMLineIndex", default)]
    pub sdp_mline_index: Option<u16>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn envelope_omits_absent_target_and_defaults_payload() {
        let e: Envelope = serde_json::from_str(r#"{"type":"register","peer_id":"agent-001"}"#).unwrap();
        assert_eq!(e.kind, "register");
        assert_eq!(e.payload, Value::Null);
        assert_eq!(e.target_id, None);
        assert_eq!(e.to_json(), r#"{"type":"register","peer_id":"agent-001","payload":null}"#);
    }

    #[test]
    fn envelope_keeps_all_four_fields_and_ignores_unknown() {
        let text = r#"{"type":"offer","peer_id":"a","target_id":"b","payload":{"sdp":"v=0"},"extra":1}"#;
        let e: Envelope = serde_json::from_str(text).unwrap();
        assert_eq!(e.target_id.as_deref(), Some("b"));
        let back: Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(back, json!({"type":"offer","peer_id":"a","target_id":"b","payload":{"sdp":"v=0"}}));
    }

    #[test]
    fn envelope_rejects_bad_shapes_with_useful_errors() {
        let err = serde_json::from_str::<Envelope>(r#"{"peer_id":"a"}"#).unwrap_err();
        assert!(err.to_string().contains("missing field `type`"), "{err}");
        let err = serde_json::from_str::<Envelope>(r#"{"type":1,"peer_id":"a"}"#).unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
        assert!(serde_json::from_str::<Envelope>("[]").is_err());
    }

    #[test]
    fn envelope_ref_borrows_and_keeps_raw_payload() {
        let text = r#"{"type":"ice_candidate","peer_id":"a\u0041","target_id":"b","payload":{"candidate":"x"}}"#;
        let e = EnvelopeRef::parse(text).unwrap();
        assert_eq!(e.peer_id, "aA");
        assert_eq!(e.target_id.as_deref(), Some("b"));
        assert_eq!(e.payload.unwrap().get(), r#"{"candidate":"x"}"#);
    }

    #[test]
    fn registry_frames_match_spec_literals() {
        let pl = Envelope::from_registry(types::PEER_LIST, PeerListPayload { peers: vec!["b".into()] });
        assert_eq!(
            serde_json::to_value(&pl).unwrap(),
            json!({"type":"peer_list","peer_id":"registry","payload":{"peers":["b"]}})
        );
        let left = Envelope::from_registry(types::PEER_LEFT, PeerLeftPayload { peer_id: "x".into() });
        assert_eq!(
            serde_json::to_value(&left).unwrap(),
            json!({"type":"peer_left","peer_id":"registry","payload":{"peer_id":"x"}})
        );
        let health = Envelope::from_registry(
            types::MESH_HEALTH,
            MeshHealthPayload { connected_peers: 2, authorized_peers: 1, uptime_s: 5 },
        );
        assert_eq!(
            serde_json::to_value(&health).unwrap(),
            json!({"type":"mesh_health","peer_id":"registry",
                   "payload":{"connected_peers":2,"authorized_peers":1,"uptime_s":5}})
        );
    }

    #[test]
    fn ice_candidate_tolerates_missing_and_empty_fields() {
        let c: IceCandidatePayload = serde_json::from_str(r#"{"candidate":""}"#).unwrap();
        assert_eq!(c, IceCandidatePayload::default());
        let c: IceCandidatePayload = serde_json::from_str(
            r#"{"candidate":"candidate:1 1 udp 1 1.2.3.4 5 typ host","sdpMid":"","sdpMLineIndex":0,"usernameFragment":"u"}"#,
        )
        .unwrap();
        assert_eq!(c.sdp_mid.as_deref(), Some(""));
        assert_eq!(c.sdp_mline_index, Some(0));
        let c: IceCandidatePayload = serde_json::from_str("{}").unwrap();
        assert_eq!(c.candidate, "");
    }

    #[test]
    fn sdp_payload_ignores_extra_type() {
        let p: SdpPayload = serde_json::from_str(r#"{"type":"offer","sdp":"v=0\r\n"}"#).unwrap();
        assert_eq!(p.sdp, "v=0\r\n");
        assert!(serde_json::from_str::<SdpPayload>(r#"{"type":"offer"}"#).is_err());
    }
}
