//! The audit trail as written to disk: exactly one line per request whatever its fate, every
//! contract field with its type, changed field names but never values, no key anywhere, admin
//! actions in the same stream, reopening after logrotate, and nothing lost at shutdown.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::support::client::raw_status;
use crate::support::*;

/// Small enough that a 2 KiB body is refused with `413`.
const BODY_LIMIT: u64 = 1024;

async fn start() -> (FakeUpstream, TestGateway) {
    setup_with(|config| config.max_body_bytes(BODY_LIMIT)).await
}

/// What the audit line must call a presented key: the first 8 hex digits of its SHA-256.
fn key_id(key: &str) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..4])
}

/// The one line with this request id (panics if there is not exactly one).
fn line_for<'a>(lines: &'a [Value], request_id: &str) -> &'a Value {
    let found: Vec<_> = lines
        .iter()
        .filter(|l| l["request_id"] == request_id)
        .collect();
    assert_eq!(found.len(), 1, "lines for request {request_id}: {found:?}");
    found[0]
}

fn request_id(r: &TestResponse) -> &str {
    r.header("x-request-id")
        .expect("X-Request-Id on every answer")
}

fn decision_counts(lines: &[Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for l in lines {
        let d = l["decision"].as_str().expect("decision is a string");
        *counts.entry(d.to_owned()).or_default() += 1;
    }
    counts
}

/// The field types every line has, whatever the request.
fn assert_line_shape(line: &Value) {
    let ts = line["ts"].as_str().expect("ts is a string");
    // RFC 3339 in UTC with milliseconds: 2026-11-05T12:34:56.789Z
    assert_eq!(ts.len(), 24, "ts {ts}");
    assert!(ts.ends_with('Z') && &ts[19..20] == ".", "ts {ts}");
    humantime::parse_rfc3339(ts).unwrap_or_else(|e| panic!("ts {ts}: {e}"));
    assert!(line["request_id"].is_string());
    assert!(line["team"].is_string() || line["team"].is_null());
    assert!(line["org"].is_string() || line["org"].is_null());
    match &line["key_id"] {
        Value::Null => {}
        Value::String(id) => assert!(
            id.len() == 8 && id.chars().all(|c| c.is_ascii_hexdigit()),
            "key_id {id}"
        ),
        other => panic!("key_id {other}"),
    }
    assert_eq!(line["client_ip"], "127.0.0.1");
    assert!(line["method"].is_string());
    assert!(line["path"].is_string());
    assert!(line["agent_id"].is_string() || line["agent_id"].is_null());
    assert!(line["status"].is_u64());
    assert!(line["upstream_status"].is_u64() || line["upstream_status"].is_null());
    assert!(
        [
            Value::Null,
            "hit".into(),
            "miss".into(),
            "bypass".into(),
            "stale".into()
        ]
        .contains(&line["cache"]),
        "cache {}",
        line["cache"]
    );
    assert!(
        [
            "allowed",
            "unauthenticated",
            "forbidden",
            "rate_limited",
            "bad_request"
        ]
        .contains(&line["decision"].as_str().unwrap_or("")),
        "decision {}",
        line["decision"]
    );
    assert!(line["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0));
    match &line["upstream_latency_ms"] {
        Value::Null => {}
        v => assert!(v.as_f64().is_some_and(|ms| ms >= 0.0), "{v}"),
    }
    assert!(line["bytes_in"].is_u64());
    assert!(line["bytes_out"].is_u64());
    // Every line has a W3C trace id, tracing on or off.
    let trace_id = line["trace_id"].as_str().expect("trace_id is a string");
    assert!(
        trace_id.len() == 32
            && trace_id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && trace_id.bytes().any(|b| b != b'0'),
        "trace_id {trace_id}"
    );
    match &line["changed_fields"] {
        Value::Null => {}
        Value::Array(fields) => assert!(fields.iter().all(Value::is_string)),
        other => panic!("changed_fields {other}"),
    }
    assert!(line["invalidated"].is_u64());
}

/// The line answering `r`, checked against the response itself.
fn assert_line_matches(lines: &[Value], r: &TestResponse, method: &str, path: &str) -> Value {
    let line = line_for(lines, request_id(r)).clone();
    assert_line_shape(&line);
    assert_eq!(line["method"], method);
    assert_eq!(line["path"], path);
    assert_eq!(line["status"], r.status);
    assert_eq!(
        line["bytes_out"],
        r.body.len() as u64,
        "bytes_out of {path}"
    );
    line
}

/// One request to send: method, path, headers, body.
type Planned = (Method, &'static str, Vec<(&'static str, String)>, Bytes);

#[tokio::test]
async fn concurrent_requests_of_every_kind_get_exactly_one_line_each() {
    let (_upstream, gw) =
        setup_with(|config| config.max_body_bytes(BODY_LIMIT).team_quota("rival", 1, 2)).await;
    let big = Bytes::from(vec![b'x'; 2048]);
    let mut plan: Vec<Planned> = Vec::new();
    for _ in 0..10 {
        plan.push((
            Method::GET,
            "/v1/calls",
            vec![("authorization", bearer(BILLING))],
            Bytes::new(),
        ));
        plan.push((
            Method::GET,
            "/v1/agents2/a1",
            vec![("x-api-key", BILLING.to_owned())],
            Bytes::new(),
        ));
    }
    for i in 0..8 {
        let headers = if i % 2 == 0 {
            vec![]
        } else {
            vec![("authorization", bearer("made-up-unknown-key"))]
        };
        plan.push((Method::GET, "/v1/calls", headers, Bytes::new()));
        plan.push((
            Method::PATCH,
            "/v1/agents2/a1",
            vec![("authorization", bearer(VIEWER))],
            Bytes::from_static(br#"{"name":"n"}"#),
        ));
    }
    // Burst 2: two allowed, ten refused.
    for _ in 0..12 {
        plan.push((
            Method::GET,
            "/v1/calls",
            vec![("authorization", bearer(RIVAL))],
            Bytes::new(),
        ));
    }
    for _ in 0..4 {
        plan.push((
            Method::GET,
            "/v1/agents2/a%2fb",
            vec![("authorization", bearer(BILLING))],
            Bytes::new(),
        ));
        plan.push((
            Method::GET,
            "/v2/agents2/a1",
            vec![("authorization", bearer(BILLING))],
            Bytes::new(),
        ));
        plan.push((
            Method::POST,
            "/v1/calls",
            vec![("authorization", bearer(BILLING))],
            big.clone(),
        ));
    }
    assert_eq!(plan.len(), 60);

    let c = gw.client();
    let answers = join_all(
        plan.into_iter()
            .enumerate()
            .map(|(i, (method, path, headers, body))| {
                let c = c.clone();
                async move {
                    let id = format!("mix-{i}");
                    let mut h: Vec<(&str, &str)> =
                        headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    h.push(("x-request-id", &id));
                    c.send(method, path, &h, body).await
                }
            })
            .collect(),
    )
    .await;
    let mut statuses = BTreeMap::new();
    for r in &answers {
        *statuses.entry(r.status).or_insert(0) += 1;
    }
    assert_eq!(
        statuses,
        BTreeMap::from([
            (200, 22),
            (400, 4),
            (401, 8),
            (403, 8),
            (404, 4),
            (413, 4),
            (429, 10)
        ])
    );

    let lines = gw.audit_lines(60).await;
    assert_eq!(lines.len(), 60);
    let ids: BTreeSet<_> = lines
        .iter()
        .map(|l| l["request_id"].as_str().unwrap().to_owned())
        .collect();
    let expected: BTreeSet<_> = (0..60).map(|i| format!("mix-{i}")).collect();
    assert_eq!(ids, expected, "one line per request, none twice");
    for r in &answers {
        assert_line_shape(line_for(&lines, request_id(r)));
        assert_eq!(line_for(&lines, request_id(r))["status"], r.status);
    }
    assert_eq!(
        decision_counts(&lines),
        BTreeMap::from([
            ("allowed".to_owned(), 22),
            ("bad_request".to_owned(), 12),
            ("forbidden".to_owned(), 8),
            ("rate_limited".to_owned(), 10),
            ("unauthenticated".to_owned(), 8),
        ])
    );

    // Nothing else trails in: the next request's line is the 61st, and the last.
    let sentinel = c.get("/v1/calls", SUPPORT).await;
    let lines = gw.audit_lines(61).await;
    assert_eq!(lines.len(), 61);
    line_for(&lines, request_id(&sentinel));
}

#[tokio::test]
async fn every_contract_field_is_present_with_its_type_and_value() {
    let (_upstream, gw) = start().await;
    let c = gw.client();
    let miss = c.get("/v1/agents2/a1?version_number=3", BILLING).await;
    let hit = c
        .send(
            Method::GET,
            "/v1/agents2/a1?version_number=3",
            &[("x-api-key", BILLING)],
            Bytes::new(),
        )
        .await;
    let bypass = c
        .send(
            Method::GET,
            "/v1/agents2/a1",
            &[
                ("authorization", &bearer(BILLING)),
                ("cache-control", "no-store"),
            ],
            Bytes::new(),
        )
        .await;
    let patch_body = r#"{"name":"renamed"}"#;
    let patch = c.patch("/v1/agents2/a1", BILLING, patch_body).await;
    let calls = c.get("/v1/calls", RIVAL).await;
    let anonymous = c.send(Method::GET, "/v1/calls", &[], Bytes::new()).await;
    let unknown_key = c.get("/v1/calls", "made-up-unknown-key").await;
    let forbidden = c.patch("/v1/agents2/a9", VIEWER, "{}").await;
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(bypass.x_cache(), "BYPASS");
    assert_eq!(
        [anonymous.status, unknown_key.status, forbidden.status],
        [401, 401, 403]
    );

    let lines = gw.audit_lines(8).await;
    assert_eq!(lines.len(), 8);

    let l = assert_line_matches(&lines, &miss, "GET", "/v1/agents2/a1");
    assert_eq!(l["team"], "billing");
    assert_eq!(l["org"], "acme");
    assert_eq!(l["key_id"], key_id(BILLING));
    assert_eq!(l["agent_id"], "a1");
    assert_eq!(l["decision"], "allowed");
    assert_eq!(l["cache"], "miss");
    assert_eq!(l["upstream_status"], 200);
    assert!(l["upstream_latency_ms"].is_f64());
    assert_eq!(l["bytes_in"], 0);
    assert_eq!(l["changed_fields"], Value::Null, "reads name no fields");
    assert_eq!(l["invalidated"], 0);

    // Same key through the other header: same key_id. Not forwarded: no upstream figures.
    let l = assert_line_matches(&lines, &hit, "GET", "/v1/agents2/a1");
    assert_eq!(l["key_id"], key_id(BILLING));
    assert_eq!(l["cache"], "hit");
    assert_eq!(l["upstream_status"], Value::Null);
    assert_eq!(l["upstream_latency_ms"], Value::Null);

    let l = assert_line_matches(&lines, &bypass, "GET", "/v1/agents2/a1");
    assert_eq!(l["cache"], "bypass");
    assert_eq!(l["upstream_status"], 200);

    let l = assert_line_matches(&lines, &patch, "PATCH", "/v1/agents2/a1");
    assert_eq!(l["decision"], "allowed");
    assert_eq!(l["upstream_status"], 200);
    assert_eq!(l["cache"], Value::Null);
    assert_eq!(l["bytes_in"], patch_body.len() as u64);
    assert_eq!(l["changed_fields"], serde_json::json!(["name"]));
    assert!(
        l["invalidated"].as_u64().unwrap() >= 1,
        "the cached a1 was dropped: {l}"
    );

    let l = assert_line_matches(&lines, &calls, "GET", "/v1/calls");
    assert_eq!(l["team"], "rival");
    assert_eq!(l["org"], "globex");
    assert_eq!(l["key_id"], key_id(RIVAL));
    assert_eq!(l["agent_id"], Value::Null);
    assert_eq!(l["cache"], Value::Null, "not a cacheable route");
    assert_eq!(l["upstream_status"], 200);

    let l = assert_line_matches(&lines, &anonymous, "GET", "/v1/calls");
    assert_eq!(l["decision"], "unauthenticated");
    assert_eq!(l["team"], Value::Null);
    assert_eq!(l["org"], Value::Null);
    assert_eq!(l["key_id"], Value::Null);
    assert_eq!(l["upstream_status"], Value::Null);
    assert_eq!(l["upstream_latency_ms"], Value::Null);

    // An unknown key is still followed by its digest prefix, never by the key.
    let l = assert_line_matches(&lines, &unknown_key, "GET", "/v1/calls");
    assert_eq!(l["decision"], "unauthenticated");
    assert_eq!(l["team"], Value::Null);
    assert_eq!(l["key_id"], key_id("made-up-unknown-key"));

    let l = assert_line_matches(&lines, &forbidden, "PATCH", "/v1/agents2/a9");
    assert_eq!(l["decision"], "forbidden");
    assert_eq!(l["team"], "viewer");
    assert_eq!(l["org"], "acme");
    assert_eq!(l["agent_id"], "a9");
    assert_eq!(l["upstream_status"], Value::Null);
    assert_eq!(l["invalidated"], 0);
}

#[tokio::test]
async fn changed_fields_are_dotted_leaf_paths_without_values() {
    let (upstream, gw) = start().await;
    let r = gw
        .client()
        .patch(
            "/v1/agents2/a1",
            BILLING,
            r#"{"llm":{"settings":{"temperature":0.3}},"functions":[{"name":"x"}]}"#,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(upstream.count(&Method::PATCH, "/v1/agents2/a1"), 1);
    let lines = gw.audit_lines(1).await;
    let fields: BTreeSet<&str> = line_for(&lines, request_id(&r))["changed_fields"]
        .as_array()
        .expect("a write names its fields")
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        BTreeSet::from(["llm.settings.temperature", "functions"])
    );
}

#[tokio::test]
async fn secrets_in_bodies_and_every_key_stay_out_of_the_audit_file() {
    let (upstream, gw) = start().await;
    let c = gw.client();
    let secret = "sk-live-made-up-123";
    let body = format!(r#"{{"llm":{{"api_key":"{secret}"}},"name":"n"}}"#);
    assert_eq!(c.patch("/v1/agents2/a1", BILLING, &body).await.status, 200);
    let post = c
        .send(
            Method::POST,
            "/v1/calls",
            &[("x-api-key", SUPPORT), ("content-type", "application/json")],
            Bytes::from(format!(r#"{{"api_key":"{secret}"}}"#)),
        )
        .await;
    assert_eq!(post.status, 200);
    assert_eq!(c.get("/v1/calls", RIVAL).await.status, 200);
    assert_eq!(c.get("/v1/calls", "made-up-unknown-key").await.status, 401);
    let purge = gw
        .admin_client()
        .send(
            Method::POST,
            "/admin/cache/purge",
            &[("authorization", &bearer(ADMIN_TOKEN))],
            Bytes::new(),
        )
        .await;
    assert_eq!(purge.status, 200);
    // Upstream really received the secret and the org keys: they were there to leak.
    assert!(upstream
        .requests()
        .iter()
        .any(|r| String::from_utf8_lossy(&r.body).contains(secret)));

    let lines = gw.audit_lines(5).await;
    assert_eq!(lines.len(), 5);
    let l = line_for(&lines, request_id(&post));
    assert_eq!(l["changed_fields"], serde_json::json!(["api_key"]));
    let text = std::fs::read_to_string(&gw.audit_path).unwrap();
    for (what, needle) in [
        ("body secret", secret),
        ("billing key", BILLING),
        ("support key", SUPPORT),
        ("rival key", RIVAL),
        ("unknown key", "made-up-unknown-key"),
        ("acme org key", ORG_KEY_ACME),
        ("globex org key", ORG_KEY_GLOBEX),
        ("admin token", ADMIN_TOKEN),
        ("bearer value", "Bearer "),
    ] {
        assert!(!text.contains(needle), "{what} appears in the audit file");
    }
}

#[tokio::test]
async fn malformed_write_body_is_forwarded_and_still_audited() {
    let (upstream, gw) = start().await;
    let body = "not json {";
    let r = gw.client().patch("/v1/agents2/a1", BILLING, body).await;
    assert_eq!(r.status, 200);
    assert_eq!(upstream.count(&Method::PATCH, "/v1/agents2/a1"), 1);
    assert_eq!(upstream.requests()[0].body.as_ref(), body.as_bytes());

    let lines = gw.audit_lines(1).await;
    let l = assert_line_matches(&lines, &r, "PATCH", "/v1/agents2/a1");
    assert_eq!(l["decision"], "allowed");
    assert_eq!(l["upstream_status"], 200);
    assert_eq!(l["bytes_in"], body.len() as u64);
    assert!(
        l["changed_fields"].is_null() || l["changed_fields"] == serde_json::json!([]),
        "changed_fields {}",
        l["changed_fields"]
    );
}

#[tokio::test]
async fn oversized_body_is_audited_as_bad_request_and_invalidates_nothing() {
    let (upstream, gw) = start().await;
    let c = gw.client();
    assert_eq!(c.get("/v1/agents2/a1", BILLING).await.status, 200);
    let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(2048));
    let r = c.patch("/v1/agents2/a1", BILLING, &big).await;
    assert_eq!(r.status, 413);
    assert_eq!(upstream.count(&Method::PATCH, "/"), 0);
    assert_eq!(c.get("/v1/agents2/a1", BILLING).await.x_cache(), "HIT");

    let lines = gw.audit_lines(3).await;
    let l = assert_line_matches(&lines, &r, "PATCH", "/v1/agents2/a1");
    assert_eq!(l["decision"], "bad_request");
    assert_eq!(l["status"], 413);
    // What the client sent, though none of it went further.
    assert_eq!(l["bytes_in"], big.len());
    assert_eq!(l["team"], "billing");
    assert_eq!(l["upstream_status"], Value::Null);
    assert_eq!(l["invalidated"], 0);
}

#[tokio::test]
async fn admin_actions_are_audited_without_a_team_and_probes_are_not() {
    let (_upstream, gw) = start().await;
    let c = gw.client();
    let admin = gw.admin_client();
    assert_eq!(c.get("/v1/agents2/a1", BILLING).await.status, 200);
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            admin
                .send(Method::GET, path, &[], Bytes::new())
                .await
                .status,
            200
        );
    }
    let purged = admin
        .send(
            Method::POST,
            "/admin/cache/purge",
            &[
                ("authorization", &bearer(ADMIN_TOKEN)),
                ("content-type", "application/json"),
            ],
            Bytes::from_static(br#"{"org":"acme","agent_id":"a1"}"#),
        )
        .await;
    assert_eq!(purged.status, 200);
    let refused = admin
        .send(
            Method::POST,
            "/admin/cache/purge",
            &[],
            Bytes::from_static(b"{}"),
        )
        .await;
    assert_eq!(refused.status, 401);
    // Probes once more, after the admin actions, then a request whose line closes the stream.
    admin.send(Method::GET, "/healthz", &[], Bytes::new()).await;
    admin.send(Method::GET, "/metrics", &[], Bytes::new()).await;
    let sentinel = c.get("/v1/calls", BILLING).await;

    let lines = gw.audit_lines(4).await;
    line_for(&lines, request_id(&sentinel));
    assert_eq!(lines.len(), 4, "probes were audited: {lines:?}");
    assert!(lines
        .iter()
        .all(|l| !["/healthz", "/readyz", "/metrics"].contains(&l["path"].as_str().unwrap())));

    let l = assert_line_matches(&lines, &purged, "POST", "/admin/cache/purge");
    assert_eq!(l["team"], Value::Null);
    assert_eq!(l["decision"], "allowed");
    assert_eq!(l["invalidated"], 1);
    let l = assert_line_matches(&lines, &refused, "POST", "/admin/cache/purge");
    assert_eq!(l["team"], Value::Null);
    assert_eq!(l["decision"], "unauthenticated");
    assert_eq!(l["key_id"], Value::Null);
}

#[tokio::test]
async fn reopen_after_rotation_writes_a_new_private_file_and_leaves_old_lines_behind() {
    let (_upstream, gw) = start().await;
    let c = gw.client();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let mut before = Vec::new();
    for _ in 0..3 {
        before.push(c.get("/v1/calls", BILLING).await);
    }
    gw.audit_lines(3).await;
    assert_eq!(mode(&gw.audit_path), 0o600);

    let rotated = gw.audit_path.with_extension("jsonl.1");
    std::fs::rename(&gw.audit_path, &rotated).unwrap();
    gw.running().reopen_audit().await;
    let path = gw.audit_path.clone();
    wait_until("a new audit file at the original path", async || {
        path.exists()
    })
    .await;
    assert_eq!(mode(&gw.audit_path), 0o600, "the new file is private");

    let mut after = Vec::new();
    for _ in 0..2 {
        after.push(c.get("/v1/calls", SUPPORT).await);
    }
    let new_lines = gw.audit_lines(2).await;
    let old_text = std::fs::read_to_string(&rotated).unwrap();
    let old_lines: Vec<Value> = old_text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(old_lines.len(), 3, "old lines stay in the rotated file");
    for r in &before {
        line_for(&old_lines, request_id(r));
    }
    assert_eq!(new_lines.len(), 2);
    for r in &after {
        line_for(&new_lines, request_id(r));
    }
}

#[tokio::test]
async fn graceful_shutdown_writes_a_line_for_every_answered_request() {
    let (upstream, mut gw) = setup().await;
    // Forwarded requests stay in flight while shutdown begins; refusals are answered at once.
    upstream.set_delay(Method::GET, Duration::from_millis(300));
    let c = gw.client();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                if i % 4 == 0 {
                    c.send(Method::GET, "/v1/calls", &[], Bytes::new()).await
                } else {
                    c.get("/v1/calls", BILLING).await
                }
            })
        })
        .collect();
    wait_until("150 requests in flight upstream", async || {
        upstream.total() == 150
    })
    .await;

    let running = gw.running.take().expect("gateway running");
    let gateway = running.gateway().clone();
    running.shutdown().await;

    let mut answered = BTreeSet::new();
    for t in tasks {
        // A request the closed listener never accepted has no answer and no line.
        if let Ok(r) = t.await {
            answered.insert(request_id(&r).to_owned());
        }
    }
    assert!(answered.len() >= 150, "in-flight requests were cut off");
    // Read at once: shutdown returns only after the sink is flushed.
    let lines = gw.audit();
    let ids: BTreeSet<String> = lines
        .iter()
        .map(|l| l["request_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(lines.len(), answered.len());
    assert_eq!(ids, answered);
    assert_eq!(gateway.metrics.audit_failed.get(), 0);
    assert_eq!(gateway.metrics.audit_written.get(), lines.len() as u64);
}

#[tokio::test]
async fn a_stalled_sink_holds_requests_back_and_loses_no_line() {
    let (_upstream, mut gw) = setup_with(|config| config.audit_buffer_lines(2).audit_fifo()).await;
    // ~3 KB lines: the FIFO (64 KiB), the writer's buffer (64 KiB) and the 2-line channel hold
    // about 45 of them; every request past that must wait for room.
    let path = format!("/v1/calls/{}", "x".repeat(3000));
    const REQUESTS: usize = 150;
    const HELD_AT_MOST: usize = 80;
    let finished = Arc::new(AtomicUsize::new(0));
    let c = gw.client();
    let requests: Vec<_> = (0..REQUESTS)
        .map(|i| {
            let (c, path, finished) = (c.clone(), path.clone(), finished.clone());
            async move {
                let id = format!("stalled-{i}");
                let headers = [
                    ("authorization", "Bearer not-a-team-key"),
                    ("x-request-id", id.as_str()),
                ];
                let r = c.send(Method::GET, &path, &headers, Bytes::new()).await;
                finished.fetch_add(1, Ordering::SeqCst);
                r.status
            }
        })
        .collect();
    let all = tokio::spawn(join_all(requests));

    let metrics = gw.running().gateway().metrics.clone();
    wait_until(
        "requests waiting for room in the audit buffer",
        async || metrics.audit_backpressure_waits.get() >= (REQUESTS - HELD_AT_MOST) as u64,
    )
    .await;
    // Waiting requests cannot finish while the sink is stalled, however long it stays stalled.
    // Once every request has either finished or started waiting for room, a gateway that let
    // waiting ones go (lines held elsewhere) has had them finish.
    wait_until("every request finished or waiting for room", async || {
        let waiting = metrics.audit_backpressure_waits.get();
        finished.load(Ordering::SeqCst) as u64 + waiting >= REQUESTS as u64
    })
    .await;
    let done = finished.load(Ordering::SeqCst);
    assert!(
        done <= HELD_AT_MOST,
        "{done} requests finished while their lines could not be written"
    );

    // The sink comes back: every request finishes, and every line arrives once.
    let fifo = gw.audit_fifo.take().expect("audit FIFO");
    let reader = std::thread::spawn(move || {
        let mut ids = Vec::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(fifo)) {
            let line: Value = serde_json::from_str(&line.unwrap()).unwrap();
            ids.push(line["request_id"].as_str().unwrap().to_owned());
            if ids.len() == REQUESTS {
                break;
            }
        }
        ids
    });
    let statuses = all.await.unwrap();
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    let ids = tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    let expected: BTreeSet<String> = (0..REQUESTS).map(|i| format!("stalled-{i}")).collect();
    assert_eq!(ids.len(), REQUESTS);
    assert_eq!(unique, expected);
    assert_eq!(metrics.audit_failed.get(), 0);
}

#[tokio::test]
async fn a_refused_path_is_audited_with_the_key_that_was_presented() {
    let (upstream, gw) = start().await;
    let c = gw.client();
    let auth = bearer(BILLING);
    for (n, (path, status)) in [("/v1/agents2/%2e%2e", 400), ("/v2/agents2/a1", 404)]
        .into_iter()
        .enumerate()
    {
        let r = c
            .send(Method::GET, path, &[("authorization", &auth)], Bytes::new())
            .await;
        assert_eq!(r.status, status, "{path}");
        // An identified team's answer carries its quota, refusal or not.
        assert!(r.header("ratelimit-limit").is_some(), "{path}");
        let lines = gw.audit_lines(n + 1).await;
        let line = line_for(&lines, request_id(&r));
        assert_eq!(line["key_id"], key_id(BILLING), "{path}");
        assert_eq!(line["team"], "billing", "{path}");
        assert_eq!(line["decision"], "bad_request", "{path}");
        assert_eq!(line["upstream_status"], Value::Null, "{path}");
    }
    assert_eq!(upstream.total(), 0);
}

#[tokio::test]
async fn requests_the_http_layer_cannot_parse_are_still_audited() {
    let (upstream, gw) = start().await;
    // A raw control byte in the path, more header lines than the parser takes, and a request line
    // that is not HTTP at all: each is refused before there is a request to route. (Few bytes
    // each, so the gateway has read them all when it closes, and the answer is not lost to a reset.)
    let mut many_headers = b"GET /v1/calls HTTP/1.1\r\nHost: gw\r\n".to_vec();
    for n in 0..200 {
        many_headers.extend_from_slice(format!("X-H{n}: v\r\n").as_bytes());
    }
    many_headers.extend_from_slice(b"\r\n");
    let long_uri = format!(
        "GET /v1/{} HTTP/1.1\r\nHost: gw\r\n\r\n",
        "a".repeat(70_000)
    );
    let cases: [(&[u8], u16); 4] = [
        (b"GET /v1/agents2/a\x01b HTTP/1.1\r\nHost: gw\r\n\r\n", 400),
        (&many_headers, 431),
        (long_uri.as_bytes(), 414),
        (b"\x16\x03\x01 not http\r\n\r\n", 400),
    ];
    for (n, (raw, status)) in cases.into_iter().enumerate() {
        assert_eq!(raw_status(gw.api, raw).await, status);
        let lines = gw.audit_lines(n + 1).await;
        let line = &lines[n];
        assert_line_shape(line);
        assert_eq!(line["status"], status);
        assert_eq!(line["decision"], "bad_request");
        assert_eq!((&line["method"], &line["path"]), (&"".into(), &"".into()));
        assert_eq!(
            (&line["team"], &line["key_id"]),
            (&Value::Null, &Value::Null)
        );
    }
    assert_eq!(upstream.total(), 0);
    // A connection that just closes sent no request, and leaves no line.
    drop(tokio::net::TcpStream::connect(gw.api).await.unwrap());
    let r = gw.client().get("/v1/calls", BILLING).await;
    let lines = gw.audit_lines(5).await;
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[4]["request_id"], request_id(&r));
}

