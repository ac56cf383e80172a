//! Per-team quotas on the wire: GCRA refusals with `429` + `Retry-After`, the `RateLimit-*` headers
//! on every answer to an identified team, isolation between teams, the write quota, quota state
//! across config reloads, and the refusal counter in `/metrics`.

use std::time::Duration;

use bytes::Bytes;
use http::Method;

use crate::support::*;

/// Per minute: one cell every 10 s, so nothing refills while a test runs and counts are exact.
const SLOW: u32 = 6;

fn seconds(r: &TestResponse, name: &str) -> u64 {
    r.header(name)
        .unwrap_or_else(|| panic!("{name} missing on a {} answer", r.status))
        .parse()
        .unwrap_or_else(|e| panic!("{name} is not whole seconds: {e}"))
}

/// Asserts the full quota header set of one answer: the trio, and the structured pair agreeing
/// with it.
fn assert_quota_headers(r: &TestResponse, limit: u32, per_minute: u32, remaining: u32) -> u64 {
    assert_eq!(
        r.header("ratelimit-limit"),
        Some(limit.to_string().as_str()),
        "RateLimit-Limit on a {}",
        r.status
    );
    assert_eq!(
        r.header("ratelimit-remaining"),
        Some(remaining.to_string().as_str()),
        "RateLimit-Remaining on a {}",
        r.status
    );
    let reset = seconds(r, "ratelimit-reset");
    assert_eq!(
        r.header("ratelimit-policy"),
        Some(format!("\"team\";q={per_minute};w=60").as_str()),
        "RateLimit-Policy on a {}",
        r.status
    );
    assert_eq!(
        r.header("ratelimit"),
        Some(format!("\"team\";r={remaining};t={reset}").as_str()),
        "RateLimit on a {}",
        r.status
    );
    reset
}

fn assert_rate_limited(r: &TestResponse) -> u64 {
    assert_eq!(r.status, 429);
    let body = r.json();
    assert_eq!(body["statusCode"], 429);
    assert_eq!(body["error"], "Too Many Requests");
    assert_eq!(body["code"], "rate_limited");
    assert!(body["message"].is_string());
    assert_eq!(body["request_id"].as_str(), r.header("x-request-id"));
    let retry_after = seconds(r, "retry-after");
    assert!(retry_after >= 1, "Retry-After {retry_after}");
    retry_after
}

