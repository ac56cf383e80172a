//! The org budget's figures: calls sent upstream, calls refused for the budget or a DialNexa hold,
//! calls lent from the org's room, and each org's hold.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::labels::{OrgLabel, OrgName, TeamName};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OrgTeamLabels {
    pub org: OrgName,
    pub team: TeamName,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub org: OrgName,
    pub team: TeamName,
    /// `org` (the budget) or `upstream` (a DialNexa hold).
    pub reason: &'static str,
}

/// The families, registered once.
#[derive(Clone, Default)]
pub struct BudgetMetrics {
    calls: Family<OrgTeamLabels, Counter>,
    refused: Family<RefusedLabels, Counter>,
    borrowed: Family<OrgTeamLabels, Counter>,
    hold: Family<OrgLabel, Gauge>,
}

/// One team's handles, resolved once per config snapshot.
#[derive(Clone, Debug)]
pub struct BudgetCounters {
    /// Calls this team sent upstream.
    pub calls: Counter,
    pub borrowed: Counter,
    pub refused_org: Counter,
    pub refused_upstream: Counter,
    /// Seconds left in the org's hold (0 when none).
    pub hold: Gauge,
}

impl BudgetMetrics {
    pub(super) fn register(&self, r: &mut Registry) {
        r.register(
            "upstream_calls",
            "Calls sent upstream, by org and team: what the org's DialNexa budget is spent on",
            self.calls.clone(),
        );
        r.register(
            "org_budget_refused",
            "Upstream-bound requests refused with 429, by reason: org (the org's budget) or \
             upstream (the org is held after DialNexa refused it)",
            self.refused.clone(),
        );
        r.register(
            "org_budget_borrowed",
            "Upstream calls admitted beyond the team's guaranteed part, from the org's idle room",
            self.borrowed.clone(),
        );
        r.register(
            "upstream_hold_seconds",
            "Seconds left before the org may call upstream again after DialNexa refused it (0: none)",
            self.hold.clone(),
        );
    }

    /// The handles of `team` in `org`; every series exists at 0 from the start, so `increase()`
    /// sees the first refusal.
    pub fn counters(&self, org: &Arc<str>, team: &Arc<str>) -> BudgetCounters {
        let (org, team) = (TeamName(org.clone()), TeamName(team.clone()));
        let pair = OrgTeamLabels {
            org: org.clone(),
            team: team.clone(),
        };
        let refused = |reason| {
            self.refused
                .get_or_create(&RefusedLabels {
                    org: org.clone(),
                    team: team.clone(),
                    reason,
                })
                .clone()
        };
        BudgetCounters {
            calls: self.calls.get_or_create(&pair).clone(),
            borrowed: self.borrowed.get_or_create(&pair).clone(),
            refused_org: refused("org"),
            refused_upstream: refused("upstream"),
            hold: self.hold.get_or_create(&OrgLabel { org }).clone(),
        }
    }

    /// Drops the series of a team a reload removed (or moved to another org).
    pub fn forget_team(&self, org: &Arc<str>, team: &Arc<str>) {
        let pair = OrgTeamLabels {
            org: TeamName(org.clone()),
            team: TeamName(team.clone()),
        };
        self.calls.remove(&pair);
        self.borrowed.remove(&pair);
        for reason in ["org", "upstream"] {
            self.refused.remove(&RefusedLabels {
                org: pair.org.clone(),
                team: pair.team.clone(),
                reason,
            });
        }
    }

    /// Drops the hold gauge of an org a reload removed.
    pub(super) fn forget_org(&self, org: &str) {
        self.hold.remove(&OrgLabel {
            org: TeamName(Arc::from(org)),
        });
    }
}
