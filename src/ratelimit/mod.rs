//! Step 3: per-team quotas (GCRA), a general one and an optional stricter one for writes, and the
//! quota headers every response to an identified team carries.
//!
//! The pipeline asks [`Quotas`], an async seam with two rooms behind it: the replica's own limiter
//! (`local`), and in cluster mode the shared one (`shared`), which answers for every replica at
//! once and, in the same round trip, tells the cache which version of an agent is current.

mod local;
mod shared;
mod verdict;

use std::sync::Arc;
use std::time::Duration;

pub use local::TeamLimiter;
pub use verdict::{apply_headers, QuotaKind, QuotaStatus, Verdict};

use crate::cache::SharedVersion;
use crate::cluster::{Ask, Cluster, Mode};
use crate::error::GatewayError;
use crate::settings::OnUnavailable;

/// Where quota state lives. A refused request spends nothing, whichever answers.
#[derive(Clone, Default)]
pub enum Quotas {
    /// In this process: each team's [`TeamLimiter`], carried across reloads.
    #[default]
    Local,
    /// In the cluster's Redis, shared by every replica; the local limiters stand in while it is
    /// unavailable (`on_unavailable = "degrade"`).
    Shared(Arc<Cluster>),
}

/// One request, as the quota step sees it.
#[derive(Clone, Copy)]
pub struct QuotaAsk<'a> {
    pub limiter: &'a TeamLimiter,
    pub team: &'a str,
    pub org: &'a str,
    pub is_write: bool,
    /// The agent (case-folded) whose cached copies this request reads, or which it writes.
    pub agent: Option<&'a str>,
    /// `upstream.timeout_ms` of the request's snapshot: how long its write may take upstream.
    pub upstream_timeout: Duration,
}

/// What the quota step decided, and what it learnt of the agent on the way.
pub struct Admission {
    pub verdict: Verdict,
    pub agent: SharedVersion,
}

impl Quotas {
    /// Spends one request of the team's quotas (the write quota too for writes), or nothing if any
    /// refuses. `Err` only in cluster mode, when Redis is unavailable and the request may not go
    /// on without it: everything under `refuse`, an agent write under `degrade`.
    pub async fn admit(&self, ask: QuotaAsk<'_>) -> Result<Admission, GatewayError> {
        let cluster = match self {
            Self::Local => {
                return Ok(Admission {
                    verdict: ask.limiter.check(ask.is_write),
                    agent: SharedVersion::NotShared,
                })
            }
            Self::Shared(cluster) => cluster,
        };
        if cluster.is_up() {
            let (general, write) = ask.limiter.quotas();
            let mode = match (ask.is_write, ask.agent.is_some()) {
                (false, false) => Mode::Read,
                (false, true) => Mode::AgentRead,
                (true, false) => Mode::Write,
                (true, true) => Mode::AgentWrite,
            };
            let shared = Ask {
                org: ask.org,
                team: ask.team,
                general: shared::bucket(general),
                write: write.filter(|_| ask.is_write).map(shared::bucket),
                mode,
                agent: ask.agent,
                write_lifetime: cluster.write_lifetime(ask.upstream_timeout),
            };
            let round_trip = crate::telemetry::span::redis("EVALSHA admit");
            let reply = crate::telemetry::in_span!(round_trip.clone(), cluster.admit(shared));
            if reply.is_err() {
                crate::telemetry::span::failed(&round_trip, "redis_unavailable");
            }
            if let Ok(reply) = reply {
                let verdict = shared::verdict(&reply, ask.limiter);
                let agent = match reply.version {
                    Some(version) if reply.writing && !ask.is_write => {
                        SharedVersion::Writing(Arc::from(version))
                    }
                    Some(version) => SharedVersion::Current(Arc::from(version)),
                    None => SharedVersion::NotShared,
                };
                return Ok(Admission { verdict, agent });
            }
        }
        // Without Redis: nothing that only Redis can make safe goes on.
        if cluster.on_unavailable() == OnUnavailable::Refuse
            || (ask.is_write && ask.agent.is_some())
        {
            return Err(GatewayError::ClusterUnavailable);
        }
        cluster.metrics().degraded.inc();
        Ok(Admission {
            verdict: ask.limiter.check(ask.is_write),
            agent: if ask.agent.is_some() {
                SharedVersion::Unavailable
            } else {
                SharedVersion::NotShared
            },
        })
    }

    /// The quota state without spending anything, for answers refused before the limiter. Always
    /// the replica's own view: a refusal is not worth a round trip.
    pub async fn peek(&self, team: &TeamLimiter, is_write: bool) -> Verdict {
        team.peek(is_write)
    }

    /// Whether every request is refused right now (`on_unavailable = "refuse"` without Redis).
    pub fn refusing(&self) -> bool {
        match self {
            Self::Local => false,
            Self::Shared(c) => !c.is_up() && c.on_unavailable() == OnUnavailable::Refuse,
        }
    }
}
