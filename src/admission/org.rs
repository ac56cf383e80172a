//! The org budget and DialNexa's holds in this process: each org's buckets ([`budget`]) and hold,
//! kept for the life of the process (a reload hands the new plan the same state), and each
//! team's place in its org ([`TeamPart`]), built with every config snapshot.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;

use super::budget::{decide, Bucket, Decision, Plan};
use crate::metrics::{BudgetCounters, BudgetMetrics};
use crate::settings::{RateQuota, Team};

/// One team as the step before an upstream call sees it.
#[derive(Debug)]
pub struct TeamPart {
    pub org: Arc<str>,
    pub team: Arc<str>,
    /// The org's budget and this team's index in it; `None` when the org has no budget.
    pub(super) budget: Option<(Arc<Plan>, usize)>,
    /// The org's budget as configured, for the headers of a refusal.
    pub(super) quota: Option<RateQuota>,
    /// `max_upstream_hold_seconds`.
    pub(super) max_hold: Duration,
    pub(super) counters: BudgetCounters,
}

/// Every team's part, by team name: one plan per org with a budget, shared by its teams.
pub fn team_parts(teams: &[Team], metrics: &BudgetMetrics) -> HashMap<Arc<str>, Arc<TeamPart>> {
    let mut plans: HashMap<&str, Arc<Plan>> = HashMap::new();
    for team in teams {
        let Some(quota) = team.org.upstream_rate_limit else {
            continue;
        };
        plans.entry(&team.org.name).or_insert_with(|| {
            let members = teams
                .iter()
                .filter(|t| t.org.name == team.org.name)
                .map(|t| (t.name.clone(), t.upstream_share));
            Arc::new(Plan::new(quota, members))
        });
    }
    teams
        .iter()
        .map(|team| {
            let budget = plans.get(&*team.org.name).and_then(|plan| {
                let i = plan.index_of(&team.name)?;
                Some((Arc::clone(plan), i))
            });
            let part = TeamPart {
                org: team.org.name.clone(),
                team: team.name.clone(),
                budget,
                quota: team.org.upstream_rate_limit,
                max_hold: team.org.max_upstream_hold,
                counters: metrics.counters(&team.org.name, &team.name),
            };
            (team.name.clone(), Arc::new(part))
        })
        .collect()
}

/// What the org's budget made of a call it admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Spent {
    Within,
    Borrowed,
    /// The org has no budget.
    Free,
}

/// Why a call may not go upstream now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The org's budget has no room for it: admitted after `wait`; full again after `full`.
    Org { wait: Duration, full: Duration },
    /// DialNexa refused the org; `left` of the hold remains.
    Held { left: Duration },
}

/// Every org's budget state and hold in this process.
#[derive(Default)]
pub(super) struct LocalBudgets {
    orgs: Mutex<HashMap<Arc<str>, OrgState>>,
}

#[derive(Default)]
struct OrgState {
    org: Bucket,
    /// By team name, so a reload that adds, removes or reweighs teams keeps what each spent.
    teams: HashMap<Arc<str>, Bucket>,
    /// The sum of shares the buckets count in (units of `1 / (60 000 000 × S)` of a call); 0
    /// before the first call.
    shares: u64,
    /// On [`clock`]; 0: never held.
    held_until: u64,
    /// The org's hold gauge, refreshed at each scrape while it counts down.
    gauge: Option<Gauge>,
}

impl OrgState {
    /// Held until `until` (on [`clock`]), unless already for longer.
    fn hold_until(&mut self, until: u64) {
        self.held_until = self.held_until.max(until);
        if let Some(gauge) = &self.gauge {
            set_gauge(gauge, self.held_until);
        }
    }

    /// Carries the buckets over to units of `shares` (a reload reweighed the org's teams): the
    /// same calls spent, rounded up.
    fn rescale(&mut self, shares: u64) {
        let old = self.shares;
        self.shares = shares;
        if old == 0 {
            return;
        }
        let scale = |b: &mut Bucket| {
            let scaled = (u128::from(b.deficit) * u128::from(shares)).div_ceil(u128::from(old));
            b.deficit = u64::try_from(scaled).unwrap_or(u64::MAX);
        };
        scale(&mut self.org);
        self.teams.values_mut().for_each(scale);
    }
}