#[tokio::test]
async fn requests_cut_off_when_the_grace_period_ends_are_still_audited() {
    let (upstream, mut gw) = setup_with(|config| config.shutdown_grace_ms(200)).await;
    // Upstream takes far longer than the grace period.
    upstream.set_delay(Method::GET, Duration::from_secs(5));
    upstream.set_delay(Method::PATCH, Duration::from_secs(5));
    let c = gw.client();
    let tasks: Vec<_> = (0..15)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                if i % 3 == 0 {
                    c.patch(&format!("/v1/agents2/a{i}"), BILLING, "{}").await
                } else if i == 1 {
                    // A cache fill: its line waits for the fill, which shutdown cuts short.
                    c.get("/v1/agents2/filling", BILLING).await
                } else {
                    c.get("/v1/calls", BILLING).await
                }
            })
        })
        .collect();
    wait_until("every request reached upstream", async || {
        upstream.total() == 15
    })
    .await;

    let running = gw.running.take().expect("gateway running");
    let gateway = running.gateway().clone();
    running.shutdown().await;
    for t in tasks {
        // Cut off: the client sees its connection closed.
        assert!(t.await.is_err());
    }
    // Read at once: shutdown returns only after the sink is flushed.
    let lines = gw.audit();
    assert_eq!(lines.len(), 15, "{lines:?}");
    assert!(lines.iter().all(|l| l["status"] == 499), "{lines:?}");
    assert_eq!(lines.iter().filter(|l| l["method"] == "PATCH").count(), 5);
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["path"] == "/v1/agents2/filling")
            .count(),
        1
    );
    assert_eq!(gateway.metrics.audit_failed.get(), 0);
}
