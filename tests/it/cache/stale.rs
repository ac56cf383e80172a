//! stale-if-error: an expired entry is served `STALE` when upstream fails, an invalidated one never.

use super::*;

async fn short_ttl_setup() -> (FakeUpstream, TestGateway) {
    setup_with(|config| {
        config
            .cache_ttl_seconds(1)
            .cache_stale_if_error_seconds(60)
            .upstream_timeout_ms(500)
    })
    .await
}

#[tokio::test]
async fn expired_entry_is_served_stale_when_upstream_fails() {
    let (upstream, gw) = short_ttl_setup().await;
    let c = gw.client();
    let agents = ["s500", "sreset", "stimeout", "s404"];
    let mut filled = Vec::new();
    for a in agents {
        let r = c.get(&format!("/v1/agents2/{a}"), BILLING).await;
        assert_eq!((r.status, r.x_cache()), (200, "MISS"));
        filled.push(r.body);
    }
    outlive_a_one_second_ttl().await;

    let error = json!({"statusCode": 500, "message": "down"});
    let failures = [
        Reply::json(500, error.clone()),
        Reply::reset(),
        // Past `upstream.timeout_ms`.
        Reply::json(200, json!({})).with_delay(Duration::from_secs(3)),
    ];
    for ((agent, old), failure) in agents.iter().zip(&filled).zip(failures) {
        upstream.fail(Method::GET, failure);
        let r = c.get(&format!("/v1/agents2/{agent}"), BILLING).await;
        assert_eq!((r.status, r.x_cache()), (200, "STALE"), "{agent}");
        assert!(r.body == *old, "{agent}");
        let age: u64 = r.header("age").unwrap().parse().unwrap();
        assert!(age >= 1, "{agent}: Age {age}");
        let status = r.header("cache-status").unwrap();
        assert!(status.contains("fwd=stale"), "{agent}: {status}");
    }

    // A 404 is an answer, not a failure: it passes through.
    upstream.fail(
        Method::GET,
        Reply::json(404, json!({"statusCode": 404, "message": "gone"})),
    );
    let r = c.get("/v1/agents2/s404", BILLING).await;
    assert_eq!((r.status, r.x_cache()), (404, "MISS"));

    // No copy at all: the failure passes through.
    upstream.fail(Method::GET, Reply::json(500, error.clone()));
    let r = c.get("/v1/agents2/never-cached", BILLING).await;
    assert_eq!((r.status, r.x_cache()), (500, "MISS"));
    assert_eq!(r.json(), error);
    upstream.fail(Method::GET, Reply::reset());
    let r = c.get("/v1/agents2/never-cached", BILLING).await;
    // The gateway's own error still says how the cache took part.
    assert_eq!((r.status, r.x_cache()), (502, "MISS"));
    assert_eq!(r.json()["code"], "upstream_unreachable");
    let status = r.header("cache-status").unwrap();
    assert!(status.contains("detail=upstream_unreachable"), "{status}");

    // Upstream back: the expired entry is refetched and fresh again.
    upstream.heal();
    let r = c.get("/v1/agents2/s500", BILLING).await;
    assert_eq!((r.status, r.x_cache()), (200, "MISS"));
    assert_eq!(c.get("/v1/agents2/s500", BILLING).await.x_cache(), "HIT");
}

#[tokio::test]
async fn invalidated_entry_is_never_served_stale() {
    let (upstream, gw) = short_ttl_setup().await;
    let c = gw.client();
    for a in ["kept", "patched", "deleted", "purged"] {
        c.get(&format!("/v1/agents2/{a}"), BILLING).await;
    }
    outlive_a_one_second_ttl().await;

    upstream.fail(
        Method::PATCH,
        Reply::json(500, json!({"statusCode": 500, "message": "write failed"})),
    );
    assert_eq!(
        c.patch("/v1/agents2/patched", BILLING, "{}").await.status,
        500
    );
    upstream.fail(Method::DELETE, Reply::reset());
    let r = c
        .write(Method::DELETE, "/v1/agents/deleted", BILLING, "{}")
        .await;
    assert_eq!(r.status, 502);
    let r = purge(
        &gw,
        Some(&bearer(ADMIN_TOKEN)),
        r#"{"org":"acme","agent_id":"purged"}"#,
    )
    .await;
    assert_eq!(r.json()["purged"], 1);

    upstream.fail(
        Method::GET,
        Reply::json(500, json!({"statusCode": 500, "message": "down"})),
    );
    // The control: an agent nobody wrote is served stale under the same failure.
    let r = c.get("/v1/agents2/kept", BILLING).await;
    assert_eq!((r.status, r.x_cache()), (200, "STALE"));
    for a in ["patched", "deleted", "purged"] {
        let r = c.get(&format!("/v1/agents2/{a}"), BILLING).await;
        assert_eq!((r.status, r.x_cache()), (500, "MISS"), "{a}");
    }
    upstream.fail(Method::GET, Reply::reset());
    for a in ["patched", "deleted", "purged"] {
        let r = c.get(&format!("/v1/agents2/{a}"), BILLING).await;
        assert_eq!((r.status, r.x_cache()), (502, "MISS"), "{a}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_invalidated_while_its_refetch_is_failing_is_not_served_stale() {
    let (upstream, gw) = short_ttl_setup().await;
    let c = gw.client();
    c.get("/v1/agents2/a1", BILLING).await;
    outlive_a_one_second_ttl().await;

    // The refetch of the expired entry is slow to fail; a write lands meanwhile.
    upstream.fail(
        Method::GET,
        Reply::json(500, json!({"statusCode": 500, "message": "down"}))
            .with_delay(Duration::from_millis(300)),
    );
    let read = spawn_get(&c, "/v1/agents2/a1", SUPPORT);
    wait_until("upstream received the refetch", async || {
        upstream.count(&Method::GET, "/") == 2
    })
    .await;
    assert_eq!(c.patch("/v1/agents/a1", BILLING, "{}").await.status, 200);
    let r = read.await.unwrap();
    assert_eq!((r.status, r.x_cache()), (500, "MISS"));
}
