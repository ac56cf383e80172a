//! Around the pipeline: binds the API and admin listeners, serves HTTP/1.1 and h2c on both,
//! reloads, and shuts down gracefully (stop accepting, `/readyz` 503, finish in-flight requests up
//! to `server.shutdown_grace_ms`, flush the audit sink).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::audit::{AuditOpenError, AuditRecord, AuditWriter, AuditedBody};
use crate::config::ConfigError;
use crate::metrics::Metrics;
use crate::settings::Settings;
use crate::state::Gateway;

mod connection;
pub mod limited;
mod signals;

use limited::Acceptor;
pub use signals::Signals;

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
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterStartError),
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
    /// With `server.watch_config`: started before the gateway says it listens, so no change made
    /// once it is ready goes unseen; [`RunningGateway::run_until_signalled`] acts on it.
    watcher: Option<crate::config::ConfigWatcher>,
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
    let gateway = Arc::new(Gateway::new(settings, config_path, audit.log(), metrics)?);
    let watcher = signals::watch(&gateway, None, None);

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
        watcher,
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
        self.gateway.background.finish().await;
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
    match crate::http::find_cause::<hyper::Error>(err)? {
        // hyper names no predicate for its two "too large" kinds apart but this text.
        h if h.is_parse_too_large() && h.to_string() == "URI too long" => Some(414),
        h if h.is_parse_too_large() => Some(431),
        h if h.is_parse() && !h.is_parse_version_h2() && !h.is_parse_status() => {
            // hyper's internal parse failure gets no answer.
            (!h.to_string().starts_with("internal error")).then_some(400)
        }
        _ => None,
    }
}

/// Accepts connections until told to stop, then waits for open ones up to `grace`.
async fn serve<H, Fut>(
    listener: TcpListener,
    role: Listener,
    gw: Arc<Gateway>,
    handler: H,
    stop: watch::Receiver<bool>,
    grace: Duration,
) where
    H: Fn(Arc<Gateway>, Request<Incoming>, IpAddr) -> Fut + Copy + Send + Sync + 'static,
    Fut: Future<Output = Response<AuditedBody>> + Send + 'static,
{
    // Kept so that connections still open when the grace period ends can be cancelled before the
    // audit log is closed: a cancelled request still writes its line (as the client going away does).
    let mut connections = JoinSet::new();
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    let mut acceptor = Acceptor::new(&gw.snapshot().settings.server.limits);
    let mut stopping = stop.clone();
    while let Some(accepted) = acceptor.accept(&listener, &mut stopping).await {
        let conn = Connection {
            gw: gw.clone(),
            builder: builder.clone(),
            stop: stop.clone(),
            role,
            peer: accepted.peer,
        };
        while connections.try_join_next().is_some() {}
        connections.spawn(async move {
            conn.serve(accepted.stream, handler).await;
            drop(accepted.permit);
        });
    }
    drop(listener);
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(
            ?grace,
            open = connections.len(),
            "grace period over; closing remaining connections"
        );
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
}

/// One accepted client and what serving it needs.
struct Connection {
    gw: Arc<Gateway>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    stop: watch::Receiver<bool>,
    role: Listener,
    peer: SocketAddr,
}

impl Connection {
    /// Serves the connection within the limits of the config it was accepted under (see
    /// [`limited`]), then audits what never reached the pipeline: a stalled head answered `408`,
    /// a request hyper could not parse.
    async fn serve<H, Fut>(self, stream: tokio::net::TcpStream, handler: H)
    where
        H: Fn(Arc<Gateway>, Request<Incoming>, IpAddr) -> Fut + Copy + Send + Sync + 'static,
        Fut: Future<Output = Response<AuditedBody>> + Send + 'static,
    {
        let limits = self.gw.snapshot().settings.server.limits;
        let (gw, ip) = (self.gw.clone(), self.peer.ip());
        let ended = limited::serve_connection(
            &self.builder,
            stream,
            &limits,
            self.stop.clone(),
            connection::request_timeout_answer,
            move |req| handler(gw.clone(), req, ip),
        )
        .await;
        if let Some(id) = ended.timed_out_request {
            self.audit_unparsed(id, 408);
        }
        if let Some(e) = ended.error {
            tracing::debug!(error = %e, "connection ended with an error");
            if let Some(status) = automatic_answer(&*e) {
                let id = crate::request_id::generate();
                self.audit_unparsed(crate::request_id::as_text(&id).to_owned(), status);
            }
        }
    }

    /// The audit line of a request that never reached the pipeline (API listener only: the admin
    /// listener audits only `/admin/*` actions, which an unparsed request cannot be shown to be).
    fn audit_unparsed(&self, request_id: String, status: u16) {
        if self.role == Listener::Api {
            let record = AuditRecord::unparsed(request_id, self.peer.ip(), status);
            self.gw.audit.submit_detached(Box::new(record));
        }
    }
}
