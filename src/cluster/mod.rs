//! Cluster mode: what travels between replicas, through the one Redis they share (DESIGN, "Cluster
//! mode"). It owns the connection ([`link`]), the scripts ([`scripts`]) and the keys; it knows
//! nothing of HTTP. Single-node mode never builds one: without `[cluster]` no Redis code runs.
//!
//! The model: each team's quotas are GCRA TATs in Redis; each agent has a shared *version* (an
//! organisation's and an agent's token) that every invalidation replaces with a fresh random token.
//! A replica serves a cached agent only if it was filled under the version its own request just
//! read, in the same round trip as the quota. Tokens never repeat, so nothing Redis forgets (a
//! restart, a flush, an eviction, an expiry) can make an old entry current again.
//!
//! What a client can make Redis hold is bounded (DESIGN, "A hostile team and a sick Redis"): a
//! refused request writes nothing, every key expires, and agents are named by a fixed-size digest
//! ([`keys`]). The replica follows Redis through restarts and failovers on its own ([`link`],
//! [`source`]), and with `min_replicas_acked` an agent write waits for Redis replicas to hold its
//! version change before it goes on.

mod budget;
mod keys;
mod link;
mod scripts;
mod source;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{Cmd, ServerErrorKind};

use keys::{canary_tag, key, micros, millis, token, AgentDigest, Key, HOLD_KEY};

use crate::metrics::ClusterMetrics;
use crate::settings::{ClusterSettings, OnUnavailable};

pub use budget::{BudgetAsk, BudgetReply};
pub use scripts::{AdmitReply, Mode};

/// Why a cluster call did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// Down, failed, or slower than `cluster.timeout_ms`.
    #[error("the cluster's Redis is unavailable")]
    Unavailable,
    /// Redis answered, but fewer of its replicas than `min_replicas_acked` hold the change.
    #[error("the cluster's Redis replicas did not acknowledge a write")]
    Unacknowledged,
}

/// Why the cluster could not be set up at start.
#[derive(Debug, thiserror::Error)]
#[error("[cluster]: {0}")]
pub struct ClusterStartError(String);

/// What the link can do right now, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Up,
    /// The connection closed; the first attempt to replace it is under way.
    Reconnecting,
    /// Down, and why (a Redis error reply, a deadline, a refused connection).
    Down(Arc<str>),
}

/// One quota (emission interval and burst) as the script takes it.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    pub interval: Duration,
    pub burst: u32,
}

/// How long a write's answer waits for its second invalidation while the link reconnects.
pub const WRITE_END_PATIENCE: Duration = Duration::from_secs(1);

/// How long versions live before the first reload or start sets it from `[cache]`: the defaults'
/// `ttl_seconds + stale_if_error_seconds` and a default upstream timeout.
const DEFAULT_VERSION_LIFETIME: Duration = Duration::from_secs(60 + 300 + 15);

/// What one request asks of the cluster at admission.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub org: &'a str,
    pub team: &'a str,
    pub general: Bucket,
    pub write: Option<Bucket>,
    pub mode: Mode,
    /// The agent, canonical (case-folded), for the agent modes.
    pub agent: Option<&'a str>,
    /// How long an agent write counts as in progress if its end never arrives: longer than the
    /// write can take upstream.
    pub write_lifetime: Duration,
}

/// What an invalidation reaches across replicas.
#[derive(Debug, Clone, Copy)]
pub enum Reach<'a> {
    Agent { org: &'a str, agent: &'a str },
    Org(&'a str),
}

/// The replica's side of the cluster.
pub struct Cluster {
    link: Arc<link::Link>,
    prefix: Arc<str>,
    on_unavailable: OnUnavailable,
    timeout: Duration,
    /// `WAIT` for this many Redis replicas after an agent write's version changes; 0: never.
    min_replicas_acked: u32,
    /// How long an agent's or org's version lives after it was last written or read, in ms: set
    /// from the running `[cache]` and `[upstream]` (see [`Cluster::set_version_lifetime`]).
    version_lifetime_ms: AtomicU64,
    metrics: ClusterMetrics,
}

impl Cluster {
    /// Builds the client and starts connecting in the background (a replica may start before
    /// Redis; it is then unavailable until it connects). `on_connect` runs on every (re)connection.
    pub fn start(
        settings: &ClusterSettings,
        metrics: ClusterMetrics,
        on_connect: impl Fn() + Send + 'static,
    ) -> Result<Arc<Self>, ClusterStartError> {
        let source = source::Source::new(settings)?;
        let canary = canary_tag(&settings.key_prefix);
        let probe: link::Probe = Box::new(move |conn| Box::pin(probe(conn, canary.clone())));
        let link = link::Link::new(
            source,
            settings.timeout,
            settings.min_replicas_acked > 0,
            metrics.clone(),
            probe,
        );
        tokio::spawn(Arc::clone(&link).keep_connected(on_connect));
        Ok(Arc::new(Self {
            link,
            prefix: settings.key_prefix.clone(),
            on_unavailable: settings.on_unavailable,
            timeout: settings.timeout,
            min_replicas_acked: settings.min_replicas_acked,
            version_lifetime_ms: AtomicU64::new(millis(DEFAULT_VERSION_LIFETIME)),
            metrics,
        }))
    }

