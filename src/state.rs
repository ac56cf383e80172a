//! The config snapshot requests run on ([`Snapshot`], swapped whole by a reload) and the process-wide
//! parts that outlive reloads ([`Gateway`]: cache, admission, audit log, metrics, drain flag, the
//! [`Background`] work), with the one entry point for every invalidation, [`Gateway::invalidate`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::admission::{self, Admission, TeamLimiter, TeamPart};
use crate::audit::AuditLog;
use crate::auth::{KeyDigest, KeyLife};
use crate::background::Background;
use crate::cache::{fold_case, AgentCache, Scope};
use crate::cluster::{Cluster, ClusterStartError, Phase, Reach};
use crate::config::ConfigError;
use crate::error::GatewayError;
use crate::metrics::{Metrics, TeamCounters};
use crate::settings::{ClusterSettings, OnUnavailable, Settings, Team};
use crate::upstream::UpstreamClient;

/// A team as requests see it: its config, its (reload-surviving) limiter, and its part in its
/// org's budget.
pub struct TeamState {
    pub settings: Team,
    pub limiter: Arc<TeamLimiter>,
    pub part: Arc<TeamPart>,
    pub counters: TeamCounters,
}

/// A team key as requests see it: its team, and its life (end, last use).
pub struct KnownKey {
    pub team: Arc<TeamState>,
    pub life: KeyLife,
}

/// One immutable config snapshot. A request loads it once and finishes on it, whatever reloads
/// happen meanwhile.
pub struct Snapshot {
    pub settings: Settings,
    /// Looked up on every request. foldhash, not SipHash: the map is small and only changes on
    /// reload, so no choice of presented keys can make its lookups slow.
    keys: HashMap<KeyDigest, KnownKey, foldhash::fast::RandomState>,
    pub upstream: UpstreamClient,
}

impl Snapshot {
    /// Builds a snapshot, keeping from `previous` the limiter of every team whose quotas did not
    /// change (and what a team had spent when they did) and the upstream connection pool if its
    /// connect timeout did not change.
    pub fn build(settings: Settings, previous: Option<&Snapshot>, metrics: &Metrics) -> Self {
        let old_limiters: HashMap<&str, &Arc<TeamLimiter>> = previous
            .map(|p| {
                p.keys
                    .values()
                    .map(|k| (&*k.team.settings.name, &k.team.limiter))
                    .collect()
            })
            .unwrap_or_default();
        let mut keys = HashMap::default();
        let parts = admission::team_parts(&settings.teams, &metrics.budget);
        for team in &settings.teams {
            let limiter = match old_limiters.get(&*team.name) {
                Some(l) if l.has_quotas(team.rate_limit, team.write_rate_limit) => Arc::clone(l),
                Some(l) => Arc::new(TeamLimiter::succeeding(
                    l,
                    team.rate_limit,
                    team.write_rate_limit,
                )),
                None => Arc::new(TeamLimiter::new(team.rate_limit, team.write_rate_limit)),
            };
            let state = Arc::new(TeamState {
                settings: team.clone(),
                limiter,
                part: Arc::clone(&parts[&team.name]),
                counters: metrics.team_counters(&team.name, &team.org.name),
            });
            for key in &team.keys {
                let last_used =
                    metrics
                        .config
                        .team_key(&team.name, key.digest.key_id(), key.not_after);
                let known = KnownKey {
                    team: state.clone(),
                    life: KeyLife::new(key.not_after, last_used),
                };
                keys.insert(key.digest, known);
            }
        }
        let upstream = match previous {
            Some(p) if p.upstream.connect_timeout() == settings.upstream.connect_timeout => {
                p.upstream.clone()
            }
            _ => UpstreamClient::new(settings.upstream.connect_timeout),
        };
        Self {
            settings,
            keys,
            upstream,
        }
    }

    pub fn key(&self, digest: &KeyDigest) -> Option<&KnownKey> {
        self.keys.get(digest)
    }

