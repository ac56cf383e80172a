//! Client directives: `Cache-Control: no-cache` fetches fresh and refreshes the entry, `no-store`
//! bypasses the cache.

use super::*;

#[tokio::test]
async fn client_no_cache_fetches_fresh_and_refreshes_the_entry() {
    let (upstream, gw) = setup().await;
    number_fetches(&upstream);
    let c = gw.client();
    assert_eq!(fetch_no(&c.get("/v1/agents2/a1", BILLING).await), 1);
    let r = c.get("/v1/agents2/a1", BILLING).await;
    assert_eq!((r.x_cache(), fetch_no(&r)), ("HIT", 1));

    let r = get_with(
        &c,
        "/v1/agents2/a1",
        BILLING,
        &[("cache-control", "no-cache")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!((r.x_cache(), fetch_no(&r)), ("MISS", 2));
    assert_eq!(upstream.count(&Method::GET, "/"), 2);

    let r = c.get("/v1/agents2/a1", SUPPORT).await;
    assert_eq!((r.x_cache(), fetch_no(&r)), ("HIT", 2));
    assert_eq!(upstream.count(&Method::GET, "/"), 2);
}

#[tokio::test]
async fn client_no_store_bypasses_the_cache_and_never_writes_it() {
    let (upstream, gw) = setup().await;
    number_fetches(&upstream);
    let c = gw.client();
    let no_store = [("cache-control", "no-store")];

    // Nothing cached: bypassed, and still nothing cached afterwards.
    let r = get_with(&c, "/v1/agents2/a1", BILLING, &no_store).await;
    assert_eq!(r.status, 200);
    assert_eq!((r.x_cache(), fetch_no(&r)), ("BYPASS", 1));
    assert!(r.header("age").is_none());
    let r = c.get("/v1/agents2/a1", BILLING).await;
    assert_eq!((r.x_cache(), fetch_no(&r)), ("MISS", 2));
    let r = c.get("/v1/agents2/a1", BILLING).await;
    assert_eq!((r.x_cache(), fetch_no(&r)), ("HIT", 2));

    // Something cached: still goes upstream, and leaves the entry as it was.
    let r = get_with(&c, "/v1/agents2/a1", BILLING, &no_store).await;
    assert_eq!((r.x_cache(), fetch_no(&r)), ("BYPASS", 3));
    let r = c.get("/v1/agents2/a1", BILLING).await;
    assert_eq!((r.x_cache(), fetch_no(&r)), ("HIT", 2));
    assert_eq!(upstream.count(&Method::GET, "/"), 3);

    // Upstream unreachable: the gateway's own 502, still marked as a bypass.
    upstream.set_override(|_| Some(Reply::reset()));
    let r = get_with(&c, "/v1/agents2/a1", BILLING, &no_store).await;
    assert_eq!((r.status, r.x_cache()), (502, "BYPASS"));
    assert_eq!(r.json()["code"], "upstream_unreachable");
}
