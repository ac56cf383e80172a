//! The shared quota: the team's GCRA state in the cluster's Redis, checked and spent by one script
//! on Redis's clock, so N replicas admit exactly what one gateway would. Its answer is turned into
//! the same [`Verdict`] the local limiter gives, so the headers do not know which one answered.

use std::time::Duration;

use super::local::TeamLimiter;
use super::verdict::{QuotaKind, QuotaStatus, Verdict};
use crate::cluster::{AdmitReply, Bucket};
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