/// Microseconds on this process's monotonic clock. It starts above 0 so that a default bucket
/// (deficit 0 at 0) reads as full.
pub(super) fn clock() -> u64 {
    static START: LazyLock<Instant> = LazyLock::new(Instant::now);
    u64::try_from(START.elapsed().as_micros()).unwrap_or(u64::MAX) + 1
}

impl LocalBudgets {
    /// One upstream call of `part`'s team, now.
    pub(super) fn spend(&self, part: &TeamPart) -> Result<Spent, Refusal> {
        self.spend_at(part, clock())
    }

    pub(super) fn spend_at(&self, part: &TeamPart, now: u64) -> Result<Spent, Refusal> {
        let mut orgs = self.orgs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = orgs.get(&part.org).map(|s| s.held_until) {
            if held > now {
                return Err(Refusal::Held {
                    left: Duration::from_micros(held - now),
                });
            }
        }
        let Some((plan, i)) = &part.budget else {
            return Ok(Spent::Free);
        };
        let state = orgs.entry(part.org.clone()).or_default();
        if state.shares != plan.total_shares {
            state.rescale(plan.total_shares);
        }
        let mut teams: Vec<Bucket> = plan
            .parts
            .iter()
            .map(|p| state.teams.get(&p.team).copied().unwrap_or_default())
            .collect();
        match decide(plan, now, &mut state.org, &mut teams, *i) {
            Decision::Within => {
                state.teams.insert(plan.parts[*i].team.clone(), teams[*i]);
                Ok(Spent::Within)
            }
            Decision::Borrowed => Ok(Spent::Borrowed),
            Decision::Refused { wait_us, full_us } => Err(Refusal::Org {
                wait: Duration::from_micros(wait_us),
                full: Duration::from_micros(full_us),
            }),
        }
    }

    /// Holds `org` for `hold` from now, unless it is held for longer already.
    pub(super) fn hold(&self, org: &Arc<str>, hold: Duration, gauge: &Gauge) {
        let until = after(hold);
        let mut orgs = self.orgs.lock().unwrap_or_else(PoisonError::into_inner);
        let state = orgs.entry(org.clone()).or_default();
        state.gauge = Some(gauge.clone());
        state.hold_until(until);
    }

    /// A hold that Redis told of with a request's admission: kept as [`LocalBudgets::hold`] keeps
    /// one, for the step before that request's upstream call. The org's gauge shows it once a
    /// refusal has named the gauge (this path has none at hand, and is on every admission).
    pub(super) fn learn_hold(&self, org: &str, left: Duration) {
        let until = after(left);
        let mut orgs = self.orgs.lock().unwrap_or_else(PoisonError::into_inner);
        match orgs.get_mut(org) {
            Some(state) => state.hold_until(until),
            None => {
                let state = OrgState {
                    held_until: until,
                    ..OrgState::default()
                };
                orgs.insert(Arc::from(org), state);
            }
        }
    }

    /// How long `org` is held still, as this process knows; `None` when it is not.
    pub(super) fn held(&self, org: &str) -> Option<Duration> {
        let orgs = self.orgs.lock().unwrap_or_else(PoisonError::into_inner);
        let until = orgs.get(org)?.held_until;
        let now = clock();
        (until > now).then(|| Duration::from_micros(until - now))
    }

    /// Sets every org's hold gauge to the seconds its hold has left (for a scrape).
    pub(super) fn refresh_gauges(&self) {
        let orgs = self.orgs.lock().unwrap_or_else(PoisonError::into_inner);
        for state in orgs.values() {
            if let Some(gauge) = &state.gauge {
                set_gauge(gauge, state.held_until);
            }
        }
    }
}

