//! chatixia-sidecar: the sans-IO core (`core/`: node, mesh, links, STUN,
//! the agents' side) and the smol shell around it (`shell/`: UDP, the
//! agents' socket, the registry client, TLS, signals). docs/ARCHITECTURE.md
//! is the map.

pub mod core;
pub mod shell;
