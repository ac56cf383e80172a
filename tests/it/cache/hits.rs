//! Hits: a repeat GET is served from the cache with `Age` and `Cache-Status`, with this request's
//! own id and quota headers; teams of one organisation share entries, other organisations never do.

use super::*;

#[tokio::test]
async fn repeat_get_is_a_hit_served_without_calling_upstream() {
    let (upstream, gw) = setup().await;
    let c = gw.client();
    let first = c.get("/v1/agents2/a1", BILLING).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.x_cache(), "MISS");
    let status = first.header("cache-status").unwrap();
    assert!(
        status.starts_with("dialnexa-gateway;") && status.contains("fwd=miss"),
        "{status}"
    );
    assert!(first.header("age").is_none());

    let second = c.get("/v1/agents2/a1", BILLING).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.x_cache(), "HIT");
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("content-type"), Some("application/json"));
    let age: u64 = second
        .header("age")
        .expect("a hit carries Age")
        .parse()
        .unwrap();
    assert!(age <= 60, "Age {age} is past the TTL");
    let status = second.header("cache-status").unwrap();
    assert!(status.starts_with("dialnexa-gateway;"), "{status}");
    assert!(status.split(';').any(|p| p.trim() == "hit"), "{status}");
    assert!(status.contains("ttl="), "{status}");
    assert_eq!(upstream.count(&Method::GET, "/v1/agents2/a1"), 1);
}

#[tokio::test]
async fn a_hit_carries_this_requests_id_and_quota_but_not_upstreams_rate_limit_headers() {
    // One request a minute earned back: the remaining count only goes down during the test.
    let (upstream, gw) = setup_with(|config| config.team_quota("billing", 1, 10)).await;
    let c = gw.client();
    let miss = get_with(
        &c,
        "/v1/agents2/a1",
        BILLING,
        &[("x-request-id", "req-first")],
    )
    .await;
    assert_eq!(miss.x_cache(), "MISS");
    assert_eq!(miss.header("x-request-id"), Some("req-first"));
    assert_eq!(miss.header("ratelimit-remaining"), Some("9"));
    // Upstream's own quota passes through on the answer that came from upstream...
    assert_eq!(miss.header("x-ratelimit-remaining"), Some("998"));

    let hit = get_with(
        &c,
        "/v1/agents2/a1",
        BILLING,
        &[("x-request-id", "req-second")],
    )
    .await;
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(hit.header("x-request-id"), Some("req-second"));
    assert_eq!(hit.header("ratelimit-limit"), Some("10"));
    assert_eq!(hit.header("ratelimit-remaining"), Some("8"));
    assert!(hit.header("ratelimit-reset").is_some());
    assert!(hit.header("ratelimit-policy").is_some());
    let current = hit.header("ratelimit").unwrap();
    assert!(current.contains("r=8"), "{current}");
    // ...but is not replayed from the cache: it described the org's quota at fill time.
    assert!(hit.header("x-ratelimit-remaining").is_none());

    // Generated ids are per request too.
    let a = c.get("/v1/agents2/a1", BILLING).await;
    let b = c.get("/v1/agents2/a1", BILLING).await;
    assert_eq!((a.x_cache(), b.x_cache()), ("HIT", "HIT"));
    let (ida, idb) = (a.header("x-request-id"), b.header("x-request-id"));
    assert!(ida.is_some() && ida != idb && ida != Some("req-second"));
    assert_eq!(upstream.count(&Method::GET, "/v1/agents2/a1"), 1);
}

// === org scoping ===

#[tokio::test]
async fn teams_of_one_org_share_entries_and_other_orgs_never_do() {
    let (upstream, gw) = setup().await;
    let c = gw.client();
    let filled = c.get("/v1/agents2/a1", BILLING).await;
    assert_eq!(filled.x_cache(), "MISS");
    let shared = c.get("/v1/agents2/a1", SUPPORT).await;
    assert_eq!(shared.x_cache(), "HIT");
    assert_eq!(shared.body, filled.body);
    assert_eq!(upstream.total(), 1);

    let rival = c.get("/v1/agents2/a1", RIVAL).await;
    assert_eq!(rival.status, 200);
    assert_eq!(rival.x_cache(), "MISS");
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].headers["authorization"],
        bearer(ORG_KEY_ACME).as_str()
    );
    assert_eq!(
        seen[1].headers["authorization"],
        bearer(ORG_KEY_GLOBEX).as_str()
    );
    assert_eq!(c.get("/v1/agents2/a1", RIVAL).await.x_cache(), "HIT");
    assert_eq!(upstream.total(), 2);

    // A write by one org drops only that org's entry.
    let r = c.patch("/v1/agents2/a1", RIVAL, r#"{"name":"x"}"#).await;
    assert_eq!(r.status, 200);
    assert_eq!(c.get("/v1/agents2/a1", SUPPORT).await.x_cache(), "HIT");
    assert_eq!(c.get("/v1/agents2/a1", RIVAL).await.x_cache(), "MISS");
}
