//! Listeners and lifecycle: binds the API and admin listeners, serves HTTP/1.1 and h2c on both,
//! reloads, and shuts down gracefully (stop accepting, `/readyz` 503, finish in-flight requests up
//! to `server.shutdown_grace_ms`, flush the audit sink).

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::audit::{AuditOpenError, AuditRecord, AuditWriter, AuditedBody};
use crate::config::{ConfigError, Settings};
use crate::metrics::Metrics;
use crate::state::Gateway;

/// Slow or idle clients may not hold a connection open without sending a request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The admin listener outlives the API drain by this much, so probes see `503` until the end.
const ADMIN_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Audit(#[from] AuditOpenError),
}

/// A started gateway: its bound addresses and the handles to reload and stop it.
pub struct RunningGateway {
    pub api_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    gateway: Arc<Gateway>,
    audit: AuditWriter,
    stop_api: watch::Sender<bool>,
    stop_admin: watch::Sender<bool>,
    api_task: JoinHandle<()>,
    admin_task: JoinHandle<()>,
}

/// Binds both listeners and starts serving. Must run inside a tokio runtime.
pub async fn start(
    settings: Settings,
    config_path: Option<PathBuf>,
) -> Result<RunningGateway, StartError> {
    let metrics = Arc::new(Metrics::new());
    let audit = AuditWriter::start(&settings.audit, metrics.clone())?;
    let api = bind("server.listen", settings.server.listen).await?;
    let admin = bind("server.admin_listen", settings.server.admin_listen).await?;
    let (api_addr, admin_addr) = (
        local_addr(&api, settings.server.listen),
        local_addr(&admin, settings.server.admin_listen),
    );
    let grace = settings.server.shutdown_grace;
    let gateway = Arc::new(Gateway::new(settings, config_path, audit.log(), metrics));

    let (stop_api, api_rx) = watch::channel(false);
    let (stop_admin, admin_rx) = watch::channel(false);
    let api_task = tokio::spawn(serve(
        api,
        Listener::Api,
        gateway.clone(),
        crate::proxy::handle,
        api_rx,
        grace,
    ));
    let admin_task = tokio::spawn(serve(
        admin,
        Listener::Admin,
        gateway.clone(),
        crate::admin::handle,
        admin_rx,
        ADMIN_GRACE,
    ));
    tracing::info!(api = %api_addr, admin = %admin_addr, "dialnexa-gateway listening");
    Ok(RunningGateway {
        api_addr,
        admin_addr,
        gateway,
        audit,
        stop_api,
        stop_admin,
        api_task,
        admin_task,
    })
}

async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { key, addr, source })
}

fn local_addr(listener: &TcpListener, configured: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(configured)
}

impl RunningGateway {
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// `SIGHUP`: re-read and swap in the config file; an invalid one is logged, counted and ignored.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let result = self.gateway.reload();
        match &result {
            Ok(()) => tracing::info!("config reloaded"),
            Err(e) => {
                tracing::error!(problems = %e.problems.join("; "), "config reload failed; still serving the previous config")
            }
        }
        result
    }

    /// `SIGUSR1`: reopen the audit file after logrotate moved it.
    pub async fn reopen_audit(&self) {
        self.audit.reopen().await;
    }

    /// Drains and stops: `/readyz` answers 503, no new connections, in-flight requests finish (up
    /// to the grace period), then the audit sink is flushed.
    pub async fn shutdown(self) {
        self.gateway.start_draining();
        let _ = self.stop_api.send(true);
        let _ = self.api_task.await;
        self.gateway.cancel_unattended().await;
        let _ = self.stop_admin.send(true);
        let _ = self.admin_task.await;
        self.audit.finish().await;
        tracing::info!("dialnexa-gateway stopped");
    }
}

/// Which listener a connection came in on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Listener {
    /// Requests the HTTP layer could not parse are audited here too.
    Api,
    /// Only `/admin/*` actions are audited here, which an unparsed request cannot be shown to be.
    Admin,
}

/// The status hyper answered a request it could not parse with, if it answered one (see its
/// `Server::on_error`): `400`, `414` or `431`, then the connection is closed. The request never
/// reached the pipeline, but it gets its audit line all the same.
fn automatic_answer(err: &(dyn std::error::Error + 'static)) -> Option<u16> {
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            return match h {
                // hyper names no predicate for its two "too large" kinds apart but this text.
                h if h.is_parse_too_large() && h.to_string() == "URI too long" => Some(414),
                h if h.is_parse_too_large() => Some(431),
                h if h.is_parse() && !h.is_parse_version_h2() && !h.is_parse_status() => {
                    // hyper's internal parse failure gets no answer.
                    (!h.to_string().starts_with("internal error")).then_some(400)
                }
                _ => None,
            };
        }
        source = e.source();
    }
    None
}

/// Accepts connections until told to stop, then waits for open ones up to `grace`.
async fn serve<H, Fut>(
    listener: TcpListener,
    role: Listener,
    gw: Arc<Gateway>,
    handler: H,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) where
    H: Fn(Arc<Gateway>, Request<Incoming>, IpAddr) -> Fut + Copy + Send + Sync + 'static,
    Fut: Future<Output = Response<AuditedBody>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    // Kept so that connections still open when the grace period ends can be cancelled before the
    // audit log is closed: a cancelled request still writes its line (as the client going away does).
    let mut connections = JoinSet::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let builder = Arc::new(builder);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let conn_gw = gw.clone();
                let service = service_fn(move |req| {
                    let gw = conn_gw.clone();
                    async move { Ok::<_, Infallible>(handler(gw, req, peer.ip()).await) }
                });
                let builder = builder.clone();
                let watcher = graceful.watcher();
                let gw = gw.clone();
                while connections.try_join_next().is_some() {}
                connections.spawn(async move {
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(error = %e, "connection ended with an error");
                        match automatic_answer(&*e) {
                            Some(status) if role == Listener::Api => {
                                let id = crate::request_id::generate();
                                let record = AuditRecord::unparsed(id, peer.ip(), status);
                                gw.audit.submit_detached(Box::new(record));
                            }
                            _ => {}
                        }
                    }
                });
            }
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(?grace, open = connections.len(), "grace period over; closing remaining connections");
            connections.abort_all();
        }
    }
    while connections.join_next().await.is_some() {}
}

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
    pub async fn run_until_signalled(self, mut signals: Signals) {
        loop {
            tokio::select! {
                _ = signals.hangup.recv() => { let _ = self.reload(); }
                _ = signals.user1.recv() => self.reopen_audit().await,
                _ = signals.terminate.recv() => break,
                _ = signals.interrupt.recv() => break,
            }
        }
        tracing::info!("shutting down: draining in-flight requests");
        self.shutdown().await;
    }
}
