//! Wire types shared by the registry, the sidecar and their tests.
//!
//! Everything here is a plain serde type of docs/PROTOCOL.md; there is no IO.
//! Where the protocol is compatible, field names and defaults follow the original
//! chatixia-mesh exactly, so old peers and agents interoperate unchanged.

pub mod claims;
pub mod ipc;
pub mod mesh;
pub mod signaling;
