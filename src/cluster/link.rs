//! The replica's connection to Redis, and whether it may be used. Concurrent requests share a
//! multiplexed connection (pipelined on the wire, never a connection per request). Every call has
//! its own deadline (`cluster.timeout_ms`).
//!
//! Any failure counts: a transport error, a call outlasting its deadline, and an error *reply*
//! (`OOM`, `READONLY`, `LOADING`, `MISCONF`, `BUSY`, a script error) alike mark the link down, with
//! the reason kept for `/readyz`. From then on calls fail at once, without touching the network,
//! and one background task probes: it connects (asking the Sentinels first, when configured) and
//! runs the admission script on a canary key, which reads and writes as a request does. Only a
//! probe that answers within the deadline brings the link back: a Redis that accepts connections
//! and `PING`s but stalls writes (`CLIENT PAUSE WRITE`, a failover under way) stays down. So an
//! outage costs one timeout per probe, not one per request, and two log lines.
//!
//! A closed connection is noticed when it closes: redis-rs 1.8 tells a connection's push sender
//! `PushKind::Disconnection` when its driver sees the socket end (this needs RESP3, which every
//! Redis since 6 speaks). The link then reconnects straight away, and calls that arrive during
//! that first attempt wait for it (within their deadline) instead of failing: a command that was
//! never written is sent once, on the new connection. A command whose fate is unknown (written,
//! then the connection failed) is never sent again; its caller gets `Unavailable`.
//!
//! Why not redis-rs's `ConnectionManager`: it reconnects by itself, but it calls a connection good
//! once it answers the handshake, so a stalled or out-of-memory Redis would be "up" again after
//! every reconnect, and each request would pay the deadline; it cannot run our probe before
//! commands flow, nor ask the Sentinels again on `READONLY`. The loop below is that part of it,
//! with the probe in the middle.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, RedisError};
use tokio::sync::{watch, Notify};

use super::source::{describe, warn_if_evicting, Source};
use super::{ClusterError, Phase};
use crate::metrics::ClusterMetrics;

/// Backoff between probes while down: from the first, doubling, up to the last. The last is one
/// second so that a Redis back from a restart is found within a second (DESIGN, "Redis restarts").
const FIRST_RETRY: Duration = Duration::from_millis(50);
const LAST_RETRY: Duration = Duration::from_secs(1);
/// While up, the link is probed this often even without traffic, so an idle replica notices an
/// outage (and `/readyz` tells) on its own.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The real call that decides whether the link may carry requests (see the module's doc).
pub(super) type Probe = Box<
    dyn Fn(MultiplexedConnection) -> Pin<Box<dyn Future<Output = Result<(), RedisError>> + Send>>
        + Send
        + Sync,
>;

/// The connection, changed together with its epoch under one lock: a failure that happened on an
/// old connection must not take down the new one.
#[derive(Default)]
struct State {
    /// `None` while down. A clone of the connection is taken per call (it is a handle).
    conn: Option<MultiplexedConnection>,
    /// With `min_replicas_acked`: a second connection for agent writes and their `WAIT`, which
    /// blocks the connection it is sent on and waits for that connection's own writes; on the
    /// shared connection it would hold every hit behind it.
    writer: Option<MultiplexedConnection>,
    /// Bumped on every connection attempt; a failure only counts against the connection it
    /// happened on.
    epoch: u64,
}

pub(super) struct Link {
    source: Source,
    state: RwLock<State>,
    /// Mirrors `state.conn.is_some()`, set under the write lock, for the per-request check.
    up: AtomicBool,
    phase: watch::Sender<Phase>,
    /// Rung when a call marks the link down: the probe task starts at once.
    lost: Notify,
    timeout: Duration,
    metrics: ClusterMetrics,
    probe: Probe,
    with_writer: bool,
    /// One acknowledged write at a time on the writer: `WAIT` then covers exactly its changes,
    /// and a write queued behind another's `WAIT` does not spend its own deadline there.
    writer_turn: tokio::sync::Mutex<()>,
}

/// Which of the link's connections a call uses.
#[derive(Clone, Copy)]
enum Which {
    Shared,
    Writer,
}

impl Link {
    pub(super) fn new(
        source: Source,
        timeout: Duration,
        with_writer: bool,
        metrics: ClusterMetrics,
        probe: Probe,
    ) -> Arc<Self> {
        Arc::new(Self {
            source,
            state: RwLock::default(),
            up: AtomicBool::new(false),
            phase: watch::Sender::new(Phase::Down("not connected yet".into())),
            lost: Notify::new(),
            timeout,
            metrics,
            probe,
            with_writer,
            writer_turn: tokio::sync::Mutex::new(()),
        })
    }

