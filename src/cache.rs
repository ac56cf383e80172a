//! Steps 4 and 5: the org-scoped agent cache. Reads of `/{agents2|agents}/{id}` are served from
//! moka, concurrent misses share one upstream fetch, and writes invalidate every variant.
//!
//! Correctness rests on per-agent *generations*: every invalidation bumps the generation of the
//! agent's stripe before removing its entries. A fill remembers the generation it started under and
//! stores its answer tagged with it; lookups only serve variants whose tag is still current, and
//! in-flight fills are coalesced per (variant, generation). So a fill that began before a write is
//! never served after it, and a read that arrives after a write never joins an older fill.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use moka::notification::RemovalCause;
use tokio::sync::{oneshot, watch};

use crate::body::ProxyBody;
use crate::settings::CacheSettings;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::route::Family;
use crate::upstream::{Buffered, CacheFetch};

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

/// How the cache took part in answering a read; the `X-Cache` header and the audit `cache` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Miss,
    Bypass,
    Stale,
}

impl CacheOutcome {
    /// The audit line's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Bypass => "bypass",
            Self::Stale => "stale",
        }
    }

    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Self::Hit => "HIT",
            Self::Miss => "MISS",
            Self::Bypass => "BYPASS",
            Self::Stale => "STALE",
        })
    }
}

/// What the client's `Cache-Control` asks of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientDirective {
    /// Use the cache normally.
    Normal,
    /// `no-cache` (or `max-age=0`, `Pragma: no-cache`): fetch fresh and refresh the entry.
    Refresh,
    /// `no-store`: neither read nor write the cache.
    Bypass,
}

pub fn client_directive(headers: &HeaderMap) -> ClientDirective {
    let mut refresh = false;
    for value in headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        for token in value.split(',').map(|t| t.trim().to_ascii_lowercase()) {
            match token.as_str() {
                "no-store" => return ClientDirective::Bypass,
                "no-cache" | "max-age=0" => refresh = true,
                _ => {}
            }
        }
    }
    let pragma_no_cache = headers
        .get(header::PRAGMA)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("no-cache"));
    if refresh || pragma_no_cache {
        ClientDirective::Refresh
    } else {
        ClientDirective::Normal
    }
}

/// A header value the cache can keep without pinning memory. Values parsed by hyper are slices of
/// the connection's read buffer, so storing one as is keeps that whole buffer (8 KiB and more)
/// alive as long as the entry: with 100k cached agents that tripled RSS. The usual JSON type
/// costs nothing; anything else is copied to its own allocation.
fn owned_header(value: &HeaderValue) -> HeaderValue {
    static JSON: HeaderValue = HeaderValue::from_static("application/json");
    if *value == JSON {
        return JSON.clone();
    }
    let mut copy = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
    copy.set_sensitive(value.is_sensitive());
    copy
}

/// Upstream forbids storing: `no-store` (and `no-cache`, which would need revalidation we do not do).
/// `private` does not: the cache is per organisation. A compressed body is not stored either: fills
/// ask for identity, the cache keeps bodies uncompressed, and an upstream that compresses anyway
/// would have its encoding replayed to clients that never accepted it.
/// An answer made for the request that asked and no other (DESIGN, cache rules): it sets a cookie,
/// or says with `Vary` that it depends on request headers a fill does not send (only
/// `Accept-Encoding`, which a fill pins to `identity`, is harmless). Neither stored nor handed to
/// the requests that waited on it.
pub fn is_personal(headers: &HeaderMap) -> bool {
    headers.contains_key(header::SET_COOKIE)
        || headers
            .get_all(header::VARY)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .any(|name| !name.is_empty() && !name.eq_ignore_ascii_case(b"accept-encoding"))
}

fn upstream_forbids_store(headers: &HeaderMap) -> bool {
    let encoded = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    encoded
        || headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| {
                let t = t.trim();
                t.eq_ignore_ascii_case("no-store") || t.eq_ignore_ascii_case("no-cache")
            })
}

