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
