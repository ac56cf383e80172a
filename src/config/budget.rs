//! The organisation's DialNexa budget in the config: `[orgs.*] upstream_rate_limit` and
//! `max_upstream_hold_seconds`, `[teams.*] upstream_share`, and the check across an org's teams
//! that every guaranteed part fits in the org's burst.

use std::collections::BTreeMap;
use std::time::Duration;

use super::number::{self, Unit, Whole};
use super::problems::Problems;
use super::rate::validate_rate;
use super::raw::RawRate;
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

/// `max_upstream_hold_seconds`: 0 turns holds off; more than a day is a typo, not a plan.
const HOLD_SECONDS: Unit =
    Unit::new(0..=MAX_UPSTREAM_HOLD_SECONDS).max_in_words("86400 s, one day");
/// `upstream_share`: a weight, 0 for a team that only borrows.
const SHARE: Unit = Unit::new(0..=MAX_UPSTREAM_SHARE as u64);

/// `upstream_share` of `[teams.<name>]` (`key`), taken as written: `1.5` is refused, not rounded.
pub(super) fn validate_share(raw: Option<Whole>, key: &str, p: &mut Problems) -> Option<u32> {
    let share = number::whole(
        raw,
        u64::from(DEFAULT_UPSTREAM_SHARE),
        &format!("{key}.upstream_share"),
        SHARE,
        p,
    )?;
    u32::try_from(share).ok()
}

/// `upstream_rate_limit` and `max_upstream_hold_seconds` of `[orgs.<name>]` (`key`). `None` in
/// either place: a problem was reported.
pub(super) fn validate_org_budget(
    rate: Option<RawRate>,
    hold_seconds: Option<Whole>,
    key: &str,
    p: &mut Problems,
) -> (Option<Option<RateQuota>>, Option<Duration>) {
    let rate_key = format!("{key}.upstream_rate_limit");
    let quota = match rate {
        None => Some(None),
        some => validate_rate(some, &rate_key, p).map(Some),
    };
    let hold = number::whole(
        hold_seconds,
        DEFAULT_MAX_UPSTREAM_HOLD_SECONDS,
        &format!("{key}.max_upstream_hold_seconds"),
        HOLD_SECONDS,
        p,
    )
    .map(Duration::from_secs);
    (quota, hold)
}

/// The checks across an org's teams: shares in range, and for an org with a budget, every
/// team's guaranteed burst inside the org's burst (with room to lend when a team has share 0).
pub(super) fn check_budgets(teams: &[Team], p: &mut Problems) {
    for (org, (quota, teams)) in budgets(teams) {
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
        }
    }
}

/// The orgs that have a budget, with it and their teams, by name.
fn budgets(teams: &[Team]) -> BTreeMap<&str, (RateQuota, Vec<&Team>)> {
    let mut orgs: BTreeMap<&str, (RateQuota, Vec<&Team>)> = BTreeMap::new();
    for team in teams {
        if let Some(quota) = team.org.upstream_rate_limit {
            orgs.entry(&team.org.name)
                .or_insert((quota, Vec::new()))
                .1
                .push(team);
        }
    }
    orgs
}

