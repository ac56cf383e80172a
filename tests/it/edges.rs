//! The wire edges, over raw sockets (DESIGN, "Forwarding rules" and "Limits on slow, idle and too
//! many clients"): answers re-framed whatever upstream declared, clients that send nothing or stop
//! half-way, idle connections, the connection cap, running out of descriptors, methods outside the
//! allow-list, and cache fills that share nothing one team sent of its own.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::raw::find;
use crate::support::*;

/// An upstream that answers every request with the same raw bytes, framing errors included, and
/// counts the requests it read.
struct RawUpstream {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
}

impl RawUpstream {
    async fn start(answer: &'static [u8]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while let Some(end) = find(&buf, b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            seen.fetch_add(1, Ordering::SeqCst);
                            if s.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        Self { addr, requests }
    }

    fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

fn get(path: &str, key: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n\r\n").into_bytes()
}

// === Response framing ===

/// Upstream's answer declares a chunked body and a `Content-Length` of 5 beside it.
const BOTH_FRAMINGS: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n1a\r\n{\"id\":\"a1\",\"name\":\"whole\"}\r\n0\r\n\r\n";
const WHOLE: &[u8] = b"{\"id\":\"a1\",\"name\":\"whole\"}";

#[tokio::test]
async fn an_answer_with_both_framings_reaches_the_client_as_the_body_the_gateway_has() {
    let upstream = RawUpstream::start(BOTH_FRAMINGS).await;
    let gw = GatewayBuilder::new(upstream.base_url()).start().await;
    let mut c = RawConn::open(gw.api).await;
    // A miss, a hit, a plain forward and a HEAD, one after the other on one keep-alive connection:
    // an answer framed wrongly would leave bytes the next answer is then parsed from.
    for (method, path) in [
        ("GET", "/v1/agents2/a1"),
        ("GET", "/v1/agents2/a1"),
        ("GET", "/v1/calls"),
        ("HEAD", "/v1/calls"),
        ("GET", "/v1/agents/a1?nocache=1"),
    ] {
        let raw = format!(
            "{method} {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {BILLING}\r\n\r\n"
        );
        c.send(raw.as_bytes()).await;
        let a = c.answer(method).await;
        assert_eq!(a.status, 200, "{method} {path}: {}", a.head);
        assert_ne!(
            a.header("content-length").as_deref(),
            Some("5"),
            "{method} {path}"
        );
        if method == "GET" {
            assert_eq!(a.body, WHOLE, "{method} {path}");
        }
    }
    // And the connection is still in step: one more answer parses.
    c.send(&get("/v1/agents2/a1", BILLING)).await;
    assert_eq!(c.answer("GET").await.body, WHOLE);
    // Two misses, the forward and the HEAD went upstream; the hits did not.
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 4);
}

// === Limits on slow, idle and too many clients ===

#[tokio::test]
async fn a_connection_that_sends_nothing_or_half_a_preface_is_closed_after_the_header_timeout() {
    let (_upstream, gw) = setup_with(|config| config.request_header_timeout_ms(300)).await;
    let mut silent = RawConn::open(gw.api).await;
    let mut half_preface = RawConn::open(gw.api).await;
    half_preface.send(b"PRI * HTTP/2.0\r\n").await;

    let (closed, sent) = silent.closed().await;
    assert!(closed, "a silent connection stayed open");
    assert!(sent.is_empty(), "a silent client was sent {sent:?}");
    let (closed, sent) = half_preface.closed().await;
    assert!(closed, "half an HTTP/2 preface kept the connection open");
    assert!(sent.is_empty(), "an HTTP/2 client was sent HTTP/1 bytes");
    // Neither had begun a request: no audit line. A request sent once both are closed is audited
    // after anything their closing wrote, so its line being the only one shows there was none.
    let marker = gw.client().get("/v1/calls", BILLING).await;
    let lines = gw.audit_lines(1).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(
        lines[0]["request_id"],
        marker.header("x-request-id").unwrap()
    );
}

#[tokio::test]
async fn a_request_head_that_stops_half_way_is_answered_408_audited_and_closed() {
    let (upstream, gw) = setup_with(|config| config.request_header_timeout_ms(300)).await;
    let mut c = RawConn::open(gw.api).await;
    c.send(b"GET /v1/calls HTTP/1.1\r\nHost: gw\r\nAuthoriz")
        .await;
    let (closed, sent) = c.closed().await;
    assert!(closed, "a stalled head kept its connection");
    let text = String::from_utf8_lossy(&sent);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["code"], "request_timeout");
    assert_eq!(json["statusCode"], 408);
    let lines = gw.audit_lines(1).await;
    assert_eq!(lines[0]["status"], 408);
    assert_eq!(lines[0]["decision"], "bad_request");
    assert_eq!(lines[0]["request_id"], json["request_id"]);
    assert_eq!(upstream.total(), 0);
}

