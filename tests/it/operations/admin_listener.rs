//! The admin listener: probes and `/metrics` there and nowhere else, and the figures following
//! requests, cache hits, upstream calls and audit lines.

use http::Method;

use super::*;

const REQUESTS: &str = "dialnexa_gateway_requests_total";
const BILLING_GET_200: &[(&str, &str)] =
    &[("team", "billing"), ("method", "GET"), ("status", "200")];
const UNIDENTIFIED_GET_401: &[(&str, &str)] = &[("team", ""), ("method", "GET"), ("status", "401")];
const CACHE_HITS: &str = "dialnexa_gateway_cache_hits_total";
const CACHE_MISSES: &str = "dialnexa_gateway_cache_misses_total";
const UPSTREAM_COUNT: &str = "dialnexa_gateway_upstream_request_duration_seconds_count";
const AUDIT_WRITTEN: &str = "dialnexa_gateway_audit_lines_written_total";

#[tokio::test]
async fn probes_and_metrics_are_served_on_the_admin_listener_only() {
    let (upstream, gw) = setup().await;
    let admin = gw.admin_client();
    let api = gw.client();

    assert_eq!(
        admin.send(Method::GET, "/healthz", &[], "").await.status,
        200
    );
    assert_eq!(
        admin.send(Method::GET, "/readyz", &[], "").await.status,
        200
    );
    let m = admin.send(Method::GET, "/metrics", &[], "").await;
    assert_eq!(m.status, 200);
    assert_eq!(
        m.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    // A scraper that asks for OpenMetrics (as Prometheus does) is told it gets it.
    let om = admin
        .send(
            Method::GET,
            "/metrics",
            &[(
                "accept",
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
            )],
            "",
        )
        .await;
    assert!(om
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/openmetrics-text")));
    let om_text = String::from_utf8(om.body.to_vec()).unwrap();
    assert!(om_text.contains("# TYPE dialnexa_gateway_requests counter\n"));
    assert!(om_text.ends_with("# EOF\n"));
    let text = String::from_utf8(m.body.to_vec()).unwrap();
    // The classic format declares a counter under its samples' name.
    assert!(
        text.contains("# TYPE dialnexa_gateway_requests_total counter\n"),
        "{text}"
    );

    // On the API listener these are just unversioned API paths: no key, no answer.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = api.send(Method::GET, path, &[], "").await;
        assert_eq!(r.status, 401, "{path} on the API listener");
        assert_eq!(r.json()["code"], "invalid_team_key");
    }
    // Purging is not an API-listener action: the gateway's own 404, whatever the key.
    let auth = bearer(ADMIN_TOKEN);
    let r = api
        .send(
            Method::POST,
            "/admin/cache/purge",
            &[("authorization", &auth)],
            "{}",
        )
        .await;
    assert_eq!(r.status, 404);
    // A team reaching `/metrics` through the API gets upstream's answer, never the gateway's figures.
    let r = api.get("/metrics", BILLING).await;
    assert!(
        !String::from_utf8_lossy(&r.body).contains("dialnexa_gateway_"),
        "gateway metrics leaked on the API listener"
    );

    // The admin listener proxies nothing, whatever the key.
    for path in ["/v1/agents2/a1", "/v1/calls", "/agents2/a1", "/calls"] {
        assert_eq!(admin.get(path, BILLING).await.status, 404, "{path}");
    }
    assert_eq!(upstream.count(&Method::GET, "/v1/agents2"), 0);
    assert_eq!(upstream.count(&Method::GET, "/v1/calls"), 0);
}

#[tokio::test]
async fn metrics_follow_requests_cache_hits_upstream_calls_and_audit_lines() {
    let (upstream, gw) = setup().await;
    let admin = gw.admin_client();
    let c = gw.client();
    let before = scrape(&admin).await;

    let miss = c.get("/v1/agents2/m1", BILLING).await;
    assert_eq!(miss.x_cache(), "MISS");
    let hit = c.get("/v1/agents2/m1", BILLING).await;
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(c.get("/v1/calls", BILLING).await.status, 200);
    assert_eq!(c.get("/v1/calls", "not-a-team-key").await.status, 401);
    assert_eq!(upstream.total(), 2);

    let after = scrape(&admin).await;
    let delta = |name, labels| after.count(name, labels) - before.count(name, labels);
    assert_eq!(delta(REQUESTS, BILLING_GET_200), 3.0, "{after}");
    assert_eq!(delta(REQUESTS, UNIDENTIFIED_GET_401), 1.0, "{after}");
    assert_eq!(delta(CACHE_HITS, &[]), 1.0, "{after}");
    assert_eq!(delta(CACHE_MISSES, &[]), 1.0, "{after}");
    // The miss and the forwarded call went upstream; the hit and the 401 did not.
    assert_eq!(delta(UPSTREAM_COUNT, &[]), 2.0, "{after}");

    // Audit lines are written off the request path: the counter catches up, and matches the file.
    wait_until("4 audit lines counted", async || {
        scrape(&admin).await.count(AUDIT_WRITTEN, &[]) >= 4.0
    })
    .await;
    let lines = gw.audit_lines(4).await;
    assert_eq!(lines.len(), 4);
    assert_eq!(scrape(&admin).await.count(AUDIT_WRITTEN, &[]), 4.0);
}
