//! The label sets of the gateway's families. Every value comes from the config (team, org) or a
//! fixed set, never from a path, an id or a header, so the series stay bounded.

use std::borrow::Cow;
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

/// A team name as a label value, a clone of the config's own `Arc<str>`: labelling a request allocates nothing
/// (a `String` label was two allocations per request on the cache-hit path).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct TeamName(pub Arc<str>);

impl EncodeLabelValue for TeamName {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&&*self.0, encoder)
    }
}

/// An organisation's name as a label value (the same type as a team's).
pub type OrgName = TeamName;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Empty for requests no team was identified for.
    pub team: TeamName,
    pub method: Cow<'static, str>,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OrgLabel {
    pub org: OrgName,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamResponseLabels {
    pub org: OrgName,
    pub status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TeamLabel {
    pub team: TeamName,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}
