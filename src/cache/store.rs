//! The stored answers (moka, bounded in bytes) and the generations that decide which of them may be
//! served: lookups, stores, invalidations by [`Scope`], stale-if-error.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use moka::notification::RemovalCause;
use std::hash::BuildHasher;

use super::coalesce::FillLocks;
use super::key::{spelling, AgentKey, SharedVersion};
use super::policy::upstream_forbids_store;
use crate::background::Background;
use crate::metrics::Metrics;
use crate::route::Family;
use crate::settings::CacheSettings;
use crate::upstream::Buffered;

/// Generation stripes. An invalidation also makes the other agents sharing its stripe miss once,
/// so there are enough stripes that this is rare (one in 65536 per write), at 512 KiB.
const STRIPES: usize = 1 << 16;

/// Stripes of the organisation-wide and agent-id-wide generations, bumped by admin purges that name
/// only an organisation or only an agent id. Purges are rare and orgs few: 1024 of each suffice.
const SCOPE_STRIPES: usize = 1 << 10;

/// Picks generation stripes. foldhash rather than SipHash: several stripes are hashed on every agent
/// read, and a collision only costs a spurious miss, so flooding resistance buys nothing here.
const STRIPE_HASH: foldhash::fast::FixedState =
    foldhash::fast::FixedState::with_seed(0x6469_616c_6e65_7861);

/// Bookkeeping bytes per stored variant beyond its body, so `max_bytes` bounds real memory.
const VARIANT_OVERHEAD: usize = 160;

/// A header value the cache can keep without pinning memory. Values parsed by hyper are slices of
/// the connection's read buffer, so storing one as is keeps that whole buffer (8 KiB and more)
/// alive as long as the entry: with 100k cached agents that tripled RSS. The usual JSON type
/// costs nothing; anything else is copied to its own allocation.
pub(super) fn owned_header(value: &HeaderValue) -> HeaderValue {
    static JSON: HeaderValue = HeaderValue::from_static("application/json");
    if *value == JSON {
        return JSON.clone();
    }
    let mut copy = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
    copy.set_sensitive(value.is_sensitive());
    copy
}

/// One stored answer for one (family, query) variant of an agent.
pub struct Stored {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
    stored_at: Instant,
    generation: u64,
    /// The version of the agent it was filled under, when versions are handed in.
    version: Option<Arc<str>>,
    family: Family,
    query: Box<str>,
    spelling: Option<Box<str>>,
}

impl Stored {
    pub fn age(&self) -> Duration {
        self.stored_at.elapsed()
    }
}

/// All variants of one agent in one organisation: an invalidation is a single removal.
pub(super) struct AgentEntry {
    pub(super) variants: Vec<Arc<Stored>>,
}