    /// Every organisation a team belongs to, each once: what a purge of all of them reaches.
    pub fn org_names(&self) -> Vec<std::sync::Arc<str>> {
        let mut orgs: Vec<Arc<str>> = self
            .settings
            .teams
            .iter()
            .map(|t| t.org.name.clone())
            .collect();
        orgs.sort();
        orgs.dedup();
        orgs
    }

    fn team_orgs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.keys
            .values()
            .map(|k| (&*k.team.settings.name, &*k.team.settings.org.name))
    }

    fn team_names(&self) -> impl Iterator<Item = &str> {
        self.keys.values().map(|k| &*k.team.settings.name)
    }

    /// Every key, as its team and `key_id`.
    fn key_ids(&self) -> impl Iterator<Item = (&Arc<str>, String)> {
        self.keys
            .iter()
            .map(|(digest, k)| (&k.team.settings.name, digest.key_id()))
    }
}

/// Everything shared by both listeners for the life of the process.
pub struct Gateway {
    snapshot: ArcSwap<Snapshot>,
    /// Built even when `cache.enabled = false`, so a reload can turn caching on; sized at start.
    pub cache: Arc<AgentCache>,
    /// "May this request go now": the pipeline asks it, never a limiter directly.
    pub admission: Admission,
    pub audit: AuditLog,
    pub metrics: Arc<Metrics>,
    draining: AtomicBool,
    config_path: Option<PathBuf>,
    /// Work that outlives its request (writes, shared cache fills, second invalidations), which
    /// shutdown ends ([`Background::finish`]).
    pub background: Background,
    /// Cluster mode's link to the other replicas, as started (`[cluster]` needs a restart).
    cluster: Option<(Arc<Cluster>, ClusterSettings)>,
}

/// When an invalidation happens, which decides what it must reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moment {
    /// An admin purge: this replica and, in cluster mode, every other.
    Purge,
    /// A write to an agent, as it is sent upstream. In cluster mode the quota step already
    /// replaced the agent's shared version in the same round trip, so only this replica is left.
    WriteSent,
    /// The same write once upstream's answer (or failure) is back: here and everywhere.
    WriteAnswered,
}

impl Gateway {
    pub fn new(
        settings: Settings,
        config_path: Option<PathBuf>,
        audit: AuditLog,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ClusterStartError> {
        let background = Background::default();
        let cache =
            Arc::new(AgentCache::new(&settings.cache, metrics.clone()).filling_in(&background));
        let cluster = match &settings.cluster {
            None => None,
            Some(cs) => {
                let forget = Arc::clone(&cache);
                let cluster = Cluster::start(
                    cs,
                    metrics.cluster.clone(),
                    // Back after an outage (or a failover): what was cached may have missed
                    // invalidations, and is not served again.
                    move || forget.forget_everything(),
                )?;
                set_version_lifetime(&cluster, &settings);
                Some((cluster, cs.clone()))
            }
        };
        let admission = match &cluster {
            Some((c, _)) => Admission::shared(Arc::clone(c)),
            None => Admission::local(),
        };
        metrics
            .config
            .loaded(&settings.fingerprint, SystemTime::now());
        Ok(Self {
            snapshot: ArcSwap::from_pointee(Snapshot::build(settings, None, &metrics)),
            cache,
            admission,
            audit,
            metrics,
            draining: AtomicBool::new(false),
            config_path,
            background,
            cluster,
        })
    }

    /// The file `reload` reads, if the gateway was started from one.
    pub fn config_path(&self) -> Option<&std::path::Path> {
        self.config_path.as_deref()
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Re-reads the config file (and the org keys it names) and swaps it in if valid. An invalid
    /// file changes nothing: the old config keeps serving.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let result = match &self.config_path {
            Some(path) => Settings::load(path).map(|s| self.apply(s)),
            None => Err(ConfigError {
                problems: vec!["no config file to reload (started without --config)".into()],
            }),
        };
        self.metrics.reload(result.is_ok());
        result
    }

