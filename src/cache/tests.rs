//! The cache's races and rules, each forced deterministically.

use super::*;
use crate::cache::store::{AgentCache, Lookup};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::route::Family;
use crate::settings::CacheSettings;
use crate::upstream::{Buffered, CacheFetch};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

const NOT_SHARED: SharedVersion = SharedVersion::NotShared;

fn agent_scope(org: &Arc<str>, agent: &str) -> Scope {
    Scope::Agent {
        org: org.clone(),
        agent: agent.to_owned(),
    }
}

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
    let Lookup::Miss(ticket) = cache
        .lookup(&org, Family::Agents2, "a1", "", &NOT_SHARED)
        .await
    else {
        panic!()
    };
    // The write lands while the fill is in flight.
    cache.invalidate(&agent_scope(&org, "a1")).await;
    assert!(matches!(
        cache.fill(&ticket, true, || async { ok("old") }).await,
        FillOutcome::Filled(_)
    ));
    assert!(matches!(
        cache
            .lookup(&org, Family::Agents2, "a1", "", &NOT_SHARED)
            .await,
        Lookup::Miss(_)
    ));
}

#[tokio::test]
async fn orgs_never_share_and_families_are_invalidated_together() {
    let cache = Arc::new(AgentCache::new(&settings(), Arc::new(Metrics::new())));
    let (acme, other): (Arc<str>, Arc<str>) = (Arc::from("acme"), Arc::from("other"));
    for family in [Family::Agents2, Family::Agents] {
        let Lookup::Miss(t) = cache.lookup(&acme, family, "a1", "", &NOT_SHARED).await else {
            panic!()
        };
        cache.fill(&t, true, || async { ok("{}") }).await;
    }
    assert!(matches!(
        cache
            .lookup(&acme, Family::Agents, "a1", "", &NOT_SHARED)
            .await,
        Lookup::Fresh(_)
    ));
    assert!(matches!(
        cache
            .lookup(&other, Family::Agents, "a1", "", &NOT_SHARED)
            .await,
        Lookup::Miss(_)
    ));
    assert_eq!(cache.invalidate(&agent_scope(&acme, "a1")).await, 2);
    assert!(matches!(
        cache
            .lookup(&acme, Family::Agents2, "a1", "", &NOT_SHARED)
            .await,
        Lookup::Miss(_)
    ));
}

#[tokio::test]
async fn spellings_are_cached_apart_and_invalidated_together() {
    let cache = Arc::new(AgentCache::new(&settings(), Arc::new(Metrics::new())));
    let org: Arc<str> = Arc::from("acme");
    for (id, body) in [("abc", "lower"), ("ABC", "upper")] {
        let Lookup::Miss(t) = cache
            .lookup(&org, Family::Agents, id, "", &NOT_SHARED)
            .await
        else {
            panic!()
        };
        cache.fill(&t, true, || async { ok(body) }).await;
    }
    for (id, body) in [("abc", "lower"), ("ABC", "upper")] {
        let Lookup::Fresh(Fresh { stored, .. }) = cache
            .lookup(&org, Family::Agents, id, "", &NOT_SHARED)
            .await
        else {
            panic!("{id} should be cached")
        };
        assert_eq!(stored.body, body);
    }
    assert_eq!(cache.invalidate(&agent_scope(&org, "Abc")).await, 2);
    for id in ["abc", "ABC"] {
        assert!(matches!(
            cache
                .lookup(&org, Family::Agents, id, "", &NOT_SHARED)
                .await,
            Lookup::Miss(_)
        ));
    }
}

#[tokio::test]
async fn no_store_and_non_200_answers_are_not_stored() {
    let cache = Arc::new(AgentCache::new(&settings(), Arc::new(Metrics::new())));
    let org: Arc<str> = Arc::from("acme");
    let Lookup::Miss(t) = cache
        .lookup(&org, Family::Agents2, "a1", "", &NOT_SHARED)
        .await
    else {
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
        cache
            .lookup(&org, Family::Agents2, "a1", "", &NOT_SHARED)
            .await,
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
        cache
            .lookup(&org, Family::Agents2, "a1", "", &NOT_SHARED)
            .await,
        Lookup::Miss(_)
    ));
}

#[tokio::test]
async fn purge_by_org_or_by_agent_id_also_drops_fills_in_flight() {
    let cache = Arc::new(AgentCache::new(&settings(), Arc::new(Metrics::new())));
    let org: Arc<str> = Arc::from("acme");
    for (agent, scope_org, scope_agent) in [("a1", Some("acme"), None), ("a2", None, Some("a2"))] {
        let Lookup::Miss(ticket) = cache
            .lookup(&org, Family::Agents2, agent, "", &NOT_SHARED)
            .await
        else {
            panic!()
        };
        // Nothing is cached yet, so only the generation can stop this fill.
        assert_eq!(
            cache
                .invalidate(&Scope::of_purge(scope_org, scope_agent))
                .await,
            0
        );
        cache.fill(&ticket, true, || async { ok("old") }).await;
        assert!(matches!(
            cache
                .lookup(&org, Family::Agents2, agent, "", &NOT_SHARED)
                .await,
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
    let Lookup::Miss(ticket) = cache
        .lookup(&org, Family::Agents2, "a1", "", &NOT_SHARED)
        .await
    else {
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
        cache
            .lookup(&org, Family::Agents2, "a1", "", &NOT_SHARED)
            .await,
        Lookup::Fresh(_)
    ));
}

#[tokio::test]
async fn a_waiter_whose_leader_died_leads_the_fill_again() {
    let cache = Arc::new(AgentCache::new(&settings(), Arc::new(Metrics::new())));
    let org: Arc<str> = Arc::from("acme");
    let Lookup::Miss(ticket) = cache
        .lookup(&org, Family::Agents2, "a1", "", &NOT_SHARED)
        .await
    else {
        panic!()
    };
    let (release, released) = oneshot::channel::<()>();
    let leader = {
        let (cache, ticket) = (cache.clone(), ticket.clone());
        tokio::spawn(async move {
            let fetch = move || async move {
                let _ = released.await;
                panic!("the leader's fetch dies");
            };
            cache.fill(&ticket, true, fetch).await
        })
    };
    until(|| cache.metrics.cache_misses.get() == 1).await;
    let waiter = {
        let (cache, ticket) = (cache.clone(), ticket.clone());
        tokio::spawn(async move { cache.fill(&ticket, true, || async { ok("v2") }).await })
    };
    until(|| cache.metrics.cache_coalesced.get() == 1).await;
    release.send(()).unwrap();

    // The leader's own request has no answer to give; its waiter fetched in its place.
    assert!(matches!(
        leader.await.unwrap(),
        FillOutcome::Failed(GatewayError::UpstreamUnreachable)
    ));
    let FillOutcome::Filled(answer) = waiter.await.unwrap() else {
        panic!("the waiter did not lead the fill again")
    };
    assert_eq!(answer.body, "v2");
}
