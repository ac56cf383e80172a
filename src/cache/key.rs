//! What the cache is keyed by: an organisation's agent (case-folded), the spelling a read used,
//! and the [`Scope`] of an invalidation.

use std::borrow::Cow;
use std::sync::Arc;

/// An agent of one organisation. The id is case-folded: an upstream that reads ids without regard
/// to case (UUIDs usually are) must not let a write through `ABC` leave `abc` cached. Reads of
/// different spellings are still kept apart (see [`Stored::spelling`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(super) struct AgentKey {
    pub(super) org: Arc<str>,
    pub(super) agent: Box<str>,
}

impl AgentKey {
    pub(super) fn new(org: &Arc<str>, agent: &str) -> Self {
        Self {
            org: org.clone(),
            agent: fold_case(agent).into(),
        }
    }
}

pub fn fold_case(id: &str) -> Cow<'_, str> {
    if id.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(id.to_ascii_lowercase())
    } else {
        Cow::Borrowed(id)
    }
}

/// The id as the request spelled it when that differs from the folded key; `None` (no allocation)
/// for the usual all-lower-case id.
pub(super) fn spelling(id: &str) -> Option<Box<str>> {
    id.bytes()
        .any(|b| b.is_ascii_uppercase())
        .then(|| id.into())
}

/// What an invalidation drops: one agent of one organisation (a write, or a purge naming both),
/// every agent of an organisation, one agent id in every organisation, or everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Agent { org: Arc<str>, agent: String },
    Org(String),
    AgentId(String),
    All,
}

impl Scope {
    /// The admin purge's scope: `{"org": ..., "agent_id": ...}`, either optional.
    pub fn of_purge(org: Option<&str>, agent: Option<&str>) -> Self {
        match (org, agent) {
            (Some(org), Some(agent)) => Self::Agent {
                org: Arc::from(org),
                agent: agent.to_owned(),
            },
            (Some(org), None) => Self::Org(org.to_owned()),
            (None, Some(agent)) => Self::AgentId(agent.to_owned()),
            (None, None) => Self::All,
        }
    }
}

/// The version of an agent the cache is handed for one request, opaque to it: only compared with
/// the one an entry or a fill was made under. Replicas that share a store of versions hand in
/// their agreed one; a lone process hands in none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedVersion {
    /// No version: the local generations decide alone.
    NotShared,
    /// The version every replica agrees is current: only an entry filled under it is served, and a
    /// fill is stored under it.
    Current(Arc<str>),
    /// A write to the agent is in progress somewhere: nothing is served from or stored in the
    /// cache. The version still keeps fills apart: a read after the write's end never joins a fill
    /// that started before it.
    Writing(Arc<str>),
    /// The versions cannot be read (their store is down and the operator chose to degrade): the
    /// cache is bypassed; fills still coalesce, store nothing.
    Unavailable,
}
