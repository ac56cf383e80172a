//! The simulated organisation's agents: seeded from `seed_agents.json` (the GET page's shape,
//! about 3 KB each), each with its versions, and the answers GET, POST, PATCH and DELETE give.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::patch::{self, Invalid};

/// The organisation every simulated agent belongs to.
pub const ORGANIZATION_ID: &str = "org_xyz";

/// Seed agents and the template a POST starts from, read once at start-up.
const SEED: &str = include_str!("seed_agents.json");

#[derive(Debug, thiserror::Error)]
pub(super) enum AgentError {
    #[error("Agent {0} not found")]
    AgentNotFound(String),
    #[error("Version {version} of agent {id} not found")]
    VersionNotFound { id: String, version: u64 },
    #[error(transparent)]
    Invalid(#[from] Invalid),
}

/// One version: the `current_version` object as GET shows it, and its pipeline.
#[derive(Clone, Deserialize)]
struct Version {
    /// Shown at the agent's top level, but it belongs to the version: the PATCH page says
    /// changing it "changes which controls apply to the agent version".
    pipeline_type: String,
    #[serde(flatten)]
    body: Map<String, Value>,
}

#[derive(Deserialize)]
struct Agent {
    id: String,
    folder_id: Value,
    is_deleted: bool,
    #[serde(rename = "createdAt", with = "timestamp")]
    created_at: SystemTime,
    #[serde(rename = "updatedAt", with = "timestamp")]
    updated_at: SystemTime,
    timezone: Value,
    current_version_number: u64,
    #[serde(with = "numbered")]
    versions: BTreeMap<u64, Version>,
}

#[derive(Deserialize)]
struct Seed {
    agents: Vec<Agent>,
    new_agent_version: Version,
}

/// An agent as DialNexa answers it, fields in the page's order, showing one of its versions.
#[derive(Serialize)]
pub(super) struct AgentView {
    id: String,
    organization_id: &'static str,
    folder_id: Value,
    current_version_number: u64,
    is_deleted: bool,
    #[serde(rename = "createdAt", with = "timestamp")]
    created_at: SystemTime,
    #[serde(rename = "updatedAt", with = "timestamp")]
    updated_at: SystemTime,
    timezone: Value,
    current_version: Map<String, Value>,
    pipeline_type: String,
}

impl Agent {
    fn view(&self, number: u64) -> Option<AgentView> {
        let version = self.versions.get(&number)?;
        Some(AgentView {
            id: self.id.clone(),
            organization_id: ORGANIZATION_ID,
            folder_id: self.folder_id.clone(),
            current_version_number: self.current_version_number,
            is_deleted: self.is_deleted,
            created_at: self.created_at,
            updated_at: self.updated_at,
            timezone: self.timezone.clone(),
            current_version: version.body.clone(),
            pipeline_type: version.pipeline_type.clone(),
        })
    }

    fn current(&self) -> Option<AgentView> {
        self.view(self.current_version_number)
    }

    /// `updatedAt` always moves forward, even for two writes in the same millisecond, so a
    /// client can tell that its write landed.
    fn touch(&mut self) {
        let next = self.updated_at + Duration::from_millis(1);
        self.updated_at = SystemTime::now().max(next);
    }
}

pub(super) struct AgentStore {
    /// Keyed by id, so listings come out in a stable order. Deleted agents stay (DialNexa
    /// deletes softly: `is_deleted`) but are not found any more.
    agents: BTreeMap<String, Agent>,
    new_agent_version: Version,
}

impl AgentStore {
    /// The seeded store. The seed file is part of the binary and a unit test parses it, so
    /// failing here is a build defect, not a runtime condition.
    pub fn seeded() -> Self {
        let seed: Seed =
            serde_json::from_str(SEED).expect("seed_agents.json matches the agent shape");
        let agents = seed
            .agents
            .into_iter()
            .map(|agent| (agent.id.clone(), agent))
            .collect();
        Self {
            agents,
            new_agent_version: seed.new_agent_version,
        }
    }

    /// Agents not deleted.
    pub fn len(&self) -> usize {
        self.live().count()
    }

    fn live(&self) -> impl Iterator<Item = &Agent> {
        self.agents.values().filter(|a| !a.is_deleted)
    }

    fn find(&self, id: &str) -> Result<&Agent, AgentError> {
        self.agents
            .get(id)
            .filter(|a| !a.is_deleted)
            .ok_or_else(|| AgentError::AgentNotFound(id.to_owned()))
    }

    fn find_mut(&mut self, id: &str) -> Result<&mut Agent, AgentError> {
        self.agents
            .get_mut(id)
            .filter(|a| !a.is_deleted)
            .ok_or_else(|| AgentError::AgentNotFound(id.to_owned()))
    }