/// An agent of one organisation. The id is case-folded: an upstream that reads ids without regard
/// to case (UUIDs usually are) must not let a write through `ABC` leave `abc` cached. Reads of
/// different spellings are still kept apart (see [`Stored::spelling`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct AgentKey {
    org: Arc<str>,
    agent: Box<str>,
}

impl AgentKey {
    fn new(org: &Arc<str>, agent: &str) -> Self {
        Self {
            org: org.clone(),
            agent: fold_case(agent).into(),
        }
    }
}

fn fold_case(id: &str) -> Cow<'_, str> {
    if id.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(id.to_ascii_lowercase())
    } else {
        Cow::Borrowed(id)
    }
}

/// The id as the request spelled it when that differs from the folded key; `None` (no allocation)
/// for the usual all-lower-case id.
fn spelling(id: &str) -> Option<Box<str>> {
    id.bytes()
        .any(|b| b.is_ascii_uppercase())
        .then(|| id.into())
}

/// One stored answer for one (family, query) variant of an agent.
pub struct Stored {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
    stored_at: Instant,
    generation: u64,
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
struct AgentEntry {
    variants: Vec<Arc<Stored>>,
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
struct Stripe {
    agent: usize,
    org: usize,
    id: usize,
}

/// A read the cache could not answer fresh: what a fill needs to store its answer correctly.
#[derive(Clone)]
pub struct Ticket {
    key: AgentKey,
    family: Family,
    query: Box<str>,
    spelling: Option<Box<str>>,
    stripe: Stripe,
    generation: u64,
    /// An expired variant still inside the stale-if-error window.
    stale: Option<Arc<Stored>>,
    /// Whether the lookup found the agent at all. If not (the usual miss), the fill stores its
    /// variant without first reading the entry back to merge: a variant another fill of the same
    /// agent stored meanwhile may be replaced, which costs that variant one more miss, never a
    /// wrong answer, and saves a map lookup on every first read of an agent.
    merge: bool,
}

pub enum Lookup {
    Fresh {
        stored: Arc<Stored>,
        ttl_left: Duration,
        /// As of the lookup; read once, the clock is not free.
        age: Duration,
    },
    Miss(Ticket),
}

/// What a fill produced for this request.
pub enum FillOutcome {
    /// A whole upstream answer to this request's own fetch.
    Answer(Arc<Buffered>),
    /// A whole upstream answer to a fetch another request started and this one waited on: it is
    /// served as a hit would be, with the stored status, `Content-Type` and body only.
    Joined(Arc<Buffered>),
    /// Too large to cache; this request streams it.
    Streaming(Response<ProxyBody>),
    Failed(GatewayError),
}

/// What the leader of a fill publishes to the requests waiting on it.
#[derive(Clone)]
enum Shared {
    Answer(Arc<Buffered>),
    Failed(GatewayError),
    /// The answer could not be shared (too large): fetch your own.
    FetchYourself,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct FillKey {
    key: AgentKey,
    family: Family,
    query: Box<str>,
    spelling: Option<Box<str>>,
    generation: u64,
}

type Inflight =
    Mutex<HashMap<FillKey, watch::Receiver<Option<Shared>>, foldhash::fast::RandomState>>;

/// Removes the leader's in-flight entry however the leader ends (answered, failed or cancelled).
struct InflightGuard<'a> {
    inflight: &'a Inflight,
    key: FillKey,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut map) = self.inflight.lock() {
            map.remove(&self.key);
        }
    }
}

