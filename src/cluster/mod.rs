//! Cluster mode: what travels between replicas, through the one Redis they share (DESIGN, "Cluster
//! mode"). It owns the connection ([`link`]), the scripts ([`scripts`]) and the keys; it knows
//! nothing of HTTP. Single-node mode never builds one: without `[cluster]` no Redis code runs.
//!
//! The model: each team's quotas are GCRA TATs in Redis; each agent has a shared *version* (an
//! organisation's and an agent's token) that every invalidation replaces with a fresh random token.
//! A replica serves a cached agent only if it was filled under the version its own request just
//! read, in the same round trip as the quota. Tokens never repeat, so nothing Redis forgets (a
//! restart, a flush, an eviction) can make an old entry current again.

mod budget;
mod link;
mod scripts;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use rand::RngCore;
use redis::ServerErrorKind;

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
}

/// Why the cluster could not be set up at start.
#[derive(Debug, thiserror::Error)]
#[error("cluster.redis_url: {0}")]
pub struct ClusterStartError(String);

/// One quota (emission interval and burst) as the script takes it.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    pub interval: Duration,
    pub burst: u32,
}

/// How long a write's answer waits for its second invalidation while the link reconnects.
pub const WRITE_END_PATIENCE: Duration = Duration::from_secs(1);

