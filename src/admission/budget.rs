//! The organisation's budget: one org bucket, a guaranteed bucket per team, and lending.
//!
//! The algorithm (DESIGN, "The organisation's DialNexa quota"), for an org whose budget is
//! `burst` B and `per_minute` (rate R), and whose teams have shares `w_i` adding up to S:
//!
//! - The org bucket holds O tokens, at most B, refilled at R.
//! - Team i's guaranteed bucket holds G_i tokens, at most `g_i = max(1, floor(B × w_i / S))`
//!   (0 when `w_i = 0`), refilled at `r_i = R × w_i / S`.
//! - **Invariant: O ≥ Σ_j G_j, always.** It holds at the start (every bucket full, and
//!   `Σ g_j ≤ B`, which `check` enforces) and under refill: while O is below B it gains R, at least
//!   what all the teams gain together (Σ r_j = R); once O is full it is B ≥ Σ g_j ≥ Σ G_j.
//! - A call by team i with G_i ≥ 1 is within its part: G_i and O each lose one. It is never
//!   refused, since O ≥ Σ G_j ≥ G_i ≥ 1, and the invariant keeps (both sides lose one).
//! - Otherwise it borrows: it is admitted iff O − 1 ≥ Σ_j G_j (room for itself, and after it for
//!   every team's unspent guaranteed tokens, its own fraction included); then O loses one, and the
//!   invariant keeps by that very condition.
//! - Otherwise it is refused and nothing is spent. Retry-After is the sooner of its own part
//!   refilling to one token and the org gaining room to lend, computed from the state as it is
//!   (other teams' calls meanwhile can only delay the second).
//!
//! Two promises follow. Never more than the budget: O never goes below 0, so the calls admitted in
//! any window of length t are at most B + R × t. A team within its part is never refused: if its
//! own calls would pass GCRA(r_i, g_i) alone, each finds G_i ≥ 1 whatever the others do.
//!
//! Exactness. Tokens are counted in units of `1 / (60 000 000 × S)` of a call, and time in
//! microseconds: then the org refills `per_minute × S` units and team i `per_minute × w_i` units
//! per microsecond, whole numbers whose sum over the teams is exactly the org's. Every comparison
//! is between integers, so the invariant holds exactly, not up to rounding. Each bucket is a TAT
//! kept in that exact form: its deficit below full (in units) as of its last spend, and that
//! instant; it is full again at `at + deficit / rate`. `check` keeps `B × S` small enough that
//! every figure stays below 2^53, so the cluster's script (Lua numbers are doubles) computes the
//! very same integers.

use std::sync::Arc;

use crate::settings::RateQuota;

/// Microseconds in the budget's window.
const MINUTE_US: u64 = 60_000_000;

/// One org's budget as one config snapshot defines it: what [`decide`] needs besides the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub per_minute: u64,
    pub burst: u64,
    /// S, at least 1 (an org whose teams all have share 0 only lends).
    pub total_shares: u64,
    /// The org's teams, by name.
    pub parts: Vec<Part>,
}

/// One team's guaranteed part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub team: Arc<str>,
    pub share: u64,
    /// g_i, in calls.
    pub guaranteed: u64,
}

/// A bucket's state: `deficit` units below full as of `at` (µs on the decider's clock). The
/// default is a full bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bucket {
    pub deficit: u64,
    pub at: u64,
}

/// What [`decide`] made of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Admitted from the team's guaranteed part.
    Within,
    /// Admitted on the org's room beyond every team's guaranteed part.
    Borrowed,
    /// Refused: nothing spent. `wait_us` until it would be admitted, `full_us` until the org
    /// bucket is full again.
    Refused { wait_us: u64, full_us: u64 },
}

impl Plan {
    /// The plan for an org with budget `quota` whose teams have these `(name, share)`s.
    pub fn new(quota: RateQuota, teams: impl IntoIterator<Item = (Arc<str>, u32)>) -> Self {
        let mut teams: Vec<(Arc<str>, u32)> = teams.into_iter().collect();
        teams.sort();
        let total: u64 = teams.iter().map(|(_, w)| u64::from(*w)).sum();
        let parts = teams
            .into_iter()
            .map(|(team, share)| Part {
                guaranteed: quota.guaranteed_burst(share, total),
                share: share.into(),
                team,
            })
            .collect();
        Self {
            per_minute: quota.per_minute.get().into(),
            burst: quota.burst.get().into(),
            total_shares: total.max(1),
            parts,
        }
    }

