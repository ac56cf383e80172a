//! The cache in `/metrics` (hits, misses, invalidations, bytes, entries), and caching turned off.

use super::*;

const HITS: &str = "dialnexa_gateway_cache_hits_total";
const MISSES: &str = "dialnexa_gateway_cache_misses_total";
const ENTRIES: &str = "dialnexa_gateway_cache_entries";

#[tokio::test]
async fn metrics_count_hits_misses_and_invalidations() {
    let (_upstream, gw) = setup().await;
    let c = gw.client();
    let before = gw.metrics().await;
    c.get("/v1/agents2/a1", BILLING).await;
    let filled = gw.metrics().await;
    let r = c.get("/v1/agents2/a1", BILLING).await;
    assert_eq!(r.x_cache(), "HIT");
    let after_hit = gw.metrics().await;

    let delta = |a: &Metrics, b: &Metrics, name: &str| b.value(name, &[]) - a.value(name, &[]);
    assert_eq!(delta(&before, &filled, MISSES), 1.0);
    assert_eq!(delta(&before, &filled, HITS), 0.0);
    assert_eq!(delta(&filled, &after_hit, HITS), 1.0);
    assert!(after_hit.value("dialnexa_gateway_cache_bytes", &[]) > 0.0);
    assert_eq!(after_hit.value(ENTRIES, &[]), 1.0);

    c.patch("/v1/agents2/a1", BILLING, "{}").await;
    let after_write = gw.metrics().await;
    assert!(
        delta(
            &after_hit,
            &after_write,
            "dialnexa_gateway_cache_invalidations_total"
        ) >= 1.0
    );
    assert_eq!(after_write.value(ENTRIES, &[]), 0.0);
}

#[tokio::test]
async fn with_caching_turned_off_agent_reads_say_bypass_and_always_go_upstream() {
    let (upstream, gw) = setup_with(|config| config.cache_enabled(false)).await;
    let c = gw.client();
    for _ in 0..2 {
        let r = c.get("/v1/agents2/a1", BILLING).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.x_cache(), "BYPASS");
    }
    assert_eq!(upstream.count(&Method::GET, "/v1/agents2/a1"), 2);
    let lines = gw.audit_lines(2).await;
    assert!(lines.iter().all(|l| l["cache"] == "bypass"));
}
