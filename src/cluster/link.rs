//! The replica's one connection to Redis, and whether it has one. Concurrent requests share a
//! multiplexed connection (pipelined on the wire, never a connection per request). Every call has
//! its own deadline (`cluster.timeout_ms`); a call that fails or outlasts it marks the link down,
//! and from then on calls fail at once, without touching the network, while one background task
//! reconnects with backoff. So an outage costs one timeout per probe, not one per request, and each
//! change of state is logged once.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError};
use tokio::sync::Notify;

use super::ClusterError;
use crate::metrics::ClusterMetrics;

/// Backoff between reconnection attempts: from the first, doubling, up to the last.
const FIRST_RETRY: Duration = Duration::from_millis(50);
const LAST_RETRY: Duration = Duration::from_secs(2);
/// While connected, the link is checked this often even without traffic, so an idle replica
/// notices an outage (and `/readyz` tells) on its own.
const PROBE_EVERY: Duration = Duration::from_secs(1);

pub(super) struct Link {
    client: Client,
    /// `None` while down. A clone of the connection is taken per call (it is a handle).
    conn: RwLock<Option<MultiplexedConnection>>,
    up: AtomicBool,
    /// Rung when a call marks the link down: the reconnect task starts at once.
    lost: Notify,
    timeout: Duration,
    metrics: ClusterMetrics,
    /// Bumped on every reconnection (see [`Link::epoch`]).
    epoch: std::sync::atomic::AtomicU64,
}

impl Link {
    pub(super) fn new(client: Client, timeout: Duration, metrics: ClusterMetrics) -> Arc<Self> {
        Arc::new(Self {
            client,
            conn: RwLock::new(None),
            up: AtomicBool::new(false),
            lost: Notify::new(),
            timeout,
            metrics,
            epoch: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub(super) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// How many times this replica has (re)connected: a change means Redis may have missed
    /// invalidations meanwhile, so what the replica cached before is not to be trusted.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Runs `call` on the shared connection within the deadline. Down, or failing, it is
    /// [`ClusterError::Unavailable`]; a failure or a timeout also marks the link down.
    pub(super) async fn call<T, F, Fut>(&self, call: F) -> Result<T, ClusterError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let conn = match self.conn.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
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
                // A refusal by the server (a wrong type, out of memory) is not an outage: the
                // connection is fine. Anything else is.
                if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
                    self.mark_down(&format!("{e}"));
                } else {
                    tracing::warn!(error = %e, "Redis refused a call");
                }
                Err(ClusterError::Unavailable)
            }
            Err(_) => {
                self.metrics.errors.inc();
                self.mark_down(&format!("no answer within {:?}", self.timeout));
                Err(ClusterError::Unavailable)
            }
        }
    }

    fn mark_down(&self, why: &str) {
        match self.conn.write() {
            Ok(mut guard) => *guard = None,
            Err(poisoned) => *poisoned.into_inner() = None,
        }
        if self.up.swap(false, Ordering::AcqRel) {
            self.metrics.up.set(0);
            tracing::warn!(
                reason = why,
                "cluster: Redis unavailable; reconnecting in the background"
            );
        }
        self.lost.notify_one();
    }

    /// Keeps the link connected for as long as the process runs: connects, and after every loss
    /// reconnects with backoff. The first failure of a run of them is logged, not each one.
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
                    match self.conn.write() {
                        Ok(mut guard) => *guard = Some(conn),
                        Err(poisoned) => *poisoned.into_inner() = Some(conn),
                    }
                    self.epoch.fetch_add(1, Ordering::AcqRel);
                    on_connect();
                    self.up.store(true, Ordering::Release);
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
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(budget))
            .set_response_timeout(Some(self.timeout));
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
            Ok(conn)
        };
        tokio::time::timeout(budget, attempt)
            .await
            .map_err(|_| format!("no answer within {budget:?}"))?
    }
}
