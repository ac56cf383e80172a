//! DESIGN "Tracing (OpenTelemetry)" and the audit line's `trace_id`. Tests that export run the
//! real binary (the exporter is process-wide) against an OTLP/HTTP collector in the test, and
//! assert on the spans decoded from what it received, on the `traceparent` upstream saw, and on
//! the audit lines. Without `[tracing]`, the in-process gateway.

use std::time::{Duration, Instant};

use http::Method;
use serde_json::Value;

use crate::support::otlp::{CLIENT, ERROR, INTERNAL, SERVER};
use crate::support::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const DROPPED: &str = "dialnexa_gateway_trace_spans_dropped_total";

fn traceparent(trace: &str, flags: &str) -> String {
    format!("00-{trace}-{PARENT}-{flags}")
}

/// A trace id of its own for each request of a test.
fn trace_n(n: u8) -> String {
    format!("{TRACE:.30}{n:02x}")
}

async fn get_traced(c: &Client, path: &str, tp: &str) -> TestResponse {
    let auth = bearer(BILLING);
    c.send(
        Method::GET,
        path,
        &[("authorization", &auth), ("traceparent", tp)],
        "",
    )
    .await
}

fn one<'a>(spans: &'a [ExportedSpan], kind: i32, what: &str) -> &'a ExportedSpan {
    let found: Vec<_> = spans.iter().filter(|s| s.kind == kind).collect();
    assert_eq!(found.len(), 1, "one {what} span in {spans:#?}");
    found[0]
}

fn named<'a>(spans: &'a [ExportedSpan], name: &str) -> &'a ExportedSpan {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span {name:?} in {spans:#?}"))
}

fn audit_for<'a>(lines: &'a [Value], r: &TestResponse) -> &'a Value {
    let id = r.header("x-request-id").unwrap();
    lines
        .iter()
        .find(|l| l["request_id"] == id)
        .unwrap_or_else(|| panic!("no audit line for {id}"))
}

async fn audit_lines(gw: &BinaryGateway, n: usize) -> Vec<Value> {
    wait_until(&format!("{n} audit lines"), async || gw.audit().len() >= n).await;
    gw.audit()
}

/// The `traceparent` upstream received for the request answered by `r`.
fn upstream_traceparent(upstream: &FakeUpstream, r: &TestResponse) -> Option<String> {
    let id = r.header("x-request-id").unwrap();
    let seen = upstream
        .request_with_id(id)
        .expect("the request reached upstream");
    seen.headers
        .get("traceparent")
        .map(|v| v.to_str().unwrap().to_owned())
}

async fn traced_gateway(
    upstream: &FakeUpstream,
    collector: &OtlpCollector,
    ratio: f64,
    configure: impl FnOnce(GatewayBuilder) -> GatewayBuilder,
) -> BinaryGateway {
    configure(
        GatewayBuilder::new(upstream.base_url())
            .tracing_endpoint(&collector.endpoint())
            .tracing_sample_ratio(ratio),
    )
    .spawn_binary()
    .await
}