    /// Swaps in `settings`, keeping the state of unchanged teams.
    pub fn apply(&self, mut settings: Settings) {
        let running = self.cluster.as_ref().map(|(_, cs)| cs.clone());
        if settings.cluster != running {
            tracing::warn!("[cluster] changed in the config file; it takes a restart, the running cluster settings stay");
            settings.cluster = running;
        }
        if let Some((cluster, _)) = &self.cluster {
            set_version_lifetime(cluster, &settings);
        }
        let old = self.snapshot.load_full();
        let new = Snapshot::build(settings, Some(&old), &self.metrics);
        let kept: std::collections::HashSet<&str> = new.team_names().collect();
        for gone in old.team_names().filter(|n| !kept.contains(n)) {
            self.metrics.forget_team(gone);
        }
        let kept: std::collections::HashSet<(&str, &str)> = new.team_orgs().collect();
        let gone: std::collections::HashSet<(&str, &str)> =
            old.team_orgs().filter(|t| !kept.contains(t)).collect();
        for (team, org) in gone {
            self.metrics
                .budget
                .forget_team(&Arc::from(org), &Arc::from(team));
        }
        let kept: std::collections::HashSet<Arc<str>> = new.org_names().into_iter().collect();
        for org in old.org_names().iter().filter(|n| !kept.contains(*n)) {
            self.metrics.forget_org(org);
        }
        let kept: std::collections::HashSet<_> = new.key_ids().collect();
        for (team, key_id) in old.key_ids().filter(|k| !kept.contains(k)) {
            self.metrics.config.forget_key(team, key_id);
        }
        self.metrics
            .config
            .loaded(&new.settings.fingerprint, SystemTime::now());
        self.snapshot.store(Arc::new(new));
    }

    /// Drops what `scope` names from the cache, and stops fills in flight there from being
    /// stored: the one way anything is invalidated (writes, both times; admin purges). In cluster
    /// mode it reaches every replica, through the agent versions in Redis; `Err` when it could not.
    /// Returns how many stored variants this replica dropped.
    pub async fn invalidate(&self, scope: &Scope, moment: Moment) -> Result<u64, GatewayError> {
        let dropped = self.cache.invalidate(scope).await;
        let Some((cluster, _)) = &self.cluster else {
            return Ok(dropped);
        };
        let shared = match (moment, scope) {
            (Moment::WriteSent, _) => Ok(()),
            (Moment::WriteAnswered, Scope::Agent { org, agent }) => {
                cluster.write_end(org, &fold_case(agent)).await
            }
            (_, scope) => {
                let snapshot = self.snapshot();
                let orgs = snapshot.org_names();
                let folded;
                let reaches: Vec<Reach<'_>> = match scope {
                    Scope::Agent { org, agent } => {
                        folded = fold_case(agent);
                        vec![Reach::Agent {
                            org,
                            agent: &folded,
                        }]
                    }
                    Scope::Org(org) => vec![Reach::Org(org)],
                    Scope::AgentId(agent) => {
                        folded = fold_case(agent);
                        orgs.iter()
                            .map(|org| Reach::Agent {
                                org,
                                agent: &folded,
                            })
                            .collect()
                    }
                    Scope::All => orgs.iter().map(|org| Reach::Org(org)).collect(),
                };
                cluster.invalidate(&reaches).await
            }
        };
        shared
            .map(|()| dropped)
            .map_err(|_| GatewayError::ClusterUnavailable)
    }

    /// The cluster's state for `/readyz`: `None` without `[cluster]`, else whether Redis is
    /// usable (or why not) and whether this replica refuses requests meanwhile.
    pub fn cluster_state(&self) -> Option<(Phase, OnUnavailable)> {
        self.cluster
            .as_ref()
            .map(|(c, _)| (c.phase(), c.on_unavailable()))
    }

    /// The cache, if `snapshot` has caching on (it is kept while off, see [`Gateway::cache`]).
    pub fn enabled_cache(&self, snapshot: &Snapshot) -> Option<&Arc<AgentCache>> {
        snapshot.settings.cache.enabled.then_some(&self.cache)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

/// Versions must outlive every entry filled under them (see [`Cluster::set_version_lifetime`]).
fn set_version_lifetime(cluster: &Cluster, settings: &Settings) {
    let cache = &settings.cache;
    cluster.set_version_lifetime(cache.ttl + cache.stale_if_error, settings.upstream.timeout);
}