    /// Whether a call may be made: Redis is up, or the connection just closed and its
    /// replacement is under way (a call then waits for it, within its deadline, and is sent on
    /// the new connection; see the link's doc).
    pub fn is_up(&self) -> bool {
        self.link.usable()
    }

    /// Up, reconnecting, or down and why: for `/readyz`.
    pub fn phase(&self) -> Phase {
        self.link.phase()
    }

    pub fn on_unavailable(&self) -> OnUnavailable {
        self.on_unavailable
    }

    /// How long a version must outlive its last use: an entry filled under it is served for
    /// `cache_life` (the TTL and the stale-if-error window) after its fill, which ends up to
    /// `upstream_timeout` after the read that learnt the version. Set at start and on reload.
    pub fn set_version_lifetime(&self, cache_life: Duration, upstream_timeout: Duration) {
        // At least a second: a zero TTL would make `SET .. PX 0` an error.
        let life = (cache_life + upstream_timeout).max(Duration::from_secs(1));
        self.version_lifetime_ms
            .store(millis(life), Ordering::Relaxed);
    }

    fn version_lifetime_ms(&self) -> u64 {
        self.version_lifetime_ms.load(Ordering::Relaxed)
    }

    /// How long a write to an agent counts as in progress unless its end arrives: an upstream
    /// answer takes at most `upstream_timeout`; its end then waits up to [`WRITE_END_PATIENCE`]
    /// for the link, plus a call deadline each for the admission and the end.
    pub fn write_lifetime(&self, upstream_timeout: Duration) -> Duration {
        upstream_timeout + WRITE_END_PATIENCE + self.timeout * 2
    }

    pub fn metrics(&self) -> &ClusterMetrics {
        &self.metrics
    }

    /// One round trip: the team's quotas, whether the org is held and, for an agent, its version
    /// (replaced first when the request is an agent write the quotas allow). With
    /// `min_replicas_acked`, an agent write runs on the link's own write connection and waits for
    /// that many Redis replicas to hold the new version (its `WAIT` is one round trip more);
    /// fewer is `Unavailable`, and the write is not forwarded.
    pub async fn admit(&self, ask: Ask<'_>) -> Result<AdmitReply, ClusterError> {
        let org = self.org_tag(ask.org);
        let write = ask.write.unwrap_or(Bucket {
            interval: Duration::ZERO,
            burst: 1,
        });
        // `EVALSHA` written straight from the key parts: the script helper copies every key and
        // argument twice more on the way, a measurable part of a cluster-mode hit (callgrind).
        let mut cmd = Cmd::with_capacity(17, 512);
        cmd.arg("EVALSHA").arg(scripts::ADMIT.get_hash());
        match ask.agent {
            None => {
                cmd.arg(3)
                    .arg(Key(&[&org, ":q:", ask.team, ":g"]))
                    .arg(Key(&[&org, ":q:", ask.team, ":w"]))
                    .arg(Key(&[&org, HOLD_KEY]));
            }
            Some(agent) => {
                let digest = AgentDigest::of(agent);
                cmd.arg(6)
                    .arg(Key(&[&org, ":q:", ask.team, ":g"]))
                    .arg(Key(&[&org, ":q:", ask.team, ":w"]))
                    .arg(Key(&[&org, HOLD_KEY]))
                    .arg(Key(&[&org, ":v"]))
                    .arg(Key(&[&org, ":v:a:", digest.as_str()]))
                    .arg(Key(&[&org, ":w:a:", digest.as_str()]));
            }
        }
        cmd.arg(ask.mode as u8)
            .arg(micros(ask.general.interval))
            .arg(ask.general.burst)
            .arg(micros(write.interval))
            .arg(write.burst)
            .arg(token())
            .arg(millis(ask.write_lifetime))
            .arg(self.version_lifetime_ms());
        if let (Mode::AgentWrite, Some(agent), 1..) = (ask.mode, ask.agent, self.min_replicas_acked)
        {
            let acked = self
                .link
                .call_acked(self.min_replicas_acked, |mut conn| async move {
                    eval_loading(&mut conn, &cmd, &scripts::ADMIT).await
                })
                .await;
            if acked == Err(ClusterError::Unacknowledged) {
                // Not forwarded: lift its in-progress mark now rather than at the end of its
                // lifetime, so the agent is cached again at once (the fresh version this leaves
                // costs one miss per replica).
                let _ = self.end_write(&org, agent, false).await;
            }
            return acked.map(AdmitReply::from_raw);
        }
        self.link
            .call(|mut conn| async move { eval_loading(&mut conn, &cmd, &scripts::ADMIT).await })
            .await
            .map(AdmitReply::from_raw)
    }