    /// Every live agent, each showing its current version.
    pub fn list(&self) -> Vec<AgentView> {
        self.live().filter_map(Agent::current).collect()
    }

    /// The agent showing `version` (default: its current one).
    pub fn get(&self, id: &str, version: Option<u64>) -> Result<AgentView, AgentError> {
        let agent = self.find(id)?;
        let number = version.unwrap_or(agent.current_version_number);
        agent
            .view(number)
            .ok_or_else(|| AgentError::VersionNotFound {
                id: id.to_owned(),
                version: number,
            })
    }

    /// Whether the agent exists and has that version (for calls placed with it).
    pub fn has_version(&self, id: &str, version: u64) -> Result<(), AgentError> {
        self.get(id, Some(version)).map(|_| ())
    }

    /// Applies a PATCH body: checked whole first (DialNexa validates before its handler runs,
    /// so a bad body is `400` even for an unknown agent), then applied to the named version.
    /// Nothing changes unless everything is valid.
    pub fn patch(&mut self, id: &str, body: &Map<String, Value>) -> Result<AgentView, AgentError> {
        let changes = patch::check(body)?;
        let agent = self.find_mut(id)?;
        let number = changes
            .version_number
            .unwrap_or(agent.current_version_number);
        let Some(version) = agent.versions.get_mut(&number) else {
            return Err(AgentError::VersionNotFound {
                id: id.to_owned(),
                version: number,
            });
        };
        patch::merge(&mut version.body, changes.version);
        patch::mirror_speech(&mut version.body);
        if let Some(pipeline) = changes.pipeline_type {
            version.pipeline_type = pipeline;
        }
        agent.touch();
        agent.view(number).ok_or(AgentError::VersionNotFound {
            id: id.to_owned(),
            version: number,
        })
    }

    /// Creates an agent with version 1: the template, with the body applied by the PATCH rules.
    /// `folder_id` and `timezone` belong to the agent, not a version, so only a POST sets them.
    pub fn create(&mut self, body: &Map<String, Value>) -> Result<AgentView, AgentError> {
        let changes = patch::check(body)?;
        let mut problems = Vec::new();
        let mut agent_field = |name: &str| match body.get(name) {
            None | Some(Value::Null) => Value::Null,
            Some(Value::String(s)) => Value::String(s.clone()),
            Some(_) => {
                problems.push(format!("{name} must be a string"));
                Value::Null
            }
        };
        let (folder_id, timezone) = (agent_field("folder_id"), agent_field("timezone"));
        if !problems.is_empty() {
            return Err(Invalid(problems).into());
        }
        let id = super::fresh_id("agt", |id| self.agents.contains_key(id));
        let mut version = self.new_agent_version.clone();
        version
            .body
            .insert("agent_id".into(), Value::String(id.clone()));
        version.body.insert("number".into(), Value::from(1));
        patch::merge(&mut version.body, changes.version);
        patch::mirror_speech(&mut version.body);
        if let Some(pipeline) = changes.pipeline_type {
            version.pipeline_type = pipeline;
        }
        let now = SystemTime::now();
        let agent = Agent {
            id: id.clone(),
            folder_id,
            is_deleted: false,
            created_at: now,
            updated_at: now,
            timezone,
            current_version_number: 1,
            versions: BTreeMap::from([(1, version)]),
        };
        let view = agent.current();
        self.agents.insert(id.clone(), agent);
        view.ok_or(AgentError::AgentNotFound(id))
    }

    /// Deletes softly, as `is_deleted` says DialNexa does; the answer is the agent as deleted.
    pub fn delete(&mut self, id: &str) -> Result<AgentView, AgentError> {
        let agent = self.find_mut(id)?;
        agent.is_deleted = true;
        agent.touch();
        agent
            .current()
            .ok_or_else(|| AgentError::AgentNotFound(id.to_owned()))
    }
}

/// `createdAt` / `updatedAt`: RFC 3339 with milliseconds, as the pages show them.
mod timestamp {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*time))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text).map_err(serde::de::Error::custom)
    }
}

/// The seed lists versions as an array; the store keys them by their `number`.
mod numbered {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer};

    use super::Version;

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<u64, Version>, D::Error> {
        let versions = Vec::<Version>::deserialize(d)?;
        versions
            .into_iter()
            .map(|v| match v.body.get("number").and_then(|n| n.as_u64()) {
                Some(number) => Ok((number, v)),
                None => Err(serde::de::Error::custom("a seed version has no number")),
            })
            .collect()
    }
}