/// [`clock`]'s reading `d` from now.
fn after(d: Duration) -> u64 {
    clock().saturating_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Whole seconds left until `until` (rounded up), 0 once past.
fn set_gauge(gauge: &Gauge, until: u64) {
    let left = until.saturating_sub(clock());
    gauge.set(i64::try_from(left.div_ceil(1_000_000)).unwrap_or(i64::MAX));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;

    fn parts(orgs_and_teams: &str) -> HashMap<Arc<str>, Arc<TeamPart>> {
        let toml = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nbase_url = \"http://127.0.0.1:1/v1\"\n{orgs_and_teams}"
        );
        let settings = Settings::from_toml_str(&toml).unwrap();
        team_parts(&settings.teams, &BudgetMetrics::default())
    }

    const TWO_TEAMS: &str = r#"
[orgs.acme]
api_key_env = "PATH"
upstream_rate_limit = { per_minute = 60, burst = 4 }
[teams.busy]
org = "acme"
key_sha256 = ["1111111111111111111111111111111111111111111111111111111111111111"]
rate_limit = { per_minute = 6000, burst = 100 }
[teams.quiet]
org = "acme"
key_sha256 = ["2222222222222222222222222222222222222222222222222222222222222222"]
rate_limit = { per_minute = 6000, burst = 100 }
"#;

    #[test]
    fn the_local_budget_keeps_each_team_to_its_part_and_lends_the_rest() {
        let parts = parts(TWO_TEAMS);
        let (busy, quiet) = (&parts["busy"], &parts["quiet"]);
        let budgets = LocalBudgets::default();
        let t0 = 1_000;
        assert_eq!(budgets.spend_at(busy, t0), Ok(Spent::Within));
        assert_eq!(budgets.spend_at(busy, t0), Ok(Spent::Within));
        assert!(matches!(
            budgets.spend_at(busy, t0),
            Err(Refusal::Org { .. })
        ));
        assert_eq!(budgets.spend_at(quiet, t0), Ok(Spent::Within));
        // One second on, the org regained one call while the quiet team's part is not full:
        // nothing to lend yet, and the busy team's own part is at a half.
        assert!(budgets.spend_at(busy, t0 + 1_000_000).is_err());
        // Two seconds on, the busy team's part has a call again.
        assert_eq!(budgets.spend_at(busy, t0 + 2_000_000), Ok(Spent::Within));
    }

    #[test]
    fn a_hold_refuses_every_team_of_the_org_until_it_ends() {
        let parts = parts(TWO_TEAMS);
        let budgets = LocalBudgets::default();
        let gauge = Gauge::default();
        budgets.hold(&parts["busy"].org, Duration::from_secs(5), &gauge);
        assert_eq!(gauge.get(), 5);
        let now = clock();
        match budgets.spend_at(&parts["quiet"], now) {
            Err(Refusal::Held { left }) => assert!(left <= Duration::from_secs(5), "{left:?}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            budgets.spend_at(&parts["quiet"], now + 5_000_001),
            Ok(Spent::Within)
        );
    }

    #[test]
    fn a_hold_learnt_with_an_admission_refuses_an_org_without_a_budget() {
        let parts =
            parts(&TWO_TEAMS.replace("upstream_rate_limit = { per_minute = 60, burst = 4 }\n", ""));
        let quiet = &parts["quiet"];
        assert!(quiet.budget.is_none());
        let budgets = LocalBudgets::default();
        assert_eq!(budgets.held("acme"), None);
        assert_eq!(budgets.spend(quiet), Ok(Spent::Free));
        budgets.learn_hold("acme", Duration::from_secs(5));
        let left = budgets.held("acme").expect("held");
        assert!(left <= Duration::from_secs(5), "{left:?}");
        let now = clock();
        assert!(matches!(
            budgets.spend_at(quiet, now),
            Err(Refusal::Held { .. })
        ));
        assert_eq!(budgets.spend_at(quiet, now + 5_000_001), Ok(Spent::Free));
        // A shorter hold learnt later does not shorten it; the gauge, once named, follows a longer.
        let gauge = Gauge::default();
        budgets.hold(&quiet.org, Duration::from_secs(1), &gauge);
        assert_eq!(gauge.get(), 5);
        budgets.learn_hold("acme", Duration::from_secs(9));
        assert_eq!(gauge.get(), 9);
    }
}