#[tokio::test]
async fn a_head_with_bare_cr_line_endings_is_refused_and_never_hangs() {
    let (upstream, gw) = setup_with(|config| config.request_header_timeout_ms(300)).await;
    let mut c = RawConn::open(gw.api).await;
    c.send(
        format!("GET /v1/calls HTTP/1.1\rHost: gw\rAuthorization: Bearer {BILLING}\r\r").as_bytes(),
    )
    .await;
    let (closed, sent) = c.closed().await;
    assert!(closed, "bare CR line endings kept the connection open");
    let text = String::from_utf8_lossy(&sent);
    assert!(
        text.starts_with("HTTP/1.1 408 ") || text.starts_with("HTTP/1.1 400 "),
        "{text}"
    );
    assert_eq!(upstream.total(), 0);
}

#[tokio::test]
async fn a_keep_alive_connection_without_a_request_is_closed_after_the_idle_timeout() {
    let (_upstream, gw) = setup_with(|config| config.idle_timeout_ms(300)).await;
    let mut c = RawConn::open(gw.api).await;
    c.send(&get("/v1/calls", BILLING)).await;
    assert_eq!(c.answer("GET").await.status, 200);
    let (closed, sent) = c.closed().await;
    assert!(closed, "an idle keep-alive connection stayed open");
    assert!(sent.is_empty(), "an idle client was sent {sent:?}");
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_with_goaway() {
    let (_upstream, gw) = setup_with(|config| config.idle_timeout_ms(300)).await;
    let stream = TcpStream::connect(gw.api).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/v1/calls", gw.api))
        .header("authorization", bearer(BILLING))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp);
    // The connection task ends once the gateway closes the connection; a clean end is GOAWAY.
    let ended = tokio::time::timeout(PATIENCE, conn).await;
    assert!(
        matches!(ended, Ok(Ok(Ok(())))),
        "idle HTTP/2 connection not closed cleanly: {ended:?}"
    );
}

#[tokio::test]
async fn a_request_body_that_stalls_is_answered_408_and_never_forwarded() {
    let (upstream, gw) = setup_with(|config| config.request_body_timeout_ms(300)).await;
    let mut c = RawConn::open(gw.api).await;
    c.send(
        format!(
            "PATCH /v1/agents2/a1 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {BILLING}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"name\":"
        )
        .as_bytes(),
    )
    .await;
    let a = c.answer("PATCH").await;
    assert_eq!(a.status, 408, "{}", a.head);
    let json: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(json["code"], "request_timeout");
    let lines = gw.audit_lines(1).await;
    assert_eq!(lines[0]["status"], 408);
    assert_eq!(lines[0]["decision"], "bad_request");
    assert_eq!(lines[0]["upstream_status"], serde_json::Value::Null);
    assert_eq!(upstream.total(), 0);
}