/// Replaces the body of `[teams.<team>]` in the test config through `edit`.
#[tokio::test]
async fn burst_of_three_allows_exactly_three_then_429_and_forwards_nothing_more() {
    let (upstream, gw) = setup_with(|config| config.team_quota("billing", SLOW, 3)).await;
    let c = gw.client();
    // Warm the agent through another team of the same org, so the quota under test is untouched.
    assert_eq!(c.get("/v1/agents2/a1", SUPPORT).await.x_cache(), "MISS");
    assert_eq!(upstream.total(), 1);

    let answers = join_all(
        (0..10)
            .map(|_| {
                let c = c.clone();
                async move { c.get("/v1/calls", BILLING).await }
            })
            .collect(),
    )
    .await;
    let allowed = answers.iter().filter(|r| r.status == 200).count();
    let refused: Vec<_> = answers.iter().filter(|r| r.status == 429).collect();
    assert_eq!(allowed, 3, "statuses: {:?}", statuses(&answers));
    assert_eq!(refused.len(), 7, "statuses: {:?}", statuses(&answers));
    for r in &refused {
        assert_rate_limited(r);
    }
    assert_eq!(upstream.count(&Method::GET, "/v1/calls"), 3);

    // A refused write is neither forwarded nor invalidates the cached agent.
    let patch = c.patch("/v1/agents2/a1", BILLING, r#"{"name":"n"}"#).await;
    assert_rate_limited(&patch);
    assert_eq!(upstream.count(&Method::PATCH, "/"), 0);
    assert_eq!(upstream.total(), 4);
    let again = c.get("/v1/agents2/a1", SUPPORT).await;
    assert_eq!(again.x_cache(), "HIT");
    assert_eq!(again.json()["version"], 1);
    assert_eq!(upstream.total(), 4);
}

#[tokio::test]
async fn waiting_exactly_retry_after_seconds_is_enough() {
    // One request per 1.5 s, no burst beyond it: the wait is a fraction of a second, so a
    // Retry-After rounded down (1) would be refused again and only the rounded-up 2 passes.
    let (upstream, gw) = setup_with(|config| config.team_quota("billing", 40, 1)).await;
    let c = gw.client();
    assert_eq!(c.get("/v1/calls", BILLING).await.status, 200);
    let refused = c.get("/v1/calls", BILLING).await;
    let retry_after = assert_rate_limited(&refused);
    // The behaviour under test: a client that honours Retry-After is served next time.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let next = c.get("/v1/calls", BILLING).await;
    assert_eq!(
        next.status, 200,
        "refused again after Retry-After: {retry_after}"
    );
    assert_eq!(upstream.count(&Method::GET, "/v1/calls"), 2);
}

#[tokio::test]
async fn one_teams_exhausted_quota_never_limits_another_team() {
    let (upstream, gw) = setup_with(|config| {
        config
            .team_quota("billing", 6, 1)
            .team_quota("support", SLOW, 3)
            .team_quota("rival", SLOW, 3)
    })
    .await;
    let c = gw.client();
    assert_eq!(c.get("/v1/calls", BILLING).await.status, 200);
    assert_rate_limited(&c.get("/v1/calls", BILLING).await);
    assert_rate_limited(&c.get("/v1/calls", BILLING).await);

    // Same org, other team; other org: each still has its whole burst.
    for key in [SUPPORT, RIVAL] {
        let r = c.get("/v1/calls", key).await;
        assert_eq!(r.status, 200);
        assert_quota_headers(&r, 3, 6, 2);
    }
    assert_eq!(upstream.count(&Method::GET, "/v1/calls"), 3);
}

#[tokio::test]
async fn writes_spend_the_write_quota_and_reads_keep_their_own() {
    let (upstream, gw) = setup_with(|config| {
        config
            .team_quota("billing", 6, 5)
            .write_quota("billing", 1, 2)
    })
    .await;
    let c = gw.client();
    for _ in 0..2 {
        let r = c.patch("/v1/agents2/a1", BILLING, r#"{"name":"n"}"#).await;
        assert_eq!(r.status, 200);
        // The write quota binds, described under DESIGN's one policy name.
        assert_eq!(r.header("ratelimit-policy"), Some("\"team\";q=1;w=60"));
        assert_eq!(r.header("ratelimit-limit"), Some("2"));
    }
    for _ in 0..3 {
        let r = c.patch("/v1/agents2/a1", BILLING, r#"{"name":"n"}"#).await;
        assert_rate_limited(&r);
        assert!(
            r.header("ratelimit")
                .is_some_and(|v| v.starts_with("\"team\";r=0;")),
            "the write quota binds: {:?}",
            r.header("ratelimit")
        );
    }
    assert_eq!(upstream.count(&Method::PATCH, "/"), 2);

    // Reads still pass: the general quota paid for the two allowed writes only, not for the
    // three refused ones, so 5 - 2 reads remain.
    for remaining in [2, 1, 0] {
        let r = c.get("/v1/calls", BILLING).await;
        assert_eq!(r.status, 200, "a read was refused after refused writes");
        assert_quota_headers(&r, 5, 6, remaining);
    }
    assert_rate_limited(&c.get("/v1/calls", BILLING).await);
}

#[tokio::test]
async fn a_write_the_general_quota_refuses_keeps_its_write_cell() {
    // General: one cell per 0.1 s, burst 1. Writes: one a minute. A read empties the general
    // quota, so the write right after it is refused by the general quota, and must not have spent
    // the write quota's only cell: once the general quota refills, the write passes.
    let (upstream, gw) = setup_with(|config| {
        config
            .team_quota("billing", 600, 1)
            .write_quota("billing", 1, 1)
    })
    .await;
    let c = gw.client();
    assert_eq!(c.get("/v1/calls", BILLING).await.status, 200);
    let refused = c.write(Method::POST, "/v1/calls", BILLING, "{}").await;
    assert_eq!(assert_rate_limited(&refused), 1);
    // The answer describes the quota that refused it, the general one.
    let reset = seconds(&refused, "ratelimit-reset");
    assert_eq!(refused.header("ratelimit-limit"), Some("1"));
    assert_eq!(
        refused.header("ratelimit"),
        Some(format!("\"team\";r=0;t={reset}").as_str())
    );
    assert_eq!(upstream.count(&Method::POST, "/v1/calls"), 0);

    tokio::time::sleep(Duration::from_secs(1)).await;
    let allowed = c.write(Method::POST, "/v1/calls", BILLING, "{}").await;
    assert_eq!(
        allowed.status, 200,
        "the refused write spent the write cell"
    );
    assert!(
        allowed
            .header("ratelimit")
            .is_some_and(|v| v.starts_with("\"team\";r=0;")),
        "{:?}",
        allowed.header("ratelimit")
    );
    // Both quotas are empty now; the stricter write quota is the one described.
    assert_eq!(
        allowed.header("ratelimit-policy"),
        Some("\"team\";q=1;w=60")
    );
    assert_eq!(upstream.count(&Method::POST, "/v1/calls"), 1);
}

#[tokio::test]
async fn every_answer_to_an_identified_team_carries_its_quota_and_401_does_not() {
    let (upstream, gw) = setup_with(|config| {
        config
            .team_quota("billing", SLOW, 3)
            .team_quota("viewer", SLOW, 3)
    })
    .await;
    upstream.set_override(|r| match r.path() {
        "/v1/agents2/missing" => Some(
            Reply::json(
                404,
                serde_json::json!({"statusCode": 404, "message": "no agent"}),
            )
            .with_header("x-ratelimit-limit", "1000")
            .with_header("x-ratelimit-remaining", "997")
            .with_header("x-ratelimit-reset", "42"),
        ),
        "/v1/calls/broken" => Some(Reply::reset()),
        _ => None,
    });
    let c = gw.client();

    // Forwarded miss, then a cache hit, then upstream's own 404: the count goes down 2, 1, 0 and
    // the bucket is full again one 10 s interval per spent request later.
    let miss = c.get("/v1/agents2/a1", BILLING).await;
    assert_eq!(miss.x_cache(), "MISS");
    assert_eq!(assert_quota_headers(&miss, 3, 6, 2), 10);
    assert_eq!(miss.header("x-ratelimit-remaining"), Some("998"));

    let hit = c.get("/v1/agents2/a1", BILLING).await;
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(assert_quota_headers(&hit, 3, 6, 1), 20);
    // Upstream's quota headers belong to the answer they came with, not to the cached entry.
    assert_eq!(hit.header("x-ratelimit-remaining"), None);

    let not_found = c.get("/v1/agents2/missing", BILLING).await;
    assert_eq!(not_found.status, 404);
    assert_eq!(not_found.json()["message"], "no agent");
    assert_eq!(assert_quota_headers(&not_found, 3, 6, 0), 30);
    assert_eq!(not_found.header("x-ratelimit-limit"), Some("1000"));
    assert_eq!(not_found.header("x-ratelimit-remaining"), Some("997"));
    assert_eq!(not_found.header("x-ratelimit-reset"), Some("42"));

    let refused = c.get("/v1/agents2/a1", BILLING).await;
    let retry_after = assert_rate_limited(&refused);
    let reset = assert_quota_headers(&refused, 3, 6, 0);
    assert!(
        (retry_after..=30).contains(&reset),
        "reset {reset} vs Retry-After {retry_after}"
    );

    // A 403 is decided before the limiter: it reports the quota without spending it.
    let forbidden = c.patch("/v1/agents2/a1", VIEWER, r#"{"name":"n"}"#).await;
    assert_eq!(forbidden.status, 403);
    assert_eq!(assert_quota_headers(&forbidden, 3, 6, 3), 0);
    assert_quota_headers(&c.get("/v1/calls", VIEWER).await, 3, 6, 2);
    let forbidden = c.patch("/v1/agents2/a1", VIEWER, r#"{"name":"n"}"#).await;
    assert_eq!(forbidden.status, 403);
    assert_quota_headers(&forbidden, 3, 6, 2);
    // The gateway's own answer to an upstream failure too.
    let bad_gateway = c.get("/v1/calls/broken", VIEWER).await;
    assert_eq!(bad_gateway.status, 502);
    assert_quota_headers(&bad_gateway, 3, 6, 1);

    // No team, no quota.
    let anonymous = c.send(Method::GET, "/v1/calls", &[], Bytes::new()).await;
    assert_eq!(anonymous.status, 401);
    for name in [
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
        "ratelimit-policy",
        "ratelimit",
    ] {
        assert_eq!(anonymous.header(name), None, "{name} on a 401");
    }
}

#[tokio::test]
async fn reload_keeps_every_teams_state_applies_changed_quotas_and_drops_removed_teams() {
    let (_upstream, mut gw) = setup_with(|config| {
        config
            .team_quota("billing", SLOW, 3)
            .team_quota("support", SLOW, 3)
    })
    .await;
    let c = gw.client();
    assert_quota_headers(&c.get("/v1/calls", BILLING).await, 3, 6, 2);
    assert_quota_headers(&c.get("/v1/calls", SUPPORT).await, 3, 6, 2);
    assert_quota_headers(&c.get("/v1/calls", SUPPORT).await, 3, 6, 1);
    assert_eq!(c.get("/v1/calls", RIVAL).await.status, 200);

    gw.rewrite_config(|config| config.team_quota("support", 12, 4).without_team("rival"));
    gw.running().reload().expect("valid config reloads");

    // billing's quota did not change: its bucket carried over (2 left before, 1 after this one).
    assert_quota_headers(&c.get("/v1/calls", BILLING).await, 3, 6, 1);
    // support's did: the new quota, with the 2 requests it had spent still spent (4 - 2 - 1 left).
    assert_quota_headers(&c.get("/v1/calls", SUPPORT).await, 4, 12, 1);
    let gone = c.get("/v1/calls", RIVAL).await;
    assert_eq!(gone.status, 401);
    assert_eq!(gone.json()["code"], "invalid_team_key");

    // An invalid file changes nothing: same teams, same buckets.
    gw.rewrite_config(|config| config.team_org("billing", "no-such-org"));
    let err = gw
        .running()
        .reload()
        .expect_err("unknown org must be refused");
    assert!(
        err.problems.iter().any(|p| p.contains("no-such-org")),
        "{:?}",
        err.problems
    );
    let still = c.get("/v1/calls", BILLING).await;
    assert_eq!(still.status, 200);
    assert_quota_headers(&still, 3, 6, 0);
    assert_quota_headers(&c.get("/v1/calls", SUPPORT).await, 4, 12, 0);
    assert_eq!(c.get("/v1/calls", RIVAL).await.status, 401);
    let failed = [("result", "failed")];
    assert_eq!(
        gw.metrics()
            .await
            .value("dialnexa_gateway_config_reloads_total", &failed),
        1.0
    );
}

#[tokio::test]
async fn refusals_are_counted_per_team_in_metrics() {
    let (_upstream, gw) = setup_with(|config| config.team_quota("billing", 6, 1)).await;
    let c = gw.client();
    assert_eq!(c.get("/v1/calls", BILLING).await.status, 200);
    for _ in 0..3 {
        assert_rate_limited(&c.get("/v1/calls", BILLING).await);
    }
    assert_eq!(c.get("/v1/calls", SUPPORT).await.status, 200);

    let metrics = gw.metrics().await;
    let limited = |team| {
        metrics.value(
            "dialnexa_gateway_ratelimit_limited_total",
            &[("team", team)],
        )
    };
    assert_eq!(limited("billing"), 3.0, "{metrics}");
    // Every configured team's series exists from the start, at zero until it is limited (as
    // Prometheus advises, so that `rate()` and absent-series alerts see it from the first scrape).
    assert_eq!(limited("support"), 0.0, "{metrics}");
}

fn statuses(answers: &[TestResponse]) -> Vec<u16> {
    answers.iter().map(|r| r.status).collect()
}
