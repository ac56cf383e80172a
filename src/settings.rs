//! The validated configuration every stage reads: typed values (`Duration`, `NonZeroU32`,
//! `SocketAddr`), built only by the config loader from the operators' TOML. Stages import these
//! types, never the parsing.

use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderValue;

use crate::auth::{Access, KeyDigest};

/// The whole validated configuration. Built only by [`Settings::load`] / [`Settings::from_toml_str`].
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerSettings,
    pub upstream: UpstreamSettings,
    pub cache: CacheSettings,
    pub audit: AuditSettings,
    /// `None`: the admin API (`/admin/*`) is off.
    pub admin_token: Option<KeyDigest>,
    pub teams: Vec<Team>,
    /// `None`: one process, nothing shared (no `[cluster]` section).
    pub cluster: Option<ClusterSettings>,
    /// Which config this is, the same on every replica that read the same file and secrets: the
    /// first 16 hex digits of a SHA-256 over the file and the digests of the secrets it named.
    pub fingerprint: Arc<str>,
    /// `None`: no spans are exported (no `[tracing]` section). Read once at start.
    pub tracing: Option<TracingSettings>,
}

/// `[tracing]`: where OTLP spans go and how many requests without a sampled parent are traced.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSettings {
    /// The collector's base URL (`http://otel-collector:4318`); spans go to `<it>/v1/traces`.
    pub otlp_endpoint: String,
    /// The share of requests traced when the client sent no sampled parent, in `0.0..=1.0`.
    pub sample_ratio: f64,
    pub service_name: String,
}

/// `[cluster]`: the Redis every replica shares, and what a replica does without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// Where the primary is: one address, or the Sentinels that know it.
    pub target: RedisTarget,
    pub password: Option<Secret>,
    /// Every key the gateway uses starts with it.
    pub key_prefix: Arc<str>,
    /// A Redis call slower than this counts as Redis unavailable.
    pub timeout: Duration,
    pub on_unavailable: OnUnavailable,
    /// Redis replicas that must acknowledge an agent write's version changes (`WAIT`) before the
    /// write goes on; 0: none are waited for.
    pub min_replicas_acked: u32,
}

/// How a replica finds the Redis primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// `redis://` or `rediss://`, never with a password in it (so it can be logged).
    Url(String),
    /// Asked of the Sentinels on every (re)connection.
    Sentinel(SentinelTarget),
}

/// `sentinels`, `master_name` and what `redis_url` would otherwise say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelTarget {
    /// `host:port` of each Sentinel.
    pub sentinels: Vec<(String, u16)>,
    pub master_name: String,
    pub database: i64,
    pub username: Option<String>,
    /// TLS to the primary and to the Sentinels alike.
    pub tls: bool,
    /// For Sentinels that require one (`requirepass` in sentinel.conf).
    pub sentinel_password: Option<Secret>,
}

/// What a replica does while it cannot reach Redis (DESIGN, "Cluster mode").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnavailable {
    /// Keep serving: local quotas, agent reads bypass the cache, writes to agents `503`.
    Degrade,
    /// Every request `503`, `/readyz` `503`.
    Refuse,
}

/// A secret read from env or a file; its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub max_body_bytes: u64,
    pub shutdown_grace: Duration,
    pub limits: ConnectionLimits,
    pub worker_threads: Option<NonZeroUsize>,
    /// Reload when the config file or a secret file it names changes (`server.watch_config`).
    pub watch_config: bool,
}

/// What a client may hold without sending a request (DESIGN, "Limits on slow, idle and too many
/// clients").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// From accepting a connection, or finishing its last answer, to a complete request head.
    pub header_timeout: Duration,
    /// The longest wait between two reads of a request body.
    pub body_timeout: Duration,
    /// A keep-alive connection with no request in flight is closed after this.
    pub idle_timeout: Duration,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: NonZeroUsize,
}

#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Scheme, authority and path prefix, without a trailing slash (`https://api.dialnexa.com/v1`).
    pub base_url: String,
    pub connect_timeout: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub enabled: bool,
    pub ttl: Duration,
    pub max_bytes: u64,
    pub max_entry_bytes: u64,
    pub stale_if_error: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    pub sink: AuditSink,
    /// Lines queued between requests and the writer; past it requests wait for room.
    pub buffer_lines: NonZeroUsize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSink {
    File(PathBuf),
    Stdout,
}

/// An organisation: its name, the ready-made `Authorization` value carrying its DialNexa key, and
/// how its DialNexa quota is divided between its teams.
#[derive(Clone)]
pub struct Org {
    pub name: Arc<str>,
    /// `Bearer <org key>`, marked sensitive so hyper never logs it.
    pub authorization: HeaderValue,
    /// `upstream_rate_limit`: the org budget its upstream calls spend. `None`: no budget, only
    /// DialNexa's own holds apply.
    pub upstream_rate_limit: Option<RateQuota>,
    /// `max_upstream_hold_seconds`: the longest DialNexa's `429` stops the org's upstream calls.
    pub max_upstream_hold: Duration,
}

impl fmt::Debug for Org {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Org")
            .field("name", &self.name)
            .field("authorization", &"<redacted>")
            .field("upstream_rate_limit", &self.upstream_rate_limit)
            .field("max_upstream_hold", &self.max_upstream_hold)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateQuota {
    pub per_minute: NonZeroU32,
    pub burst: NonZeroU32,
}

#[derive(Debug, Clone)]
pub struct Team {
    pub name: Arc<str>,
    pub org: Org,
    /// In the order of `key_sha256`.
    pub keys: Vec<TeamKey>,
    pub access: Access,
    pub rate_limit: RateQuota,
    pub write_rate_limit: Option<RateQuota>,
    /// `upstream_share`: the team's weight in its org's budget (0: it only borrows).
    pub upstream_share: u32,
}

impl RateQuota {
    /// The burst guaranteed to a team of weight `share` out of `total` in an org whose budget
    /// is `self`: `max(1, floor(burst × share / total))`, or none for a weight of 0.
    pub fn guaranteed_burst(&self, share: u32, total: u64) -> u64 {
        if share == 0 || total == 0 {
            return 0;
        }
        (u64::from(self.burst.get()) * u64::from(share) / total).max(1)
    }
}

/// One entry of a team's `key_sha256`: the key's digest and, if it has one, its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TeamKey {
    pub digest: KeyDigest,
    /// From this moment on the key is refused (`key_expired`); `None`: it never ends.
    pub not_after: Option<SystemTime>,
}