#[tokio::test]
async fn a_miss_and_a_hit_are_server_spans_in_the_clients_trace_and_upstream_gets_the_client_span()
{
    let upstream = FakeUpstream::start().await;
    let collector = OtlpCollector::start().await;
    let gw = traced_gateway(&upstream, &collector, 0.0, |b| b).await;
    let c = gw.client();
    let miss_trace = trace_n(1);
    let hit_trace = trace_n(2);

    let auth = bearer(BILLING);
    let miss = c
        .send(
            Method::GET,
            "/v1/agents2/ag-1",
            &[
                ("authorization", &auth),
                ("traceparent", &traceparent(&miss_trace, "01")),
                ("tracestate", "vendor=made-up-1"),
            ],
            "",
        )
        .await;
    assert_eq!((miss.status, miss.x_cache()), (200, "MISS"));
    let hit = get_traced(&c, "/agents2/ag-1", &traceparent(&hit_trace, "01")).await;
    assert_eq!((hit.status, hit.x_cache()), (200, "HIT"));

    // The miss: server span ← admission, cache fill ← upstream client span.
    let spans = collector.trace(&miss_trace, 5).await;
    let server = one(&spans, SERVER, "server");
    assert_eq!(server.name, "GET /v1/agents2/{id}");
    assert_eq!(server.service, "dialnexa-gateway");
    assert_eq!(
        server.parent_span_id, PARENT,
        "the client's span is the parent"
    );
    assert_eq!(server.attr_str("http.request.method"), Some("GET"));
    assert_eq!(server.attr_str("http.route"), Some("/v1/agents2/{id}"));
    assert_eq!(server.attr_str("url.path"), Some("/v1/agents2/ag-1"));
    assert_eq!(server.attr_str("client.address"), Some("127.0.0.1"));
    assert_eq!(server.attr("http.response.status_code"), Some(&200.into()));
    assert_eq!(server.attr_str("dialnexa.team"), Some("billing"));
    assert_eq!(server.attr_str("dialnexa.org"), Some("acme"));
    assert_eq!(server.attr_str("dialnexa.cache"), Some("miss"));
    assert_eq!(server.attr_str("dialnexa.decision"), Some("allowed"));
    assert_eq!(server.attr("dialnexa.limited_by"), None);
    assert_ne!(server.status_code, ERROR);
    let admission = named(&spans, "admission");
    assert_eq!(
        (admission.kind, &admission.parent_span_id),
        (INTERNAL, &server.span_id)
    );
    let fill = named(&spans, "cache fill");
    // The org budget is asked once, by the fill, right before its upstream call.
    let budget = named(&spans, "org budget");
    assert_eq!(
        (
            budget.kind,
            &budget.parent_span_id,
            budget.attr_str("dialnexa.budget")
        ),
        (INTERNAL, &fill.span_id, Some("part"))
    );
    assert_eq!(
        (fill.kind, &fill.parent_span_id),
        (INTERNAL, &server.span_id)
    );
    let call = one(&spans, CLIENT, "client");
    assert_eq!(call.name, "GET");
    assert_eq!(call.parent_span_id, fill.span_id);
    assert_eq!(call.attr_str("http.request.method"), Some("GET"));
    assert_eq!(call.attr_str("server.address"), Some("127.0.0.1"));
    assert_eq!(
        call.attr("server.port"),
        Some(&i64::from(upstream.addr.port()).into())
    );
    assert_eq!(
        call.attr_str("url.full"),
        Some(format!("{}/agents2/ag-1", upstream.base_url()).as_str())
    );
    assert_eq!(call.attr("http.response.status_code"), Some(&200.into()));
    assert_eq!(
        upstream_traceparent(&upstream, &miss),
        Some(format!("00-{miss_trace}-{}-01", call.span_id)),
        "upstream's parent is the gateway's client span"
    );
    let seen = upstream
        .request_with_id(miss.header("x-request-id").unwrap())
        .unwrap();
    assert_eq!(
        seen.headers.get("tracestate").map(|v| v.to_str().unwrap()),
        Some("vendor=made-up-1"),
        "the client's tracestate passes on"
    );

    // The hit: a server span of its own trace, marked hit, and no upstream call.
    let spans = collector.trace(&hit_trace, 2).await;
    let server = one(&spans, SERVER, "server");
    assert_eq!(server.name, "GET /v1/agents2/{id}");
    assert_eq!(server.attr_str("url.path"), Some("/agents2/ag-1"));
    assert_eq!(server.attr_str("dialnexa.cache"), Some("hit"));
    assert!(spans.iter().all(|s| s.kind != CLIENT), "{spans:#?}");

    let lines = audit_lines(&gw, 2).await;
    assert_eq!(audit_for(&lines, &miss)["trace_id"], miss_trace.as_str());
    assert_eq!(audit_for(&lines, &hit)["trace_id"], hit_trace.as_str());
}

