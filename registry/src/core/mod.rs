//! Everything the registry decides, sans-IO: plain structs driven by
//! `handle_*` calls with the time passed in, whose effects are drained as
//! outputs. Nothing here reads a clock, touches a socket or a file, or draws
//! randomness; the shell does, and hands the results in.
//!
//! The shell drives one object, [`registry::Registry`]; the other modules
//! are its parts.

pub mod agents;
pub mod api;
pub mod config;
pub mod digest;
pub mod hub;
pub mod ice;
pub mod keys;
pub mod now;
pub mod pairing;
pub mod persist;
pub mod ratelimit;
pub mod registry;
pub mod relay;
pub mod state;
pub mod tasks;
pub mod token;
pub mod topology;