impl AgentEntry {
    fn weight(&self, key: &AgentKey) -> u32 {
        let bytes: usize = key.org.len()
            + key.agent.len()
            + self
                .variants
                .iter()
                .map(|v| v.body.len() + v.query.len() + VARIANT_OVERHEAD)
                .sum::<usize>();
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

/// Where an agent's generation lives. The generation is the sum of three counters that only grow,
/// so it changes whenever any of them is bumped: the agent's own (writes, purge of org + agent),
/// its organisation's (purge of an org) and its id's in every org (purge of an agent id). A purge
/// by scope thus also stops fills in flight that it could not find by listing the entries.
#[derive(Clone, Copy)]
pub(super) struct Stripe {
    pub(super) agent: usize,
    pub(super) org: usize,
    pub(super) id: usize,
}

/// A read the cache could not answer fresh: what a fill needs to store its answer correctly.
#[derive(Clone)]
pub struct Ticket {
    pub(super) key: AgentKey,
    pub(super) family: Family,
    pub(super) query: Box<str>,
    pub(super) spelling: Option<Box<str>>,
    pub(super) stripe: Stripe,
    pub(super) generation: u64,
    /// The version this read was handed, which a fill is stored under.
    pub(super) version: Option<Arc<str>>,
    /// Whether a fill may store its answer: not while no current version vouches for it.
    pub(super) keep: bool,
    /// An expired variant still inside the stale-if-error window.
    pub(super) stale: Option<Arc<Stored>>,
    /// Whether the lookup found the agent at all. If not (the usual miss), the fill stores its
    /// variant without first reading the entry back to merge: a variant another fill of the same
    /// agent stored meanwhile may be replaced, which costs that variant one more miss, never a
    /// wrong answer, and saves a map lookup on every first read of an agent.
    pub(super) merge: bool,
}

pub enum Lookup {
    Fresh(Fresh),
    Miss(Ticket),
}

/// A fresh stored answer, as a lookup found it.
pub struct Fresh {
    pub stored: Arc<Stored>,
    pub ttl_left: Duration,
    /// As of the lookup; read once, the clock is not free.
    pub age: Duration,
}

pub struct AgentCache {
    pub(super) entries: moka::future::Cache<AgentKey, Arc<AgentEntry>, foldhash::fast::RandomState>,
    pub(super) generations: Box<[AtomicU64]>,
    pub(super) org_generations: Box<[AtomicU64]>,
    pub(super) id_generations: Box<[AtomicU64]>,
    pub(super) fills: FillLocks,
    /// Where a fill others wait on runs (see `fill`).
    pub(super) background: Background,
    pub(super) ttl: Duration,
    pub(super) stale_window: Duration,
    pub(super) max_entry_bytes: u64,
    pub(super) metrics: Arc<Metrics>,
}

impl AgentCache {
    pub fn new(settings: &CacheSettings, metrics: Arc<Metrics>) -> Self {
        let evictions = metrics.clone();
        let entries = moka::future::Cache::builder()
            .max_capacity(settings.max_bytes)
            .weigher(|k: &AgentKey, v: &Arc<AgentEntry>| v.weight(k))
            // Kept past freshness for the stale-if-error window; freshness is checked per variant.
            .time_to_live(settings.ttl + settings.stale_if_error)
            .eviction_listener(move |_k, _v, cause| {
                if matches!(cause, RemovalCause::Size | RemovalCause::Expired) {
                    evictions.cache_evictions.inc();
                }
            })
            // moka's default SipHash is a measurable part of a lookup; keys are per-process seeded anyway.
            .build_with_hasher(foldhash::fast::RandomState::default());
        Self {
            entries,
            generations: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            org_generations: (0..SCOPE_STRIPES).map(|_| AtomicU64::new(0)).collect(),
            id_generations: (0..SCOPE_STRIPES).map(|_| AtomicU64::new(0)).collect(),
            fills: FillLocks::default(),
            background: Background::default(),
            ttl: settings.ttl,
            stale_window: settings.stale_if_error,
            max_entry_bytes: settings.max_entry_bytes,
            metrics,
        }
    }

    /// Runs the fills others wait on in `background` (the gateway's, which shutdown ends) rather
    /// than in a home of their own.
    pub fn filling_in(mut self, background: &Background) -> Self {
        self.background = background.clone();
        self
    }

    pub fn max_entry_bytes(&self) -> u64 {
        self.max_entry_bytes
    }

    pub(super) fn stripe(org: &str, agent: &str) -> Stripe {
        Stripe {
            agent: (STRIPE_HASH.hash_one((org, agent)) as usize) % STRIPES,
            org: Self::scope_stripe(org),
            id: Self::scope_stripe(agent),
        }
    }

    pub(super) fn scope_stripe(name: &str) -> usize {
        (STRIPE_HASH.hash_one(name) as usize) % SCOPE_STRIPES
    }

    fn generation(&self, stripe: Stripe) -> u64 {
        self.generations[stripe.agent]
            .load(Ordering::SeqCst)
            .wrapping_add(self.org_generations[stripe.org].load(Ordering::SeqCst))
            .wrapping_add(self.id_generations[stripe.id].load(Ordering::SeqCst))
    }

    fn ticket(
        &self,
        org: &Arc<str>,
        family: Family,
        agent: &str,
        query: &str,
        version: &SharedVersion,
    ) -> Ticket {
        let key = AgentKey::new(org, agent);
        let stripe = Self::stripe(org, &key.agent);
        let (version, keep) = match version {
            SharedVersion::NotShared => (None, true),
            SharedVersion::Current(v) => (Some(v.clone()), true),
            SharedVersion::Writing(v) => (Some(v.clone()), false),
            SharedVersion::Unavailable => (None, false),
        };
        Ticket {
            key,
            family,
            query: query.into(),
            spelling: spelling(agent),
            stripe,
            generation: self.generation(stripe),
            version,
            keep,
            stale: None,
            // A refresh skips the lookup: merge, so the agent's other variants stay.
            merge: true,
        }
    }

    /// A ticket that skips the lookup (client `no-cache`): the fill refreshes the entry.
    pub fn refresh_ticket(
        &self,
        org: &Arc<str>,
        family: Family,
        agent: &str,
        query: &str,
        version: &SharedVersion,
    ) -> Ticket {
        self.ticket(org, family, agent, query, version)
    }

    /// A fresh stored answer for this variant, or the ticket to fill it. When versions are handed
    /// in, only one filled under the current `version` is served; without one, nothing is.
    pub async fn lookup(
        &self,
        org: &Arc<str>,
        family: Family,
        agent: &str,
        query: &str,
        version: &SharedVersion,
    ) -> Lookup {
        let mut ticket = self.ticket(org, family, agent, query, version);
        if !ticket.keep {
            return Lookup::Miss(ticket);
        }
        let entry = self.entries.get(&ticket.key).await;
        ticket.merge = entry.is_some();
        if let Some(entry) = entry {
            let found = entry.variants.iter().find(|v| {
                v.family == family
                    && *v.query == *query
                    && v.spelling == ticket.spelling
                    && v.generation == ticket.generation
                    && v.version == ticket.version
            });
            if let Some(v) = found {
                let age = v.age();
                if age < self.ttl {
                    self.metrics.cache_hits.inc();
                    return Lookup::Fresh(Fresh {
                        stored: v.clone(),
                        ttl_left: self.ttl - age,
                        age,
                    });
                }
                if age < self.ttl + self.stale_window {
                    ticket.stale = Some(v.clone());
                }
            }
        }
        Lookup::Miss(ticket)
    }

    /// The expired copy to serve instead of an upstream failure, if the agent was not invalidated
    /// meanwhile and the copy is still inside the stale-if-error window.
    pub fn stale_for(&self, ticket: &Ticket) -> Option<Arc<Stored>> {
        let stale = ticket.stale.as_ref()?;
        let usable = self.generation(ticket.stripe) == stale.generation
            && stale.age() < self.ttl + self.stale_window;
        usable.then(|| {
            self.metrics.cache_stale.inc();
            stale.clone()
        })
    }

    pub(super) async fn store(&self, ticket: &Ticket, answer: &Buffered) {
        if !ticket.keep
            || answer.status != StatusCode::OK
            || upstream_forbids_store(&answer.headers)
            || answer.body.len() as u64 > self.max_entry_bytes
            || self.generation(ticket.stripe) != ticket.generation
        {
            return;
        }
        let stored = Arc::new(Stored {
            status: answer.status,
            content_type: answer.headers.get(header::CONTENT_TYPE).map(owned_header),
            body: answer.body.clone(),
            stored_at: Instant::now(),
            generation: ticket.generation,
            version: ticket.version.clone(),
            family: ticket.family,
            query: ticket.query.clone(),
            spelling: ticket.spelling.clone(),
        });
        let horizon = self.ttl + self.stale_window;
        let existing = if ticket.merge {
            self.entries.get(&ticket.key).await
        } else {
            None
        };
        let mut variants: Vec<Arc<Stored>> = match existing {
            Some(entry) => entry
                .variants
                .iter()
                // Other variants of the same generation that are still worth keeping.
                .filter(|v| {
                    v.generation == ticket.generation
                        && v.version == ticket.version
                        && !(v.family == ticket.family
                            && v.query == ticket.query
                            && v.spelling == ticket.spelling)
                        && v.age() < horizon
                })
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        variants.push(stored);
        self.entries
            .insert(ticket.key.clone(), Arc::new(AgentEntry { variants }))
            .await;
        // An invalidation that raced this insert has already made the entry unservable; drop it
        // now rather than let it hold memory until it expires.
        if self.generation(ticket.stripe) != ticket.generation {
            self.entries.invalidate(&ticket.key).await;
        }
    }

    /// Brings the byte and entry gauges up to date (called before `/metrics` is rendered).
    pub async fn refresh_gauges(&self) {
        self.entries.run_pending_tasks().await;
        self.metrics
            .cache_bytes
            .set(self.entries.weighted_size() as i64);
        self.metrics
            .cache_entries
            .set(self.entries.entry_count() as i64);
    }
}
