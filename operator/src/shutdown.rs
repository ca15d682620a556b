//! The process's one shutdown. The first SIGTERM or SIGINT cancels one token
//! that every long-running part watches (leader election, the controller,
//! the gateway's listener, `kiln up`); each then drains within its own
//! grace period. A second signal aborts: `run` drops whatever is still
//! draining, and with it `kiln up`'s builders (killed on drop).

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

/// What the signals have asked for so far.
#[derive(Debug, Clone, Default)]
pub struct Signals {
    /// Cancelled by the first signal: stop taking work, drain.
    pub stop: CancellationToken,
    /// Cancelled by the second: stop now.
    pub abort: CancellationToken,
}

impl Signals {
    /// Starts watching SIGTERM and SIGINT.
    pub fn watch() -> Self {
        let signals = Self::default();
        tokio::spawn(watch(signals.clone()).instrument(tracing::info_span!("signals")));
        signals
    }
}

async fn watch(signals: Signals) {
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        // Without signal handlers the process still stops on a kill.
        warn!("cannot watch SIGTERM and SIGINT");
        return;
    };
    let mut next = async || {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    };
    let first = next().await;
    info!(signal = first, "stopping; a second signal stops at once");
    signals.stop.cancel();
    let second = next().await;
    warn!(signal = second, "stopping at once");
    signals.abort.cancel();
}