    /// Units in one call.
    pub fn unit(&self) -> u64 {
        MINUTE_US * self.total_shares
    }

    /// The org bucket's refill, in units per µs.
    pub fn org_rate(&self) -> u64 {
        self.per_minute * self.total_shares
    }

    /// Team `i`'s refill, in units per µs (0 for a team that only borrows).
    pub fn team_rate(&self, i: usize) -> u64 {
        self.per_minute * self.parts[i].share
    }

    /// Where team `team` sits in `parts`.
    pub fn index_of(&self, team: &str) -> Option<usize> {
        self.parts.iter().position(|p| &*p.team == team)
    }
}

impl Bucket {
    /// The deficit at `now`, after refilling at `rate` units per µs since `at`.
    fn deficit_at(self, now: u64, rate: u64) -> u64 {
        if rate == 0 {
            return self.deficit;
        }
        let elapsed = now.saturating_sub(self.at);
        // Compared before multiplying: a bucket left alone for long would overflow.
        if elapsed >= self.deficit.div_ceil(rate) {
            0
        } else {
            self.deficit - rate * elapsed
        }
    }

    /// Microseconds from `now` until this bucket is full.
    pub fn full_in(self, now: u64, rate: u64) -> u64 {
        if rate == 0 {
            return 0;
        }
        self.deficit_at(now, rate).div_ceil(rate)
    }
}

/// Decides one upstream call by team `i` at `now`, spending on admission only. `org` is the org
/// bucket, `teams` the guaranteed buckets in the order of `plan.parts`.
pub fn decide(plan: &Plan, now: u64, org: &mut Bucket, teams: &mut [Bucket], i: usize) -> Decision {
    let unit = plan.unit();
    let org_rate = plan.org_rate();
    let org_cap = plan.burst * unit;
    let o = org_cap.saturating_sub(org.deficit_at(now, org_rate));
    let level = |j: usize| -> u64 {
        let cap = plan.parts[j].guaranteed * unit;
        cap.saturating_sub(teams[j].deficit_at(now, plan.team_rate(j)))
    };
    let spend = |b: &mut Bucket, rate: u64| {
        *b = Bucket {
            deficit: b.deficit_at(now, rate) + unit,
            at: now,
        };
    };
    // Within its part. `o >= unit` always holds by the invariant; it is checked all the same, as
    // after a reload that changed the shares the old state may not satisfy the new invariant.
    if level(i) >= unit && o >= unit {
        spend(&mut teams[i], plan.team_rate(i));
        spend(org, org_rate);
        return Decision::Within;
    }
    let reserved: u64 = (0..plan.parts.len()).map(level).sum();
    if o >= unit && o - unit >= reserved {
        spend(org, org_rate);
        return Decision::Borrowed;
    }
    Decision::Refused {
        wait_us: wait(plan, now, org, teams, i).max(1),
        full_us: org.full_in(now, org_rate),
    }
}