#[tokio::test]
async fn a_coalesced_fill_is_linked_to_the_request_that_waited_on_it() {
    let upstream = FakeUpstream::start().await;
    let collector = OtlpCollector::start().await;
    let gw = traced_gateway(&upstream, &collector, 1.0, |b| b).await;
    let (leader_trace, joiner_trace) = (trace_n(3), trace_n(4));
    let held = upstream.hold_next(Method::GET);

    let c = gw.client();
    let tp = traceparent(&leader_trace, "01");
    let leader = tokio::spawn(async move { get_traced(&c, "/v1/agents2/ag-2", &tp).await });
    wait_until("the fill reached upstream", async || {
        upstream.count(&Method::GET, "/v1/agents2/ag-2") == 1
    })
    .await;
    let c = gw.client();
    let tp = traceparent(&joiner_trace, "01");
    let joiner = tokio::spawn(async move { get_traced(&c, "/v1/agents2/ag-2", &tp).await });
    let admin = gw.admin_client();
    wait_until("the second request joined the fill", async || {
        scrape(&admin)
            .await
            .value("dialnexa_gateway_cache_coalesced_total", &[])
            >= 1.0
    })
    .await;
    held.release();
    let (leader, joiner) = (leader.await.unwrap(), joiner.await.unwrap());
    assert_eq!((leader.status, joiner.status), (200, 200));
    assert_eq!(upstream.count(&Method::GET, "/v1/agents2/ag-2"), 1);

    let leading = collector.trace(&leader_trace, 5).await;
    let waiting = collector.trace(&joiner_trace, 3).await;
    let lead_fill = named(&leading, "cache fill");
    let join_fill = named(&waiting, "cache fill");
    assert!(
        lead_fill
            .links
            .contains(&(joiner_trace.clone(), join_fill.span_id.clone())),
        "the shared fill links to the request that waited: {lead_fill:#?}"
    );
    assert!(
        join_fill
            .links
            .contains(&(leader_trace.clone(), lead_fill.span_id.clone())),
        "the waiting request links to the fill it waited on: {join_fill:#?}"
    );
    // One upstream call, in the leader's trace.
    assert_eq!(
        one(&leading, CLIENT, "client").parent_span_id,
        lead_fill.span_id
    );
    assert!(waiting.iter().all(|s| s.kind != CLIENT), "{waiting:#?}");
}

#[tokio::test]
async fn a_429_a_patch_and_an_upstream_5xx_carry_their_decision_and_status() {
    let upstream = FakeUpstream::start().await;
    let collector = OtlpCollector::start().await;
    let gw = traced_gateway(&upstream, &collector, 1.0, |b| {
        b.write_quota("billing", 1, 1)
    })
    .await;
    let c = gw.client();
    let auth = bearer(BILLING);
    let patch = |trace: String| {
        let (c, auth) = (c.clone(), auth.clone());
        async move {
            c.send(
                Method::PATCH,
                "/v1/agents2/ag-3",
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                    ("traceparent", &traceparent(&trace, "01")),
                ],
                r#"{"name":"x"}"#,
            )
            .await
        }
    };
    let written = patch(trace_n(5)).await;
    assert_eq!(written.status, 200);
    let limited = patch(trace_n(6)).await;
    assert_eq!(limited.status, 429);
    upstream.fail(
        Method::GET,
        Reply::json(503, serde_json::json!({"message": "down"})),
    );
    let failed = get_traced(&c, "/v1/calls/c-1?page=2", &traceparent(&trace_n(7), "01")).await;
    assert_eq!(failed.status, 503);

    let spans = collector.trace(&trace_n(5), 4).await;
    let server = one(&spans, SERVER, "server");
    assert_eq!(server.name, "PATCH /v1/agents2/{id}");
    assert_eq!(server.attr_str("dialnexa.decision"), Some("allowed"));
    let call = one(&spans, CLIENT, "client");
    assert_eq!(
        (call.name.as_str(), &call.parent_span_id),
        ("PATCH", &server.span_id)
    );
    assert_eq!(call.attr("http.response.status_code"), Some(&200.into()));
    assert_eq!(
        upstream_traceparent(&upstream, &written),
        Some(format!("00-{}-{}-01", trace_n(5), call.span_id))
    );
    // The client sent no tracestate: upstream gets none, not an empty one.
    let seen = upstream
        .request_with_id(written.header("x-request-id").unwrap())
        .unwrap();
    assert_eq!(seen.headers.get("tracestate"), None);

    let spans = collector.trace(&trace_n(6), 2).await;
    let server = one(&spans, SERVER, "server");
    assert_eq!(server.attr("http.response.status_code"), Some(&429.into()));
    assert_eq!(server.attr_str("dialnexa.decision"), Some("rate_limited"));
    assert_eq!(server.attr_str("dialnexa.limited_by"), Some("team_write"));
    assert_ne!(
        server.status_code, ERROR,
        "a 4xx is the client's, not an error of the gateway"
    );
    assert!(spans.iter().all(|s| s.kind != CLIENT));

    let spans = collector.trace(&trace_n(7), 4).await;
    let server = one(&spans, SERVER, "server");
    assert_eq!(server.name, "GET /v1/calls/*");
    assert_eq!(server.attr("http.response.status_code"), Some(&503.into()));
    assert_eq!(server.status_code, ERROR);
    let call = one(&spans, CLIENT, "client");
    assert_eq!(call.status_code, ERROR);
    assert_eq!(call.attr_str("error.type"), Some("503"));
    assert_eq!(
        call.attr_str("url.full"),
        Some(format!("{}/calls/c-1?page=REDACTED", upstream.base_url()).as_str())
    );

    // No answer at all (the connection reset): the gateway's own 502, an error on both spans.
    upstream.fail(Method::POST, Reply::reset());
    let reset = c
        .send(
            Method::POST,
            "/v1/calls",
            &[
                // Not billing, whose one write is spent.
                ("authorization", &bearer(SUPPORT)),
                ("traceparent", &traceparent(&trace_n(13), "01")),
            ],
            "{}",
        )
        .await;
    assert_eq!(reset.status, 502);
    let spans = collector.trace(&trace_n(13), 4).await;
    let server = one(&spans, SERVER, "server");
    assert_eq!(server.name, "POST /v1/calls");
    assert_eq!(server.status_code, ERROR);
    let call = one(&spans, CLIENT, "client");
    assert_eq!(call.status_code, ERROR);
    assert_eq!(call.attr_str("error.type"), Some("upstream_unreachable"));
    assert_eq!(call.attr("http.response.status_code"), None);

    let lines = audit_lines(&gw, 4).await;
    assert_eq!(audit_for(&lines, &limited)["trace_id"], trace_n(6).as_str());
}

