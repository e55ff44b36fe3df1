//! SIGTERM and SIGINT end the sidecar cleanly (systemd stops it with
//! SIGTERM; a terminal with Ctrl-C). They are blocked and read from a
//! signalfd on the event loop, so no handler and no thread are involved.
//! [`install`] must run before any other thread starts: threads inherit the
//! blocked set, and one that had not would take the signal's default action
//! (ending the process at once).

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use super::reactor::Async;

pub struct Signals(Async<SignalFd>);

pub fn install() -> Result<Signals, String> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block().map_err(|e| format!("cannot block SIGTERM and SIGINT: {e}"))?;
    let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("cannot open a signalfd: {e}"))?;
    Async::registered(fd).map(Signals).map_err(|e| format!("cannot watch the signalfd: {e}"))
}

/// Resolves at the first of them.
pub async fn first(signals: Signals) {
    loop {
        match signals.0.get_ref().read_signal() {
            Ok(Some(info)) => {
                let name = Signal::try_from(info.ssi_signo as i32).map_or("a signal", |s| s.as_str());
                log::info!("received {name}; shutting down");
                return;
            }
            Ok(None) => {
                if let Err(e) = signals.0.readable().await {
                    log::error!("waiting for signals failed: {e}");
                    return std::future::pending().await;
                }
            }
            Err(e) => {
                log::error!("reading the signalfd failed: {e}");
                return std::future::pending().await;
            }
        }
    }
}
