//! The process signals the gateway answers: `SIGHUP` reloads (as does a change to a watched config
//! file), `SIGUSR1` reopens the audit file, `SIGTERM`/`SIGINT` drain and stop.

use super::RunningGateway;
use crate::config::{ConfigWatcher, Contents};
use crate::state::Gateway;

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
    /// Serves until `SIGTERM`/`SIGINT`, reloading on `SIGHUP` and, with `server.watch_config`, when
    /// the config file or a secret file it names changes (the same reload either way), and
    /// reopening the audit file on `SIGUSR1`. Returns when the stop signal came, which the
    /// shutdown grace counts from.
    pub async fn run_until_signalled(mut self, mut signals: Signals) -> std::time::Instant {
        let mut watcher = self.watcher.take();
        loop {
            tokio::select! {
                _ = signals.hangup.recv() => {
                    let before = watcher.as_ref().map(ConfigWatcher::read_contents);
                    let _ = self.reload();
                    watcher = watch(self.gateway(), watcher, before);
                }
                changed = changes(&mut watcher) => {
                    let _ = self.reload();
                    watcher = watch(self.gateway(), watcher, Some(changed));
                }
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

/// At start and after each (re)load or attempt: starts, keeps or stops watching as the config
/// served now says, over the files the config on disk names now. `before`: what they held just
/// before the reload read them.
pub(super) fn watch(
    gateway: &Gateway,
    watcher: Option<ConfigWatcher>,
    before: Option<Contents>,
) -> Option<ConfigWatcher> {
    let path = gateway.config_path()?;
    if !gateway.snapshot().settings.server.watch_config {
        if watcher.is_some() {
            tracing::info!("server.watch_config is off: config changes wait for SIGHUP");
        }
        return None;
    }
    match watcher {
        Some(mut watcher) => {
            let contents = before.unwrap_or_else(|| watcher.read_contents());
            watcher.rewatch(contents);
            Some(watcher)
        }
        None => match ConfigWatcher::start(path) {
            Ok(watcher) => {
                tracing::info!(config = %path.display(), "watching the config file and the secret files it names");
                Some(watcher)
            }
            Err(e) => {
                tracing::warn!(error = %e, "config changes wait for SIGHUP");
                None
            }
        },
    }
}

/// The next change worth a reload, or never without a watcher.
async fn changes(watcher: &mut Option<ConfigWatcher>) -> Contents {
    match watcher {
        Some(watcher) => watcher.changed().await,
        None => std::future::pending().await,
    }
}