#[tokio::test]
async fn the_clients_sampled_flag_wins_and_the_ratio_decides_without_a_parent() {
    let upstream = FakeUpstream::start().await;
    let collector = OtlpCollector::start().await;
    let gw = traced_gateway(&upstream, &collector, 0.0, |b| b).await;
    let c = gw.client();

    let unsampled = get_traced(&c, "/v1/calls", &traceparent(&trace_n(8), "00")).await;
    let no_parent = c.get("/v1/calls", BILLING).await;
    // Exports leave in the order spans end: once a later request's spans are in, these would be.
    let sampled = get_traced(&c, "/v1/calls", &traceparent(&trace_n(9), "01")).await;
    collector.trace(&trace_n(9), 4).await;
    let lines = audit_lines(&gw, 3).await;
    let made = audit_for(&lines, &no_parent)["trace_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        audit_for(&lines, &unsampled)["trace_id"],
        trace_n(8).as_str()
    );
    assert_eq!(audit_for(&lines, &sampled)["trace_id"], trace_n(9).as_str());
    assert!(
        collector
            .spans()
            .iter()
            .all(|s| s.trace_id != trace_n(8) && s.trace_id != made),
        "unsampled requests exported"
    );
    // Not exported, still propagated: upstream gets the gateway's span, unsampled, in the same trace.
    let tp = upstream_traceparent(&upstream, &unsampled).unwrap();
    assert!(
        tp.starts_with(&format!("00-{}-", trace_n(8))) && tp.ends_with("-00"),
        "{tp}"
    );
    assert!(!tp.contains(PARENT), "{tp}");
    let tp = upstream_traceparent(&upstream, &no_parent).unwrap();
    assert!(
        tp.starts_with(&format!("00-{made}-")) && tp.ends_with("-00"),
        "{tp}"
    );
    drop(gw);

    // Ratio 1: a request without a parent starts a sampled trace, the audit line's.
    let gw = traced_gateway(&upstream, &collector, 1.0, |b| b).await;
    let r = gw.client().get("/v1/calls", BILLING).await;
    let lines = audit_lines(&gw, 1).await;
    let made = audit_for(&lines, &r)["trace_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let spans = collector.trace(&made, 4).await;
    let server = one(&spans, SERVER, "server");
    assert_eq!(server.parent_span_id, "", "a root span");
    let call = one(&spans, CLIENT, "client");
    assert_eq!(
        upstream_traceparent(&upstream, &r),
        Some(format!("00-{made}-{}-01", call.span_id))
    );
}

#[tokio::test]
async fn without_tracing_the_clients_traceparent_passes_unchanged_and_every_line_has_a_trace_id() {
    let (upstream, gw) = setup().await;
    let c = gw.client();
    let tp = traceparent(TRACE, "01");
    let with = get_traced(&c, "/v1/agents2/ag-4", &tp).await;
    let without = c.get("/v1/agents2/ag-5", BILLING).await;
    let again = c.get("/v1/agents2/ag-5", BILLING).await;
    let refused = c.get("/v1/agents2/ag-5", "not-a-key").await;
    assert_eq!(
        (with.status, without.status, again.status, refused.status),
        (200, 200, 200, 401)
    );
    assert_eq!(upstream_traceparent(&upstream, &with), Some(tp));
    assert_eq!(upstream_traceparent(&upstream, &without), None);

    let lines = gw.audit_lines(4).await;
    assert_eq!(audit_for(&lines, &with)["trace_id"], TRACE);
    let ids: Vec<&str> = [&without, &again, &refused]
        .iter()
        .map(|r| audit_for(&lines, r)["trace_id"].as_str().unwrap())
        .collect();
    for id in &ids {
        assert!(
            id.len() == 32 && u128::from_str_radix(id, 16).unwrap() != 0,
            "{id}"
        );
    }
    assert!(
        ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
        "{ids:?}"
    );
    // An invalid traceparent is no parent: the gateway makes an id.
    let bad = get_traced(
        &c,
        "/v1/calls",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
    )
    .await;
    let lines = gw.audit_lines(5).await;
    assert_ne!(
        audit_for(&lines, &bad)["trace_id"],
        "00000000000000000000000000000000"
    );
    // An admin action's line joins its caller's trace too.
    let purged = gw
        .admin_client()
        .send(
            Method::POST,
            "/admin/cache/purge",
            &[
                ("authorization", &bearer(ADMIN_TOKEN)),
                ("traceparent", &traceparent(&trace_n(11), "00")),
            ],
            r#"{"org":"acme"}"#,
        )
        .await;
    assert_eq!(purged.status, 200);
    let lines = gw.audit_lines(6).await;
    assert_eq!(audit_for(&lines, &purged)["trace_id"], trace_n(11).as_str());
}

#[tokio::test]
async fn no_key_token_or_body_value_reaches_the_collector() {
    const BODY_SECRET: &str = "sk-live-made-up-body-secret-77";
    const QUERY_SECRET: &str = "query-secret-made-up-88";
    let upstream = FakeUpstream::start().await;
    let collector = OtlpCollector::start().await;
    let gw = traced_gateway(&upstream, &collector, 1.0, |b| b).await;
    let c = gw.client();
    let auth = bearer(BILLING);
    let body = format!(r#"{{"llm":{{"api_key":"{BODY_SECRET}"}},"name":"n"}}"#);
    let patched = c
        .send(
            Method::PATCH,
            "/v1/agents2/ag-6",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            body,
        )
        .await;
    assert_eq!(patched.status, 200);
    let read = c
        .send(
            Method::GET,
            &format!("/v1/agents2/ag-6?api_key={QUERY_SECRET}"),
            &[("x-api-key", SUPPORT)],
            "",
        )
        .await;
    assert_eq!(read.status, 200);
    let refused = c.get("/v1/calls", "team-key-unknown-made-up").await;
    assert_eq!(refused.status, 401);
    let admin = gw
        .admin_client()
        .send(
            Method::POST,
            "/admin/cache/purge",
            &[("authorization", &bearer(ADMIN_TOKEN))],
            r#"{"org":"acme"}"#,
        )
        .await;
    assert_eq!(admin.status, 200);
    // Every request's spans are in before the bytes are searched.
    let lines = audit_lines(&gw, 3).await;
    for r in [&patched, &read, &refused] {
        let trace = audit_for(&lines, r)["trace_id"]
            .as_str()
            .unwrap()
            .to_owned();
        collector.trace(&trace, 1).await;
    }
    let raw = collector.raw();
    for secret in [
        BILLING,
        SUPPORT,
        "team-key-unknown-made-up",
        ORG_KEY_ACME,
        ADMIN_TOKEN,
        BODY_SECRET,
        QUERY_SECRET,
    ] {
        assert!(
            !raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret:?} was exported"
        );
    }
    assert!(!raw.windows(6).any(|w| w.eq_ignore_ascii_case(b"bearer")));
}

/// Spans of `n` requests to an absent or silent collector: each answered, all of them together
/// quickly (a request never waits for the exporter), and SIGTERM still exits within the grace.
async fn requests_are_not_held_back(endpoint: &str, counted: impl Fn() -> bool) {
    const REQUESTS: usize = 200;
    const GRACE: Duration = Duration::from_millis(1500);
    let upstream = FakeUpstream::start().await;
    let mut gw = GatewayBuilder::new(upstream.base_url())
        .tracing_endpoint(endpoint)
        .tracing_sample_ratio(1.0)
        .shutdown_grace_ms(GRACE.as_millis() as u64)
        .spawn_binary()
        .await;
    let c = gw.client();
    let started = Instant::now();
    for i in 0..REQUESTS {
        let r = c.get(&format!("/v1/agents2/ag-{}", i % 10), BILLING).await;
        assert_eq!(r.status, 200);
    }
    // Hundreds of loopback requests take well under a second; one wait on a dead collector
    // (its export timeout is 5 s) would show.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{REQUESTS} requests took {:?}",
        started.elapsed()
    );
    let admin = gw.admin_client();
    wait_until("dropped spans counted", async || {
        scrape(&admin).await.value(DROPPED, &[]) > 0.0 && counted()
    })
    .await;
    // More spans queued behind the stuck or failing export: the exit still keeps to the grace.
    let r = c.get("/v1/calls", BILLING).await;
    assert_eq!(r.status, 200);
    gw.signal("TERM");
    let code = gw.wait_exit(GRACE + Duration::from_millis(1000)).await;
    assert_eq!(code, Some(0), "exit within the grace: {}", gw.stderr());
}