/// Warnings `check` prints for budgets the gateway runs with but an operator likely did not mean:
/// an org whose guaranteed bursts take all of its burst leaves a share-0 team nothing to borrow
/// until another team spends its part (allowed: DESIGN refuses only guaranteed bursts above the
/// burst).
pub fn budget_warnings(settings: &crate::settings::Settings) -> Vec<String> {
    let mut warnings = Vec::new();
    for (org, (quota, teams)) in budgets(&settings.teams) {
        let total: u64 = teams.iter().map(|t| u64::from(t.upstream_share)).sum();
        let burst = u64::from(quota.burst.get());
        let guaranteed: u64 = teams
            .iter()
            .map(|t| quota.guaranteed_burst(t.upstream_share, total))
            .sum();
        if guaranteed < burst {
            continue;
        }
        if let Some(lender) = teams.iter().find(|t| t.upstream_share == 0) {
            warnings.push(format!(
                "orgs.{org}.upstream_rate_limit.burst: its teams' guaranteed bursts take all of its \
                 burst {burst}, so team {:?} (upstream_share = 0, borrowing only) is served only \
                 while the other teams leave part of theirs unspent; raise the burst to lend it some",
                lender.name
            ));
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{base, key_file, ONE_TEAM};
    use crate::settings::Settings;

    /// The problems of a config with org `acme` (its budget said in `org`) and `teams`, none if
    /// it is taken.
    fn problems(org: &str, teams: &[(&str, Option<u32>)]) -> Vec<String> {
        load(org, teams).err().unwrap_or_default()
    }

    /// The config of [`problems`], which must load.
    fn settings(org: &str, teams: &[(&str, Option<u32>)]) -> Settings {
        load(org, teams).expect("the config loads")
    }

    fn load(org: &str, teams: &[(&str, Option<u32>)]) -> Result<Settings, Vec<String>> {
        let key = key_file("made-up-org-key");
        let mut toml = format!("{org}\n");
        for (i, (name, share)) in teams.iter().enumerate() {
            toml.push_str(&format!(
                "[teams.{name}]\norg = \"acme\"\nkey_sha256 = [\"{}\"]\n\
                 rate_limit = {{ per_minute = 60, burst = 10 }}\n",
                format!("{:x}", i + 1).repeat(64)
            ));
            if let Some(share) = share {
                toml.push_str(&format!("upstream_share = {share}\n"));
            }
        }
        Settings::from_toml_str(&base(key.path(), &toml)).map_err(|e| e.problems)
    }

    #[test]
    fn an_org_budget_and_shares_are_read_with_their_defaults() {
        let key = key_file("made-up-org-key");
        let org = "upstream_rate_limit = { per_minute = 120, burst = 20 }\n";
        let team = format!("{ONE_TEAM}upstream_share = 3\n");
        let s = Settings::from_toml_str(&base(key.path(), &format!("{org}{team}"))).unwrap();
        let team = &s.teams[0];
        assert_eq!(team.upstream_share, 3);
        let quota = team.org.upstream_rate_limit.unwrap();
        assert_eq!((quota.per_minute.get(), quota.burst.get()), (120, 20));
        assert_eq!(
            team.org.max_upstream_hold,
            std::time::Duration::from_secs(60)
        );
        assert!(problems("", &[("a", None)]).is_empty());
    }

    #[test]
    fn guaranteed_bursts_beyond_the_org_burst_are_refused_naming_the_org() {
        // Burst 2 and three teams: each is guaranteed at least 1, 3 in all.
        let found = problems(
            "upstream_rate_limit = { per_minute = 60, burst = 2 }",
            &[("a", None), ("b", None), ("c", None)],
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("orgs.acme.upstream_rate_limit.burst: organisation \"acme\""),
            "{found:?}"
        );
        assert!(found[0].contains("add up to 3"), "{found:?}");
        assert!(problems(
            "upstream_rate_limit = { per_minute = 60, burst = 3 }",
            &[("a", None), ("b", None), ("c", None)],
        )
        .is_empty());
    }

    #[test]
    fn a_borrowing_team_without_room_to_borrow_is_a_warning_not_an_error() {
        let teams = [("a", Some(1)), ("b", Some(1)), ("batch", Some(0))];
        let full = "upstream_rate_limit = { per_minute = 60, burst = 4 }";
        assert!(problems(full, &teams).is_empty());
        let warned = super::budget_warnings(&settings(full, &teams));
        assert_eq!(warned.len(), 1, "{warned:?}");
        assert!(warned[0].contains("\"batch\""), "{warned:?}");
        let roomy = "upstream_rate_limit = { per_minute = 60, burst = 5 }";
        assert!(super::budget_warnings(&settings(roomy, &teams)).is_empty());
    }

    #[test]
    fn bad_budget_values_name_their_key() {
        let found = problems(
            "upstream_rate_limit = { per_minute = 0, burst = 5 }\nmax_upstream_hold_seconds = 90000",
            &[("a", None)],
        );
        assert_eq!(
            found,
            vec![
                "orgs.acme.upstream_rate_limit.per_minute: must be greater than 0",
                "orgs.acme.max_upstream_hold_seconds: must be at most 86400 s, one day, not 90000",
            ]
        );
        let found = problems("", &[("a", Some(2_000_000))]);
        assert_eq!(
            found,
            vec!["teams.a.upstream_share: must be at most 1000000, not 2000000"]
        );
        let found = problems(
            "upstream_rate_limit = { per_minute = 60, burst = 100000 }",
            &[("a", Some(10_000))],
        );
        assert!(
            found[0].starts_with("orgs.acme.upstream_rate_limit.burst: burst 100000 times"),
            "{found:?}"
        );
    }
}
