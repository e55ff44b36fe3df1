//! chatixia-registry: a sans-IO core (this library) and a thin smol shell
//! (`shell`, used by the binary).

pub mod agents;
pub mod api;
pub mod dashboard;
pub mod hub;
pub mod ice;
pub mod keys;
pub mod pairing;
pub mod persist;
pub mod ratelimit;
pub mod shell;
pub mod state;
pub mod tasks;
pub mod token;
pub mod topology;
