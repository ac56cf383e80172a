//! What is stored: only `200`s without upstream `no-store`, bodies up to `cache.max_entry_bytes`,
//! fetched with identity encoding; never a `304` to a plain GET.

use super::*;

#[tokio::test]
async fn upstream_no_store_and_non_200_answers_are_not_stored_but_private_ones_are() {
    let (upstream, gw) = setup().await;
    upstream.set_override(|r| match r.path() {
        "/v1/agents2/nostore" => Some(
            Reply::json(200, json!({"id": "nostore"})).with_header("cache-control", "no-store"),
        ),
        "/v1/agents2/private" => Some(
            Reply::json(200, json!({"id": "private"}))
                .with_header("cache-control", "private, max-age=60"),
        ),
        "/v1/agents2/ghost" => Some(Reply::json(
            404,
            json!({"statusCode": 404, "message": "agent not found"}),
        )),
        _ => None,
    });
    let c = gw.client();
    for _ in 0..2 {
        let r = c.get("/v1/agents2/nostore", BILLING).await;
        assert_eq!((r.status, r.x_cache()), (200, "MISS"));
        assert_eq!(r.header("cache-control"), Some("no-store"));
        let r = c.get("/v1/agents2/ghost", BILLING).await;
        assert_eq!((r.status, r.x_cache()), (404, "MISS"));
        assert_eq!(r.json()["message"], "agent not found");
    }
    assert_eq!(upstream.count(&Method::GET, "/v1/agents2/nostore"), 2);
    assert_eq!(upstream.count(&Method::GET, "/v1/agents2/ghost"), 2);

    // The cache is per organisation, so `private` does not forbid storing.
    let r = c.get("/v1/agents2/private", BILLING).await;
    assert_eq!(r.x_cache(), "MISS");
    let r = c.get("/v1/agents2/private", SUPPORT).await;
    assert_eq!(r.x_cache(), "HIT");
    assert_eq!(r.json()["id"], "private");
    assert_eq!(upstream.count(&Method::GET, "/v1/agents2/private"), 1);
}

/// A JSON body of exactly `len` bytes.
fn body_of(len: usize) -> Bytes {
    let body = format!("{{\"p\":\"{}\"}}", "x".repeat(len - 8));
    assert_eq!(body.len(), len);
    Bytes::from(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_max_entry_bytes_pass_through_intact_and_uncached() {
    let (upstream, gw) = setup_with(|config| config.cache_max_entry_bytes(2048)).await;
    upstream.set_override(|r| {
        let len = match r.path() {
            "/v1/agents2/at-limit" => 2048,
            "/v1/agents2/over" => 2049,
            "/v1/agents2/big" => 200_000,
            _ => return None,
        };
        let mut reply = Reply::json(200, json!({}));
        reply.body = body_of(len);
        Some(reply)
    });
    let c = gw.client();
    let r = c.get("/v1/agents2/at-limit", BILLING).await;
    assert_eq!((r.body.len(), r.x_cache()), (2048, "MISS"));
    let r = c.get("/v1/agents2/at-limit", BILLING).await;
    assert_eq!((r.body.len(), r.x_cache()), (2048, "HIT"));

    for path in ["/v1/agents2/over", "/v1/agents2/big"] {
        for _ in 0..2 {
            let r = c.get(path, BILLING).await;
            assert_eq!((r.status, r.x_cache()), (200, "MISS"), "{path}");
            let want = body_of(if path.ends_with("big") { 200_000 } else { 2049 });
            assert!(r.body == want, "{path}: body altered");
        }
        assert_eq!(upstream.count(&Method::GET, path), 2);
    }

    // Concurrent readers of a too-large answer each get it whole.
    upstream.set_delay(Method::GET, Duration::from_millis(200));
    let tasks = (0..5)
        .map(|_| spawn_get(&gw.client(), "/v1/agents2/big", BILLING))
        .collect();
    for a in all_answers(tasks).await {
        assert_eq!(a.status, 200);
        assert!(a.body == body_of(200_000), "body altered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_fills_ask_upstream_for_identity_and_a_plain_get_never_gets_304() {
    let (upstream, gw) = setup().await;
    // Upstream honours conditionals, as DialNexa may.
    upstream.set_override(|r| {
        r.headers.contains_key("if-none-match").then(|| {
            let mut reply = Reply::json(304, json!({}));
            reply.body = Bytes::new();
            reply
        })
    });
    upstream.set_delay(Method::GET, Duration::from_millis(300));
    let c = gw.client();
    let auth = bearer(BILLING);
    // The SDK asks for compression; this one is also conditional and starts the fill.
    let conditional = {
        let (c, auth) = (c.clone(), auth.clone());
        tokio::spawn(async move {
            c.send(
                Method::GET,
                "/v1/agents2/a1",
                &[
                    ("authorization", &auth),
                    ("accept-encoding", "gzip, deflate"),
                    ("if-none-match", "\"v1\""),
                ],
                Bytes::new(),
            )
            .await
        })
    };
    wait_until("upstream received the fill", async || upstream.total() == 1).await;
    let plain = get_with(
        &c,
        "/v1/agents2/a1",
        SUPPORT,
        &[("accept-encoding", "gzip, deflate")],
    )
    .await;
    let conditional = conditional.await.unwrap();

    let fill = &upstream.requests()[0];
    assert_eq!(fill.headers["accept-encoding"], "identity");
    assert!(fill.headers.get("if-none-match").is_none());
    for r in [&plain, &conditional] {
        assert_eq!(r.status, 200);
        assert!(r.header("content-encoding").is_none());
        assert_eq!(r.version(), 1);
    }
    let r = get_with(
        &c,
        "/v1/agents2/a1",
        BILLING,
        &[("accept-encoding", "gzip, deflate")],
    )
    .await;
    assert_eq!((r.status, r.x_cache(), r.version()), (200, "HIT", 1));
    assert_eq!(upstream.total(), 1);
}
