//! The organisation's DialNexa budget in the config: `[orgs.*] upstream_rate_limit` and
//! `max_upstream_hold_seconds`, `[teams.*] upstream_share`, and the check across an org's teams
//! that every guaranteed part fits in the org's burst.

use std::collections::BTreeMap;
use std::time::Duration;

use super::raw::RawRate;
use super::teams::validate_rate;
use super::validate::Problems;
use crate::settings::{RateQuota, Team};

/// Every team gets an equal part of its org's budget unless the operator weighs it otherwise.
pub(super) const DEFAULT_UPSTREAM_SHARE: u32 = 1;
/// DialNexa's quota window is one minute (its `X-RateLimit-Reset` counts it down), so no hold it
/// asks for honestly lasts longer; a longer `Retry-After` is capped here rather than obeyed.
const DEFAULT_MAX_UPSTREAM_HOLD_SECONDS: u64 = 60;
/// A day, like the longest timeout: a hold past it is a typo, not a plan.
const MAX_UPSTREAM_HOLD_SECONDS: u64 = 86_400;
/// Shares are weights; a million of them is finer than any split an operator means.
const MAX_UPSTREAM_SHARE: u32 = 1_000_000;
/// `burst × (sum of shares)` at most this: the budget counts in units of `1 / (60 000 000 × sum)`
/// of a call, and the cluster's script (Lua numbers are doubles) stays exact below 2^53 units.
const MAX_BURST_TIMES_SHARES: u64 = 150_000_000;

/// `upstream_rate_limit` and `max_upstream_hold_seconds` of `[orgs.<name>]` (`key`). `None` in
/// either place: a problem was reported.
pub(super) fn validate_org_budget(
    rate: Option<RawRate>,
    hold_seconds: Option<u64>,
    key: &str,
    p: &mut Problems,
) -> (Option<Option<RateQuota>>, Option<Duration>) {
    let rate_key = format!("{key}.upstream_rate_limit");
    let quota = match rate {
        None => Some(None),
        some => validate_rate(some, &rate_key, p).map(Some),
    };
    let seconds = hold_seconds.unwrap_or(DEFAULT_MAX_UPSTREAM_HOLD_SECONDS);
    let hold = if seconds > MAX_UPSTREAM_HOLD_SECONDS {
        p.push(
            &format!("{key}.max_upstream_hold_seconds"),
            format!("must be at most {MAX_UPSTREAM_HOLD_SECONDS} (one day)"),
        );
        None
    } else {
        Some(Duration::from_secs(seconds))
    };
    (quota, hold)
}

/// The checks across an org's teams: shares in range, and for an org with a budget, every
/// team's guaranteed burst inside the org's burst (with room to lend when a team has share 0).
pub(super) fn check_budgets(teams: &[Team], p: &mut Problems) {
    let mut orgs: BTreeMap<&str, (Option<RateQuota>, Vec<&Team>)> = BTreeMap::new();
    for team in teams {
        if team.upstream_share > MAX_UPSTREAM_SHARE {
            p.push(
                &format!("teams.{}.upstream_share", team.name),
                format!("must be a whole number from 0 to {MAX_UPSTREAM_SHARE}"),
            );
        }
        let entry = orgs
            .entry(&team.org.name)
            .or_insert((team.org.upstream_rate_limit, Vec::new()));
        entry.1.push(team);
    }
    for (org, (quota, teams)) in orgs {
        let Some(quota) = quota else { continue };
        let key = format!("orgs.{org}.upstream_rate_limit.burst");
        let total: u64 = teams.iter().map(|t| u64::from(t.upstream_share)).sum();
        let burst = u64::from(quota.burst.get());
        if burst.saturating_mul(total.max(1)) > MAX_BURST_TIMES_SHARES {
            p.push(
                &key,
                format!(
                    "burst {burst} times the teams' upstream_share sum {total} must be at most \
                     {MAX_BURST_TIMES_SHARES}; use smaller shares"
                ),
            );
            continue;
        }
        let guaranteed: u64 = teams
            .iter()
            .map(|t| quota.guaranteed_burst(t.upstream_share, total))
            .sum();
        if guaranteed > burst {
            p.push(
                &key,
                format!(
                    "organisation {org:?}: its teams' guaranteed bursts add up to {guaranteed}, \
                     more than its burst {burst} (each team with a share is guaranteed at least 1)"
                ),
            );
        } else if guaranteed == burst {
            if let Some(lender) = teams.iter().find(|t| t.upstream_share == 0) {
                p.push(
                    &key,
                    format!(
                        "organisation {org:?}: its teams' guaranteed bursts take all of its burst \
                         {burst}, so team {:?} (upstream_share = 0, borrowing only) could never \
                         be served; raise the burst",
                        lender.name
                    ),
                );
            }
        }
    }
}
