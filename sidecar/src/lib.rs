//! chatixia-sidecar: sans-IO mesh core, str0m peers, IPC and signaling.

pub mod net;
pub mod peer;
