//! Invalidation by [`Scope`]: generations bumped first (so nothing in flight is stored after),
//! then the entries dropped.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::key::{fold_case, AgentKey, Scope};
use super::store::AgentCache;

impl AgentCache {
    /// Drops every stored variant in `scope`, and makes every fill in flight there unstorable.
    /// Returns how many variants were dropped.
    pub async fn invalidate(&self, scope: &Scope) -> u64 {
        self.metrics.cache_invalidations.inc();
        let (org, agent) = match scope {
            Scope::Agent { org, agent } => {
                let key = AgentKey::new(org, agent);
                let stripe = Self::stripe(org, &key.agent);
                // Bump first: from this instant no stored variant or in-flight fill of the agent
                // is served.
                self.generations[stripe.agent].fetch_add(1, Ordering::SeqCst);
                return match self.entries.remove(&key).await {
                    Some(entry) => entry.variants.len() as u64,
                    None => 0,
                };
            }
            Scope::Org(org) => (Some(org.as_str()), None),
            Scope::AgentId(agent) => (None, Some(fold_case(agent))),
            Scope::All => (None, None),
        };
        let agent = agent.as_deref();
        // Bump first, as for one agent: listing the entries cannot find fills still in flight,
        // and those must not be stored either.
        match (org, agent) {
            (Some(org), _) => {
                self.org_generations[Self::scope_stripe(org)].fetch_add(1, Ordering::SeqCst);
            }
            (None, Some(agent)) => {
                self.id_generations[Self::scope_stripe(agent)].fetch_add(1, Ordering::SeqCst);
            }
            (None, None) => {
                for g in self.generations.iter() {
                    g.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        let matching: Vec<(Arc<AgentKey>, usize)> = self
            .entries
            .iter()
            .filter(|(k, _)| {
                org.is_none_or(|o| &*k.org == o) && agent.is_none_or(|a| &*k.agent == a)
            })
            .map(|(k, v)| (k, v.variants.len()))
            .collect();
        let mut dropped = 0;
        for (key, variants) in matching {
            if self.entries.remove(&*key).await.is_some() {
                dropped += variants as u64;
            }
        }
        dropped
    }

    /// Makes every stored answer unservable at once (and drops them soon after): the versions'
    /// store came back, and whatever this replica cached before may have missed invalidations.
    pub fn forget_everything(&self) {
        for g in self.generations.iter() {
            g.fetch_add(1, Ordering::SeqCst);
        }
        self.entries.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    //! Each scope drops exactly the agents it names (in every family, variant and spelling),
    //! counts their variants, leaves everything else served, and stops the fills in flight inside
    //! it.

    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};

    use crate::cache::{AgentCache, Lookup, Scope, SharedVersion};
    use crate::error::GatewayError;
    use crate::metrics::Metrics;
    use crate::route::Family;
    use crate::settings::CacheSettings;
    use crate::upstream::{Buffered, CacheFetch};

    const ORGS: [&str; 2] = ["acme", "globex"];
    const AGENTS: [&str; 2] = ["a1", "a2"];

    fn cache() -> Arc<AgentCache> {
        let settings = CacheSettings {
            enabled: true,
            ttl: Duration::from_secs(60),
            max_bytes: 1 << 20,
            max_entry_bytes: 1 << 16,
            stale_if_error: Duration::from_secs(300),
        };
        Arc::new(AgentCache::new(&settings, Arc::new(Metrics::new())))
    }

    fn answer(body: &'static str) -> Result<CacheFetch, GatewayError> {
        Ok(CacheFetch::Buffered(Buffered {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from_static(body.as_bytes()),
        }))
    }

    async fn lookup(cache: &AgentCache, org: &str, agent: &str, query: &str) -> Lookup {
        let org: Arc<str> = Arc::from(org);
        let local = SharedVersion::NotShared;
        cache
            .lookup(&org, Family::Agents2, agent, query, &local)
            .await
    }

    async fn fill(cache: &Arc<AgentCache>, org: &str, agent: &str, query: &str) {
        let Lookup::Miss(ticket) = lookup(cache, org, agent, query).await else {
            panic!("{org}/{agent}?{query} was cached before its fill");
        };
        cache.fill(&ticket, true, || async { answer("{}") }).await;
        assert!(
            cached(cache, org, agent, query).await,
            "{org}/{agent} stored"
        );
    }

    async fn cached(cache: &AgentCache, org: &str, agent: &str, query: &str) -> bool {
        matches!(lookup(cache, org, agent, query).await, Lookup::Fresh { .. })
    }

    /// Every org's every agent, each in two variants (two queries).
    async fn full_cache() -> Arc<AgentCache> {
        let cache = cache();
        for org in ORGS {
            for agent in AGENTS {
                for query in ["", "v=2"] {
                    fill(&cache, org, agent, query).await;
                }
            }
        }
        cache
    }

    /// Invalidates `scope` in a full cache; returns what it dropped and which (org, agent) pairs
    /// are still served. (Two names sharing a generation stripe would be invalidated together,
    /// which is safe; these four share none.)
    async fn after(scope: Scope) -> (u64, Vec<(&'static str, &'static str)>) {
        let cache = full_cache().await;
        let dropped = cache.invalidate(&scope).await;
        let mut left = Vec::new();
        for org in ORGS {
            for agent in AGENTS {
                let both = (
                    cached(&cache, org, agent, "").await,
                    cached(&cache, org, agent, "v=2").await,
                );
                assert_eq!(both.0, both.1, "{org}/{agent}: one variant left of two");
                if both.0 {
                    left.push((org, agent));
                }
            }
        }
        (dropped, left)
    }

    #[tokio::test]
    async fn an_agent_scope_drops_that_agent_of_that_org_only() {
        let scope = Scope::Agent {
            org: Arc::from("acme"),
            agent: "a1".into(),
        };
        let (dropped, left) = after(scope).await;
        assert_eq!(dropped, 2);
        assert_eq!(left, [("acme", "a2"), ("globex", "a1"), ("globex", "a2")]);
    }

    #[tokio::test]
    async fn an_org_scope_drops_every_agent_of_that_org_only() {
        let (dropped, left) = after(Scope::Org("acme".into())).await;
        assert_eq!(dropped, 4);
        assert_eq!(left, [("globex", "a1"), ("globex", "a2")]);
    }

    #[tokio::test]
    async fn an_agent_id_scope_drops_that_agent_in_every_org() {
        let (dropped, left) = after(Scope::AgentId("a1".into())).await;
        assert_eq!(dropped, 4);
        assert_eq!(left, [("acme", "a2"), ("globex", "a2")]);
    }

    #[tokio::test]
    async fn the_whole_scope_drops_everything() {
        let (dropped, left) = after(Scope::All).await;
        assert_eq!(dropped, 8);
        assert!(left.is_empty(), "{left:?}");
    }

    #[tokio::test]
    async fn an_agent_id_scope_matches_every_spelling_of_the_id() {
        let cache = cache();
        for spelling in ["abc", "ABC"] {
            fill(&cache, "acme", spelling, "").await;
        }
        assert_eq!(cache.invalidate(&Scope::AgentId("aBc".into())).await, 2);
        for spelling in ["abc", "ABC"] {
            assert!(!cached(&cache, "acme", spelling, "").await, "{spelling}");
        }
    }

    #[tokio::test]
    async fn a_scope_with_nothing_stored_drops_nothing_and_still_stops_its_fills_in_flight() {
        let scopes = [
            Scope::Agent {
                org: Arc::from("acme"),
                agent: "a1".into(),
            },
            Scope::Org("acme".into()),
            Scope::AgentId("a1".into()),
            Scope::All,
        ];
        for scope in scopes {
            let cache = cache();
            let Lookup::Miss(ticket) = lookup(&cache, "acme", "a1", "").await else {
                panic!("an empty cache served a1");
            };
            assert_eq!(cache.invalidate(&scope).await, 0, "{scope:?}");
            cache.fill(&ticket, true, || async { answer("old") }).await;
            assert!(
                !cached(&cache, "acme", "a1", "").await,
                "a fill begun before {scope:?} was stored"
            );
        }
    }

    #[test]
    fn a_purge_body_names_its_scope() {
        assert!(matches!(
            Scope::of_purge(Some("acme"), Some("a1")),
            Scope::Agent { org, agent } if &*org == "acme" && agent == "a1"
        ));
        assert!(matches!(Scope::of_purge(Some("acme"), None), Scope::Org(o) if o == "acme"));
        assert!(matches!(Scope::of_purge(None, Some("a1")), Scope::AgentId(a) if a == "a1"));
        assert!(matches!(Scope::of_purge(None, None), Scope::All));
    }
}
