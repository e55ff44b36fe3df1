//! SIGTERM and SIGINT end the sidecar cleanly (systemd stops it with
//! SIGTERM; a terminal with Ctrl-C).

use async_signal::{Signal, Signals};
use futures_lite::StreamExt;

pub fn install() -> Result<Signals, String> {
    Signals::new([Signal::Term, Signal::Int]).map_err(|e| format!("cannot install signal handlers: {e}"))
}

/// Resolves at the first of them.
pub async fn first(mut signals: Signals) {
    if let Some(Ok(sig)) = signals.next().await {
        log::info!("received {sig:?}; shutting down");
    }
}
