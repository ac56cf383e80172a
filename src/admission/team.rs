//! The replica's own limiter: per-team GCRA buckets (governor) in memory. Each team owns its own
//! limiters (governor's keyed limiter applies one quota to every key); a config reload hands the
//! same `TeamLimiter` to a team whose quotas did not change.
//!
//! A request is allowed only if every quota that applies to it has a cell, and a refused request
//! spends none: a write the general quota refuses must not use up the write quota, nor a write the
//! write quota refuses the general one. governor cannot give a cell back, so each bucket keeps its
//! GCRA state in a [`TatCell`] that a check can also just look at.

use std::num::{NonZeroU32, NonZeroU64};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};

use super::verdict::{status, FixedHeaders, QuotaKind, QuotaStatus, Verdict};
use crate::settings::RateQuota;

type Gcra = RateLimiter<Intent, TatCell, DefaultClock, StateInformationMiddleware>;

/// What a check does with the cell it finds: spends it, or only looks (for a write, before the other
/// quota has said yes; for the headers of an answer refused before the limiter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Intent {
    Look,
    Spend,
}

/// One bucket's GCRA state, governor's theoretical arrival time, as its own in-memory store does it
/// (an atomic swapped only if unchanged since read), except that a `Look` never stores.
#[derive(Debug, Default)]
struct TatCell(AtomicU64);

impl StateStore for TatCell {
    type Key = Intent;

    fn measure_and_replace<T, F, E>(&self, intent: &Intent, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut prev = self.0.load(Ordering::Acquire);
        loop {
            let (outcome, next) = f(NonZeroU64::new(prev).map(|n| Nanos::from(n.get())))?;
            if *intent == Intent::Look {
                return Ok(outcome);
            }
            match self.0.compare_exchange_weak(
                prev,
                next.into(),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(outcome),
                Err(current) => prev = current,
            }
        }
    }
}

struct Bucket {
    kind: QuotaKind,
    quota: RateQuota,
    gcra: Gcra,
}

impl Bucket {
    fn new(kind: QuotaKind, quota: RateQuota) -> Self {
        let gq = Quota::per_minute(quota.per_minute).allow_burst(quota.burst);
        Self {
            kind,
            quota,
            gcra: Gcra::new(gq, TatCell::default(), DefaultClock::default()),
        }
    }

    /// Spends a cell, or says how long until there is one; `Look` answers the same without spending.
    fn check(&self, intent: Intent) -> (QuotaStatus, Option<Duration>) {
        let (remaining, wait) = match self.gcra.check_key(&intent) {
            Ok(snapshot) => (snapshot.remaining_burst_capacity(), None),
            Err(not_until) => (0, Some(not_until.wait_time_from(self.gcra.clock().now()))),
        };
        (status(self.kind, self.quota, remaining, wait), wait)
    }

    /// The state as it is, nothing spent. A look reports what would remain after one more request,
    /// so the cell it did not take is added back.
    fn peek(&self) -> QuotaStatus {
        let (looked, wait) = self.check(Intent::Look);
        let remaining = match wait {
            Some(_) => 0,
            None => (looked.remaining + 1).min(self.quota.burst.get()),
        };
        status(self.kind, self.quota, remaining, None)
    }

    /// Starts this (new) bucket as full as `old` is: what a team spent under its old quota stays
    /// spent under the new one, up to the new burst.
    fn take_over(&self, old: &Bucket) {
        let remaining = old.peek().remaining;
        let spent = old.quota.burst.get().saturating_sub(remaining);
        let Some(spent) = NonZeroU32::new(spent.min(self.quota.burst.get())) else {
            return;
        };
        let _ = self.gcra.check_key_n(&Intent::Spend, spent);
    }
}

/// A team's quotas. Shared across config snapshots while the quotas stay the same.
pub struct TeamLimiter {
    general: Bucket,
    write: Option<Bucket>,
    /// Held by a write from its look at the write quota to its spend there, so that two writes
    /// cannot both find its last cell (reads never touch the write quota).
    writes: Mutex<()>,
    fixed: Arc<FixedHeaders>,
}

