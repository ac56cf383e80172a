//! The process signals the gateway answers: `SIGHUP` reloads, `SIGUSR1` reopens the audit file,
//! `SIGTERM`/`SIGINT` drain and stop.

use super::RunningGateway;

/// The process signals the gateway answers, installed before serving so none hits the default action.
pub struct Signals {
    hangup: tokio::signal::unix::Signal,
    user1: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            hangup: signal(SignalKind::hangup())?,
            user1: signal(SignalKind::user_defined1())?,
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for `SIGTERM` or `SIGINT`, for a process with nothing to reload or reopen (`sim`):
    /// `SIGHUP` and `SIGUSR1` are taken and ignored rather than killing it.
    pub async fn stop_requested(&mut self) {
        loop {
            tokio::select! {
                _ = self.hangup.recv() => {}
                _ = self.user1.recv() => {}
                _ = self.terminate.recv() => return,
                _ = self.interrupt.recv() => return,
            }
        }
    }
}

impl RunningGateway {
    /// Serves until `SIGTERM`/`SIGINT`, reloading on `SIGHUP` and reopening the audit file on `SIGUSR1`.
    /// Returns when the stop signal came, which the shutdown grace counts from.
    pub async fn run_until_signalled(self, mut signals: Signals) -> std::time::Instant {
        loop {
            tokio::select! {
                _ = signals.hangup.recv() => { let _ = self.reload(); }
                _ = signals.user1.recv() => self.reopen_audit().await,
                _ = signals.terminate.recv() => break,
                _ = signals.interrupt.recv() => break,
            }
        }
        let stopping = std::time::Instant::now();
        tracing::info!("shutting down: draining in-flight requests");
        self.shutdown().await;
        stopping
    }
}
