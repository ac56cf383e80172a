//! The agent cache on the wire: hits and misses, org scoping, invalidation by writes (never the old
//! body once a write was answered), request coalescing, client and upstream cache directives,
//! size limits, stale-if-error, admin purge, and the cache metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;

use crate::support::client::raw_status;
use crate::support::*;

async fn setup() -> (FakeUpstream, TestGateway) {
    let upstream = FakeUpstream::start().await;
    let gw = GatewayBuilder::new(upstream.base_url()).start().await;
    (upstream, gw)
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// GET with the team key plus `headers`.
async fn get_with(c: &Client, path: &str, key: &str, headers: &[(&str, &str)]) -> TestResponse {
    let auth = bearer(key);
    let mut all = vec![("authorization", auth.as_str())];
    all.extend_from_slice(headers);
    c.send(Method::GET, path, &all, Bytes::new()).await
}

/// A GET running in a task of its own (on its own connection if `c` is busy).
fn spawn_get(c: &Client, path: &str, key: &'static str) -> JoinHandle<TestResponse> {
    let (c, path) = (c.clone(), path.to_owned());
    tokio::spawn(async move { c.get(&path, key).await })
}

async fn send_write(c: &Client, method: Method, path: &str, key: &str) -> TestResponse {
    c.send(
        method,
        path,
        &[
            ("authorization", &bearer(key)),
            ("content-type", "application/json"),
        ],
        Bytes::from_static(b"{}"),
    )
    .await
}

fn x_cache(r: &TestResponse) -> &str {
    r.header("x-cache").unwrap_or("<no X-Cache>")
}

/// The agent version the fake upstream answered (it bumps on every write).
fn version(r: &TestResponse) -> u64 {
    r.json()["version"].as_u64().unwrap_or_else(|| {
        panic!(
            "no version in {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        )
    })
}

/// Makes upstream answer agent GETs `{"fetch": n}`, n counting upstream GETs: which fetch a
/// client got tells a cached body from a refreshed one.
fn number_fetches(upstream: &FakeUpstream) {
    let fetches = Arc::new(AtomicU64::new(0));
    upstream.set_override(move |r| {
        (r.method == Method::GET && r.path().starts_with("/v1/agents")).then(|| {
            Reply::json(
                200,
                json!({"fetch": fetches.fetch_add(1, Ordering::SeqCst) + 1}),
            )
        })
    });
}

fn fetch_no(r: &TestResponse) -> u64 {
    r.json()["fetch"].as_u64().unwrap_or_else(|| {
        panic!(
            "no fetch number in {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        )
    })
}

/// One counter or gauge from the Prometheus text of `/metrics`.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
        .trim()
        .parse()
        .unwrap()
}

/// The coalesced-waits counter, read in-process so tests can wait on it.
fn coalesced(gw: &TestGateway) -> u64 {
    gw.running().gateway().metrics.cache_coalesced.get()
}

async fn purge(gw: &TestGateway, auth: Option<&str>, body: &str) -> TestResponse {
    let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
    gw.admin_client()
        .send(
            Method::POST,
            "/admin/cache/purge",
            &headers,
            Bytes::from(body.to_owned()),
        )
        .await
}

async fn join_all(tasks: Vec<JoinHandle<TestResponse>>) -> Vec<TestResponse> {
    let mut answers = Vec::with_capacity(tasks.len());
    for t in tasks {
        // Bounded, so a waiter that is never woken fails the test instead of hanging it.
        let answer = tokio::time::timeout(Duration::from_secs(20), t)
            .await
            .expect("every request was answered")
            .unwrap();
        answers.push(answer);
    }
    answers
}

// === hits ===

#[tokio::test]
async fn repeat_get_is_a_hit_served_without_calling_upstream() {
    let (upstream, gw) = setup().await;
    let c = gw.client();
    let first = c.get("/v1/agents2/a1", BILLING).await;
    assert_eq!(first.status, 200);
    assert_eq!(x_cache(&first), "MISS");
    let status = first.header("cache-status").unwrap();
    assert!(
        status.starts_with("dialnexa-gateway;") && status.contains("fwd=miss"),
        "{status}"
    );
    assert!(first.header("age").is_none());

    let second = c.get("/v1/agents2/a1", BILLING).await;
    assert_eq!(second.status, 200);
    assert_eq!(x_cache(&second), "HIT");
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
    let upstream = FakeUpstream::start().await;
    // One request a minute earned back: the remaining count only goes down during the test.
    let gw = GatewayBuilder::new(upstream.base_url())
        .limits("billing", "{ per_minute = 1, burst = 10 }", None)
        .start()
        .await;
    let c = gw.client();
    let miss = get_with(
        &c,
        "/v1/agents2/a1",
        BILLING,
        &[("x-request-id", "req-first")],
    )
    .await;
    assert_eq!(x_cache(&miss), "MISS");
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
    assert_eq!(x_cache(&hit), "HIT");
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
    assert_eq!((x_cache(&a), x_cache(&b)), ("HIT", "HIT"));
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
    assert_eq!(x_cache(&filled), "MISS");
    let shared = c.get("/v1/agents2/a1", SUPPORT).await;
    assert_eq!(x_cache(&shared), "HIT");
    assert_eq!(shared.body, filled.body);
    assert_eq!(upstream.total(), 1);

    let rival = c.get("/v1/agents2/a1", RIVAL).await;
    assert_eq!(rival.status, 200);
    assert_eq!(x_cache(&rival), "MISS");
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
    assert_eq!(x_cache(&c.get("/v1/agents2/a1", RIVAL).await), "HIT");
    assert_eq!(upstream.total(), 2);

    // A write by one org drops only that org's entry.
    let r = c.patch("/v1/agents2/a1", RIVAL, r#"{"name":"x"}"#).await;
    assert_eq!(r.status, 200);
    assert_eq!(x_cache(&c.get("/v1/agents2/a1", SUPPORT).await), "HIT");
    assert_eq!(x_cache(&c.get("/v1/agents2/a1", RIVAL).await), "MISS");
}

// === variants and invalidation ===

#[tokio::test]
async fn query_order_and_the_unversioned_path_share_one_entry() {
    let (upstream, gw) = setup().await;
    let c = gw.client();
    let filled = c.get("/v1/agents2/a1?a=1&b=2", BILLING).await;
    assert_eq!(x_cache(&filled), "MISS");
    for path in ["/v1/agents2/a1?b=2&a=1", "/agents2/a1?a=1&b=2"] {
        let r = c.get(path, BILLING).await;
        assert_eq!(x_cache(&r), "HIT", "{path}");
        assert_eq!(r.body, filled.body, "{path}");
    }
    // Other queries are other variants.
    for path in [
        "/v1/agents2/a1",
        "/v1/agents2/a1?a=1",
        "/v1/agents2/a1?a=2&b=1",
    ] {
        assert_eq!(x_cache(&c.get(path, BILLING).await), "MISS", "{path}");
    }
    assert_eq!(upstream.count(&Method::GET, "/v1/agents2/a1"), 4);
}

#[tokio::test]
async fn patch_invalidates_every_variant() {
    let (upstream, gw) = setup().await;
    let c = gw.client();
    let variants = [
        "/v1/agents2/a1",
        "/v1/agents/a1",
        "/v1/agents2/a1?version_number=3",
        "/v1/agents/a1?b=2&a=1",
    ];
    for path in variants {
        let r = c.get(path, BILLING).await;
        assert_eq!((x_cache(&r), version(&r)), ("MISS", 1), "{path}");
        let r = c.get(path, SUPPORT).await;
        assert_eq!((x_cache(&r), version(&r)), ("HIT", 1), "{path}");
    }
    let other = c.get("/v1/agents2/a2", BILLING).await;
    assert_eq!(x_cache(&other), "MISS");
    assert_eq!(upstream.count(&Method::GET, "/v1/agents"), 5);

    let r = c.patch("/v1/agents/a1", SUPPORT, r#"{"name":"new"}"#).await;
    assert_eq!(r.status, 200);
    assert_eq!(version(&r), 2);

    for path in variants {
        let r = c.get(path, BILLING).await;
        assert_eq!((x_cache(&r), version(&r)), ("MISS", 2), "{path}");
        let r = c.get(path, BILLING).await;
        assert_eq!((x_cache(&r), version(&r)), ("HIT", 2), "{path}");
    }
    assert_eq!(upstream.count(&Method::GET, "/v1/agents"), 9);
    // Another agent is untouched.
    assert_eq!(x_cache(&c.get("/v1/agents2/a2", BILLING).await), "HIT");

    // The write's audit line counts the variants it dropped.
    wait_until("the PATCH is audited", || {
        gw.audit().iter().any(|l| l["method"] == "PATCH")
    })
    .await;
    let audit = gw.audit();
    let line = audit.iter().find(|l| l["method"] == "PATCH").unwrap();
    assert_eq!(line["invalidated"], 4);
}

#[tokio::test]
async fn writes_to_sub_resources_deletes_and_legacy_paths_invalidate() {
    let (upstream, gw) = setup().await;
    let c = gw.client();
    for path in ["/v1/agents2/a1", "/v1/agents/a1"] {
        c.get(path, BILLING).await;
        assert_eq!(x_cache(&c.get(path, BILLING).await), "HIT", "{path}");
    }

    let r = send_write(&c, Method::POST, "/v1/agents2/a1/publish", BILLING).await;
    assert_eq!(r.status, 200);
    for path in ["/v1/agents2/a1", "/v1/agents/a1"] {
        let r = c.get(path, BILLING).await;
        assert_eq!((x_cache(&r), version(&r)), ("MISS", 2), "{path}");
    }

    let r = send_write(&c, Method::DELETE, "/v1/agents/a1", BILLING).await;
    assert_eq!(r.status, 200);
    let r = c.get("/v1/agents2/a1", BILLING).await;
    assert_eq!((x_cache(&r), version(&r)), ("MISS", 3));

    // The SDK's unversioned write drops what the versioned reads cached.
    let r = c.patch("/agents2/a1", BILLING, r#"{"name":"n"}"#).await;
    assert_eq!(r.status, 200);
    let r = c.get("/v1/agents2/a1", BILLING).await;
    assert_eq!((x_cache(&r), version(&r)), ("MISS", 4));
    assert_eq!(upstream.count(&Method::GET, "/v1/agents2/a1"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_that_upstream_fails_or_times_out_still_invalidates_both_times() {
    let upstream = FakeUpstream::start().await;
    let gw = GatewayBuilder::new(upstream.base_url())
        .upstream("timeout_ms = 1000")
        .start()
        .await;
    let c = gw.client();
    let gets = || upstream.count(&Method::GET, "/v1/agents2/a1");

    // Each failure is slow, so a read can fill the cache while the write is in flight.
    let slow = Duration::from_millis(500);
    let failures = [
        (
            Reply::json(500, json!({"statusCode": 500, "message": "boom"})).with_delay(slow),
            500,
        ),
        // Timed out: it may still have been applied upstream.
        (
            Reply::json(200, json!({})).with_delay(Duration::from_secs(3)),
            504,
        ),
        (Reply::reset().with_delay(slow), 502),
    ];
    for (n, (reply, status)) in failures.into_iter().enumerate() {
        c.get("/v1/agents2/a1", BILLING).await;
        assert_eq!(x_cache(&c.get("/v1/agents2/a1", BILLING).await), "HIT");
        upstream.fail(Method::PATCH, reply);
        let patch = {
            let c = c.clone();
            tokio::spawn(async move { c.patch("/v1/agents2/a1", BILLING, "{}").await })
        };
        wait_until("upstream received the PATCH", || {
            upstream.count(&Method::PATCH, "/") == n + 1
        })
        .await;
        // Dropped when the write was sent, then filled again while it is in flight...
        let during = c.get("/v1/agents2/a1", SUPPORT).await;
        assert_eq!(x_cache(&during), "MISS", "PATCH answered {status}");
        assert_eq!(x_cache(&c.get("/v1/agents2/a1", SUPPORT).await), "HIT");
        assert!(
            !patch.is_finished(),
            "precondition: the PATCH is still in flight"
        );
        assert_eq!(patch.await.unwrap().status, status);
        upstream.heal();
        // ...and dropped again when the write failed.
        let before = gets();
        let r = c.get("/v1/agents2/a1", BILLING).await;
        assert_eq!(x_cache(&r), "MISS", "after a PATCH answered {status}");
        assert_eq!(gets(), before + 1);
        // A write is never retried, even on a reset connection.
        assert_eq!(upstream.count(&Method::PATCH, "/"), n + 1);
    }
}

#[tokio::test]
async fn refused_writes_invalidate_nothing() {
    let upstream = FakeUpstream::start().await;
    let gw = GatewayBuilder::new(upstream.base_url())
        .server("max_body_bytes = 1024")
        .limits(
            "support",
            "{ per_minute = 1000000, burst = 100000 }",
            Some("{ per_minute = 1, burst = 1 }"),
        )
        .start()
        .await;
    let c = gw.client();
    // Spend support's only write of the minute on another agent.
    assert_eq!(
        c.patch("/v1/agents2/other", SUPPORT, "{}").await.status,
        200
    );
    let filled = c.get("/v1/agents2/a1", BILLING).await;
    assert_eq!(x_cache(&filled), "MISS");

    let refusals = [
        (c.patch("/v1/agents2/a1", VIEWER, "{}").await.status, 403),
        (
            send_write(&c, Method::DELETE, "/v1/agents/a1", VIEWER)
                .await
                .status,
            403,
        ),
        (
            c.patch("/v1/agents2/a1", "not-a-team-key", "{}")
                .await
                .status,
            401,
        ),
        (c.patch("/v1/agents2/a1", SUPPORT, "{}").await.status, 429),
        (
            c.patch(
                "/v1/agents2/a1",
                BILLING,
                &format!("{{\"name\":\"{}\"}}", "x".repeat(2048)),
            )
            .await
            .status,
            413,
        ),
    ];
    for (got, want) in refusals {
        assert_eq!(got, want);
    }
    let raw = format!(
        "PATCH /v1/agents2/a1/%2e%2e HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {BILLING}\r\n\
         Content-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    assert_eq!(raw_status(gw.api, raw.as_bytes()).await, 400);

    let r = c.get("/v1/agents2/a1", BILLING).await;
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!(r.body, filled.body);
    assert_eq!(upstream.count(&Method::GET, "/v1/agents2/a1"), 1);
    assert_eq!(upstream.count(&Method::PATCH, "/v1/agents2/a1"), 0);
    assert_eq!(upstream.count(&Method::DELETE, "/"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_fills_while_a_write_is_in_flight_is_dropped_when_the_write_answers() {
    let (upstream, gw) = setup().await;
    number_fetches(&upstream);
    upstream.set_delay(Method::PATCH, Duration::from_secs(1));
    let c = gw.client();
    assert_eq!(fetch_no(&c.get("/v1/agents2/a1", BILLING).await), 1);
    assert_eq!(x_cache(&c.get("/v1/agents2/a1", BILLING).await), "HIT");

    let patch = {
        let c = c.clone();
        tokio::spawn(async move { c.patch("/v1/agents2/a1", BILLING, "{}").await })
    };
    wait_until("upstream received the PATCH", || {
        upstream.count(&Method::PATCH, "/v1/agents2/a1") == 1
    })
    .await;
    // Dropped as the write was sent...
    let during = c.get("/v1/agents2/a1", SUPPORT).await;
    assert_eq!((x_cache(&during), fetch_no(&during)), ("MISS", 2));
    // ...and this read, answered before upstream applied the write, filled the cache again.
    let again = c.get("/v1/agents2/a1", SUPPORT).await;
    assert_eq!((x_cache(&again), fetch_no(&again)), ("HIT", 2));
    assert!(
        !patch.is_finished(),
        "precondition: the PATCH is still in flight"
    );

    assert_eq!(patch.await.unwrap().status, 200);
    let after = c.get("/v1/agents2/a1", BILLING).await;
    assert_eq!((x_cache(&after), fetch_no(&after)), ("MISS", 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_client_went_away_still_invalidates_when_upstream_answers() {
    let (upstream, gw) = setup().await;
    number_fetches(&upstream);
    upstream.set_delay(Method::PATCH, Duration::from_millis(1500));
    let c = gw.client();
    assert_eq!(fetch_no(&c.get("/v1/agents2/a1", BILLING).await), 1);

    let mut writer = tokio::net::TcpStream::connect(gw.api).await.unwrap();
    writer
        .write_all(
            format!(
                "PATCH /v1/agents2/a1 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {BILLING}\r\n\
                 Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    wait_until("upstream received the PATCH", || {
        upstream.count(&Method::PATCH, "/v1/agents2/a1") == 1
    })
    .await;
    drop(writer);
    // The write does not depend on its client any more; the pause only gives a gateway that tied
    // them together (and invalidated a second time on the disconnect) the time to do so.
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Upstream is still working on the write; a read now fills the cache with what it had before.
    let during = c.get("/v1/agents2/a1", SUPPORT).await;
    assert_eq!((x_cache(&during), fetch_no(&during)), ("MISS", 2));
    assert_eq!(x_cache(&c.get("/v1/agents2/a1", SUPPORT).await), "HIT");

    // When upstream answers the write, that read is dropped although nobody waits for the answer,
    // and the audit line says what upstream did with the write its client never saw answered.
    wait_until("the abandoned PATCH is audited", || {
        gw.audit().iter().any(|l| l["method"] == "PATCH")
    })
    .await;
    let audit = gw.audit();
    let line = audit.iter().find(|l| l["method"] == "PATCH").unwrap();
    assert_eq!(line["status"], 499);
    assert_eq!(line["upstream_status"], 200);
    // The entry of the first read (as the write was sent) and of the read in between (on the answer).
    assert_eq!(line["invalidated"], 2);
    let after = c.get("/v1/agents2/a1", BILLING).await;
    assert_eq!((x_cache(&after), fetch_no(&after)), ("MISS", 3));
}

#[tokio::test]
async fn spellings_of_one_agent_path_are_one_agent() {
    let (upstream, gw) = setup().await;
    let c = gw.client();
    assert_eq!(x_cache(&c.get("/v1/agents/abc", BILLING).await), "MISS");
    // Percent-encoded unreserved characters and doubled slashes name the same agent...
    for path in ["/v1/agents/ab%63", "/v1//agents/abc", "/v1/agents//abc"] {
        let r = c.get(path, BILLING).await;
        assert_eq!((x_cache(&r), version(&r)), ("HIT", 1), "{path}");
    }
    // ...so writes through them invalidate it, and upstream sees the one canonical path.
    let r = send_write(&c, Method::PATCH, "/v1/agents/ab%63", BILLING).await;
    assert_eq!(r.status, 200);
    assert_eq!(upstream.requests().last().unwrap().uri, "/v1/agents/abc");
    let r = c.get("/v1/agents//abc", SUPPORT).await;
    assert_eq!((x_cache(&r), version(&r)), ("MISS", 2));

    // Family and id are matched without regard to case for invalidation, as upstream routes them.
    assert_eq!(x_cache(&c.get("/v1/agents/abc", BILLING).await), "HIT");
    let r = send_write(&c, Method::PATCH, "/v1/Agents/ABC", BILLING).await;
    assert_eq!(r.status, 200);
    assert_eq!(x_cache(&c.get("/v1/agents/abc", BILLING).await), "MISS");
    assert_eq!(upstream.count(&Method::GET, "/v1/agents/abc"), 3);
}

#[tokio::test]
async fn a_304_or_a_compressed_answer_to_a_fill_is_never_cached_or_replayed() {
    let (upstream, gw) = setup().await;
    upstream.set_override(|r| match r.path() {
        "/v1/agents2/not-modified" => {
            let mut reply = Reply::json(304, json!({}));
            reply.body = Bytes::new();
            Some(reply)
        }
        "/v1/agents2/gzipped" => {
            Some(Reply::json(200, json!({"id": "gzipped"})).with_header("content-encoding", "gzip"))
        }
        _ => None,
    });
    let c = gw.client();
    // A fill never asks conditionally, so a 304 has no body to give the client, which did not ask
    // conditionally either.
    let r = c.get("/v1/agents2/not-modified", BILLING).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["code"], "upstream_invalid_response");
    assert_eq!(x_cache(&r), "MISS");

    // Upstream compressed although asked for identity: passed on as sent, never stored.
    for _ in 0..2 {
        let r = c.get("/v1/agents2/gzipped", BILLING).await;
        assert_eq!((r.status, x_cache(&r)), (200, "MISS"));
        assert_eq!(r.header("content-encoding"), Some("gzip"));
    }
    assert_eq!(upstream.count(&Method::GET, "/v1/agents2/gzipped"), 2);
}

// === coalescing ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_cold_gets_make_one_upstream_request() {
    let (upstream, gw) = setup().await;
    // Long enough that the requests overlap the one fetch.
    upstream.set_delay(Method::GET, Duration::from_millis(300));
    let before = gw.metrics().await;
    let coalesced_before = metric(&before, "dialnexa_gateway_cache_coalesced_total");
    let fetches_before = metric(
        &before,
        "dialnexa_gateway_upstream_request_duration_seconds_count",
    );
    let tasks = (0..100)
        // A client each: its own pool, so its own connection.
        .map(|_| spawn_get(&gw.client(), "/v1/agents2/hot", BILLING))
        .collect();
    let answers = join_all(tasks).await;

    assert_eq!(upstream.count(&Method::GET, "/"), 1);
    for a in &answers {
        assert_eq!(a.status, 200);
        assert_eq!(a.body, answers[0].body);
    }
    assert_eq!(version(&answers[0]), 1);
    let misses = answers.iter().filter(|a| x_cache(a) == "MISS").count();
    let hits = answers.iter().filter(|a| x_cache(a) == "HIT").count();
    assert_eq!(misses + hits, 100);
    assert!(misses > 1, "the requests did not overlap the fetch");
    // Every miss but the one that fetched waited for that fetch.
    let after = gw.metrics().await;
    let coalesced_after = metric(&after, "dialnexa_gateway_cache_coalesced_total");
    assert_eq!(coalesced_after - coalesced_before, (misses - 1) as f64);
    // The upstream latency histogram counts upstream requests, not the requests that shared one.
    let fetches_after = metric(
        &after,
        "dialnexa_gateway_upstream_request_duration_seconds_count",
    );
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
    wait_until("upstream received the first GET", || {
        upstream.count(&Method::GET, path) == 1
    })
    .await;
    tasks.extend((0..waiters).map(|_| spawn_get(&gw.client(), path, BILLING)));
    wait_until("the others wait for the first one's fetch", || {
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
    for a in join_all(tasks).await {
        assert_eq!(a.status, 500);
        assert_eq!(a.json(), error);
        assert_eq!(x_cache(&a), "MISS");
    }
    assert_eq!(upstream.count(&Method::GET, "/"), 1);

    // The error was not stored.
    upstream.heal();
    let r = gw.client().get("/v1/agents2/a1", BILLING).await;
    assert_eq!((r.status, x_cache(&r)), (200, "MISS"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_waiters_all_get_502_when_upstream_resets_the_one_request() {
    let (upstream, gw) = setup().await;
    upstream.fail(
        Method::GET,
        Reply::reset().with_delay(Duration::from_millis(500)),
    );
    let tasks = leader_and_waiters(&upstream, &gw, "/v1/agents2/a1", 19).await;
    for a in join_all(tasks).await {
        assert_eq!((a.status, x_cache(&a)), (502, "MISS"));
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
    wait_until("upstream received the first GET", || {
        upstream.count(&Method::GET, "/") == 1
    })
    .await;
    let waiter = spawn_get(&gw.client(), "/v1/agents2/a1", SUPPORT);
    wait_until("the second GET waits for the first", || {
        coalesced(&gw) - before == 1
    })
    .await;
    drop(leader);
    // Joins the same fetch although its first client is gone.
    let late = spawn_get(&gw.client(), "/v1/agents2/a1", BILLING);

    for r in join_all(vec![waiter, late]).await {
        assert_eq!((r.status, x_cache(&r)), (200, "MISS"));
        assert_eq!(version(&r), 1);
    }
    // The fetch belongs to everyone waiting on it, so it ran on without its first client: one
    // upstream request, and its answer was cached.
    assert_eq!(upstream.count(&Method::GET, "/"), 1);
    let r = gw.client().get("/v1/agents2/a1", BILLING).await;
    assert_eq!(x_cache(&r), "HIT");
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

// === the write race ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_racing_a_patch_never_returns_the_old_version_once_the_patch_is_answered() {
    let (upstream, gw) = setup().await;
    upstream.set_delay(Method::GET, Duration::from_millis(100));
    let c = gw.client();
    for i in 0..50 {
        let path = format!("/v1/agents2/race-{i:03}");
        // Both families address the same agent: alternate the one written to.
        let family = if i % 2 == 0 { "agents2" } else { "agents" };
        let slow = spawn_get(&c, &path, BILLING);
        wait_until("upstream received the cold GET", || {
            upstream.count(&Method::GET, &path) == 1
        })
        .await;
        let patched = c
            .patch(&format!("/v1/{family}/race-{i:03}"), SUPPORT, "{}")
            .await;
        assert_eq!((patched.status, version(&patched)), (200, 2));
        // The read that began before the write may answer the old version...
        let slow = slow.await.unwrap();
        assert_eq!(
            version(&slow),
            1,
            "iteration {i}: {} {:?} {:?}",
            slow.status,
            slow.headers,
            slow.body
        );
        // ...but nothing after the write's answer may.
        let after = c.get(&path, BILLING).await;
        assert_eq!(
            (x_cache(&after), version(&after)),
            ("MISS", 2),
            "iteration {i}"
        );
        assert_eq!(upstream.count(&Method::GET, &path), 2, "iteration {i}");
        let cached = c.get(&path, SUPPORT).await;
        assert_eq!(
            (x_cache(&cached), version(&cached)),
            ("HIT", 2),
            "iteration {i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_after_a_patch_never_joins_a_fill_that_started_before_it() {
    let (upstream, gw) = setup().await;
    let c = gw.client();
    for i in 0..15 {
        let path = format!("/v1/agents/join-{i:03}");
        // Only the first GET is slow: it is still in flight through the PATCH and the next GET.
        upstream.set_delay(Method::GET, Duration::from_millis(300));
        let slow = spawn_get(&c, &path, BILLING);
        wait_until("upstream received the cold GET", || {
            upstream.count(&Method::GET, &path) == 1
        })
        .await;
        upstream.heal();
        let patched = c.patch(&path, BILLING, "{}").await;
        assert_eq!((patched.status, version(&patched)), (200, 2));

        let fresh = c.get(&path, SUPPORT).await;
        assert_eq!(
            (x_cache(&fresh), version(&fresh)),
            ("MISS", 2),
            "iteration {i}"
        );
        assert_eq!(
            upstream.count(&Method::GET, &path),
            2,
            "iteration {i}: the read after the PATCH made its own upstream request"
        );
        let slow = slow.await.unwrap();
        assert_eq!(
            version(&slow),
            1,
            "iteration {i}: {} {:?} {:?}",
            slow.status,
            slow.headers,
            slow.body
        );
        // The older fill, ending last, did not overwrite the newer entry.
        let cached = c.get(&path, BILLING).await;
        assert_eq!(
            (x_cache(&cached), version(&cached)),
            ("HIT", 2),
            "iteration {i}"
        );
        assert_eq!(upstream.count(&Method::GET, &path), 2);
    }
}

// === client directives ===

#[tokio::test]
async fn client_no_cache_fetches_fresh_and_refreshes_the_entry() {
    let (upstream, gw) = setup().await;
    number_fetches(&upstream);
    let c = gw.client();
    assert_eq!(fetch_no(&c.get("/v1/agents2/a1", BILLING).await), 1);
    let r = c.get("/v1/agents2/a1", BILLING).await;
    assert_eq!((x_cache(&r), fetch_no(&r)), ("HIT", 1));

    let r = get_with(
        &c,
        "/v1/agents2/a1",
        BILLING,
        &[("cache-control", "no-cache")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!((x_cache(&r), fetch_no(&r)), ("MISS", 2));
    assert_eq!(upstream.count(&Method::GET, "/"), 2);

    let r = c.get("/v1/agents2/a1", SUPPORT).await;
    assert_eq!((x_cache(&r), fetch_no(&r)), ("HIT", 2));
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
    assert_eq!((x_cache(&r), fetch_no(&r)), ("BYPASS", 1));
    assert!(r.header("age").is_none());
    let r = c.get("/v1/agents2/a1", BILLING).await;
    assert_eq!((x_cache(&r), fetch_no(&r)), ("MISS", 2));
    let r = c.get("/v1/agents2/a1", BILLING).await;
    assert_eq!((x_cache(&r), fetch_no(&r)), ("HIT", 2));

    // Something cached: still goes upstream, and leaves the entry as it was.
    let r = get_with(&c, "/v1/agents2/a1", BILLING, &no_store).await;
    assert_eq!((x_cache(&r), fetch_no(&r)), ("BYPASS", 3));
    let r = c.get("/v1/agents2/a1", BILLING).await;
    assert_eq!((x_cache(&r), fetch_no(&r)), ("HIT", 2));
    assert_eq!(upstream.count(&Method::GET, "/"), 3);

    // Upstream unreachable: the gateway's own 502, still marked as a bypass.
    upstream.set_override(|_| Some(Reply::reset()));
    let r = get_with(&c, "/v1/agents2/a1", BILLING, &no_store).await;
    assert_eq!((r.status, x_cache(&r)), (502, "BYPASS"));
    assert_eq!(r.json()["code"], "upstream_unreachable");
}

// === what is stored ===

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
        assert_eq!((r.status, x_cache(&r)), (200, "MISS"));
        assert_eq!(r.header("cache-control"), Some("no-store"));
        let r = c.get("/v1/agents2/ghost", BILLING).await;
        assert_eq!((r.status, x_cache(&r)), (404, "MISS"));
        assert_eq!(r.json()["message"], "agent not found");
    }
    assert_eq!(upstream.count(&Method::GET, "/v1/agents2/nostore"), 2);
    assert_eq!(upstream.count(&Method::GET, "/v1/agents2/ghost"), 2);

    // The cache is per organisation, so `private` does not forbid storing.
    let r = c.get("/v1/agents2/private", BILLING).await;
    assert_eq!(x_cache(&r), "MISS");
    let r = c.get("/v1/agents2/private", SUPPORT).await;
    assert_eq!(x_cache(&r), "HIT");
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
    let upstream = FakeUpstream::start().await;
    let gw = GatewayBuilder::new(upstream.base_url())
        .cache("max_entry_bytes = 2048")
        .start()
        .await;
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
    assert_eq!((r.body.len(), x_cache(&r)), (2048, "MISS"));
    let r = c.get("/v1/agents2/at-limit", BILLING).await;
    assert_eq!((r.body.len(), x_cache(&r)), (2048, "HIT"));

    for path in ["/v1/agents2/over", "/v1/agents2/big"] {
        for _ in 0..2 {
            let r = c.get(path, BILLING).await;
            assert_eq!((r.status, x_cache(&r)), (200, "MISS"), "{path}");
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
    for a in join_all(tasks).await {
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
    wait_until("upstream received the fill", || upstream.total() == 1).await;
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
        assert_eq!(version(r), 1);
    }
    let r = get_with(
        &c,
        "/v1/agents2/a1",
        BILLING,
        &[("accept-encoding", "gzip, deflate")],
    )
    .await;
    assert_eq!((r.status, x_cache(&r), version(&r)), (200, "HIT", 1));
    assert_eq!(upstream.total(), 1);
}

// === stale-if-error ===

async fn short_ttl_gateway(upstream: &FakeUpstream) -> TestGateway {
    GatewayBuilder::new(upstream.base_url())
        .cache("ttl_seconds = 1")
        .cache("stale_if_error_seconds = 60")
        .upstream("timeout_ms = 500")
        .start()
        .await
}

/// Expiry is the behaviour under test and the TTL is whole seconds: wait it out.
async fn outlive_the_one_second_ttl() {
    tokio::time::sleep(Duration::from_millis(1100)).await;
}

#[tokio::test]
async fn expired_entry_is_served_stale_when_upstream_fails() {
    let upstream = FakeUpstream::start().await;
    let gw = short_ttl_gateway(&upstream).await;
    let c = gw.client();
    let agents = ["s500", "sreset", "stimeout", "s404"];
    let mut filled = Vec::new();
    for a in agents {
        let r = c.get(&format!("/v1/agents2/{a}"), BILLING).await;
        assert_eq!((r.status, x_cache(&r)), (200, "MISS"));
        filled.push(r.body);
    }
    outlive_the_one_second_ttl().await;

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
        assert_eq!((r.status, x_cache(&r)), (200, "STALE"), "{agent}");
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
    assert_eq!((r.status, x_cache(&r)), (404, "MISS"));

    // No copy at all: the failure passes through.
    upstream.fail(Method::GET, Reply::json(500, error.clone()));
    let r = c.get("/v1/agents2/never-cached", BILLING).await;
    assert_eq!((r.status, x_cache(&r)), (500, "MISS"));
    assert_eq!(r.json(), error);
    upstream.fail(Method::GET, Reply::reset());
    let r = c.get("/v1/agents2/never-cached", BILLING).await;
    // The gateway's own error still says how the cache took part.
    assert_eq!((r.status, x_cache(&r)), (502, "MISS"));
    assert_eq!(r.json()["code"], "upstream_unreachable");
    let status = r.header("cache-status").unwrap();
    assert!(status.contains("detail=upstream_unreachable"), "{status}");

    // Upstream back: the expired entry is refetched and fresh again.
    upstream.heal();
    let r = c.get("/v1/agents2/s500", BILLING).await;
    assert_eq!((r.status, x_cache(&r)), (200, "MISS"));
    assert_eq!(x_cache(&c.get("/v1/agents2/s500", BILLING).await), "HIT");
}

#[tokio::test]
async fn invalidated_entry_is_never_served_stale() {
    let upstream = FakeUpstream::start().await;
    let gw = short_ttl_gateway(&upstream).await;
    let c = gw.client();
    for a in ["kept", "patched", "deleted", "purged"] {
        c.get(&format!("/v1/agents2/{a}"), BILLING).await;
    }
    outlive_the_one_second_ttl().await;

    upstream.fail(
        Method::PATCH,
        Reply::json(500, json!({"statusCode": 500, "message": "write failed"})),
    );
    assert_eq!(
        c.patch("/v1/agents2/patched", BILLING, "{}").await.status,
        500
    );
    upstream.fail(Method::DELETE, Reply::reset());
    let r = send_write(&c, Method::DELETE, "/v1/agents/deleted", BILLING).await;
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
    assert_eq!((r.status, x_cache(&r)), (200, "STALE"));
    for a in ["patched", "deleted", "purged"] {
        let r = c.get(&format!("/v1/agents2/{a}"), BILLING).await;
        assert_eq!((r.status, x_cache(&r)), (500, "MISS"), "{a}");
    }
    upstream.fail(Method::GET, Reply::reset());
    for a in ["patched", "deleted", "purged"] {
        let r = c.get(&format!("/v1/agents2/{a}"), BILLING).await;
        assert_eq!((r.status, x_cache(&r)), (502, "MISS"), "{a}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_invalidated_while_its_refetch_is_failing_is_not_served_stale() {
    let upstream = FakeUpstream::start().await;
    let gw = short_ttl_gateway(&upstream).await;
    let c = gw.client();
    c.get("/v1/agents2/a1", BILLING).await;
    outlive_the_one_second_ttl().await;

    // The refetch of the expired entry is slow to fail; a write lands meanwhile.
    upstream.fail(
        Method::GET,
        Reply::json(500, json!({"statusCode": 500, "message": "down"}))
            .with_delay(Duration::from_millis(300)),
    );
    let read = spawn_get(&c, "/v1/agents2/a1", SUPPORT);
    wait_until("upstream received the refetch", || {
        upstream.count(&Method::GET, "/") == 2
    })
    .await;
    assert_eq!(c.patch("/v1/agents/a1", BILLING, "{}").await.status, 200);
    let r = read.await.unwrap();
    assert_eq!((r.status, x_cache(&r)), (500, "MISS"));
}

// === admin purge ===

#[tokio::test]
async fn admin_purge_by_agent_by_org_or_everything() {
    let (upstream, gw) = setup().await;
    let c = gw.client();
    let admin = bearer(ADMIN_TOKEN);
    let acme = ["/v1/agents2/a1", "/v1/agents/a1", "/v1/agents2/a2"];
    for path in acme {
        c.get(path, BILLING).await;
    }
    c.get("/v1/agents2/a1", RIVAL).await;
    assert_eq!(upstream.total(), 4);

    let r = purge(&gw, Some(&admin), r#"{"org":"acme","agent_id":"a1"}"#).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    assert_eq!(
        (&body["purged"], &body["org"], &body["agent_id"]),
        (&json!(2), &json!("acme"), &json!("a1"))
    );
    for path in ["/v1/agents2/a1", "/v1/agents/a1"] {
        assert_eq!(x_cache(&c.get(path, BILLING).await), "MISS", "{path}");
    }
    assert_eq!(x_cache(&c.get("/v1/agents2/a2", BILLING).await), "HIT");
    assert_eq!(x_cache(&c.get("/v1/agents2/a1", RIVAL).await), "HIT");

    // The organisation: acme's three variants, not globex's.
    let r = purge(&gw, Some(&admin), r#"{"org":"acme"}"#).await;
    assert_eq!((r.status, &r.json()["purged"]), (200, &json!(3)));
    for path in acme {
        assert_eq!(x_cache(&c.get(path, SUPPORT).await), "MISS", "{path}");
    }
    assert_eq!(x_cache(&c.get("/v1/agents2/a1", RIVAL).await), "HIT");

    // Everything: acme's three again plus globex's one.
    let r = purge(&gw, Some(&admin), "").await;
    assert_eq!((r.status, &r.json()["purged"]), (200, &json!(4)));
    assert_eq!(x_cache(&c.get("/v1/agents2/a1", RIVAL).await), "MISS");
    assert_eq!(x_cache(&c.get("/v1/agents2/a2", BILLING).await), "MISS");

    // One agent id in every organisation.
    c.get("/v1/agents2/a1", BILLING).await;
    let r = purge(&gw, Some(&admin), r#"{"agent_id":"a1"}"#).await;
    assert_eq!((r.status, &r.json()["purged"]), (200, &json!(2)));
    assert_eq!(x_cache(&c.get("/v1/agents2/a1", RIVAL).await), "MISS");
    assert_eq!(x_cache(&c.get("/v1/agents2/a1", BILLING).await), "MISS");
    assert_eq!(x_cache(&c.get("/v1/agents2/a2", BILLING).await), "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_drops_a_fill_that_was_in_flight_when_it_ran() {
    let (upstream, gw) = setup().await;
    upstream.set_delay(Method::GET, Duration::from_millis(300));
    let c = gw.client();
    let admin = bearer(ADMIN_TOKEN);
    for (agent, scope) in [
        ("p1", r#"{"org":"acme","agent_id":"p1"}"#),
        ("p2", r#"{"org":"acme"}"#),
        ("p3", r#"{"agent_id":"p3"}"#),
        ("p4", ""),
    ] {
        let path = format!("/v1/agents2/{agent}");
        let read = spawn_get(&c, &path, BILLING);
        wait_until("upstream received the fill", || {
            upstream.count(&Method::GET, &path) == 1
        })
        .await;
        assert_eq!(purge(&gw, Some(&admin), scope).await.status, 200);
        assert_eq!(read.await.unwrap().status, 200);
        let r = c.get(&path, BILLING).await;
        assert_eq!(x_cache(&r), "MISS", "purge {scope:?} let an older fill in");
    }
}

#[tokio::test]
async fn admin_purge_without_the_admin_token_is_401_and_purges_nothing() {
    let (upstream, gw) = setup().await;
    let c = gw.client();
    c.get("/v1/agents2/a1", BILLING).await;
    let body = r#"{"org":"acme","agent_id":"a1"}"#;
    for auth in [
        None,
        Some("Bearer not-the-admin-token".to_owned()),
        Some(bearer(BILLING)),
    ] {
        let r = purge(&gw, auth.as_deref(), body).await;
        assert_eq!(r.status, 401);
    }
    // The admin token is a Bearer token, not an `X-Api-Key`.
    let r = gw
        .admin_client()
        .send(
            Method::POST,
            "/admin/cache/purge",
            &[("x-api-key", ADMIN_TOKEN)],
            Bytes::from_static(body.as_bytes()),
        )
        .await;
    assert_eq!(r.status, 401);
    // The admin API does not exist on the API listener: its paths are the gateway's own 404.
    let r = c
        .send(
            Method::POST,
            "/admin/cache/purge",
            &[("authorization", &bearer(ADMIN_TOKEN))],
            Bytes::from_static(body.as_bytes()),
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(x_cache(&c.get("/v1/agents2/a1", BILLING).await), "HIT");
    assert_eq!(upstream.total(), 1);
}

// === metrics ===

#[tokio::test]
async fn metrics_count_hits_misses_and_invalidations() {
    let (_upstream, gw) = setup().await;
    let c = gw.client();
    let before = gw.metrics().await;
    c.get("/v1/agents2/a1", BILLING).await;
    let filled = gw.metrics().await;
    let r = c.get("/v1/agents2/a1", BILLING).await;
    assert_eq!(x_cache(&r), "HIT");
    let after_hit = gw.metrics().await;

    let delta = |a: &str, b: &str, name: &str| metric(b, name) - metric(a, name);
    assert_eq!(
        delta(&before, &filled, "dialnexa_gateway_cache_misses_total"),
        1.0
    );
    assert_eq!(
        delta(&before, &filled, "dialnexa_gateway_cache_hits_total"),
        0.0
    );
    assert_eq!(
        delta(&filled, &after_hit, "dialnexa_gateway_cache_hits_total"),
        1.0
    );
    assert!(metric(&after_hit, "dialnexa_gateway_cache_bytes") > 0.0);
    assert_eq!(metric(&after_hit, "dialnexa_gateway_cache_entries"), 1.0);

    c.patch("/v1/agents2/a1", BILLING, "{}").await;
    let after_write = gw.metrics().await;
    assert!(
        delta(
            &after_hit,
            &after_write,
            "dialnexa_gateway_cache_invalidations_total"
        ) >= 1.0
    );
    assert_eq!(metric(&after_write, "dialnexa_gateway_cache_entries"), 0.0);
}

#[tokio::test]
async fn with_caching_turned_off_agent_reads_say_bypass_and_always_go_upstream() {
    let upstream = FakeUpstream::start().await;
    let gw = GatewayBuilder::new(upstream.base_url())
        .cache("enabled = false")
        .start()
        .await;
    let c = gw.client();
    for _ in 0..2 {
        let r = c.get("/v1/agents2/a1", BILLING).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-cache"), Some("BYPASS"));
    }
    assert_eq!(upstream.count(&Method::GET, "/v1/agents2/a1"), 2);
    let lines = gw.audit_lines(2).await;
    assert!(lines.iter().all(|l| l["cache"] == "bypass"));
}