    pub(super) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Up, or replacing a connection that just closed: a call now waits for the new one.
    pub(super) fn usable(&self) -> bool {
        self.is_up() || *self.phase.borrow() == Phase::Reconnecting
    }

    pub(super) fn phase(&self) -> Phase {
        self.phase.borrow().clone()
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn current(&self, which: Which) -> Option<(MultiplexedConnection, u64)> {
        let state = self.read();
        let conn = match which {
            Which::Shared => &state.conn,
            Which::Writer => &state.writer,
        };
        conn.clone().map(|c| (c, state.epoch))
    }

    /// Runs `call` on the shared connection within the deadline. Down, or failing, it is
    /// [`ClusterError::Unavailable`]; a failure or a timeout also marks the link down.
    pub(super) async fn call<T, F, Fut>(&self, call: F) -> Result<T, ClusterError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let (conn, epoch) = match self.current(Which::Shared) {
            Some(current) => current,
            None => self.after_reconnection(Which::Shared).await?,
        };
        self.run(epoch, self.timeout, call(conn)).await
    }

    /// Runs `call` on the writer connection, then `WAIT`s for `replicas` Redis replicas to hold
    /// what it wrote, within one more deadline. Fewer is [`ClusterError::Unacknowledged`] (the
    /// call ran; Redis answered, so the link stays up); `Unavailable` means it may not have run.
    pub(super) async fn call_acked<T, F, Fut>(
        &self,
        replicas: u32,
        call: F,
    ) -> Result<T, ClusterError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        // Too many writes queued behind others' `WAIT`s: this one has not run, and says so
        // (`Unacknowledged` would tell the caller its change was made).
        let _turn = tokio::time::timeout(self.timeout * 2, self.writer_turn.lock())
            .await
            .map_err(|_| ClusterError::Unavailable)?;
        let (conn, epoch) = match self.current(Which::Writer) {
            Some(current) => current,
            None => self.after_reconnection(Which::Writer).await?,
        };
        let wait_ms = u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX);
        let mut waiting = conn.clone();
        let acked = async move {
            let value = call(conn).await?;
            let acked: i64 = redis::cmd("WAIT")
                .arg(replicas)
                .arg(wait_ms)
                .query_async(&mut waiting)
                .await?;
            Ok((value, acked))
        };
        // `WAIT` may take its whole timeout: the call gets a deadline for each.
        let (value, acked) = self.run(epoch, self.timeout * 2, acked).await?;
        if acked < i64::from(replicas) {
            self.metrics.unacknowledged.inc();
            return Err(ClusterError::Unacknowledged);
        }
        Ok(value)
    }

    /// Awaits `call` within `deadline`, marking the link down if it fails.
    async fn run<T>(
        &self,
        epoch: u64,
        deadline: Duration,
        call: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, ClusterError> {
        let started = Instant::now();
        match tokio::time::timeout(deadline, call).await {
            Ok(Ok(value)) => {
                self.metrics
                    .redis_duration
                    .observe(started.elapsed().as_secs_f64());
                Ok(value)
            }
            Ok(Err(e)) => {
                self.metrics.errors.inc();
                self.mark_down(epoch, &describe(&e), false);
                Err(ClusterError::Unavailable)
            }
            Err(_) => {
                self.metrics.errors.inc();
                let why = format!("no answer within {deadline:?}");
                self.mark_down(epoch, &why, false);
                Err(ClusterError::Unavailable)
            }
        }
    }

    /// The connection that replaced one that just closed, if the first attempt to make it
    /// succeeds within a call deadline; `Unavailable` at once while the link is down otherwise.
    async fn after_reconnection(
        &self,
        which: Which,
    ) -> Result<(MultiplexedConnection, u64), ClusterError> {
        let mut phase = self.phase.subscribe();
        let settled = phase.wait_for(|p| *p != Phase::Reconnecting);
        match tokio::time::timeout(self.timeout, settled).await {
            Ok(Ok(p)) if *p == Phase::Up => {}
            _ => return Err(ClusterError::Unavailable),
        }
        self.current(which).ok_or(ClusterError::Unavailable)
    }

    /// Marks the link down if `epoch` is the current connection's; `closed`: the connection
    /// ended by itself (not a failed call), so the first reconnection is awaited by callers.
    fn mark_down(&self, epoch: u64, why: &str, closed: bool) {
        {
            let mut state = self.write();
            if state.epoch != epoch || state.conn.is_none() {
                return;
            }
            state.conn = None;
            state.writer = None;
            self.up.store(false, Ordering::Release);
        }
        self.metrics.up.set(0);
        self.phase.send_replace(if closed {
            Phase::Reconnecting
        } else {
            Phase::Down(why.into())
        });
        tracing::warn!(
            reason = why,
            "cluster: Redis unavailable; serving as cluster.on_unavailable says until a probe succeeds"
        );
        self.lost.notify_one();
    }

    /// Keeps the link usable for as long as the process runs: probes while up, and while down
    /// connects and probes with backoff. `on_connect` runs before requests may use a new
    /// connection.
    pub(super) async fn keep_connected(self: Arc<Self>, on_connect: impl Fn() + Send) {
        let mut retry = FIRST_RETRY;
        let mut connected_once = false;
        let mut start_logged = false;
        loop {
            if self.is_up() {
                tokio::select! {
                    _ = self.lost.notified() => {}
                    _ = tokio::time::sleep(PROBE_EVERY) => {
                        // A failure marks the link down, which the next turn handles.
                        let _ = self.call(|conn| (self.probe)(conn)).await;
                    }
                }
                continue;
            }
            let epoch = {
                let mut state = self.write();
                state.epoch += 1;
                state.epoch
            };
            let attempt = self.connect_and_probe(epoch);
            tokio::pin!(attempt);
            let outcome = tokio::select! {
                outcome = &mut attempt => outcome,
                // Calls wait for a reconnection for one deadline at most; one that takes longer
                // (an unreachable host) is an outage, and calls fail at once from here on.
                _ = tokio::time::sleep(self.timeout) => {
                    self.phase.send_if_modified(|p| {
                        let waited = *p == Phase::Reconnecting;
                        if waited {
                            *p = Phase::Down("the connection closed; reconnecting".into());
                        }
                        waited
                    });
                    attempt.await
                }
            };
            match outcome {
                Ok((conn, writer)) => {
                    on_connect();
                    {
                        let mut state = self.write();
                        state.conn = Some(conn);
                        state.writer = writer;
                        self.up.store(true, Ordering::Release);
                    }
                    self.phase.send_replace(Phase::Up);
                    self.metrics.up.set(1);
                    if connected_once {
                        self.metrics.reconnects.inc();
                    }
                    tracing::info!(redis = %self.source, "cluster: Redis available; connected");
                    retry = FIRST_RETRY;
                    connected_once = true;
                }
                Err(why) => {
                    // Probes are calls too: an outage keeps counting, so an alert on the count
                    // stays up for as long as it lasts.
                    self.metrics.errors.inc();
                    // A loss is logged where it is noticed (`mark_down`); only a replica that
                    // never reached Redis logs its first failed attempt here.
                    if !connected_once && !start_logged {
                        tracing::warn!(reason = %why, "cluster: cannot reach Redis; retrying with backoff");
                        start_logged = true;
                    }
                    self.phase.send_replace(Phase::Down(why.into()));
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(LAST_RETRY);
                }
            }
        }
    }

    /// A new connection to the primary that has answered the probe within a call deadline.
    async fn connect_and_probe(
        self: &Arc<Self>,
        epoch: u64,
    ) -> Result<(MultiplexedConnection, Option<MultiplexedConnection>), String> {
        // Connecting is a handshake (and TLS, AUTH, and maybe the Sentinels) more than a call:
        // a few call deadlines.
        let budget = self.timeout * 5;
        let weak: Weak<Self> = Arc::downgrade(self);
        // No response timeout of the client's own: `call` bounds every call already, and a second
        // timer per call was a measurable part of a cluster-mode hit.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(budget))
            .set_response_timeout(None)
            .set_push_sender(move |push: PushInfo| -> Result<(), ()> {
                if push.kind == PushKind::Disconnection {
                    if let Some(link) = weak.upgrade() {
                        link.mark_down(epoch, "Redis closed the connection", true);
                    }
                }
                Ok(())
            });
        let attempt = async {
            let client = self.source.primary(budget).await?;
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(|e| describe(&e))?;
            warn_if_evicting(&mut conn).await;
            let writer = match self.with_writer {
                true => Some(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                        .map_err(|e| describe(&e))?,
                ),
                false => None,
            };
            Ok::<_, String>((conn, writer))
        };
        let (conn, writer) = tokio::time::timeout(budget, attempt)
            .await
            .map_err(|_| format!("no connection within {budget:?}"))??;
        match tokio::time::timeout(self.timeout, (self.probe)(conn.clone())).await {
            Ok(Ok(())) => Ok((conn, writer)),
            Ok(Err(e)) => Err(describe(&e)),
            Err(_) => Err(format!("the probe got no answer within {:?}", self.timeout)),
        }
    }
}