#[tokio::test]
async fn connections_beyond_max_connections_wait_until_one_closes() {
    let (_upstream, gw) = setup_with(|config| config.max_connections(2)).await;
    let first = RawConn::open(gw.api).await;
    let mut second = RawConn::open(gw.api).await;
    second.send(&get("/v1/calls", BILLING)).await;
    assert_eq!(second.answer("GET").await.status, 200);

    // The kernel completes the third handshake, but the gateway does not take the connection.
    let mut third = RawConn::open(gw.api).await;
    third.send(&get("/v1/calls", BILLING)).await;
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), third.stream.peek(&mut byte));
    assert!(
        early.await.is_err(),
        "a third connection was served beyond max_connections = 2"
    );

    drop(first);
    assert_eq!(third.answer("GET").await.status, 200);
}

#[tokio::test]
async fn running_out_of_file_descriptors_never_stops_the_listener() {
    let upstream = FakeUpstream::start().await;
    let mut gw = GatewayBuilder::new(upstream.base_url())
        .fd_limit(64)
        .spawn_binary()
        .await;
    // Established before the descriptors run out; must still be served while they are.
    let mut established = RawConn::open(gw.api).await;
    established.send(&get("/v1/calls", BILLING)).await;
    assert_eq!(established.answer("GET").await.status, 200);

    let mut hogs = Vec::new();
    for _ in 0..120 {
        hogs.push(TcpStream::connect(gw.api).await.unwrap());
    }
    wait_until("accepts fail for want of descriptors", async || {
        gw.stderr_so_far().contains("accept failed")
    })
    .await;
    established.send(&get("/v1/calls", BILLING)).await;
    assert_eq!(established.answer("GET").await.status, 200);

    drop(hogs);
    // Accepting resumes by itself once descriptors are free again.
    let fresh = gw.client().get("/v1/calls", BILLING).await;
    assert_eq!(fresh.status, 200);

    gw.signal("TERM");
    assert_eq!(gw.wait_exit(PATIENCE).await, Some(0));
    let stderr = gw.stderr();
    let failures = stderr.matches("accept failed").count();
    assert!(
        (1..=5).contains(&failures),
        "expected one log line per burst of failed accepts, got {failures}:\n{stderr}"
    );
}

// === Methods ===