pub struct AgentCache {
    entries: moka::future::Cache<AgentKey, Arc<AgentEntry>, foldhash::fast::RandomState>,
    generations: Box<[AtomicU64]>,
    org_generations: Box<[AtomicU64]>,
    id_generations: Box<[AtomicU64]>,
    inflight: Inflight,
    ttl: Duration,
    stale_window: Duration,
    max_entry_bytes: u64,
    metrics: Arc<Metrics>,
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
            inflight: Mutex::new(HashMap::default()),
            ttl: settings.ttl,
            stale_window: settings.stale_if_error,
            max_entry_bytes: settings.max_entry_bytes,
            metrics,
        }
    }

    pub fn max_entry_bytes(&self) -> u64 {
        self.max_entry_bytes
    }

    fn stripe(org: &str, agent: &str) -> Stripe {
        Stripe {
            agent: (STRIPE_HASH.hash_one((org, agent)) as usize) % STRIPES,
            org: Self::scope_stripe(org),
            id: Self::scope_stripe(agent),
        }
    }

    fn scope_stripe(name: &str) -> usize {
        (STRIPE_HASH.hash_one(name) as usize) % SCOPE_STRIPES
    }

    fn generation(&self, stripe: Stripe) -> u64 {
        self.generations[stripe.agent]
            .load(Ordering::SeqCst)
            .wrapping_add(self.org_generations[stripe.org].load(Ordering::SeqCst))
            .wrapping_add(self.id_generations[stripe.id].load(Ordering::SeqCst))
    }

    fn ticket(&self, org: &Arc<str>, family: Family, agent: &str, query: &str) -> Ticket {
        let key = AgentKey::new(org, agent);
        let stripe = Self::stripe(org, &key.agent);
        Ticket {
            key,
            family,
            query: query.into(),
            spelling: spelling(agent),
            stripe,
            generation: self.generation(stripe),
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
    ) -> Ticket {
        self.ticket(org, family, agent, query)
    }

    pub async fn lookup(&self, org: &Arc<str>, family: Family, agent: &str, query: &str) -> Lookup {
        let mut ticket = self.ticket(org, family, agent, query);
        let entry = self.entries.get(&ticket.key).await;
        ticket.merge = entry.is_some();
        if let Some(entry) = entry {
            let found = entry.variants.iter().find(|v| {
                v.family == family
                    && *v.query == *query
                    && v.spelling == ticket.spelling
                    && v.generation == ticket.generation
            });
            if let Some(v) = found {
                let age = v.age();
                if age < self.ttl {
                    self.metrics.cache_hits.inc();
                    return Lookup::Fresh {
                        stored: v.clone(),
                        ttl_left: self.ttl - age,
                        age,
                    };
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

    /// Fetches through `fetch`, sharing one upstream request between concurrent misses of the same
    /// variant and generation when `coalesce` is set, and stores a cacheable answer.
    pub async fn fill<F, Fut>(
        self: &Arc<Self>,
        ticket: &Ticket,
        coalesce: bool,
        fetch: F,
    ) -> FillOutcome
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<CacheFetch, GatewayError>> + Send + 'static,
    {
        self.metrics.cache_misses.inc();
        if !coalesce {
            return self.lead(ticket, fetch, None).await;
        }
        let fill_key = FillKey {
            key: ticket.key.clone(),
            family: ticket.family,
            query: ticket.query.clone(),
            spelling: ticket.spelling.clone(),
            generation: ticket.generation,
        };
        loop {
            let (joined, leader) = {
                let Ok(mut map) = self.inflight.lock() else {
                    return self.lead(ticket, fetch, None).await;
                };
                match map.get(&fill_key) {
                    Some(rx) => (Some(rx.clone()), None),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        map.insert(fill_key.clone(), rx);
                        (None, Some(tx))
                    }
                }
            };
            if let Some(tx) = leader {
                return self.lead_shared(ticket, fill_key, fetch, tx).await;
            }
            let Some(mut rx) = joined else { continue };
            self.metrics.cache_coalesced.inc();
            let shared = match rx.wait_for(Option::is_some).await {
                Ok(v) => v.clone(),
                // The leader was cancelled (its client went away): try again, maybe as the leader.
                Err(_) => continue,
            };
            return match shared {
                Some(Shared::Answer(a)) => FillOutcome::Joined(a),
                Some(Shared::Failed(e)) => FillOutcome::Failed(e),
                Some(Shared::FetchYourself) | None => self.lead(ticket, fetch, None).await,
            };
        }
    }

    /// Runs a fill that others wait on in a task of its own: the fetch belongs to every request
    /// sharing it, so the client that started it going away must not cancel it (NGINX likewise
    /// keeps reading a cacheable answer after its client aborts). The answer is still cached and
    /// the waiters get it from this one upstream request.
    async fn lead_shared<F, Fut>(
        self: &Arc<Self>,
        ticket: &Ticket,
        fill_key: FillKey,
        fetch: F,
        publish: watch::Sender<Option<Shared>>,
    ) -> FillOutcome
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<CacheFetch, GatewayError>> + Send + 'static,
    {
        let cache = Arc::clone(self);
        let ticket = ticket.clone();
        let (done, outcome) = oneshot::channel();
        tokio::spawn(async move {
            let _guard = InflightGuard {
                inflight: &cache.inflight,
                key: fill_key,
            };
            // No one to hand it to when the client left; a too-large answer's stream is dropped.
            let _ = done.send(cache.lead(&ticket, fetch, Some(publish)).await);
        });
        // Only a panic in the fetch loses the outcome; its waiters fetch again themselves.
        outcome
            .await
            .unwrap_or(FillOutcome::Failed(GatewayError::UpstreamUnreachable))
    }

    async fn lead<F, Fut>(
        &self,
        ticket: &Ticket,
        fetch: F,
        publish: Option<watch::Sender<Option<Shared>>>,
    ) -> FillOutcome
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<CacheFetch, GatewayError>>,
    {
        let (outcome, shared) = match fetch().await {
            Ok(CacheFetch::Buffered(answer)) if is_personal(&answer.headers) => {
                let answer = Arc::new(answer);
                (FillOutcome::Answer(answer), Shared::FetchYourself)
            }
            Ok(CacheFetch::Buffered(answer)) => {
                let answer = Arc::new(answer);
                // Stored before it is published, so a read that finds no fill in flight finds the entry.
                self.store(ticket, &answer).await;
                (FillOutcome::Answer(answer.clone()), Shared::Answer(answer))
            }
            Ok(CacheFetch::TooLarge(resp)) => (FillOutcome::Streaming(resp), Shared::FetchYourself),
            Err(e) => (FillOutcome::Failed(e.clone()), Shared::Failed(e)),
        };
        if let Some(tx) = publish {
            let _ = tx.send(Some(shared));
        }
        outcome
    }

    async fn store(&self, ticket: &Ticket, answer: &Buffered) {
        if answer.status != StatusCode::OK
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

    /// Drops every variant of `agent` in `org`. Returns how many variants were dropped.
    pub async fn invalidate(&self, org: &Arc<str>, agent: &str) -> u64 {
        let key = AgentKey::new(org, agent);
        let stripe = Self::stripe(org, &key.agent);
        // Bump first: from this instant no stored variant or in-flight fill of the agent is served.
        self.generations[stripe.agent].fetch_add(1, Ordering::SeqCst);
        self.metrics.cache_invalidations.inc();
        match self.entries.remove(&key).await {
            Some(entry) => entry.variants.len() as u64,
            None => 0,
        }
    }

    /// Admin purge: by organisation and/or agent, or everything. Returns variants dropped.
    pub async fn purge(&self, org: Option<&str>, agent: Option<&str>) -> u64 {
        if let (Some(org), Some(agent)) = (org, agent) {
            return self.invalidate(&Arc::from(org), agent).await;
        }
        let agent = agent.map(fold_case);
        let agent = agent.as_deref();
        // Bump first, as `invalidate` does: listing the entries cannot find fills still in flight,
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
            // `map_or(true, ..)`, not `is_none_or`: that is Rust 1.82 and our MSRV is 1.80.
            .filter(|(k, _)| {
                org.map_or(true, |o| &*k.org == o) && agent.map_or(true, |a| &*k.agent == a)
            })
            .map(|(k, v)| (k, v.variants.len()))
            .collect();
        let mut dropped = 0;
        for (key, variants) in matching {
            if self.entries.remove(&*key).await.is_some() {
                dropped += variants as u64;
            }
        }
        self.metrics.cache_invalidations.inc();
        dropped
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

#[cfg(test)]
mod tests {
    #[test]
    fn answers_that_set_cookies_or_vary_on_request_headers_are_personal() {
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, HeaderValue::from_static(v));
            }
            is_personal(&h)
        };
        assert!(!with(&[("content-type", "application/json")]));
        assert!(!with(&[("vary", "Accept-Encoding")]));
        assert!(!with(&[("vary", "accept-encoding, ")]));
        assert!(with(&[("vary", "Accept-Encoding, Accept-Language")]));
        assert!(with(&[("vary", "accept-encoding"), ("vary", "Cookie")]));
        assert!(with(&[("vary", "*")]));
        assert!(with(&[("set-cookie", "session=1")]));
    }

    use super::*;

    fn settings() -> CacheSettings {
        CacheSettings {
            enabled: true,
            ttl: Duration::from_secs(60),
            max_bytes: 1 << 20,
            max_entry_bytes: 1 << 16,
            stale_if_error: Duration::from_secs(300),
        }
    }

    fn ok(body: &'static str) -> Result<CacheFetch, GatewayError> {
        Ok(CacheFetch::Buffered(Buffered {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from_static(body.as_bytes()),
        }))
    }

    #[test]
    fn client_directives() {
        let mut h = HeaderMap::new();
        assert_eq!(client_directive(&h), ClientDirective::Normal);
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=0"));
        assert_eq!(client_directive(&h), ClientDirective::Refresh);
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("No-Cache, no-store"),
        );
        assert_eq!(client_directive(&h), ClientDirective::Bypass);
    }

    #[tokio::test]
    async fn fill_that_started_before_an_invalidation_is_not_served() {
        let cache = Arc::new(AgentCache::new(&settings(), Arc::new(Metrics::new())));
        let org: Arc<str> = Arc::from("acme");
        let Lookup::Miss(ticket) = cache.lookup(&org, Family::Agents2, "a1", "").await else {
            panic!()
        };
        // The write lands while the fill is in flight.
        cache.invalidate(&org, "a1").await;
        assert!(matches!(
            cache.fill(&ticket, true, || async { ok("old") }).await,
            FillOutcome::Answer(_)
        ));
        assert!(matches!(
            cache.lookup(&org, Family::Agents2, "a1", "").await,
            Lookup::Miss(_)
        ));
    }

    #[tokio::test]
    async fn orgs_never_share_and_families_are_invalidated_together() {
        let cache = Arc::new(AgentCache::new(&settings(), Arc::new(Metrics::new())));
        let (acme, other): (Arc<str>, Arc<str>) = (Arc::from("acme"), Arc::from("other"));
        for family in [Family::Agents2, Family::Agents] {
            let Lookup::Miss(t) = cache.lookup(&acme, family, "a1", "").await else {
                panic!()
            };
            cache.fill(&t, true, || async { ok("{}") }).await;
        }
        assert!(matches!(
            cache.lookup(&acme, Family::Agents, "a1", "").await,
            Lookup::Fresh { .. }
        ));
        assert!(matches!(
            cache.lookup(&other, Family::Agents, "a1", "").await,
            Lookup::Miss(_)
        ));
        assert_eq!(cache.invalidate(&acme, "a1").await, 2);
        assert!(matches!(
            cache.lookup(&acme, Family::Agents2, "a1", "").await,
            Lookup::Miss(_)
        ));
    }

    #[tokio::test]
    async fn spellings_are_cached_apart_and_invalidated_together() {
        let cache = Arc::new(AgentCache::new(&settings(), Arc::new(Metrics::new())));
        let org: Arc<str> = Arc::from("acme");
        for (id, body) in [("abc", "lower"), ("ABC", "upper")] {
            let Lookup::Miss(t) = cache.lookup(&org, Family::Agents, id, "").await else {
                panic!()
            };
            cache.fill(&t, true, || async { ok(body) }).await;
        }
        for (id, body) in [("abc", "lower"), ("ABC", "upper")] {
            let Lookup::Fresh { stored, .. } = cache.lookup(&org, Family::Agents, id, "").await
            else {
                panic!("{id} should be cached")
            };
            assert_eq!(stored.body, body);
        }
        assert_eq!(cache.invalidate(&org, "Abc").await, 2);
        for id in ["abc", "ABC"] {
            assert!(matches!(
                cache.lookup(&org, Family::Agents, id, "").await,
                Lookup::Miss(_)
            ));
        }
    }

    #[tokio::test]
    async fn no_store_and_non_200_answers_are_not_stored() {
        let cache = Arc::new(AgentCache::new(&settings(), Arc::new(Metrics::new())));
        let org: Arc<str> = Arc::from("acme");
        let Lookup::Miss(t) = cache.lookup(&org, Family::Agents2, "a1", "").await else {
            panic!()
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, no-store"),
        );
        cache
            .fill(&t, true, || async {
                Ok(CacheFetch::Buffered(Buffered {
                    status: StatusCode::OK,
                    headers,
                    body: Bytes::from_static(b"x"),
                }))
            })
            .await;
        assert!(matches!(
            cache.lookup(&org, Family::Agents2, "a1", "").await,
            Lookup::Miss(_)
        ));
        cache
            .fill(&t, true, || async {
                Ok(CacheFetch::Buffered(Buffered {
                    status: StatusCode::NOT_FOUND,
                    headers: HeaderMap::new(),
                    body: Bytes::new(),
                }))
            })
            .await;
        assert!(matches!(
            cache.lookup(&org, Family::Agents2, "a1", "").await,
            Lookup::Miss(_)
        ));
    }

    #[tokio::test]
    async fn purge_by_org_or_by_agent_id_also_drops_fills_in_flight() {
        let cache = Arc::new(AgentCache::new(&settings(), Arc::new(Metrics::new())));
        let org: Arc<str> = Arc::from("acme");
        for (agent, scope_org, scope_agent) in
            [("a1", Some("acme"), None), ("a2", None, Some("a2"))]
        {
            let Lookup::Miss(ticket) = cache.lookup(&org, Family::Agents2, agent, "").await else {
                panic!()
            };
            // Nothing is cached yet, so only the generation can stop this fill.
            assert_eq!(cache.purge(scope_org, scope_agent).await, 0);
            cache.fill(&ticket, true, || async { ok("old") }).await;
            assert!(matches!(
                cache.lookup(&org, Family::Agents2, agent, "").await,
                Lookup::Miss(_)
            ));
        }
    }

    /// Yields to the other tasks until `done` holds; a current-thread runtime runs them in between.
    async fn until(done: impl Fn() -> bool) {
        while !done() {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_shared_fill_outlives_the_request_that_started_it() {
        let cache = Arc::new(AgentCache::new(&settings(), Arc::new(Metrics::new())));
        let org: Arc<str> = Arc::from("acme");
        let Lookup::Miss(ticket) = cache.lookup(&org, Family::Agents2, "a1", "").await else {
            panic!()
        };
        let fetches = Arc::new(AtomicU64::new(0));
        let (release, released) = oneshot::channel::<()>();
        let leader = {
            let (cache, ticket, fetches) = (cache.clone(), ticket.clone(), fetches.clone());
            tokio::spawn(async move {
                let fetch = move || async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    let _ = released.await;
                    ok("v1")
                };
                cache.fill(&ticket, true, fetch).await
            })
        };
        until(|| fetches.load(Ordering::SeqCst) == 1).await;
        let waiter = {
            let (cache, ticket, fetches) = (cache.clone(), ticket.clone(), fetches.clone());
            tokio::spawn(async move {
                let fetch = move || async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    ok("v2")
                };
                cache.fill(&ticket, true, fetch).await
            })
        };
        until(|| cache.metrics.cache_coalesced.get() == 1).await;

        // The client that started the fill goes away (hyper drops its request future).
        leader.abort();
        assert!(matches!(leader.await, Err(e) if e.is_cancelled()));
        release.send(()).unwrap();

        let FillOutcome::Joined(answer) = waiter.await.unwrap() else {
            panic!("the waiter got no answer")
        };
        assert_eq!(answer.body, "v1");
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        assert!(matches!(
            cache.lookup(&org, Family::Agents2, "a1", "").await,
            Lookup::Fresh { .. }
        ));
    }
}