#[tokio::test]
async fn an_absent_collector_costs_requests_nothing_and_drops_are_counted() {
    requests_are_not_held_back(&absent_endpoint(), || true).await;
}

#[tokio::test]
async fn a_collector_that_never_answers_costs_requests_nothing_and_drops_are_counted() {
    let collector = OtlpCollector::never_answering().await;
    requests_are_not_held_back(&collector.endpoint(), || collector.requests() > 0).await;
}

#[tokio::test]
async fn demo_with_an_otlp_endpoint_traces_every_request() {
    let collector = OtlpCollector::start().await;
    let (_demo, banner, api, team_key) =
        crate::sim::start_demo(&["--otlp-endpoint", &collector.endpoint()]).await;
    assert!(banner.contains(&collector.endpoint()), "{banner}");
    let r = Client::new(api)
        .get("/v1/agents2/agt_abc123", &team_key)
        .await;
    assert_eq!(r.status, 200);
    // `demo` samples every request that brings no parent.
    wait_until("the demo request's server span", async || {
        collector
            .spans()
            .iter()
            .any(|s| s.kind == SERVER && s.name == "GET /v1/agents2/{id}")
    })
    .await;
    let spans = collector.spans();
    let server = one(&spans, SERVER, "server");
    assert_eq!(server.attr_str("dialnexa.team"), Some("demo"));
    assert_eq!(one(&spans, CLIENT, "client").trace_id, server.trace_id);
}