/// What one request asks of the cluster at admission.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub org: &'a str,
    pub team: &'a str,
    pub general: Bucket,
    pub write: Option<Bucket>,
    pub mode: Mode,
    /// The agent, case-folded, for the agent modes.
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
        let mut info = redis::IntoConnectionInfo::into_connection_info(settings.redis_url.as_str())
            .map_err(|e| ClusterStartError(e.to_string()))?;
        if let Some(password) = &settings.password {
            let redis = info
                .redis_settings()
                .clone()
                .set_password(password.expose());
            info = info.set_redis_settings(redis);
        }
        let client = redis::Client::open(info).map_err(|e| ClusterStartError(e.to_string()))?;
        let link = link::Link::new(client, settings.timeout, metrics.clone());
        tokio::spawn(Arc::clone(&link).keep_connected(on_connect));
        Ok(Arc::new(Self {
            link,
            prefix: settings.key_prefix.clone(),
            on_unavailable: settings.on_unavailable,
            timeout: settings.timeout,
            metrics,
        }))
    }

    pub fn is_up(&self) -> bool {
        self.link.is_up()
    }

    pub fn on_unavailable(&self) -> OnUnavailable {
        self.on_unavailable
    }

    /// How long a write to an agent counts as in progress unless its end arrives: an upstream
    /// answer takes at most `upstream_timeout`, and the end one more Redis call, so twice both.
    pub fn write_lifetime(&self, upstream_timeout: Duration) -> Duration {
        (upstream_timeout + self.timeout) * 2
    }

    pub fn metrics(&self) -> &ClusterMetrics {
        &self.metrics
    }

    /// One round trip: the team's quotas and, for an agent, its version (replaced first when the
    /// request is an agent write the quotas allow).
    pub async fn admit(&self, ask: Ask<'_>) -> Result<AdmitReply, ClusterError> {
        let org = self.org_tag(ask.org);
        let write = ask.write.unwrap_or(Bucket {
            interval: Duration::ZERO,
            burst: 1,
        });
        // `EVALSHA` written straight from the key parts: the script helper copies every key and
        // argument twice more on the way, a measurable part of a cluster-mode hit (callgrind).
        let mut cmd = redis::Cmd::with_capacity(15, 512);
        cmd.arg("EVALSHA").arg(scripts::ADMIT.get_hash());
        match ask.agent {
            None => {
                cmd.arg(2)
                    .arg(Key(&[&org, ":q:", ask.team, ":g"]))
                    .arg(Key(&[&org, ":q:", ask.team, ":w"]));
            }
            Some(agent) => {
                cmd.arg(5)
                    .arg(Key(&[&org, ":q:", ask.team, ":g"]))
                    .arg(Key(&[&org, ":q:", ask.team, ":w"]))
                    .arg(Key(&[&org, ":v"]))
                    .arg(Key(&[&org, ":v:a:", agent]))
                    .arg(Key(&[&org, ":w:a:", agent]));
            }
        }
        cmd.arg(ask.mode as u8)
            .arg(micros(ask.general.interval))
            .arg(ask.general.burst)
            .arg(micros(write.interval))
            .arg(write.burst)
            .arg(token())
            .arg(u64::try_from(ask.write_lifetime.as_millis()).unwrap_or(u64::MAX));
        self.link
            .call(|mut conn| async move {
                match cmd.query_async(&mut conn).await {
                    // Scripts are gone after a restart or `SCRIPT FLUSH`: load it, then again.
                    Err(e) if e.kind() == redis::ErrorKind::Server(ServerErrorKind::NoScript) => {
                        scripts::ADMIT.load_async(&mut conn).await?;
                        cmd.query_async(&mut conn).await
                    }
                    reply => reply,
                }
            })
            .await
            .map(AdmitReply::from_raw)
    }

    /// The second invalidation of an agent write: a fresh version, and the write no longer in
    /// progress. The write's answer waits for it: if the link is down (Redis restarted, say), it
    /// is tried again as the link comes back, for up to [`WRITE_END_PATIENCE`]. Past that the
    /// in-progress mark still keeps the agent uncached for the write's lifetime, unless Redis lost
    /// the mark too (see docs/operations.md, "Scaling out").
    pub async fn write_end(&self, org: &str, agent: &str) -> Result<(), ClusterError> {
        let org = self.org_tag(org);
        let give_up = tokio::time::Instant::now() + WRITE_END_PATIENCE;
        loop {
            let mut invocation = scripts::WRITE_END.prepare_invoke();
            invocation
                .key(key(&org, &[":v:a:", agent]))
                .key(key(&org, &[":w:a:", agent]))
                .arg(token());
            let result = self
                .link
                .call(|mut conn| async move { invocation.invoke_async::<i64>(&mut conn).await })
                .await
                .map(drop);
            if result.is_ok() || tokio::time::Instant::now() >= give_up {
                return result;
            }
            // Wait for the reconnection (backoff starts at 50 ms), then try again.
            while !self.link.is_up() && tokio::time::Instant::now() < give_up {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Replaces the versions `reaches` name (admin purges), in one pipelined round trip.
    pub async fn invalidate(&self, reaches: &[Reach<'_>]) -> Result<(), ClusterError> {
        if reaches.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for reach in reaches {
            let key = match reach {
                Reach::Agent { org, agent } => key(&self.org_tag(org), &[":v:a:", agent]),
                Reach::Org(org) => key(&self.org_tag(org), &[":v"]),
            };
            pipe.cmd("SET").arg(key).arg(token()).ignore();
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

/// A Redis key written straight into a command from its parts.
struct Key<'a>(&'a [&'a str]);

impl redis::ToRedisArgs for Key<'_> {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + redis::RedisWrite,
    {
        let mut arg = out.writer_for_next_arg();
        for part in self.0 {
            // Writing into the command's own buffer cannot fail.
            let _ = std::io::Write::write_all(&mut arg, part.as_bytes());
        }
    }
}

/// `head` followed by `parts`, in one allocation: a request builds up to six keys, and `format!`
/// for each was a measurable part of a cluster-mode hit (callgrind).
fn key(head: &str, parts: &[&str]) -> String {
    let mut key = String::with_capacity(head.len() + parts.iter().map(|p| p.len()).sum::<usize>());
    key.push_str(head);
    parts.iter().for_each(|p| key.push_str(p));
    key
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A version no replica, restart or flush will produce twice: this process's 128 random bits
/// (drawn once) and a counter. Cheap enough to draw for every read, which needs one only when Redis
/// has no version for the agent yet.
fn token() -> String {
    static PROCESS: LazyLock<String> = LazyLock::new(|| {
        let mut bytes = [0u8; 16];
        rand::rng().fill_bytes(&mut bytes);
        hex::encode(bytes)
    });
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    key(&PROCESS, &["-", itoa::Buffer::new().format(n)])
}
