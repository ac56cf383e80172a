//! Step 3, and the step right before every upstream call: "may this request go now".
//!
//! The pipeline asks [`Admission`], one async seam with two rooms behind it: the replica's own
//! state (`team`, each team's GCRA limiter; `org`, each org's budget and hold), and in cluster
//! mode the shared one (`shared`, with the scripts in `cluster`), which answers for every replica
//! at once and, in the same round trip as the team's quota, tells the cache which version of an
//! agent is current and whether DialNexa holds the org. It answers in one value, [`Answer`]:
//! admitted, with the quota headers and the version an agent read must match, or refused, with
//! why ([`LimitedBy`]).
//!
//! `budget` is the org budget's algorithm, with its invariant; `hold` reads DialNexa's refusals;
//! `verdict` makes the quota headers.
//!
//! Two moments: [`Admission::admit`] once the request is identified (the team's quotas, spent by
//! hits too), and [`Admission::before_upstream`] right before a request goes upstream (a fill's
//! leader once, a forward, a write), where the organisation's budget is spent.

mod budget;
mod hold;
mod org;
mod shared;
mod team;
mod verdict;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};

pub use org::{team_parts, TeamPart};
pub use team::TeamLimiter;
pub use verdict::{apply_headers, LimitedBy, QuotaKind, QuotaStatus, Verdict};

use crate::cache::SharedVersion;
use crate::cluster::{Ask as ClusterAsk, Cluster, Mode};
use crate::error::GatewayError;
use crate::settings::OnUnavailable;
use crate::telemetry;
use org::{LocalBudgets, Refusal, Spent};

/// Where admission state lives. A refused request spends nothing, whichever room answers.
#[derive(Clone, Default)]
pub struct Admission {
    /// `None`: in this process only. `Some`: in the cluster's Redis, shared by every replica; the
    /// local state stands in while it is unavailable (`on_unavailable = "degrade"`).
    shared: Option<Arc<Cluster>>,
    /// The org budgets and holds of this process: all of them without a cluster; in cluster mode
    /// the holds Redis told of with each admission, and the stand-in for Redis's budgets while it
    /// is unavailable. Kept across reloads.
    local: Arc<LocalBudgets>,
}

/// One request, as the admission step sees it.
#[derive(Clone, Copy)]
pub struct Ask<'a> {
    pub limiter: &'a TeamLimiter,
    pub team: &'a str,
    pub org: &'a str,
    pub is_write: bool,
    /// The agent (case-folded) whose cached copies this request reads, or which it writes.
    pub agent: Option<&'a str>,
    /// `upstream.timeout_ms` of the request's snapshot: how long its write may take upstream.
    pub upstream_timeout: Duration,
}

/// What the admission step decided.
pub enum Answer {
    /// The request may go on. `version` is what the cluster said of the agent it reads or writes.
    Admitted {
        verdict: Verdict,
        version: SharedVersion,
    },
    /// The request is refused, by `why`, and may be tried again after `retry_after`.
    Refused {
        verdict: Verdict,
        why: LimitedBy,
        retry_after: Duration,
    },
}

impl Admission {
    /// Admission in this process alone.
    pub fn local() -> Self {
        Self::default()
    }

    /// Admission shared by every replica through `cluster`.
    pub fn shared(cluster: Arc<Cluster>) -> Self {
        Self {
            shared: Some(cluster),
            local: Arc::default(),
        }
    }

    /// Spends one request of the team's quotas (the write quota too for writes), or nothing if any
    /// refuses. `Err` only in cluster mode, when Redis is unavailable and the request may not go
    /// on without it: everything under `refuse`, an agent write under `degrade`.
    pub async fn admit(&self, ask: Ask<'_>) -> Result<Answer, GatewayError> {
        let Some(cluster) = &self.shared else {
            return Ok(answer(
                ask.limiter.check(ask.is_write),
                SharedVersion::NotShared,
            ));
        };
        if cluster.is_up() {
            let (general, write) = ask.limiter.quotas();
            let mode = match (ask.is_write, ask.agent.is_some()) {
                (false, false) => Mode::Read,
                (false, true) => Mode::AgentRead,
                (true, false) => Mode::Write,
                (true, true) => Mode::AgentWrite,
            };
            let asked = ClusterAsk {
                org: ask.org,
                team: ask.team,
                general: shared::bucket(general),
                write: write.filter(|_| ask.is_write).map(shared::bucket),
                mode,
                agent: ask.agent,
                write_lifetime: cluster.write_lifetime(ask.upstream_timeout),
            };
            let round_trip = telemetry::span::redis("EVALSHA admit");
            let reply = telemetry::in_span!(round_trip.clone(), cluster.admit(asked));
            if reply.is_err() {
                telemetry::span::failed(&round_trip, "redis_unavailable");
            }
            if let Ok(reply) = reply {
                if let Some(left) = reply.held {
                    // Kept for the step before upstream, which then needs no round trip of its
                    // own for an org without a budget.
                    self.local.learn_hold(ask.org, left);
                }
                let verdict = shared::verdict(&reply, ask.limiter);
                let version = match reply.version {
                    Some(version) if reply.writing && !ask.is_write => {
                        SharedVersion::Writing(Arc::from(version))
                    }
                    Some(version) => SharedVersion::Current(Arc::from(version)),
                    None => SharedVersion::NotShared,
                };
                return Ok(answer(verdict, version));
            }
        }
        // Without Redis: nothing that only Redis can make safe goes on.
        if cluster.on_unavailable() == OnUnavailable::Refuse
            || (ask.is_write && ask.agent.is_some())
        {
            return Err(GatewayError::ClusterUnavailable);
        }
        cluster.metrics().degraded.inc();
        let version = if ask.agent.is_some() {
            SharedVersion::Unavailable
        } else {
            SharedVersion::NotShared
        };
        Ok(answer(ask.limiter.check(ask.is_write), version))
    }

