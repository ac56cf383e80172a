//! Invalidation (step 5): a write to an agent drops every variant of it in its organisation, as
//! it is sent and again when it is answered, whatever upstream answered; refused writes drop nothing.

use super::*;

#[tokio::test]
async fn query_order_and_the_unversioned_path_share_one_entry() {
    let (upstream, gw) = setup().await;
    let c = gw.client();
    let filled = c.get("/v1/agents2/a1?a=1&b=2", BILLING).await;
    assert_eq!(filled.x_cache(), "MISS");
    for path in ["/v1/agents2/a1?b=2&a=1", "/agents2/a1?a=1&b=2"] {
        let r = c.get(path, BILLING).await;
        assert_eq!(r.x_cache(), "HIT", "{path}");
        assert_eq!(r.body, filled.body, "{path}");
    }
    // Other queries are other variants.
    for path in [
        "/v1/agents2/a1",
        "/v1/agents2/a1?a=1",
        "/v1/agents2/a1?a=2&b=1",
    ] {
        assert_eq!(c.get(path, BILLING).await.x_cache(), "MISS", "{path}");
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
        assert_eq!((r.x_cache(), r.version()), ("MISS", 1), "{path}");
        let r = c.get(path, SUPPORT).await;
        assert_eq!((r.x_cache(), r.version()), ("HIT", 1), "{path}");
    }
    let other = c.get("/v1/agents2/a2", BILLING).await;
    assert_eq!(other.x_cache(), "MISS");
    assert_eq!(upstream.count(&Method::GET, "/v1/agents"), 5);

    let r = c.patch("/v1/agents/a1", SUPPORT, r#"{"name":"new"}"#).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version(), 2);

    for path in variants {
        let r = c.get(path, BILLING).await;
        assert_eq!((r.x_cache(), r.version()), ("MISS", 2), "{path}");
        let r = c.get(path, BILLING).await;
        assert_eq!((r.x_cache(), r.version()), ("HIT", 2), "{path}");
    }
    assert_eq!(upstream.count(&Method::GET, "/v1/agents"), 9);
    // Another agent is untouched.
    assert_eq!(c.get("/v1/agents2/a2", BILLING).await.x_cache(), "HIT");

    // The write's audit line counts the variants it dropped.
    wait_until("the PATCH is audited", async || {
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
        assert_eq!(c.get(path, BILLING).await.x_cache(), "HIT", "{path}");
    }

    let r = c
        .write(Method::POST, "/v1/agents2/a1/publish", BILLING, "{}")
        .await;
    assert_eq!(r.status, 200);
    for path in ["/v1/agents2/a1", "/v1/agents/a1"] {
        let r = c.get(path, BILLING).await;
        assert_eq!((r.x_cache(), r.version()), ("MISS", 2), "{path}");
    }

    let r = c
        .write(Method::DELETE, "/v1/agents/a1", BILLING, "{}")
        .await;
    assert_eq!(r.status, 200);
    let r = c.get("/v1/agents2/a1", BILLING).await;
    assert_eq!((r.x_cache(), r.version()), ("MISS", 3));

    // The SDK's unversioned write drops what the versioned reads cached.
    let r = c.patch("/agents2/a1", BILLING, r#"{"name":"n"}"#).await;
    assert_eq!(r.status, 200);
    let r = c.get("/v1/agents2/a1", BILLING).await;
    assert_eq!((r.x_cache(), r.version()), ("MISS", 4));
    assert_eq!(upstream.count(&Method::GET, "/v1/agents2/a1"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_that_upstream_fails_or_times_out_still_invalidates_both_times() {
    let (upstream, gw) = setup_with(|config| config.upstream_timeout_ms(1000)).await;
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
        assert_eq!(c.get("/v1/agents2/a1", BILLING).await.x_cache(), "HIT");
        upstream.fail(Method::PATCH, reply);
        let patch = {
            let c = c.clone();
            tokio::spawn(async move { c.patch("/v1/agents2/a1", BILLING, "{}").await })
        };
        wait_until("upstream received the PATCH", async || {
            upstream.count(&Method::PATCH, "/") == n + 1
        })
        .await;
        // Dropped when the write was sent, then filled again while it is in flight...
        let during = c.get("/v1/agents2/a1", SUPPORT).await;
        assert_eq!(during.x_cache(), "MISS", "PATCH answered {status}");
        assert_eq!(c.get("/v1/agents2/a1", SUPPORT).await.x_cache(), "HIT");
        assert!(
            !patch.is_finished(),
            "precondition: the PATCH is still in flight"
        );
        assert_eq!(patch.await.unwrap().status, status);
        upstream.heal();
        // ...and dropped again when the write failed.
        let before = gets();
        let r = c.get("/v1/agents2/a1", BILLING).await;
        assert_eq!(r.x_cache(), "MISS", "after a PATCH answered {status}");
        assert_eq!(gets(), before + 1);
        // A write is never retried, even on a reset connection.
        assert_eq!(upstream.count(&Method::PATCH, "/"), n + 1);
    }
}

#[tokio::test]
async fn refused_writes_invalidate_nothing() {
    let (upstream, gw) = setup_with(|config| {
        config
            .max_body_bytes(1024)
            .team_quota("support", 1_000_000, 100_000)
            .write_quota("support", 1, 1)
    })
    .await;
    let c = gw.client();
    // Spend support's only write of the minute on another agent.
    assert_eq!(
        c.patch("/v1/agents2/other", SUPPORT, "{}").await.status,
        200
    );
    let filled = c.get("/v1/agents2/a1", BILLING).await;
    assert_eq!(filled.x_cache(), "MISS");

    let refusals = [
        (c.patch("/v1/agents2/a1", VIEWER, "{}").await.status, 403),
        (
            c.write(Method::DELETE, "/v1/agents/a1", VIEWER, "{}")
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
    assert_eq!(r.x_cache(), "HIT");
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
    assert_eq!(c.get("/v1/agents2/a1", BILLING).await.x_cache(), "HIT");

    let patch = {
        let c = c.clone();
        tokio::spawn(async move { c.patch("/v1/agents2/a1", BILLING, "{}").await })
    };
    wait_until("upstream received the PATCH", async || {
        upstream.count(&Method::PATCH, "/v1/agents2/a1") == 1
    })
    .await;
    // Dropped as the write was sent...
    let during = c.get("/v1/agents2/a1", SUPPORT).await;
    assert_eq!((during.x_cache(), fetch_no(&during)), ("MISS", 2));
    // ...and this read, answered before upstream applied the write, filled the cache again.
    let again = c.get("/v1/agents2/a1", SUPPORT).await;
    assert_eq!((again.x_cache(), fetch_no(&again)), ("HIT", 2));
    assert!(
        !patch.is_finished(),
        "precondition: the PATCH is still in flight"
    );

    assert_eq!(patch.await.unwrap().status, 200);
    let after = c.get("/v1/agents2/a1", BILLING).await;
    assert_eq!((after.x_cache(), fetch_no(&after)), ("MISS", 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_client_went_away_still_invalidates_when_upstream_answers() {
    // Two connections: the reads' and the write's, until the write's client leaves.
    let (upstream, gw) = setup_with(|config| config.max_connections(2)).await;
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
    wait_until("upstream received the PATCH", async || {
        upstream.count(&Method::PATCH, "/v1/agents2/a1") == 1
    })
    .await;
    drop(writer);
    // The write does not depend on its client any more. The next read comes on a connection of
    // its own, which `max_connections = 2` lets in only once the gateway has closed the writer's:
    // a gateway that tied the write to its client (and invalidated a second time on the
    // disconnect) has done so by then.
    let during = gw.client().get("/v1/agents2/a1", SUPPORT).await;

    // Upstream is still working on the write; that read filled the cache with what it had before.
    assert_eq!((during.x_cache(), fetch_no(&during)), ("MISS", 2));
    assert_eq!(c.get("/v1/agents2/a1", SUPPORT).await.x_cache(), "HIT");

    // When upstream answers the write, that read is dropped although nobody waits for the answer,
    // and the audit line says what upstream did with the write its client never saw answered.
    wait_until("the abandoned PATCH is audited", async || {
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
    assert_eq!((after.x_cache(), fetch_no(&after)), ("MISS", 3));
}

#[tokio::test]
async fn spellings_of_one_agent_path_are_one_agent() {
    let (upstream, gw) = setup().await;
    let c = gw.client();
    assert_eq!(c.get("/v1/agents/abc", BILLING).await.x_cache(), "MISS");
    // Percent-encoded unreserved characters and doubled slashes name the same agent...
    for path in ["/v1/agents/ab%63", "/v1//agents/abc", "/v1/agents//abc"] {
        let r = c.get(path, BILLING).await;
        assert_eq!((r.x_cache(), r.version()), ("HIT", 1), "{path}");
    }
    // ...so writes through them invalidate it, and upstream sees the one canonical path.
    let r = c
        .write(Method::PATCH, "/v1/agents/ab%63", BILLING, "{}")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(upstream.requests().last().unwrap().uri, "/v1/agents/abc");
    let r = c.get("/v1/agents//abc", SUPPORT).await;
    assert_eq!((r.x_cache(), r.version()), ("MISS", 2));

    // Family and id are matched without regard to case for invalidation, as upstream routes them.
    assert_eq!(c.get("/v1/agents/abc", BILLING).await.x_cache(), "HIT");
    let r = c
        .write(Method::PATCH, "/v1/Agents/ABC", BILLING, "{}")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(c.get("/v1/agents/abc", BILLING).await.x_cache(), "MISS");
    assert_eq!(upstream.count(&Method::GET, "/v1/agents/abc"), 3);
}

/// Reserved characters name the same agent upstream whether escaped or not, so a read under one
/// spelling is a hit for the other, and a write under either drops it; upstream is still sent
/// the spelling the request used.
#[tokio::test]
async fn reserved_characters_escaped_or_not_are_one_cache_entry_and_one_invalidation() {
    let (upstream, gw) = setup().await;
    let c = gw.client();
    let gets = || {
        upstream
            .requests()
            .iter()
            .filter(|r| r.method == Method::GET)
            .count()
    };
    for (plain, escaped) in [
        ("a:b", "a%3Ab"),
        ("%7Bx%7D", "{x}"),
        ("a@b!$;=", "a%40b%21%24%3b%3D"),
    ] {
        let before = gets();
        let first = c.get(&format!("/v1/agents2/{plain}"), BILLING).await;
        assert_eq!((first.x_cache(), first.version()), ("MISS", 1), "{plain}");
        let r = c.get(&format!("/v1/agents2/{escaped}"), SUPPORT).await;
        assert_eq!((r.x_cache(), &r.body), ("HIT", &first.body), "{escaped}");
        assert_eq!(
            gets(),
            before + 1,
            "{plain}: one upstream call for both spellings"
        );

        // A write under the other spelling drops it, and is forwarded as it was spelt.
        let r = c
            .write(
                Method::PATCH,
                &format!("/v1/agents2/{escaped}"),
                BILLING,
                "{}",
            )
            .await;
        assert_eq!(r.status, 200);
        let sent = upstream.requests().last().unwrap().uri.clone();
        assert_eq!(sent, format!("/v1/agents2/{escaped}").replace("%3b", "%3B"));
        let r = c.get(&format!("/v1/agents2/{plain}"), SUPPORT).await;
        assert_eq!((r.x_cache(), r.version()), ("MISS", 2), "{plain}");

        // And the other way round: a read cached under the escaped spelling, a write under the plain one.
        let r = c.get(&format!("/v1/agents/{escaped}"), BILLING).await;
        assert_eq!((r.x_cache(), r.version()), ("MISS", 2), "{escaped}");
        let r = c
            .write(
                Method::PATCH,
                &format!("/agents/{plain}/versions"),
                BILLING,
                "{}",
            )
            .await;
        assert_eq!(r.status, 200);
        let r = c.get(&format!("/v1/agents/{escaped}"), BILLING).await;
        assert_eq!((r.x_cache(), r.version()), ("MISS", 3), "{escaped}");
    }
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
    assert_eq!(r.x_cache(), "MISS");

    // Upstream compressed although asked for identity: passed on as sent, never stored.
    for _ in 0..2 {
        let r = c.get("/v1/agents2/gzipped", BILLING).await;
        assert_eq!((r.status, r.x_cache()), (200, "MISS"));
        assert_eq!(r.header("content-encoding"), Some("gzip"));
    }
    assert_eq!(upstream.count(&Method::GET, "/v1/agents2/gzipped"), 2);
}
