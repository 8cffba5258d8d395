//! Shutdown plumbing: a [`CancellationToken`] tells tasks to stop, a [`TaskTracker`]
//! lets their owner wait until they have, and [`Signals`] turns SIGTERM/Ctrl-C into that.
//!
//! The types are tokio-util's, re-exported so every binary uses the same ones; an owner
//! cancels a child token per stage (the agent first, then the proxies, then log
//! shipping) and awaits that stage's tracker before cancelling the next.

use std::io;
use tokio::signal::unix::{signal as unix_signal, SignalKind};

pub use tokio_util::sync::{CancellationToken, DropGuard, WaitForCancellationFutureOwned};
pub use tokio_util::task::TaskTracker;

/// Which signal asked the process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: what Kubernetes and process supervisors send.
    Terminate,
    /// SIGINT: Ctrl-C in a terminal.
    Interrupt,
}

/// Handlers for SIGTERM and SIGINT, installed when this is created: a signal that
/// arrives between start-up and the first `recv` is kept, not lost to the default
/// action (which would kill the process without a drain).
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers; needs a tokio runtime with signal support.
    pub fn install() -> io::Result<Self> {
        Ok(Self {
            term: unix_signal(SignalKind::terminate())?,
            int: unix_signal(SignalKind::interrupt())?,
        })
    }

    /// The next SIGTERM or SIGINT.
    pub async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Terminate,
            _ = self.int.recv() => Signal::Interrupt,
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C; an error only if the handlers cannot be installed.
pub async fn signal() -> io::Result<Signal> {
    Ok(Signals::install()?.recv().await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn sigterm_resolves_the_installed_handler() {
        let mut signals = Signals::install().unwrap();
        // Sent to ourselves after the handler exists, so the default action never runs.
        let pid = std::process::id().to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(status.success());
        let got = tokio::time::timeout(Duration::from_secs(10), signals.recv()).await;
        assert_eq!(got.unwrap(), Signal::Terminate);
    }
}