impl TeamLimiter {
    pub fn new(general: RateQuota, write: Option<RateQuota>) -> Self {
        Self {
            general: Bucket::new(QuotaKind::General, general),
            write: write.map(|w| Bucket::new(QuotaKind::Write, w)),
            writes: Mutex::new(()),
            fixed: Arc::new(FixedHeaders::new(general, write)),
        }
    }

    /// The limiter for a team whose quotas a reload changed: the new quotas, with what the team had
    /// already spent carried over, so a reload is never a way to refill a bucket.
    pub fn succeeding(
        previous: &TeamLimiter,
        general: RateQuota,
        write: Option<RateQuota>,
    ) -> Self {
        let next = Self::new(general, write);
        next.general.take_over(&previous.general);
        if let (Some(new), Some(old)) = (&next.write, &previous.write) {
            new.take_over(old);
        }
        next
    }

    /// Whether this limiter enforces exactly these quotas (a reload keeps it if so).
    pub fn has_quotas(&self, general: RateQuota, write: Option<RateQuota>) -> bool {
        self.general.quota == general && self.write.as_ref().map(|b| b.quota) == write
    }

    /// Spends one cell of the general quota, and of the write quota for writes, or none at all.
    pub fn check(&self, is_write: bool) -> Verdict {
        match self.write.as_ref().filter(|_| is_write) {
            Some(write) => self.check_write(write),
            None => {
                let (general, retry_after) = self.general.check(Intent::Spend);
                self.verdict(general, None, retry_after.map(|w| (QuotaKind::General, w)))
            }
        }
    }

    /// A write under both quotas: looks at the write quota, spends a general cell, then the write
    /// cell it saw. The general quota is spent first because reads compete for it; the write cell
    /// cannot vanish in between, as the lock keeps other writes out.
    fn check_write(&self, write: &Bucket) -> Verdict {
        let _writes = self
            .writes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Refused, the look's status is the write quota's as it stands (empty, reset from the wait).
        if let (refused, Some(wait)) = write.check(Intent::Look) {
            return self.verdict(
                self.general.peek(),
                Some(refused),
                Some((QuotaKind::Write, wait)),
            );
        }
        let (general, refused) = self.general.check(Intent::Spend);
        if let Some(wait) = refused {
            return self.verdict(
                general,
                Some(write.peek()),
                Some((QuotaKind::General, wait)),
            );
        }
        let (spent, refused) = write.check(Intent::Spend);
        self.verdict(general, Some(spent), refused.map(|w| (QuotaKind::Write, w)))
    }

    /// The quotas this limiter enforces: general, and write if any.
    pub fn quotas(&self) -> (RateQuota, Option<RateQuota>) {
        (self.general.quota, self.write.as_ref().map(|b| b.quota))
    }

    pub(super) fn verdict(
        &self,
        general: QuotaStatus,
        write: Option<QuotaStatus>,
        refusal: Option<(QuotaKind, Duration)>,
    ) -> Verdict {
        Verdict {
            general,
            write,
            retry_after: refusal.map(|(_, wait)| wait),
            refused_by: refusal.map(|(by, _)| by),
            fixed: self.fixed.clone(),
        }
    }