    /// The step right before a request goes upstream, once per upstream call: a fill's leader
    /// (however many requests wait on it), a forward, a write. Hits never come here. Spends one
    /// call of the org's budget, or refuses (nothing spent) for the budget or a DialNexa hold.
    /// In cluster mode one round trip for an org with a budget, none for one without: a hold on
    /// it came with the request's admission (see [`Admission::admit`]), and the hold is all there
    /// is to ask. Without Redis, the replica's own budget and holds stand in.
    pub async fn before_upstream(&self, part: &TeamPart) -> Result<(), GatewayError> {
        let step = telemetry::span::step("org budget");
        let decided = match (&self.shared, &part.budget) {
            (Some(cluster), Some((plan, i))) if cluster.is_up() => {
                match self.local.held(&part.org) {
                    // Held already: the script would refuse it too, so it is not asked.
                    Some(left) => Err(Refusal::Held { left }),
                    None => {
                        let round_trip = step.in_scope(|| telemetry::span::redis("EVALSHA budget"));
                        let spent = telemetry::in_span!(
                            round_trip.clone(),
                            shared::spend(cluster, &part.org, plan, *i)
                        );
                        spent.unwrap_or_else(|_| {
                            telemetry::span::failed(&round_trip, "redis_unavailable");
                            self.local.spend(part)
                        })
                    }
                }
            }
            _ => self.local.spend(part),
        };
        let counters = &part.counters;
        let decision = match &decided {
            Ok(Spent::Borrowed) => "borrowed",
            Ok(_) => "part",
            Err(Refusal::Org { .. }) => "org",
            Err(Refusal::Held { .. }) => "upstream",
        };
        telemetry::span::decided(&step, "dialnexa.budget", decision);
        match decided {
            Ok(spent) => {
                counters.calls.inc();
                if spent == Spent::Borrowed {
                    counters.borrowed.inc();
                }
                Ok(())
            }
            Err(Refusal::Org { wait, full }) => {
                counters.refused_org.inc();
                // Only an org with a budget refuses for it, so `quota` is there.
                let (per_minute, burst) = part
                    .quota
                    .map_or((0, 0), |q| (q.per_minute.get(), q.burst.get()));
                Err(GatewayError::OrgQuotaExhausted {
                    retry_after: wait,
                    per_minute,
                    burst,
                    reset: full,
                })
            }
            Err(Refusal::Held { left }) => {
                counters.refused_upstream.inc();
                // Learnt from Redis, perhaps: this replica's gauge shows it too.
                self.local.hold(&part.org, left, &counters.hold);
                Err(GatewayError::UpstreamQuotaExhausted { retry_after: left })
            }
        }
    }

    /// Every upstream answer to one of the org's calls: DialNexa's `429`, or its word that no
    /// call is left, holds the org (on every replica in cluster mode) for as long as it asks,
    /// up to `max_upstream_hold_seconds`.
    pub async fn upstream_answered(
        &self,
        part: &TeamPart,
        status: StatusCode,
        headers: &HeaderMap,
    ) {
        let Some(hold) = hold::hold_after(status, headers, part.max_hold, SystemTime::now()) else {
            return;
        };
        self.local.hold(&part.org, hold, &part.counters.hold);
        if let Some(cluster) = &self.shared {
            // Without Redis the other replicas learn of it from DialNexa's next refusal to them.
            let _ = cluster.hold(&part.org, hold).await;
        }
    }

    /// Brings the hold gauges up to date, for a scrape.
    pub fn refresh_gauges(&self) {
        self.local.refresh_gauges();
    }

    /// The quota state without spending anything, for answers refused before the limiter. Always
    /// the replica's own view: a refusal is not worth a round trip.
    pub async fn peek(&self, team: &TeamLimiter, is_write: bool) -> Verdict {
        team.peek(is_write)
    }

    /// Whether every request is refused right now (`on_unavailable = "refuse"` without Redis).
    pub fn refusing(&self) -> bool {
        self.shared
            .as_ref()
            .is_some_and(|c| !c.is_up() && c.on_unavailable() == OnUnavailable::Refuse)
    }
}

/// A team verdict as the seam's one answer.
fn answer(verdict: Verdict, version: SharedVersion) -> Answer {
    match (verdict.retry_after, verdict.limited_by()) {
        (Some(retry_after), Some(why)) => Answer::Refused {
            verdict,
            why,
            retry_after,
        },
        _ => Answer::Admitted { verdict, version },
    }
}