/// A ratio between 0 and 1 keeps exactly the requests whose (audit line's) trace id the ratio
/// sampler keeps, and their spans carry that id: the gateway decides once, on the id it logs.
#[tokio::test]
async fn a_ratio_samples_by_the_trace_id_the_audit_line_carries() {
    use opentelemetry_sdk::trace::{Sampler, SamplingDecision, ShouldSample};
    const REQUESTS: usize = 40;
    let upstream = FakeUpstream::start().await;
    let collector = OtlpCollector::start().await;
    let gw = traced_gateway(&upstream, &collector, 0.5, |b| b).await;
    let c = gw.client();
    let mut answers = Vec::new();
    for _ in 0..REQUESTS {
        answers.push(c.get("/v1/calls", BILLING).await);
    }
    // A last, sampled request: once its spans are in, every earlier one's would be.
    let marker = get_traced(&c, "/v1/calls", &traceparent(&trace_n(12), "01")).await;
    collector.trace(&trace_n(12), 4).await;
    let lines = audit_lines(&gw, REQUESTS + 1).await;
    let ratio = Sampler::TraceIdRatioBased(0.5);
    let exported: std::collections::HashSet<String> =
        collector.spans().into_iter().map(|s| s.trace_id).collect();
    let mut kept = 0;
    for r in &answers {
        let id = audit_for(&lines, r)["trace_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let trace_id = opentelemetry::trace::TraceId::from_hex(&id).unwrap();
        let keep = matches!(
            ratio
                .should_sample(
                    None,
                    trace_id,
                    "",
                    &opentelemetry::trace::SpanKind::Server,
                    &[],
                    &[]
                )
                .decision,
            SamplingDecision::RecordAndSample
        );
        assert_eq!(exported.contains(&id), keep, "trace {id}");
        kept += usize::from(keep);
    }
    assert!(kept > 0 && kept < REQUESTS, "{kept} of {REQUESTS} kept");
    assert_eq!(marker.status, 200);
}
