//! The config snapshot requests run on (`Runtime`, swapped whole by a reload) and the process-wide
//! parts that outlive reloads (`Gateway`: cache, audit log, metrics, drain flag, work left unattended).

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::task::JoinSet;

use crate::audit::AuditLog;
use crate::auth::KeyDigest;
use crate::cache::AgentCache;
use crate::config::{ConfigError, Settings, Team};
use crate::metrics::{Metrics, TeamCounters};
use crate::ratelimit::TeamLimiter;
use crate::upstream::Upstream;

/// A team as requests see it: its config and its (reload-surviving) limiter.
pub struct TeamState {
    pub team: Team,
    pub limiter: Arc<TeamLimiter>,
    pub counters: TeamCounters,
}

/// One immutable config snapshot. A request loads it once and finishes on it, whatever reloads
/// happen meanwhile.
pub struct Runtime {
    pub settings: Settings,
    /// Looked up on every request. foldhash, not SipHash: the map is small and only changes on
    /// reload, so no choice of presented keys can make its lookups slow.
    teams: HashMap<KeyDigest, Arc<TeamState>, foldhash::fast::RandomState>,
    pub upstream: Upstream,
}

impl Runtime {
    /// Builds a snapshot, keeping from `previous` the limiter of every team whose quotas did not
    /// change (and what a team had spent when they did) and the upstream connection pool if its
    /// connect timeout did not change.
    pub fn build(settings: Settings, previous: Option<&Runtime>, metrics: &Metrics) -> Self {
        let old_limiters: HashMap<&str, &Arc<TeamLimiter>> = previous
            .map(|p| {
                p.teams
                    .values()
                    .map(|t| (&*t.team.name, &t.limiter))
                    .collect()
            })
            .unwrap_or_default();
        let mut teams = HashMap::default();
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
                team: team.clone(),
                limiter,
                counters: metrics.team_counters(&team.name, &team.org.name),
            });
            for digest in &team.key_digests {
                teams.insert(*digest, state.clone());
            }
        }
        let upstream = match previous {
            Some(p) if p.upstream.connect_timeout() == settings.upstream.connect_timeout => {
                p.upstream.clone()
            }
            _ => Upstream::new(settings.upstream.connect_timeout),
        };
        Self {
            settings,
            teams,
            upstream,
        }
    }

    pub fn team(&self, digest: &KeyDigest) -> Option<&Arc<TeamState>> {
        self.teams.get(digest)
    }

    fn team_names(&self) -> impl Iterator<Item = &str> {
        self.teams.values().map(|t| &*t.team.name)
    }

    fn org_names(&self) -> impl Iterator<Item = &str> {
        self.teams.values().map(|t| &*t.team.org.name)
    }
}

/// Everything shared by both listeners for the life of the process.
pub struct Gateway {
    runtime: ArcSwap<Runtime>,
    /// Built even when `cache.enabled = false`, so a reload can turn caching on; sized at start.
    pub cache: Arc<AgentCache>,
    pub audit: AuditLog,
    pub metrics: Arc<Metrics>,
    draining: AtomicBool,
    config_path: Option<PathBuf>,
    /// Writes run in tasks of their own (see `proxy::handle`); kept to cancel them at shutdown.
    unattended: Mutex<JoinSet<()>>,
}

impl Gateway {
    pub fn new(
        settings: Settings,
        config_path: Option<PathBuf>,
        audit: AuditLog,
        metrics: Arc<Metrics>,
    ) -> Self {
        let cache = Arc::new(AgentCache::new(&settings.cache, metrics.clone()));
        Self {
            runtime: ArcSwap::from_pointee(Runtime::build(settings, None, &metrics)),
            cache,
            audit,
            metrics,
            draining: AtomicBool::new(false),
            config_path,
            unattended: Mutex::new(JoinSet::new()),
        }
    }

    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
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
    pub fn apply(&self, settings: Settings) {
        let old = self.runtime.load_full();
        let new = Runtime::build(settings, Some(&old), &self.metrics);
        let kept: std::collections::HashSet<&str> = new.team_names().collect();
        for gone in old.team_names().filter(|n| !kept.contains(n)) {
            self.metrics.forget_team(gone);
        }
        let kept: std::collections::HashSet<&str> = new.org_names().collect();
        let gone: std::collections::HashSet<&str> =
            old.org_names().filter(|n| !kept.contains(n)).collect();
        for org in gone {
            self.metrics.forget_org(org);
        }
        self.runtime.store(Arc::new(new));
    }

    pub fn cache_enabled(&self, rt: &Runtime) -> Option<&Arc<AgentCache>> {
        rt.settings.cache.enabled.then_some(&self.cache)
    }

    /// Runs work that must end whether or not its client stays: a write (once sent, upstream may
    /// apply it anyway) and the audit line of a client that left a cache fill it had started.
    pub fn spawn_unattended(&self, work: impl Future<Output = ()> + Send + 'static) {
        let mut unattended = self.unattended.lock().unwrap_or_else(|e| e.into_inner());
        while unattended.try_join_next().is_some() {}
        unattended.spawn(work);
    }

    /// At shutdown, once the grace period is over: cancels what is still waiting for upstream
    /// (each still writes its audit line) and waits until it is gone.
    pub async fn cancel_unattended(&self) {
        let mut unattended =
            std::mem::take(&mut *self.unattended.lock().unwrap_or_else(|e| e.into_inner()));
        unattended.abort_all();
        while unattended.join_next().await.is_some() {}
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}
