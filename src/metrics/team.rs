//! The handles on one team's and one organisation's series, resolved once per config snapshot,
//! and their removal when a reload drops the team or the org.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use prometheus_client::metrics::counter::Counter;

use super::labels::{OrgLabel, RequestLabels, TeamLabel, TeamName, UpstreamResponseLabels};
use super::upstream::{OrgUpstream, STATUS_CLASSES};
use super::Metrics;

/// Handles on one team's most used series (they share the family's value): its quota counters,
/// its `GET`s answered `200`, by far the most frequent `requests` label set, and its org's upstream
/// figures.
#[derive(Clone, Debug)]
pub struct TeamCounters {
    pub allowed: Counter,
    pub limited: Counter,
    pub get_ok: Counter,
    pub upstream: Arc<OrgUpstream>,
}

impl Metrics {
    /// A team's most used counters, resolved once per config snapshot: looking a label set up in
    /// its family hashes it with SipHash under a lock, ~500 instructions every request paid twice.
    pub fn team_counters(&self, team: &Arc<str>, org: &Arc<str>) -> TeamCounters {
        let label = TeamLabel {
            team: TeamName(team.clone()),
        };
        let get_ok = RequestLabels {
            team: label.team.clone(),
            method: Cow::Borrowed("GET"),
            status: 200,
        };
        TeamCounters {
            allowed: self.rate_allowed.get_or_create(&label).clone(),
            limited: self.rate_limited.get_or_create(&label).clone(),
            get_ok: self.requests.get_or_create(&get_ok).clone(),
            upstream: Arc::new(self.org_upstream(org)),
        }
    }

    /// An org's upstream handles. Its answer counters exist at 0 from the start, for the same
    /// reason as `config_reloads`: an alert on `increase()` must see the first 5xx or 429.
    fn org_upstream(&self, org: &Arc<str>) -> OrgUpstream {
        let org = TeamName(org.clone());
        OrgUpstream {
            responses: STATUS_CLASSES.map(|status_class| {
                self.upstream_responses
                    .get_or_create(&UpstreamResponseLabels {
                        org: org.clone(),
                        status_class,
                    })
                    .clone()
            }),
            label: OrgLabel { org },
            remaining_family: self.ratelimit_remaining.clone(),
            limit_family: self.ratelimit_limit.clone(),
            remaining: OnceLock::new(),
            limit: OnceLock::new(),
        }
    }

    /// Drops the upstream series of an org a reload removed (no team of the new config uses it).
    pub fn forget_org(&self, org: &str) {
        let org = TeamName(Arc::from(org));
        for status_class in STATUS_CLASSES {
            self.upstream_responses.remove(&UpstreamResponseLabels {
                org: org.clone(),
                status_class,
            });
        }
        let label = OrgLabel { org };
        self.ratelimit_remaining.remove(&label);
        self.ratelimit_limit.remove(&label);
        self.budget.forget_org(&label.org.0);
    }
}
