//! Request coalescing: concurrent misses for one key make one upstream request, and its answer,
//! error or reset reaches every request that waited on it.

use super::*;

const COALESCED: &str = "dialnexa_gateway_cache_coalesced_total";
/// The upstream latency histogram's count: one per upstream request.
const UPSTREAM_REQUESTS: &str = "dialnexa_gateway_upstream_request_duration_seconds_count";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_cold_gets_make_one_upstream_request() {
    let (upstream, gw) = setup().await;
    // Long enough that the requests overlap the one fetch.
    upstream.set_delay(Method::GET, Duration::from_millis(300));
    let before = gw.metrics().await;
    let coalesced_before = before.value(COALESCED, &[]);
    let fetches_before = before.value(UPSTREAM_REQUESTS, &[]);
    let tasks = (0..100)
        // A client each: its own pool, so its own connection.
        .map(|_| spawn_get(&gw.client(), "/v1/agents2/hot", BILLING))
        .collect();
    let answers = all_answers(tasks).await;

    assert_eq!(upstream.count(&Method::GET, "/"), 1);
    for a in &answers {
        assert_eq!(a.status, 200);
        assert_eq!(a.body, answers[0].body);
    }
    assert_eq!(answers[0].version(), 1);
    let misses = answers.iter().filter(|a| a.x_cache() == "MISS").count();
    let hits = answers.iter().filter(|a| a.x_cache() == "HIT").count();
    assert_eq!(misses + hits, 100);
    assert!(misses > 1, "the requests did not overlap the fetch");
    // Every miss but the one that fetched waited for that fetch.
    let after = gw.metrics().await;
    let coalesced_after = after.value(COALESCED, &[]);
    assert_eq!(coalesced_after - coalesced_before, (misses - 1) as f64);
    // The upstream latency histogram counts upstream requests, not the requests that shared one.
    let fetches_after = after.value(UPSTREAM_REQUESTS, &[]);
    assert_eq!(fetches_after - fetches_before, 1.0);
}

/// Starts one slow cold GET, then `waiters` more once upstream has the first, and waits until all
/// of them wait on the first one's fetch.
async fn leader_and_waiters(
    upstream: &FakeUpstream,
    gw: &TestGateway,
    path: &str,
    waiters: usize,
) -> Vec<JoinHandle<TestResponse>> {
    let before = coalesced(gw);
    let mut tasks = vec![spawn_get(&gw.client(), path, BILLING)];
    wait_until("upstream received the first GET", async || {
        upstream.count(&Method::GET, path) == 1
    })
    .await;
    tasks.extend((0..waiters).map(|_| spawn_get(&gw.client(), path, BILLING)));
    wait_until("the others wait for the first one's fetch", async || {
        coalesced(gw) - before == waiters as u64
    })
    .await;
    tasks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_waiters_all_get_upstreams_error_from_its_one_request() {
    let (upstream, gw) = setup().await;
    let error =
        json!({"statusCode": 500, "message": "upstream broke", "error": "Internal Server Error"});
    upstream.fail(
        Method::GET,
        Reply::json(500, error.clone()).with_delay(Duration::from_secs(1)),
    );
    let tasks = leader_and_waiters(&upstream, &gw, "/v1/agents2/a1", 19).await;
    for a in all_answers(tasks).await {
        assert_eq!(a.status, 500);
        assert_eq!(a.json(), error);
        assert_eq!(a.x_cache(), "MISS");
    }
    assert_eq!(upstream.count(&Method::GET, "/"), 1);

    // The error was not stored.
    upstream.heal();
    let r = gw.client().get("/v1/agents2/a1", BILLING).await;
    assert_eq!((r.status, r.x_cache()), (200, "MISS"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_waiters_all_get_502_when_upstream_resets_the_one_request() {
    let (upstream, gw) = setup().await;
    upstream.fail(
        Method::GET,
        Reply::reset().with_delay(Duration::from_millis(500)),
    );
    let tasks = leader_and_waiters(&upstream, &gw, "/v1/agents2/a1", 19).await;
    for a in all_answers(tasks).await {
        assert_eq!((a.status, a.x_cache()), (502, "MISS"));
        assert_eq!(a.json()["code"], "upstream_unreachable");
    }
    // The one fetch, retried once because the connection closed before an answer.
    assert_eq!(upstream.count(&Method::GET, "/"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_fill_survives_the_client_that_started_it_going_away() {
    let (upstream, gw) = setup().await;
    // Long enough that the late GET below surely arrives while the fetch is still out.
    upstream.set_delay(Method::GET, Duration::from_millis(1500));
    let before = coalesced(&gw);
    let mut leader = tokio::net::TcpStream::connect(gw.api).await.unwrap();
    leader
        .write_all(
            format!(
                "GET /v1/agents2/a1 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {BILLING}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    wait_until("upstream received the first GET", async || {
        upstream.count(&Method::GET, "/") == 1
    })
    .await;
    let waiter = spawn_get(&gw.client(), "/v1/agents2/a1", SUPPORT);
    wait_until("the second GET waits for the first", async || {
        coalesced(&gw) - before == 1
    })
    .await;
    drop(leader);
    // Joins the same fetch although its first client is gone.
    let late = spawn_get(&gw.client(), "/v1/agents2/a1", BILLING);

    for r in all_answers(vec![waiter, late]).await {
        assert_eq!((r.status, r.x_cache()), (200, "MISS"));
        assert_eq!(r.version(), 1);
    }
    // The fetch belongs to everyone waiting on it, so it ran on without its first client: one
    // upstream request, and its answer was cached.
    assert_eq!(upstream.count(&Method::GET, "/"), 1);
    let r = gw.client().get("/v1/agents2/a1", BILLING).await;
    assert_eq!(r.x_cache(), "HIT");
    let lines = gw.audit_lines(4).await;
    let gone = lines
        .iter()
        .find(|l| l["status"] == 499)
        .expect("the first client's audit line");
    assert_eq!(
        (gone["cache"].as_str(), gone["team"].as_str()),
        (Some("miss"), Some("billing"))
    );
    // Its request is the one upstream answered, which its line says once the fill is back.
    assert_eq!(gone["upstream_status"], 200, "{gone:?}");
    assert!(gone["upstream_latency_ms"].is_number(), "{gone:?}");
}