#[tokio::test]
async fn methods_outside_the_allow_list_are_405_with_allow_audited_and_never_forwarded() {
    let (upstream, gw) = setup().await;
    for method in ["TRACE", "CONNECT", "get", "BREW", "PROPFIND"] {
        let target = "/v1/agents2/a1";
        let mut c = RawConn::open(gw.api).await;
        c.send(
            format!(
                "{method} {target} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {BILLING}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        let a = c.answer(method).await;
        assert_eq!(a.status, 405, "{method}: {}", a.head);
        assert_eq!(
            a.header("allow").as_deref(),
            Some("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            "{method}"
        );
        let json: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(json["code"], "method_not_allowed", "{method}");
    }
    let lines = gw.audit_lines(4).await;
    assert!(lines
        .iter()
        .all(|l| l["status"] == 405 && l["decision"] == "bad_request"));
    assert_eq!(upstream.total(), 0, "a refused method reached upstream");
}

// === Cache fills share nothing private ===

#[tokio::test]
async fn a_fill_sends_upstream_only_what_every_team_of_the_org_shares() {
    let (upstream, gw) = setup().await;
    let r = gw
        .client()
        .send(
            Method::GET,
            "/v1/agents2/a1",
            &[
                ("authorization", &bearer(BILLING)),
                ("cookie", "session=billing"),
                ("accept-language", "de"),
                ("x-team-note", "billing only"),
                ("accept", "application/json"),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200);
    let fill = &upstream.requests()[0];
    for private in ["cookie", "accept-language", "x-team-note", "user-agent"] {
        assert!(
            fill.headers.get(private).is_none(),
            "{private} went upstream on a fill"
        );
    }
    assert_eq!(fill.headers["accept"], "application/json");
    assert_eq!(fill.headers["accept-encoding"], "identity");
}

#[tokio::test]
async fn answers_that_vary_or_set_cookies_are_neither_stored_nor_shared() {
    for (name, value) in [("vary", "Accept-Language"), ("set-cookie", "session=s1")] {
        let (upstream, gw) = setup().await;
        upstream.set_override(move |r| {
            (r.method == Method::GET).then(|| {
                Reply::json(200, serde_json::json!({"id": "a1"}))
                    .with_header(name, value)
                    .with_delay(Duration::from_millis(200))
            })
        });
        let c = gw.client();
        let answers = join_all(
            (0..4)
                .map(|_| {
                    let c = c.clone();
                    async move { c.get("/v1/agents2/a1", SUPPORT).await }
                })
                .collect(),
        )
        .await;
        // Each request fetched for itself and got its own answer, with what upstream sent it.
        assert_eq!(upstream.count(&Method::GET, "/v1/agents2/a1"), 4, "{name}");
        for a in &answers {
            assert_eq!(a.status, 200);
            assert_eq!(a.header(name), Some(value), "{name}");
            assert_eq!(a.x_cache(), "MISS", "{name}");
        }
        // And nothing was stored.
        let again = c.get("/v1/agents2/a1", BILLING).await;
        assert_eq!(again.x_cache(), "MISS", "{name}");
    }
}

#[tokio::test]
async fn a_request_that_joined_a_fill_gets_exactly_what_a_hit_would() {
    let (upstream, gw) = setup().await;
    upstream.set_override(|r| {
        (r.method == Method::GET).then(|| {
            Reply::json(200, serde_json::json!({"id": "a1"}))
                .with_header("x-ratelimit-remaining", "41")
                .with_header("x-upstream-note", "for the fetcher")
                .with_delay(Duration::from_millis(300))
        })
    });
    let c = gw.client();
    let answers = join_all(
        (0..5)
            .map(|_| {
                let c = c.clone();
                async move { c.get("/v1/agents2/a1", BILLING).await }
            })
            .collect(),
    )
    .await;
    assert_eq!(upstream.count(&Method::GET, "/v1/agents2/a1"), 1);
    let hit = c.get("/v1/agents2/a1", BILLING).await;
    assert_eq!(hit.x_cache(), "HIT");
    let fetched = answers
        .iter()
        .filter(|a| a.header("x-upstream-note").is_some())
        .count();
    assert_eq!(
        fetched, 1,
        "only the request that fetched sees upstream's own headers"
    );
    for a in answers
        .iter()
        .filter(|a| a.header("x-upstream-note").is_none())
    {
        assert_eq!(a.status, hit.status);
        assert_eq!(a.body, hit.body);
        assert_eq!(a.header("content-type"), hit.header("content-type"));
        assert!(a.header("x-ratelimit-remaining").is_none());
    }
}

#[tokio::test]
async fn http2_cookie_crumbs_reach_an_http1_upstream_as_one_cookie() {
    let (upstream, gw) = setup().await;
    let r = Client::h2(gw.api)
        .send(
            Method::POST,
            "/v1/calls",
            &[
                ("authorization", &bearer(BILLING)),
                ("cookie", "a=1"),
                ("cookie", "b=2"),
            ],
            Bytes::from_static(b"{}"),
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = &upstream.requests()[0];
    let cookies: Vec<_> = seen.headers.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["a=1; b=2"]);
}

// === The admin listener ===

#[tokio::test]
async fn an_oversized_admin_body_is_413_after_it_was_read() {
    let (_upstream, gw) = setup().await;
    let body = vec![b' '; 200 * 1024];
    let mut raw = format!(
        "POST /admin/cache/purge HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    let mut c = RawConn::open(gw.admin).await;
    c.send(&raw).await;
    let a = c.answer("POST").await;
    assert_eq!(a.status, 413, "{}", a.head);
    let json: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(json["code"], "body_too_large");
}