    /// The second invalidation of an agent write: a fresh version, and the write no longer in
    /// progress. The write's answer waits for it: if the link is down (Redis restarted, say), it
    /// is tried again as the link comes back, for up to [`WRITE_END_PATIENCE`]. Past that the
    /// in-progress mark still keeps the agent uncached for the write's lifetime, unless Redis lost
    /// the mark too (see docs/operations.md, "Scaling out").
    ///
    /// With `min_replicas_acked`, a change the replicas did not acknowledge is only counted: the
    /// first change, acknowledged before the write was forwarded, already makes every entry
    /// filled before the write dead on any primary a failover may promote, and the in-progress
    /// mark it came with keeps fills from being stored until the write is over.
    pub async fn write_end(&self, org: &str, agent: &str) -> Result<(), ClusterError> {
        let org = self.org_tag(org);
        let give_up = tokio::time::Instant::now() + WRITE_END_PATIENCE;
        loop {
            let result = self
                .end_write(&org, agent, self.min_replicas_acked > 0)
                .await;
            if result.is_ok() || tokio::time::Instant::now() >= give_up {
                return result;
            }
            // Wait for the reconnection (backoff starts at 50 ms), then try again.
            while !self.link.is_up() && tokio::time::Instant::now() < give_up {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// One `WRITE_END` for `agent` of the organisation tagged `org`, acknowledged by replicas or not.
    async fn end_write(&self, org: &str, agent: &str, acked: bool) -> Result<(), ClusterError> {
        let digest = AgentDigest::of(agent);
        let mut cmd = Cmd::new();
        cmd.arg("EVALSHA")
            .arg(scripts::WRITE_END.get_hash())
            .arg(2)
            .arg(Key(&[org, ":v:a:", digest.as_str()]))
            .arg(Key(&[org, ":w:a:", digest.as_str()]))
            .arg(token())
            .arg(self.version_lifetime_ms());
        let ended = |mut conn: MultiplexedConnection| async move {
            eval_loading::<i64>(&mut conn, &cmd, &scripts::WRITE_END).await
        };
        if !acked {
            return self.link.call(ended).await.map(drop);
        }
        match self.link.call_acked(self.min_replicas_acked, ended).await {
            // Counted by the link; the first change covers it (see `write_end`).
            Err(ClusterError::Unacknowledged) => Ok(()),
            other => other.map(drop),
        }
    }

    /// Replaces the versions `reaches` name (admin purges), in one pipelined round trip.
    pub async fn invalidate(&self, reaches: &[Reach<'_>]) -> Result<(), ClusterError> {
        if reaches.is_empty() {
            return Ok(());
        }
        let life = self.version_lifetime_ms();
        let mut pipe = redis::pipe();
        for reach in reaches {
            let key = match reach {
                Reach::Agent { org, agent } => key(
                    &self.org_tag(org),
                    &[":v:a:", AgentDigest::of(agent).as_str()],
                ),
                Reach::Org(org) => key(&self.org_tag(org), &[":v"]),
            };
            pipe.cmd("SET")
                .arg(key)
                .arg(token())
                .arg("PX")
                .arg(life)
                .ignore();
        }
        self.link
            .call(|mut conn| async move { pipe.query_async::<()>(&mut conn).await })
            .await
    }

    /// `<prefix>:{<org>}`: every key of an organisation hashes to one slot.
    fn org_tag(&self, org: &str) -> String {
        key(&self.prefix, &[":{", org, "}"])
    }
}

/// `EVALSHA` of `script`; scripts are gone after a restart, a failover or `SCRIPT FLUSH`: on
/// `NOSCRIPT` it is loaded and the call sent again (it did not run, so this is no second run).
async fn eval_loading<T: redis::FromRedisValue>(
    conn: &mut MultiplexedConnection,
    cmd: &Cmd,
    script: &redis::Script,
) -> redis::RedisResult<T> {
    match cmd.query_async(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(ServerErrorKind::NoScript) => {
            script.load_async(conn).await?;
            cmd.query_async(conn).await
        }
        reply => reply,
    }
}

/// The link's probe: the admission script as an agent read would run it, on the canary's keys,
/// so it reads and writes (and expires what it writes) exactly as a request does. A quota far
/// beyond any probe rate, so it is never refused (a refusal writes nothing, and would prove
/// less).
async fn probe(mut conn: MultiplexedConnection, canary: String) -> redis::RedisResult<()> {
    let digest = AgentDigest::of("probe");
    let mut cmd = Cmd::new();
    cmd.arg("EVALSHA")
        .arg(scripts::ADMIT.get_hash())
        .arg(6)
        .arg(Key(&[&canary, ":q:probe:g"]))
        .arg(Key(&[&canary, ":q:probe:w"]))
        .arg(Key(&[&canary, HOLD_KEY]))
        .arg(Key(&[&canary, ":v"]))
        .arg(Key(&[&canary, ":v:a:", digest.as_str()]))
        .arg(Key(&[&canary, ":w:a:", digest.as_str()]))
        .arg(Mode::AgentRead as u8)
        .arg(1)
        .arg(1_000_000)
        .arg(0)
        .arg(1)
        .arg(token())
        .arg(1_000)
        .arg(60_000);
    eval_loading::<scripts::RawReply>(&mut conn, &cmd, &scripts::ADMIT)
        .await
        .map(drop)
}
