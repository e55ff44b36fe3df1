//! chatixia-registry: the sans-IO core (`core`) and the smol shell around
//! it (`shell`, used by the binary).

pub mod core;
pub mod shell;
