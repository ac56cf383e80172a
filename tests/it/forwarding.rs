//! The gateway core on the wire: identification, authorization, credential swap, path mapping,
//! request ids, refusals that never reach upstream, upstream failures, streaming.

use std::time::Duration;

use bytes::Bytes;
use http::Method;

use crate::support::client::{raw_exchange, raw_status};
use crate::support::*;

#[tokio::test]
async fn org_key_is_injected_and_the_team_key_never_reaches_upstream() {
    let (upstream, gw) = setup().await;
    let c = gw.client();
    let r = c
        .send(
            Method::POST,
            "/v1/calls",
            &[
                ("authorization", &bearer(BILLING)),
                ("content-type", "application/json"),
                ("x-forwarded-for", "10.1.2.3"),
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
                ("connection", "x-secret-hop"),
                ("x-secret-hop", "1"),
            ],
            Bytes::from_static(br#"{"to":"+15550100"}"#),
        )
        .await;
    assert_eq!(r.status, 200);
    let x = c
        .send(
            Method::GET,
            "/v1/calls",
            &[("x-api-key", RIVAL)],
            Bytes::new(),
        )
        .await;
    assert_eq!(x.status, 200);

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
    for req in &seen {
        assert_eq!(req.headers.get_all("authorization").iter().count(), 1);
        assert!(req.headers.get("x-api-key").is_none());
        assert!(req.headers.get("x-forwarded-for").is_none());
        assert!(req.headers.get("x-secret-hop").is_none());
        for (_, v) in req.headers.iter() {
            let v = v.to_str().unwrap_or("");
            assert!(
                !v.contains(BILLING) && !v.contains(RIVAL),
                "team key leaked upstream"
            );
        }
    }
    assert_eq!(seen[0].body.as_ref(), br#"{"to":"+15550100"}"#);
    assert_eq!(seen[0].headers["content-type"], "application/json");
    assert!(seen[0].headers.get("traceparent").is_some());
}

#[tokio::test]
async fn unknown_or_missing_key_is_401_with_www_authenticate_and_nothing_forwarded() {
    let (upstream, gw) = setup().await;
    let c = gw.client();
    for headers in [
        vec![],
        vec![("authorization", "Bearer not-a-team-key")],
        vec![("authorization", "Basic YWxhZGRpbjpvcGVuc2VzYW1l")],
        vec![("x-api-key", "nope")],
    ] {
        let r = c
            .send(Method::GET, "/v1/agents2/a1", &headers, Bytes::new())
            .await;
        assert_eq!(r.status, 401);
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        let body = r.json();
        assert_eq!(body["statusCode"], 401);
        assert_eq!(body["error"], "Unauthorized");
        assert_eq!(body["code"], "invalid_team_key");
        assert_eq!(body["request_id"].as_str(), r.header("x-request-id"));
    }
    assert_eq!(upstream.total(), 0);
}

#[tokio::test]
async fn read_only_team_may_read_but_writes_are_403_and_not_forwarded() {
    let (upstream, gw) = setup().await;
    let c = gw.client();
    assert_eq!(c.get("/v1/agents2/a1", VIEWER).await.status, 200);
    let r = c.patch("/v1/agents2/a1", VIEWER, r#"{"name":"x"}"#).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["code"], "read_only_team");
    let r = c
        .send(
            Method::DELETE,
            "/v1/agents2/a1",
            &[("x-api-key", VIEWER)],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(upstream.total(), 1);
    assert_eq!(upstream.count(&Method::PATCH, "/"), 0);
}

#[tokio::test]
async fn legacy_unversioned_paths_map_to_v1_and_other_versions_are_404() {
    let (upstream, gw) = setup().await;
    let c = gw.client();
    let r = c.get("/calls?limit=5", BILLING).await;
    assert_eq!(r.status, 200);
    assert_eq!(upstream.requests()[0].uri, "/v1/calls?limit=5");
    let r = c.get("/v1/calls?limit=5", BILLING).await;
    assert_eq!(r.status, 200);
    assert_eq!(upstream.requests()[1].uri, "/v1/calls?limit=5");

    // The path after `/v1` is appended as is, even when it is empty.
    for (path, seen) in [
        ("/v1", "/v1"),
        ("/v1?x=1", "/v1?x=1"),
        ("/v1/", "/v1/"),
        ("/", "/v1/"),
    ] {
        assert_eq!(c.get(path, BILLING).await.status, 200, "{path}");
        assert_eq!(upstream.requests().last().unwrap().uri, seen, "{path}");
    }

    let r = c.get("/v2/agents2/a1", BILLING).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["code"], "unknown_api_version");
    assert_eq!(upstream.total(), 6);
}

#[tokio::test]
async fn unsafe_paths_are_400_before_authentication_and_never_forwarded() {
    let (upstream, gw) = setup().await;
    for path in [
        "/v1/agents2/..",
        "/v1/../admin/cache/purge",
        "/v1/%2e%2e/secrets",
        "/v1/agents2/a%2fb",
        "/v1/agents2/a%2Fb",
        "/v1/agents2/a%00",
        "/v1/agents2/a%0d%0aX-Injected:%201",
        // A sign where a hex digit belongs must not decode to a control byte (`%+A` is not `%0A`).
        "/v1/agents2/a%+A",
        "/v1/agents2/a%+0",
    ] {
        // Both with and without a key: a malformed path is refused first.
        for auth in ["", &format!("Authorization: Bearer {BILLING}\r\n")] {
            let raw = format!("GET {path} HTTP/1.1\r\nHost: gw\r\n{auth}Connection: close\r\n\r\n");
            assert_eq!(raw_status(gw.api, raw.as_bytes()).await, 400, "{path}");
        }
    }
    assert_eq!(upstream.total(), 0);
}

#[tokio::test]
async fn request_id_is_kept_or_generated_and_sent_both_ways() {
    let (upstream, gw) = setup().await;
    let c = gw.client();
    let auth = bearer(BILLING);
    let r = c
        .send(
            Method::GET,
            "/v1/calls",
            &[("authorization", &auth), ("x-request-id", "trace-42")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.header("x-request-id"), Some("trace-42"));
    assert_eq!(upstream.requests()[0].headers["x-request-id"], "trace-42");

    let too_long = "x".repeat(129);
    let r = c
        .send(
            Method::GET,
            "/v1/calls",
            &[("authorization", &auth), ("x-request-id", &too_long)],
            Bytes::new(),
        )
        .await;
    let generated = r.header("x-request-id").unwrap().to_owned();
    assert_ne!(generated, too_long);
    assert!(!generated.is_empty() && generated.len() <= 128);
    assert_eq!(
        upstream.requests()[1].headers["x-request-id"],
        generated.as_str()
    );
}

#[tokio::test]
async fn oversized_bodies_are_413_and_never_forwarded_with_or_without_length() {
    let (upstream, gw) = setup_with(|config| config.max_body_bytes(1024)).await;
    let c = gw.client();
    let big = "x".repeat(2048);
    let r = c
        .patch(
            "/v1/agents2/a1",
            BILLING,
            &format!("{{\"name\":\"{big}\"}}"),
        )
        .await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["code"], "body_too_large");

    // Chunked, no Content-Length.
    let chunk = "y".repeat(700);
    let raw = format!(
        "POST /v1/calls HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {BILLING}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         {len:x}\r\n{chunk}\r\n{len:x}\r\n{chunk}\r\n0\r\n\r\n",
        len = chunk.len()
    );
    assert_eq!(raw_status(gw.api, raw.as_bytes()).await, 413);
    // A body at the limit passes.
    let ok = c
        .send(
            Method::POST,
            "/v1/calls",
            &[("x-api-key", BILLING)],
            Bytes::from(vec![b'z'; 1024]),
        )
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!(upstream.total(), 1);
    assert_eq!(upstream.requests()[0].body.len(), 1024);
}

#[tokio::test]
async fn a_request_refused_before_its_body_was_read_still_gets_its_answer() {
    let (upstream, gw) = setup().await;
    // More than loopback's socket buffers hold, so the client is still sending when the gateway
    // has decided; less than the 16 MiB the gateway reads and discards.
    let body = vec![b'x'; 12 << 20];
    for (key, status) in [("team-key-nobody", 401), (VIEWER, 403)] {
        let mut raw = format!(
            "POST /v1/calls HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(&body);
        let answered = raw_exchange(gw.api, &raw).await;
        assert!(
            matches!(answered, Ok(s) if s == status),
            "expected {status}, got {answered:?}"
        );
    }
    // On HTTP/2 the body is read too: hyper would otherwise reset the stream under the client.
    let r = Client::h2(gw.api)
        .send(
            Method::POST,
            "/v1/calls",
            &[("authorization", "Bearer team-key-nobody")],
            Bytes::from(body.clone()),
        )
        .await;
    assert_eq!(r.status, 401);
    // Each refused body was read whole (curl, unlike hyper's client, fails on a reset stream).
    let lines = gw.audit_lines(3).await;
    for line in &lines {
        assert_eq!(line["bytes_in"], body.len());
    }
    // A client that waits for `100 Continue` is answered at once and never asked for its body.
    let waiting = format!(
        "POST /v1/calls HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer team-key-nobody\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    assert_eq!(raw_status(gw.api, waiting.as_bytes()).await, 401);
    assert_eq!(upstream.total(), 0);
}

#[tokio::test]
async fn unreachable_upstream_is_502_and_slow_upstream_is_504() {
    let upstream = FakeUpstream::start().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = GatewayBuilder::new(format!("http://{dead}/v1"))
        .start()
        .await;
    let r = gw.client().get("/v1/calls", BILLING).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["code"], "upstream_unreachable");
    assert_eq!(r.json()["statusCode"], 502);

    let gw = GatewayBuilder::new(upstream.base_url())
        .upstream_timeout_ms(200)
        .start()
        .await;
    upstream.set_delay(Method::GET, Duration::from_secs(2));
    let r = gw.client().get("/v1/calls", BILLING).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["code"], "upstream_timeout");
}

#[tokio::test]
async fn upstream_errors_pass_through_untouched() {
    let (upstream, gw) = setup().await;
    upstream.fail(
        Method::POST,
        Reply::json(429, serde_json::json!({"statusCode": 429, "message": "org quota", "error": "Too Many Requests"}))
            .with_header("retry-after", "7")
            .with_header("x-ratelimit-remaining", "0"),
    );
    let r = gw
        .client()
        .send(
            Method::POST,
            "/v1/calls",
            &[("x-api-key", BILLING)],
            Bytes::from_static(b"{}"),
        )
        .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("7"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(
        r.json(),
        serde_json::json!({"statusCode": 429, "message": "org quota", "error": "Too Many Requests"})
    );
}

#[tokio::test]
async fn no_304_reaches_a_client_that_sent_no_if_none_match() {
    let (upstream, gw) = setup().await;
    // An upstream that answers `304` whatever it is asked.
    upstream.set_override(|_| {
        let mut reply = Reply::json(304, serde_json::json!({}));
        reply.body = Bytes::new();
        Some(reply.with_header("etag", "\"v7\""))
    });
    let c = gw.client();
    let auth = bearer(BILLING);
    let date = "Wed, 21 Oct 2026 07:28:00 GMT";
    let get = |path: &'static str, extra: (&'static str, &'static str)| {
        let c = c.clone();
        let auth = auth.clone();
        async move {
            c.send(
                Method::GET,
                path,
                &[("authorization", auth.as_str()), extra],
                Bytes::new(),
            )
            .await
        }
    };

    // No validator, a date only, or the cache bypassed: the gateway's own 502, never a 304.
    for (path, extra) in [
        ("/v1/calls", ("accept", "application/json")),
        ("/v1/calls", ("if-modified-since", date)),
        ("/v1/agents2/a304", ("cache-control", "no-store")),
        ("/v1/agents2/a304", ("if-modified-since", date)),
    ] {
        let r = get(path, extra).await;
        assert_eq!(r.status, 502, "{path} with {extra:?}");
        assert_eq!(r.json()["code"], "upstream_invalid_response");
    }
    // A date alone never went upstream, on a forward or on a fill.
    assert!(upstream
        .requests()
        .iter()
        .all(|r| r.headers.get("if-modified-since").is_none()));
    assert_eq!(
        get("/v1/agents2/a304", ("cache-control", "no-store"))
            .await
            .x_cache(),
        "BYPASS"
    );

    // With an entity tag the client can use the 304: it passes, with upstream's ETag.
    let r = get("/v1/calls", ("if-none-match", "\"v7\"")).await;
    assert_eq!(r.status, 304);
    assert_eq!(r.header("etag"), Some("\"v7\""));
}

#[tokio::test]
async fn large_responses_stream_through_intact() {
    let (upstream, gw) = setup().await;
    let big: String = (0..(4 * 1024 * 1024))
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let expected = big.clone();
    upstream.set_override(move |r| {
        (r.path() == "/v1/recordings/r1").then(|| {
            let mut reply = Reply::json(200, serde_json::json!({}));
            reply.body = Bytes::from(big.clone());
            reply.headers = vec![("content-type".into(), "application/octet-stream".into())];
            reply
        })
    });
    let r = gw.client().get("/v1/recordings/r1", BILLING).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), expected.len());
    assert!(r.body == expected.as_bytes());
}

/// The audit line of a GET to `path` whose client goes away once upstream has the request.
async fn audit_line_of_an_abandoned_get(path: &'static str) -> serde_json::Value {
    let (upstream, gw) = setup().await;
    upstream.set_delay(Method::GET, Duration::from_millis(300));
    let client = gw.client();
    let pending = tokio::spawn(async move { client.get(path, BILLING).await });
    let up = upstream.clone();
    wait_until("upstream received the request", async || up.total() == 1).await;
    // Dropping the in-flight request closes its connection.
    pending.abort();
    let mut lines = gw.audit_lines(1).await;
    assert_eq!(lines.len(), 1);
    lines.remove(0)
}

#[tokio::test]
async fn a_client_that_goes_away_before_the_answer_is_still_audited() {
    let line = audit_line_of_an_abandoned_get("/v1/calls").await;
    assert_eq!(line["status"], 499);
    assert_eq!(line["team"], "billing");
    assert_eq!(line["path"], "/v1/calls");
    // A plain forward ends with its client: no answer from upstream to name.
    assert_eq!(line["upstream_status"], serde_json::Value::Null);
}

#[tokio::test]
async fn a_cache_miss_whose_client_goes_away_is_audited_as_a_miss() {
    let line = audit_line_of_an_abandoned_get("/v1/agents2/gone-1").await;
    assert_eq!(line["status"], 499);
    assert_eq!(line["cache"], "miss", "{line:?}");
    assert_eq!(line["agent_id"], "gone-1");
    // The fill it started ran on, and the line waited for upstream's answer.
    assert_eq!(line["upstream_status"], 200, "{line:?}");
}

#[tokio::test]
async fn the_sdk_shape_works_legacy_path_bearer_and_gzip_accept() {
    let (upstream, gw) = setup().await;
    let auth = bearer(BILLING);
    let headers = [
        ("authorization", auth.as_str()),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate"),
        ("user-agent", "python-requests/2.32.3"),
        ("connection", "keep-alive"),
    ];
    let c = gw.client();
    let first = c
        .send(Method::GET, "/agents2/agt_1", &headers, Bytes::new())
        .await;
    assert_eq!(first.status, 200);
    assert_eq!(first.json()["id"], "agt_1");
    assert_eq!(upstream.requests()[0].uri, "/v1/agents2/agt_1");
    assert_eq!(
        upstream.requests()[0].headers["accept-encoding"],
        "identity"
    );
    let second = c
        .send(Method::GET, "/agents2/agt_1", &headers, Bytes::new())
        .await;
    assert_eq!(second.x_cache(), "HIT");
    assert_eq!(second.body, first.body);
    assert_eq!(upstream.total(), 1);
}

#[tokio::test]
async fn admin_paths_are_404_on_the_api_listener_and_never_forwarded() {
    let (upstream, gw) = setup().await;
    let c = gw.client();
    for key in [BILLING, ADMIN_TOKEN] {
        let auth = bearer(key);
        let r = c
            .send(
                Method::POST,
                "/admin/cache/purge",
                &[("authorization", &auth)],
                Bytes::from_static(b"{}"),
            )
            .await;
        assert_eq!(r.status, 404);
        assert_eq!(r.json()["code"], "not_found");
    }
    assert_eq!(upstream.total(), 0);
}

#[tokio::test]
async fn an_upstream_that_stalls_mid_body_is_cut_off_after_the_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that answers its headers and half its body, then goes quiet for good.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stalled = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let _ = conn.read(&mut buf).await.unwrap();
        conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
            .await
            .unwrap();
        // Held open, silent, until the test ends.
        std::future::pending::<()>().await;
        drop(conn);
    });
    let gw = GatewayBuilder::new(format!("http://{addr}/v1"))
        .upstream_timeout_ms(300)
        .start()
        .await;

    let mut client = tokio::net::TcpStream::connect(gw.api).await.unwrap();
    client
        .write_all(
            format!(
                "GET /v1/calls HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {BILLING}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    // Bounded only so that a gateway without the read timeout fails here instead of hanging.
    let read = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "the gateway held the client past the upstream timeout"
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // The client sees an answer cut short: the connection closed before the promised length.
    assert!(text.ends_with("\r\n\r\n12345"), "{text}");
    stalled.abort();
}

#[tokio::test]
async fn head_answers_carry_no_body_over_http2_either() {
    let (upstream, gw) = setup().await;
    let h2 = Client::h2(gw.api);
    // The gateway's own answers have a body for GET; a HEAD gets their headers only.
    let auth = bearer(BILLING);
    for (path, headers, status) in [
        ("/v1/agents2/a1", vec![], 401),
        (
            "/v2/agents2/a1",
            vec![("authorization", auth.as_str())],
            404,
        ),
        (
            "/v1/agents2/%2e%2e",
            vec![("authorization", auth.as_str())],
            400,
        ),
        (
            "/v1/agents2/a1",
            vec![("authorization", auth.as_str())],
            200,
        ),
    ] {
        let r = h2.send(Method::HEAD, path, &headers, Bytes::new()).await;
        assert_eq!(r.status, status, "{path}");
        assert!(r.body.is_empty(), "{path}");
        // The length a GET would have, not 0.
        let get = h2.send(Method::GET, path, &headers, Bytes::new()).await;
        assert_eq!(
            r.header("content-length"),
            Some(get.body.len().to_string().as_str()),
            "{path}"
        );
    }
    let r = h2
        .send(Method::HEAD, "/v1/agents2/a1", &[], Bytes::new())
        .await;
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    // Only the last path was the team's and well-formed: its HEAD and its GET went upstream.
    assert_eq!(upstream.total(), 2);
    let probe = Client::h2(gw.admin)
        .send(Method::HEAD, "/healthz", &[], Bytes::new())
        .await;
    assert_eq!((probe.status, probe.body.len()), (200, 0));
}
