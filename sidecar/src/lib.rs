//! chatixia-sidecar: sans-IO mesh core, str0m peers, IPC and signaling.

pub mod http;
pub mod ipc;
pub mod mesh;
pub mod net;
pub mod pair;
pub mod peer;
pub mod shell;
pub mod signaling;
pub mod stun;
pub mod tls;
