//! The shared room: the team's GCRA state and the org's budget and hold in the cluster's Redis,
//! each checked and spent by one script on Redis's clock, so N replicas admit exactly what one
//! gateway would. The hold is read by both scripts: the team's, so that a request for an org
//! without a budget learns it with its quota, and the budget's. Their answers are turned into the
//! same values the local room gives ([`Verdict`], [`Spent`] or [`Refusal`]), so the pipeline does
//! not know which one answered.

use std::time::Duration;

use super::budget::Plan;
use super::org::{Refusal, Spent};
use super::team::TeamLimiter;
use super::verdict::{QuotaKind, QuotaStatus, Verdict};
use crate::cluster::{AdmitReply, Bucket, BudgetAsk, BudgetReply, Cluster, ClusterError};
use crate::settings::RateQuota;

/// A quota as the script takes it: the time GCRA needs to earn back one request, and the burst.
pub(super) fn bucket(quota: RateQuota) -> Bucket {
    Bucket {
        // At least a microsecond, the script's unit: more than 60 million a minute is no limit.
        interval: (Duration::from_secs(60) / quota.per_minute.get()).max(Duration::from_micros(1)),
        burst: quota.burst.get(),
    }
}

/// The script's answer as a verdict with `limiter`'s quotas and header values.
pub(super) fn verdict(reply: &AdmitReply, limiter: &TeamLimiter) -> Verdict {
    let (general_quota, write_quota) = limiter.quotas();
    let general = QuotaStatus {
        kind: QuotaKind::General,
        quota: general_quota,
        remaining: reply.general_remaining,
        reset: Duration::from_micros(reply.general_reset_us),
    };
    let write = write_quota
        .zip(reply.write)
        .map(|(quota, (remaining, reset_us))| QuotaStatus {
            kind: QuotaKind::Write,
            quota,
            remaining,
            reset: Duration::from_micros(reset_us),
        });
    let wait = Duration::from_micros(reply.retry_after_us);
    let refusal = match reply.refused_by {
        1 => Some((QuotaKind::General, wait)),
        2 => Some((QuotaKind::Write, wait)),
        _ => None,
    };
    limiter.verdict(general, write, refusal)
}

/// One upstream call of team `i` against `plan`, its org's budget in Redis (and the org's hold),
/// answered as the local budget answers.
pub(super) async fn spend(
    cluster: &Cluster,
    org: &str,
    plan: &Plan,
    i: usize,
) -> Result<Result<Spent, Refusal>, ClusterError> {
    let parts: Vec<(&str, u64, u64)> = plan
        .parts
        .iter()
        .map(|p| (&*p.team, p.share, p.guaranteed))
        .collect();
    let ask = BudgetAsk {
        per_minute: plan.per_minute,
        burst: plan.burst,
        total_shares: plan.total_shares,
        parts: &parts,
        team: i,
    };
    Ok(match cluster.spend_budget(org, ask).await? {
        BudgetReply::Within => Ok(Spent::Within),
        BudgetReply::Borrowed => Ok(Spent::Borrowed),
        BudgetReply::Refused { wait, full } => Err(Refusal::Org { wait, full }),
        BudgetReply::Held { left } => Err(Refusal::Held { left }),
    })
}