    /// The quota state without spending anything (for answers refused before the limiter, e.g. 403).
    pub fn peek(&self, is_write: bool) -> Verdict {
        let write = self.write.as_ref().filter(|_| is_write).map(Bucket::peek);
        self.verdict(self.general.peek(), write, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::verdict::{apply_headers, reset_seconds};
    use crate::error::whole_seconds;
    use http::HeaderMap;

    fn quota(per_minute: u32, burst: u32) -> RateQuota {
        RateQuota {
            per_minute: NonZeroU32::new(per_minute).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
        }
    }

    fn header(h: &HeaderMap, name: &str) -> String {
        h[name].to_str().unwrap().to_owned()
    }

    #[test]
    fn full_bucket_reports_burst_and_zero_reset() {
        let s = status(QuotaKind::General, quota(60, 10), 10, None);
        assert_eq!(s.reset, Duration::ZERO);
        let mut h = HeaderMap::new();
        apply_headers(
            &Verdict {
                general: s,
                write: None,
                retry_after: None,
                refused_by: None,
                fixed: Arc::new(FixedHeaders::new(quota(60, 10), None)),
            },
            &mut h,
        );
        assert_eq!(header(&h, "ratelimit-limit"), "10");
        assert_eq!(header(&h, "ratelimit-remaining"), "10");
        assert_eq!(header(&h, "ratelimit-reset"), "0");
        assert_eq!(header(&h, "ratelimit-policy"), "\"team\";q=60;w=60");
        assert_eq!(header(&h, "ratelimit"), "\"team\";r=10;t=0");
    }

    #[test]
    fn writes_report_the_binding_quota_under_the_one_policy_name() {
        let limiter = TeamLimiter::new(quota(600, 100), Some(quota(60, 2)));
        let mut h = HeaderMap::new();
        apply_headers(&limiter.check(true), &mut h);
        assert_eq!(header(&h, "ratelimit-limit"), "2");
        assert_eq!(header(&h, "ratelimit-remaining"), "1");
        assert_eq!(header(&h, "ratelimit-policy"), "\"team\";q=60;w=60");
        assert_eq!(header(&h, "ratelimit"), "\"team\";r=1;t=1");
        // A write whose general quota has fewer left is described by the general quota.
        let general_binds = TeamLimiter::new(quota(600, 1), Some(quota(60, 2)));
        let mut h = HeaderMap::new();
        apply_headers(&general_binds.check(true), &mut h);
        assert_eq!(header(&h, "ratelimit-limit"), "1");
        assert_eq!(header(&h, "ratelimit-policy"), "\"team\";q=600;w=60");
        assert_eq!(header(&h, "ratelimit"), "\"team\";r=0;t=1");
        let mut h = HeaderMap::new();
        apply_headers(&limiter.check(false), &mut h);
        assert_eq!(header(&h, "ratelimit-limit"), "100");
        assert_eq!(header(&h, "ratelimit-policy"), "\"team\";q=600;w=60");
    }

    #[test]
    fn empty_bucket_resets_after_wait_plus_the_rest_of_the_burst() {
        // 60/min: one cell per second. Burst 3, empty, next cell in 0.4 s → full in 2.4 s → "3".
        let s = status(
            QuotaKind::General,
            quota(60, 3),
            0,
            Some(Duration::from_millis(400)),
        );
        assert_eq!(s.reset, Duration::from_millis(2400));
        assert_eq!(reset_seconds(s.reset), 3);
    }

    #[test]
    fn burst_one_refuses_the_second_request_with_a_real_wait() {
        let limiter = TeamLimiter::new(quota(6, 1), None);
        let first = limiter.check(false);
        assert!(first.retry_after.is_none());
        assert_eq!(first.general.remaining, 0);
        // One cell per 10 s: the bucket is full again 10 s after the first request.
        assert_eq!(reset_seconds(first.general.reset), 10);
        let second = limiter.check(false);
        let wait = second.retry_after.expect("second request must be refused");
        assert!(
            wait > Duration::from_secs(9) && wait <= Duration::from_secs(10),
            "{wait:?}"
        );
        assert_eq!(whole_seconds(wait), 10);
    }

    #[test]
    fn remaining_counts_down_to_refusal() {
        let limiter = TeamLimiter::new(quota(1, 3), None);
        let seen: Vec<u32> = (0..3)
            .map(|_| limiter.check(false).general.remaining)
            .collect();
        assert_eq!(seen, vec![2, 1, 0]);
        assert!(limiter.check(false).retry_after.is_some());
        // Peeking spends nothing.
        assert_eq!(limiter.peek(false).general.remaining, 0);
    }

    #[test]
    fn write_quota_binds_writes_only() {
        let limiter = TeamLimiter::new(quota(600, 100), Some(quota(1, 1)));
        assert!(limiter.check(true).retry_after.is_none());
        let refused = limiter.check(true);
        assert!(refused.retry_after.is_some());
        assert_eq!(refused.binding().kind, QuotaKind::Write);
        assert!(limiter.check(false).retry_after.is_none());
        let mut h = HeaderMap::new();
        apply_headers(&refused, &mut h);
        assert_eq!(header(&h, "ratelimit-policy"), "\"team\";q=1;w=60");
        assert!(header(&h, "ratelimit").starts_with("\"team\";r=0;"));
    }

    #[test]
    fn a_write_the_general_quota_refuses_spends_no_write_cell() {
        // The general quota is empty after one read; the write quota still has its one cell.
        let limiter = TeamLimiter::new(quota(60, 1), Some(quota(1, 1)));
        assert!(limiter.check(false).retry_after.is_none());
        let refused = limiter.check(true);
        let wait = refused.retry_after.expect("the general quota is empty");
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        assert_eq!(refused.binding().kind, QuotaKind::General);
        let mut h = HeaderMap::new();
        apply_headers(&refused, &mut h);
        assert_eq!(header(&h, "ratelimit"), "\"team\";r=0;t=1");
        assert_eq!(header(&h, "ratelimit-limit"), "1");
        assert_eq!(limiter.peek(true).write.unwrap().remaining, 1);
    }

    #[test]
    fn a_write_the_write_quota_refuses_spends_no_general_cell() {
        let limiter = TeamLimiter::new(quota(1, 3), Some(quota(1, 1)));
        assert!(limiter.check(true).retry_after.is_none());
        assert_eq!(limiter.peek(false).general.remaining, 2);
        for _ in 0..5 {
            let refused = limiter.check(true);
            assert_eq!(refused.refused_by, Some(QuotaKind::Write));
        }
        assert_eq!(limiter.peek(false).general.remaining, 2);
        assert!(limiter.check(false).retry_after.is_none());
        assert!(limiter.check(false).retry_after.is_none());
        assert!(limiter.check(false).retry_after.is_some());
    }

    #[test]
    fn concurrent_writes_spend_exactly_the_cells_there_are() {
        let limiter = Arc::new(TeamLimiter::new(quota(1, 50), Some(quota(1, 10))));
        let allowed: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let limiter = limiter.clone();
                    scope.spawn(move || {
                        (0..25)
                            .filter(|_| limiter.check(true).retry_after.is_none())
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(allowed, 10);
        // Only the ten allowed writes spent general cells.
        assert_eq!(limiter.peek(false).general.remaining, 40);
    }

    #[test]
    fn a_changed_quota_keeps_what_was_spent() {
        let old = TeamLimiter::new(quota(1, 5), Some(quota(1, 2)));
        // Two writes and two reads: 4 general cells and 2 write cells spent.
        for is_write in [true, true, false, false] {
            assert!(old.check(is_write).retry_after.is_none());
        }
        let next = TeamLimiter::succeeding(&old, quota(1, 6), Some(quota(1, 3)));
        assert_eq!(next.peek(false).general.remaining, 2);
        assert_eq!(next.peek(true).write.unwrap().remaining, 1);
        // A smaller burst than was spent starts empty, not negative.
        let empty = TeamLimiter::succeeding(&old, quota(1, 2), None);
        assert!(empty.check(false).retry_after.is_some());
    }

    #[test]
    fn reload_keeps_limiter_only_for_same_quotas() {
        let l = TeamLimiter::new(quota(60, 5), None);
        assert!(l.has_quotas(quota(60, 5), None));
        assert!(!l.has_quotas(quota(60, 6), None));
        assert!(!l.has_quotas(quota(60, 5), Some(quota(1, 1))));
    }
}