/// How long until a call by team `i`, refused at `now`, would be admitted if nothing else
/// happened meanwhile.
fn wait(plan: &Plan, now: u64, org: &Bucket, teams: &[Bucket], i: usize) -> u64 {
    let unit = plan.unit();
    let org_rate = plan.org_rate();
    let org_cap = plan.burst * unit;
    let org_full = org.full_in(now, org_rate);
    // Each bucket's level `t` µs from now.
    let org_at = |t: u64| org_cap.saturating_sub(org.deficit_at(now + t, org_rate));
    let team_at = |j: usize, t: u64| {
        let cap = plan.parts[j].guaranteed * unit;
        cap.saturating_sub(teams[j].deficit_at(now + t, plan.team_rate(j)))
    };
    // Its own part refilled to one call (and the org to one, which the invariant implies).
    let own = (plan.parts[i].share > 0).then(|| {
        let need = |level: u64, rate: u64| unit.saturating_sub(level).div_ceil(rate);
        need(team_at(i, 0), plan.team_rate(i)).max(need(org_at(0), org_rate))
    });
    // Room to lend: `org − unit − Σ teams` grows while the org refills and shrinks once it is
    // full and the teams go on refilling, so it is largest when the org is full. If there is room
    // then, the first instant with room lies before it, found by bisection.
    let room = |t: u64| {
        let reserved: u64 = (0..plan.parts.len()).map(|j| team_at(j, t)).sum();
        org_at(t) >= unit + reserved
    };
    let lend = room(org_full).then(|| {
        let (mut lo, mut hi) = (0, org_full);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if room(mid) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        lo
    });
    match (own, lend) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) => a,
        (None, Some(b)) => b,
        // Only after a reload left state the new plan cannot lend from: everything full again.
        (None, None) => (0..plan.parts.len())
            .map(|j| teams[j].full_in(now, plan.team_rate(j)))
            .fold(org_full, u64::max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::org::{LocalBudgets, Refusal, Spent, TeamPart};
    use crate::metrics::BudgetMetrics;
    use proptest::prelude::*;
    use std::num::NonZeroU32;
    use std::time::Duration;

    fn plan(per_minute: u32, burst: u32, shares: &[u32]) -> Plan {
        let quota = RateQuota {
            per_minute: NonZeroU32::new(per_minute).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
        };
        Plan::new(
            quota,
            shares
                .iter()
                .enumerate()
                .map(|(i, w)| (Arc::from(format!("t{i}")), *w)),
        )
    }

    struct Run {
        plan: Plan,
        org: Bucket,
        teams: Vec<Bucket>,
    }

    impl Run {
        fn new(plan: Plan) -> Self {
            let teams = vec![Bucket::default(); plan.parts.len()];
            Self {
                plan,
                org: Bucket::default(),
                teams,
            }
        }

        fn call(&mut self, now: u64, i: usize) -> Decision {
            decide(&self.plan, now, &mut self.org, &mut self.teams, i)
        }
    }

    #[test]
    fn guaranteed_bursts_follow_the_shares() {
        let p = plan(120, 20, &[3, 1, 0]);
        let g: Vec<u64> = p.parts.iter().map(|p| p.guaranteed).collect();
        assert_eq!(g, vec![15, 5, 0]);
        // At least one for any team with a share.
        let p = plan(60, 3, &[1, 1, 1, 10]);
        assert_eq!(p.parts[0].guaranteed, 1);
    }

    #[test]
    fn a_lone_busy_team_borrows_the_unguaranteed_part_then_waits_for_the_rate() {
        // Burst 4, two teams of share 1: each is guaranteed 2, nothing is left to lend at once.
        let mut run = Run::new(plan(60, 4, &[1, 1]));
        assert_eq!(run.call(0, 0), Decision::Within);
        assert_eq!(run.call(0, 0), Decision::Within);
        let Decision::Refused { wait_us, full_us } = run.call(0, 0) else {
            panic!("team 1's two calls are not to be lent");
        };
        // Its own part refills one call in 2 s (half of 60/min); the org is full in 2 s too.
        assert_eq!(wait_us, 2_000_000);
        assert_eq!(full_us, 2_000_000);
        // The quiet team wakes and finds its whole part.
        assert_eq!(run.call(1, 1), Decision::Within);
        assert_eq!(run.call(1, 1), Decision::Within);
        assert!(matches!(run.call(1, 1), Decision::Refused { .. }));
    }

    #[test]
    fn idle_parts_are_lent_once_the_org_has_room_for_them() {
        // Burst 10, shares 1 and 1: 5 guaranteed each. Team 0 alone gets its 5 at once, then, as
        // the org refills (1/s) while team 1's part stays full, what the rate gives beyond it.
        let mut run = Run::new(plan(60, 10, &[1, 1]));
        for _ in 0..5 {
            assert_eq!(run.call(0, 0), Decision::Within);
        }
        assert!(matches!(run.call(0, 0), Decision::Refused { .. }));
        // Two seconds on: its own part gained one call (0.5/s), the org two.
        assert_eq!(run.call(2_000_000, 0), Decision::Within);
        assert_eq!(run.call(2_000_000, 0), Decision::Borrowed);
        assert!(matches!(run.call(2_000_000, 0), Decision::Refused { .. }));
        // The quiet team wakes and finds its whole part waiting.
        for _ in 0..5 {
            assert_eq!(run.call(2_000_000, 1), Decision::Within);
        }
    }

    #[test]
    fn a_team_with_share_0_borrows_only_what_is_guaranteed_to_nobody() {
        // Burst 5, shares 1, 1, 0: 2 guaranteed each, 1 to nobody.
        let mut run = Run::new(plan(60, 5, &[1, 1, 0]));
        assert_eq!(run.call(0, 2), Decision::Borrowed);
        match run.call(0, 2) {
            // The org regains its one call in a second, the others' parts being full.
            Decision::Refused { wait_us, full_us } => {
                assert_eq!(wait_us, 1_000_000);
                assert_eq!(full_us, 1_000_000);
            }
            other => panic!("{other:?}"),
        }
        for i in [0, 0, 1, 1] {
            assert_eq!(run.call(0, i), Decision::Within);
        }
    }

    #[test]
    fn a_refused_call_spends_nothing() {
        let mut run = Run::new(plan(60, 2, &[1, 1]));
        assert_eq!(run.call(0, 0), Decision::Within);
        let (org, teams) = (run.org, run.teams.clone());
        assert!(matches!(run.call(0, 0), Decision::Refused { .. }));
        assert_eq!((run.org, run.teams.clone()), (org, teams));
    }

    /// A team's arrivals thinned to those GCRA(r_i, g_i) alone admits, with the same arithmetic.
    fn conforming(plan: &Plan, i: usize, arrivals: &[u64]) -> Vec<u64> {
        let solo = Plan {
            parts: vec![plan.parts[i].clone()],
            ..plan.clone()
        };
        let (rate, cap, unit) = (
            solo.team_rate(0),
            solo.parts[0].guaranteed * solo.unit(),
            solo.unit(),
        );
        let mut bucket = Bucket::default();
        arrivals
            .iter()
            .copied()
            .filter(|&t| {
                let level = cap.saturating_sub(bucket.deficit_at(t, rate));
                let ok = level >= unit;
                if ok {
                    bucket = Bucket {
                        deficit: bucket.deficit_at(t, rate) + unit,
                        at: t,
                    };
                }
                ok
            })
            .collect()
    }

    /// The local limiter's view of each team of `plan`'s org (burst `burst`), holds off.
    fn local_parts(plan: &Plan, burst: u32) -> Vec<TeamPart> {
        let metrics = BudgetMetrics::default();
        let org: Arc<str> = Arc::from("org");
        let quota = RateQuota {
            per_minute: NonZeroU32::new(plan.per_minute as u32).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
        };
        let shared = Arc::new(plan.clone());
        (0..plan.parts.len())
            .map(|i| TeamPart {
                org: org.clone(),
                team: plan.parts[i].team.clone(),
                budget: Some((Arc::clone(&shared), i)),
                quota: Some(quota),
                max_hold: Duration::ZERO,
                counters: metrics.counters(&org, &plan.parts[i].team),
            })
            .collect()
    }

    /// The smallest burst from `from` that `check` accepts for these shares (the guaranteed
    /// bursts fit, with one to lend when a team has share 0), if there is one below 500.
    fn accepted_burst(per_minute: u32, shares: &[u32], from: u32) -> Option<u32> {
        let lender = u64::from(shares.contains(&0));
        (from..500).find(|&b| {
            let g: u64 = plan(per_minute, b, shares)
                .parts
                .iter()
                .map(|p| p.guaranteed)
                .sum();
            g + lender <= u64::from(b)
        })
    }

    fn arrivals(n: usize, max_gap_us: u64) -> impl Strategy<Value = Vec<u64>> {
        prop::collection::vec(0..=max_gap_us, 0..n).prop_map(|gaps| {
            gaps.iter()
                .scan(0u64, |t, g| {
                    *t += g;
                    Some(*t)
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Random teams, shares and arrivals; some teams keep within their part, others flood,
        /// through the replica's own limiter (checked step by step against the bare algorithm,
        /// whose state the invariant is checked on). Never more than the budget in any window,
        /// and a team within its part never refused.
        #[test]
        fn never_more_than_the_budget_and_a_team_within_its_part_is_never_refused(
            per_minute in 1u32..600,
            shares in prop::collection::vec(0u32..5, 2..5),
            extra_burst in 0u32..6,
            polite in prop::collection::vec(any::<bool>(), 5),
            streams in prop::collection::vec(arrivals(60, 3_000_000), 5),
        ) {
            let burst = accepted_burst(per_minute, &shares, 1 + extra_burst);
            prop_assume!(burst.is_some());
            let burst = burst.unwrap();
            let p = plan(per_minute, burst, &shares);
            prop_assert!(p.parts.iter().map(|p| p.guaranteed).sum::<u64>() <= u64::from(burst));
            let mut calls: Vec<(u64, usize, bool)> = Vec::new();
            for i in 0..p.parts.len() {
                let keep = polite[i] && p.parts[i].share > 0;
                let times = if keep { conforming(&p, i, &streams[i]) } else { streams[i].clone() };
                calls.extend(times.into_iter().map(|t| (t, i, keep)));
            }
            calls.sort();
            // The replica's own limiter, and beside it the bare algorithm on state the test can see.
            let budgets = LocalBudgets::default();
            let parts = local_parts(&p, burst);
            let mut run = Run::new(p.clone());
            let mut admitted = Vec::new();
            for (t, i, keep) in calls {
                let spent = budgets.spend_at(&parts[i], t);
                let decision = run.call(t, i);
                let expected = match decision {
                    Decision::Within => Ok(Spent::Within),
                    Decision::Borrowed => Ok(Spent::Borrowed),
                    Decision::Refused { wait_us, full_us } => Err(Refusal::Org {
                        wait: Duration::from_micros(wait_us),
                        full: Duration::from_micros(full_us),
                    }),
                };
                prop_assert_eq!(spent, expected);
                if keep {
                    prop_assert!(spent.is_ok(), "team {} within its part refused at {}: {:?}", i, t, spent);
                }
                // The invariant itself, at every step: O ≥ Σ G.
                let unit = p.unit();
                let o = (p.burst * unit).saturating_sub(run.org.deficit_at(t, p.org_rate()));
                let g: u64 = (0..p.parts.len())
                    .map(|j| (p.parts[j].guaranteed * unit).saturating_sub(run.teams[j].deficit_at(t, p.team_rate(j))))
                    .sum();
                prop_assert!(o >= g, "invariant broken at {}: O {} < ΣG {}", t, o, g);
                if spent.is_ok() {
                    admitted.push(t);
                }
            }
            // GCRA bound: in any window [a, b], at most B + R × (b − a) calls.
            for (x, &a) in admitted.iter().enumerate() {
                for (y, &b) in admitted.iter().enumerate().skip(x) {
                    let count = (y - x + 1) as u64;
                    let allowed = u64::from(burst) + (b - a) * u64::from(per_minute) / MINUTE_US;
                    prop_assert!(count <= allowed, "{} calls in [{}, {}], budget {}", count, a, b, allowed);
                }
            }
        }

        /// A refused call's wait is honest: at that instant, with nothing else happening, it is
        /// admitted, and one microsecond before it is not (unless the wait is the fallback).
        #[test]
        fn the_wait_admits_the_call(
            per_minute in 1u32..300,
            shares in prop::collection::vec(0u32..4, 2..4),
            calls in prop::collection::vec((0u64..400_000, 0usize..4), 1..40),
        ) {
            let burst = accepted_burst(per_minute, &shares, 1);
            prop_assume!(burst.is_some());
            let burst = burst.unwrap();
            let mut run = Run::new(plan(per_minute, burst, &shares));
            let mut now = 0;
            for (gap, who) in calls {
                now += gap;
                let i = who % shares.len();
                if let Decision::Refused { wait_us, .. } = run.call(now, i) {
                    let mut later = Run { plan: run.plan.clone(), org: run.org, teams: run.teams.clone() };
                    prop_assert!(!matches!(later.call(now + wait_us, i), Decision::Refused { .. }),
                        "still refused after its wait of {} µs", wait_us);
                    if wait_us > 1 {
                        let mut sooner = Run { plan: run.plan.clone(), org: run.org, teams: run.teams.clone() };
                        prop_assert!(matches!(sooner.call(now + wait_us - 1, i), Decision::Refused { .. }),
                            "admitted before its wait of {} µs", wait_us);
                    }
                }
            }
        }
    }
}
