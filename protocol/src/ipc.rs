//! Newline-delimited JSON between an agent and its sidecar (docs/PROTOCOL.md §6).
//! Every line is `{"type": …, "payload": …}`.

use crate::mesh::{MeshMessage, PathReport};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// Commands an agent sends. Parsed by [`Command::parse`], which names the
/// problem precisely so the sidecar can answer with an `error` event.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Send { target_peer: String, message: MeshMessage },
    Broadcast { message: MeshMessage },
    ListPeers,
    Connect { target_peer_id: String },
    Status,
}

#[derive(Deserialize)]
struct RawCommand {
    #[serde(rename = "type")]
    kind: String,
    /// Parsed once, by the command's own type below: a tree of it first would
    /// cost as much as the whole message again.
    #[serde(default)]
    payload: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct SendPayload {
    target_peer: String,
    message: MeshMessage,
}

#[derive(Deserialize)]
struct BroadcastPayload {
    message: MeshMessage,
}

#[derive(Deserialize)]
struct ConnectPayload {
    target_peer_id: String,
}

/// Why a command line was refused, with the command's type when it had one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    pub command: Option<String>,
    pub message: String,
}

impl Command {
    pub fn parse(line: &str) -> Result<Command, CommandError> {
        let raw: RawCommand = serde_json::from_str(line)
            .map_err(|e| CommandError { command: None, message: format!("not a command object: {e}") })?;
        let fail = |e: serde_json::Error| CommandError {
            command: Some(raw.kind.clone()),
            message: format!("bad payload for {}: {e}", raw.kind),
        };
        let payload = raw.payload.as_deref().map_or("null", RawValue::get);
        match raw.kind.as_str() {
            "send" => {
                let p: SendPayload = serde_json::from_str(payload).map_err(fail)?;
                Ok(Command::Send { target_peer: p.target_peer, message: p.message })
            }
            "broadcast" => {
                let p: BroadcastPayload = serde_json::from_str(payload).map_err(fail)?;
                Ok(Command::Broadcast { message: p.message })
            }
            "list_peers" => Ok(Command::ListPeers),
            "connect" => {
                let p: ConnectPayload = serde_json::from_str(payload).map_err(fail)?;
                Ok(Command::Connect { target_peer_id: p.target_peer_id })
            }
            "status" => Ok(Command::Status),
            other => Err(CommandError {
                command: Some(other.to_owned()),
                message: format!("unknown command type {other:?}"),
            }),
        }
    }
}

/// Events the sidecar sends to its agents.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", content = "payload", rename_all = "snake_case")]
pub enum Event {
    Message { from_peer: String, message: MeshMessage },
    PeerConnected { peer_id: String },
    PeerDisconnected { peer_id: String },
    PeerList { peers: Vec<String> },
    Error(ErrorEvent),
    Status(StatusEvent),
}

impl Event {
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_default();
        s.push('\n');
        s
    }
}

pub mod error_codes {
    pub const INVALID_COMMAND: &str = "invalid_command";
    pub const TOO_LARGE: &str = "too_large";
    pub const EVENTS_DROPPED: &str = "events_dropped";
    pub const UNKNOWN_PEER: &str = "unknown_peer";
    pub const BACKPRESSURE: &str = "backpressure";
    pub const NOT_CONNECTED: &str = "not_connected";
    /// A message kept for a peer whose link was re-forming waited longer
    /// than the outbox allows (new).
    pub const EXPIRED: &str = "expired";
    /// Sent to a connection refused because `IPC_MAX_AGENTS` agents are
    /// attached already; the sidecar then closes it (new).
    pub const TOO_MANY_AGENTS: &str = "too_many_agents";
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ErrorEvent {
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_peer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// The `request_id` of the message that could not be delivered (new).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusEvent {
    pub peer_id: String,
    /// `connected`, `connecting` or `down`.
    pub registry: String,
    pub peers: Vec<String>,
    pub version: String,
    /// The path of each open link (new; absent when there is none).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub paths: BTreeMap<String, PathReport>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn parses_compatible_commands() {
        let c = Command::parse(
            r#"{"type":"send","payload":{"target_peer":"agent-2","message":{"type":"hello","payload":{"x":1}}}}"#,
        )
        .unwrap();
        match c {
            Command::Send { target_peer, message } => {
                assert_eq!(target_peer, "agent-2");
                assert_eq!(message.kind, "hello");
                assert_eq!(message.request_id, "");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(Command::parse(r#"{"type":"list_peers","payload":{}}"#).unwrap(), Command::ListPeers);
        assert_eq!(Command::parse(r#"{"type":"list_peers"}"#).unwrap(), Command::ListPeers);
        assert_eq!(Command::parse(r#"{"type":"status"}"#).unwrap(), Command::Status);
        assert_eq!(
            Command::parse(r#"{"type":"connect","payload":{"target_peer_id":"p"}}"#).unwrap(),
            Command::Connect { target_peer_id: "p".into() }
        );
        assert!(matches!(
            Command::parse(r#"{"type":"broadcast","payload":{"message":{"type":"t"}}}"#).unwrap(),
            Command::Broadcast { .. }
        ));
    }

    #[test]
    fn names_the_problem_of_bad_commands() {
        let e = Command::parse("not json").unwrap_err();
        assert_eq!(e.command, None);
        let e = Command::parse(r#"{"type":"send","payload":{"message":{"type":"x"}}}"#).unwrap_err();
        assert_eq!(e.command.as_deref(), Some("send"));
        assert!(e.message.contains("target_peer"), "{}", e.message);
        let e = Command::parse(r#"{"type":"fly"}"#).unwrap_err();
        assert_eq!(e.command.as_deref(), Some("fly"));
    }

    #[test]
    fn events_match_spec_literals() {
        let m = MeshMessage::new("pong", "r", Value::Null);
        let line = Event::Message { from_peer: "a".into(), message: m }.to_line();
        assert!(line.ends_with('\n'));
        assert_eq!(
            serde_json::from_str::<Value>(&line).unwrap(),
            json!({"type":"message","payload":{"from_peer":"a","message":
                {"type":"pong","request_id":"r","source_agent":"","target_agent":"","payload":null}}})
        );
        assert_eq!(
            serde_json::to_value(Event::PeerConnected { peer_id: "b".into() }).unwrap(),
            json!({"type":"peer_connected","payload":{"peer_id":"b"}})
        );
        assert_eq!(
            serde_json::to_value(Event::PeerList { peers: vec![] }).unwrap(),
            json!({"type":"peer_list","payload":{"peers":[]}})
        );
        let dropped =
            Event::Error(ErrorEvent { code: error_codes::EVENTS_DROPPED.into(), count: Some(3), ..Default::default() });
        assert_eq!(
            serde_json::to_value(dropped).unwrap(),
            json!({"type":"error","payload":{"code":"events_dropped","count":3}})
        );
    }
}
