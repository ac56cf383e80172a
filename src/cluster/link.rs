//! The replica's one connection to Redis, and whether it has one. Concurrent requests share a
//! multiplexed connection (pipelined on the wire, never a connection per request). Every call has
//! its own deadline (`cluster.timeout_ms`); a call that fails or outlasts it marks the link down,
//! and from then on calls fail at once, without touching the network, while one background task
//! reconnects with backoff. So an outage costs one timeout per probe, not one per request, and each
//! change of state is logged once.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError, ServerErrorKind};
use tokio::sync::Notify;

use super::ClusterError;
use crate::metrics::ClusterMetrics;

/// Backoff between reconnection attempts: from the first, doubling, up to the last.
const FIRST_RETRY: Duration = Duration::from_millis(50);
const LAST_RETRY: Duration = Duration::from_secs(2);
/// While connected, the link is checked this often even without traffic, so an idle replica
/// notices an outage (and `/readyz` tells) on its own.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The connection and the state derived from it, changed together under one lock: a call that
/// fails on an old connection must not take down the new one.
#[derive(Default)]
struct State {
    /// `None` while down. A clone of the connection is taken per call (it is a handle).
    conn: Option<MultiplexedConnection>,
    /// Bumped on every connection; a failure only counts against the connection it happened on.
    epoch: u64,
}

pub(super) struct Link {
    client: Client,
    state: RwLock<State>,
    /// Mirrors `state.conn.is_some()`, set under the write lock, for the per-request check.
    up: AtomicBool,
    /// Rung when a call marks the link down: the reconnect task starts at once.
    lost: Notify,
    timeout: Duration,
    metrics: ClusterMetrics,
    /// Set once a refusal by the server has been logged; cleared when the link reconnects, so a
    /// server that refuses every call is logged once, not once per request.
    refusal_logged: AtomicBool,
}

impl Link {
    pub(super) fn new(client: Client, timeout: Duration, metrics: ClusterMetrics) -> Arc<Self> {
        Arc::new(Self {
            client,
            state: RwLock::default(),
            up: AtomicBool::new(false),
            lost: Notify::new(),
            timeout,
            metrics,
            refusal_logged: AtomicBool::new(false),
        })
    }

    pub(super) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `call` on the shared connection within the deadline. Down, or failing, it is
    /// [`ClusterError::Unavailable`]; a failure or a timeout also marks the link down.
    pub(super) async fn call<T, F, Fut>(&self, call: F) -> Result<T, ClusterError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let (conn, epoch) = {
            let state = self.read();
            (state.conn.clone(), state.epoch)
        };
        let Some(conn) = conn else {
            return Err(ClusterError::Unavailable);
        };
        let started = Instant::now();
        match tokio::time::timeout(self.timeout, call(conn)).await {
            Ok(Ok(value)) => {
                self.metrics
                    .redis_duration
                    .observe(started.elapsed().as_secs_f64());
                Ok(value)
            }
            Ok(Err(e)) => {
                self.metrics.errors.inc();
                if is_outage(&e) {
                    self.mark_down(epoch, &e.to_string());
                } else if !self.refusal_logged.swap(true, Ordering::AcqRel) {
                    // A refusal (a wrong type, out of memory, no permission) is not an outage:
                    // the connection works. Logged once until the next reconnection.
                    tracing::warn!(error = %e, "cluster: Redis refused a call");
                }
                Err(ClusterError::Unavailable)
            }
            Err(_) => {
                self.metrics.errors.inc();
                self.mark_down(epoch, &format!("no answer within {:?}", self.timeout));
                Err(ClusterError::Unavailable)
            }
        }
    }

    /// Marks the link down if the failed call ran on the current connection.
    fn mark_down(&self, epoch: u64, why: &str) {
        {
            let mut state = self.write();
            if state.epoch != epoch || state.conn.is_none() {
                return;
            }
            state.conn = None;
            self.up.store(false, Ordering::Release);
        }
        self.metrics.up.set(0);
        tracing::warn!(
            reason = why,
            "cluster: Redis unavailable; reconnecting in the background"
        );
        self.lost.notify_one();
    }

    /// Keeps the link connected for as long as the process runs: connects, and after every loss
    /// reconnects with backoff. `on_connect` runs before requests may use a new connection.
    pub(super) async fn keep_connected(self: Arc<Self>, on_connect: impl Fn() + Send) {
        let mut retry = FIRST_RETRY;
        // A loss is logged where it is noticed (`mark_down`); only a replica that never reached
        // Redis logs its first failed attempt here.
        let mut quiet = false;
        loop {
            if self.is_up() {
                tokio::select! {
                    _ = self.lost.notified() => {}
                    _ = tokio::time::sleep(PROBE_EVERY) => {
                        // A failure marks the link down, which the next turn handles.
                        let _ = self
                            .call(|mut conn| async move {
                                redis::cmd("PING").query_async::<()>(&mut conn).await
                            })
                            .await;
                    }
                }
                continue;
            }
            match self.connect().await {
                Ok(conn) => {
                    on_connect();
                    {
                        let mut state = self.write();
                        state.epoch += 1;
                        state.conn = Some(conn);
                        self.up.store(true, Ordering::Release);
                    }
                    self.refusal_logged.store(false, Ordering::Release);
                    self.metrics.up.set(1);
                    tracing::info!("cluster: connected to Redis");
                    retry = FIRST_RETRY;
                    quiet = true;
                }
                Err(e) => {
                    if !quiet {
                        tracing::warn!(error = %e, "cluster: cannot reach Redis; retrying with backoff");
                        quiet = true;
                    }
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(LAST_RETRY);
                }
            }
        }
    }

    /// A new connection that has answered a `PING`, all within a few deadlines.
    async fn connect(&self) -> Result<MultiplexedConnection, String> {
        // Connecting is a handshake (and TLS, and AUTH) more than a call: a few call deadlines.
        let budget = self.timeout * 5;
        // No response timeout of the client's own: `call` bounds every call already, and a second
        // timer per call was a measurable part of a cluster-mode hit.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(budget))
            .set_response_timeout(None);
        let attempt = async {
            let mut conn = self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(|e| e.to_string())?;
            redis::cmd("PING")
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            warn_if_evicting(&mut conn).await;
            Ok(conn)
        };
        tokio::time::timeout(budget, attempt)
            .await
            .map_err(|_| format!("no answer within {budget:?}"))?
    }
}

/// Whether an error means this connection cannot serve (so the link reconnects): transport
/// failures, and a server that is a read-only replica now, still loading, or without a primary.
fn is_outage(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(
                ServerErrorKind::ReadOnly
                    | ServerErrorKind::BusyLoading
                    | ServerErrorKind::MasterDown
            )
        )
}

/// Evicting keys other than expiring ones can drop a write's in-progress mark or a team's quota
/// state early (versions are safe: a lost one is a fresh one). Said once per connection; a host
/// that forbids `CONFIG` is not asked twice.
async fn warn_if_evicting(conn: &mut MultiplexedConnection) {
    let policy: Result<Vec<String>, _> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(conn)
        .await;
    if let Ok(reply) = policy {
        if reply.get(1).is_some_and(|p| p.starts_with("allkeys")) {
            tracing::warn!(
                policy = %reply[1],
                "cluster: Redis may evict any key; use noeviction or a volatile-* policy so in-progress writes and quotas are kept"
            );
        }
    }
}
