//! What `/metrics` tells ops, read over the wire: answer times by route class and cache outcome,
//! upstream answers and quota per org from the fake upstream's headers, build and process figures.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Method;
use serde_json::json;

use crate::support::*;

const DURATION: &str = "dialnexa_gateway_request_duration_seconds";
const DURATION_COUNT: &str = "dialnexa_gateway_request_duration_seconds_count";

fn answers(m: &Metrics, class: &str, cache: &str) -> f64 {
    m.value(DURATION_COUNT, &[("route_class", class), ("cache", cache)])
}

fn upstream_answers(m: &Metrics, org: &str, class: &str) -> f64 {
    let labels = [("org", org), ("status_class", class)];
    m.value("dialnexa_gateway_upstream_responses_total", &labels)
}

fn quota(m: &Metrics, which: &str, org: &str) -> Option<f64> {
    m.sample(
        &format!("dialnexa_gateway_upstream_ratelimit_{which}"),
        &[("org", org)],
    )
}

#[tokio::test]
async fn answer_times_are_counted_by_route_class_and_cache_outcome() {
    let upstream = FakeUpstream::start().await;
    let gw = GatewayBuilder::new(upstream.base_url()).start().await;
    let (c, admin) = (gw.client(), gw.admin_client());
    let before = scrape(&admin).await;
    // Every label set a request can have is there before any request, at 0.
    for (class, cache) in [
        ("agent_read", "hit"),
        ("agent_read", "miss"),
        ("agent_read", "bypass"),
        ("agent_read", "stale"),
        ("agent_read", "none"),
        ("other_read", "none"),
        ("write", "none"),
    ] {
        assert_eq!(answers(&before, class, cache), 0.0, "{class} {cache}");
    }

    assert_eq!(c.get("/v1/agents2/d1", BILLING).await.x_cache(), "MISS");
    assert_eq!(c.get("/v1/agents2/d1", BILLING).await.x_cache(), "HIT");
    assert_eq!(c.get("/v1/agents2/d1", SUPPORT).await.x_cache(), "HIT");
    let auth = bearer(BILLING);
    let bypass = c
        .send(
            Method::GET,
            "/v1/agents2/d1",
            &[("authorization", &auth), ("cache-control", "no-store")],
            "",
        )
        .await;
    assert_eq!(bypass.x_cache(), "BYPASS");
    // Refused before the cache step: an agent read with no cache outcome.
    assert_eq!(c.get("/v1/agents2/d1", "not-a-team-key").await.status, 401);
    assert_eq!(c.get("/v1/calls", BILLING).await.status, 200);
    assert_eq!(c.get("/v1/agents2/d1/versions", BILLING).await.status, 200);
    // A write upstream takes over 100 ms to answer.
    upstream.set_delay(Method::PATCH, Duration::from_millis(120));
    let patch = c.patch("/v1/agents2/d1", BILLING, r#"{"name":"x"}"#).await;
    assert_eq!(patch.status, 200);

    // The histogram is observed before the answer's last byte leaves: no waiting needed.
    let after = scrape(&admin).await;
    let delta = |class, cache| answers(&after, class, cache) - answers(&before, class, cache);
    assert_eq!(delta("agent_read", "miss"), 1.0, "{after}");
    assert_eq!(delta("agent_read", "hit"), 2.0);
    assert_eq!(delta("agent_read", "bypass"), 1.0);
    assert_eq!(delta("agent_read", "none"), 1.0);
    assert_eq!(delta("agent_read", "stale"), 0.0);
    assert_eq!(delta("other_read", "none"), 2.0);
    assert_eq!(delta("write", "none"), 1.0);

    // The write's time is upstream's delay and more: above the 0.1 s bound, within +Inf.
    let bucket = |le: &str| {
        let labels = [("le", le), ("route_class", "write"), ("cache", "none")];
        after.value(&format!("{DURATION}_bucket"), &labels)
    };
    assert_eq!(bucket("0.1"), 0.0, "{after}");
    assert_eq!(bucket("+Inf"), 1.0);
    let write_sum = after
        .sample(
            &format!("{DURATION}_sum"),
            &[("route_class", "write"), ("cache", "none")],
        )
        .unwrap_or(0.0);
    assert!((0.12..30.0).contains(&write_sum), "{write_sum}");
    // Admin actions and probes are not API answers.
    let purge = admin
        .send(
            Method::POST,
            "/admin/cache/purge",
            &[("authorization", &bearer(ADMIN_TOKEN))],
            "{}",
        )
        .await;
    assert_eq!(purge.status, 200);
    let later = scrape(&admin).await;
    assert_eq!(later.total(DURATION_COUNT), after.total(DURATION_COUNT));
}

#[tokio::test]
async fn upstream_answers_and_stated_quota_are_counted_per_org() {
    let upstream = FakeUpstream::start().await;
    // Holds off: the 429 below would otherwise hold acme's next call (see `budget`), and this test
    // is about what each answer records.
    let mut gw = GatewayBuilder::new(upstream.base_url())
        .org_max_hold_seconds("acme", 0)
        .start()
        .await;
    let (c, admin) = (gw.client(), gw.admin_client());
    let before = scrape(&admin).await;
    // Answer counters exist from the start; quota gauges only once upstream has stated a quota.
    assert_eq!(upstream_answers(&before, "acme", "429"), 0.0);
    assert_eq!(upstream_answers(&before, "globex", "5xx"), 0.0);
    assert_eq!(quota(&before, "remaining", "acme"), None, "{before}");

    // Upstream tells each org's quota apart, by the org key the gateway sent.
    upstream.set_override(|rec| {
        let auth = rec.headers.get("authorization")?.to_str().ok()?;
        let (limit, remaining) = if auth.ends_with(ORG_KEY_GLOBEX) {
            ("50", "3")
        } else {
            ("1000", "900")
        };
        let status = match rec.path() {
            "/v1/calls/limited" => 429,
            "/v1/calls/broken" => 503,
            "/v1/calls/missing" => 404,
            "/v1/calls/garbage" => {
                return Some(
                    Reply::json(200, json!({}))
                        .with_header("x-ratelimit-limit", "unlimited")
                        .with_header("x-ratelimit-remaining", "-1"),
                );
            }
            _ => 200,
        };
        let remaining = if status == 429 { "0" } else { remaining };
        Some(
            Reply::json(status, json!({"path": rec.path()}))
                .with_header("x-ratelimit-limit", limit)
                .with_header("x-ratelimit-remaining", remaining),
        )
    });

    assert_eq!(c.get("/v1/calls", BILLING).await.status, 200);
    // A cache fill is an upstream answer too.
    assert_eq!(c.get("/v1/agents2/q1", SUPPORT).await.x_cache(), "MISS");
    assert_eq!(c.get("/v1/calls/missing", BILLING).await.status, 404);
    assert_eq!(c.get("/v1/calls/broken", BILLING).await.status, 503);
    assert_eq!(c.get("/v1/calls", RIVAL).await.status, 200);
    let text = scrape(&admin).await;
    assert_eq!(quota(&text, "limit", "acme"), Some(1000.0), "{text}");
    assert_eq!(quota(&text, "remaining", "acme"), Some(900.0));
    assert_eq!(quota(&text, "limit", "globex"), Some(50.0));
    assert_eq!(quota(&text, "remaining", "globex"), Some(3.0));

    // Upstream's own 429 is passed on, counted apart from other 4xx, and empties the gauge.
    assert_eq!(c.get("/v1/calls/limited", SUPPORT).await.status, 429);
    // Values that are not plain counts change nothing.
    assert_eq!(c.get("/v1/calls/garbage", BILLING).await.status, 200);
    let after = scrape(&admin).await;
    assert_eq!(quota(&after, "remaining", "acme"), Some(0.0), "{after}");
    assert_eq!(quota(&after, "limit", "acme"), Some(1000.0));
    let delta =
        |org, class| upstream_answers(&after, org, class) - upstream_answers(&before, org, class);
    assert_eq!(delta("acme", "2xx"), 3.0, "{after}");
    assert_eq!(delta("acme", "4xx"), 1.0);
    assert_eq!(delta("acme", "429"), 1.0);
    assert_eq!(delta("acme", "5xx"), 1.0);
    assert_eq!(delta("acme", "3xx"), 0.0);
    assert_eq!(delta("globex", "2xx"), 1.0);
    assert_eq!(delta("globex", "429"), 0.0);
    // Cache hits do not reach upstream and are not upstream answers.
    assert_eq!(c.get("/v1/agents2/q1", SUPPORT).await.x_cache(), "HIT");
    let hit = scrape(&admin).await;
    assert_eq!(
        upstream_answers(&hit, "acme", "2xx"),
        upstream_answers(&after, "acme", "2xx")
    );

    // A reload that leaves no team in an org drops the org's series.
    gw.rewrite_config(|config| config.team_org("rival", "acme"));
    gw.running().reload().expect("valid config reloads");
    let reloaded = scrape(&admin).await;
    assert!(
        !reloaded.to_string().contains(r#"org="globex""#),
        "{reloaded}"
    );
    assert_eq!(quota(&reloaded, "limit", "acme"), Some(1000.0));
}

#[tokio::test]
async fn build_and_process_figures_are_exposed_under_their_standard_names() {
    let upstream = FakeUpstream::start().await;
    let gw = GatewayBuilder::new(upstream.base_url()).start().await;
    let admin = gw.admin_client();
    // Classic text, then OpenMetrics: both name and type them the same way.
    for accept in ["text/plain", "application/openmetrics-text;version=1.0.0"] {
        let m = scrape_accepting(&admin, accept).await;
        let version = env!("CARGO_PKG_VERSION");
        let build = [("version", version)];
        assert_eq!(
            m.sample("dialnexa_gateway_build_info", &build),
            Some(1.0),
            "{m}"
        );
        let value = |name: &str| m.value(name, &[]);
        assert!(value("process_resident_memory_bytes") > 1_000_000.0);
        assert!(value("process_cpu_seconds_total") >= 0.0);
        let (open, max) = (value("process_open_fds"), value("process_max_fds"));
        assert!(
            open >= 3.0 && (max == 0.0 || open <= max),
            "{open} of {max}"
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = value("process_start_time_seconds");
        assert!(
            started <= now + 1.0 && started > now - 7.0 * 86_400.0,
            "{started}"
        );
        assert!(m.to_string().contains("# TYPE process_cpu_seconds"), "{m}");
    }
}

/// Metric names (`dialnexa_gateway_*`, `process_*`) in `text`, YAML comment lines left out.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let bytes = line.as_bytes();
        let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
        for prefix in ["dialnexa_gateway_", "process_"] {
            for (at, _) in line.match_indices(prefix) {
                if at > 0 && ident(bytes[at - 1]) {
                    continue;
                }
                let end = line[at..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .map_or(line.len(), |n| at + n);
                names.push(line[at..end].to_owned());
            }
        }
    }
    names
}

#[tokio::test]
async fn dashboard_and_alerts_use_only_series_the_gateway_exposes() {
    let upstream = FakeUpstream::start().await;
    upstream.set_override(|_| {
        Some(
            Reply::json(200, json!({}))
                .with_header("x-ratelimit-limit", "1000")
                .with_header("x-ratelimit-remaining", "999"),
        )
    });
    // A key with an end, so the series that only exist for such keys do too.
    let gw = GatewayBuilder::new(upstream.base_url())
        .team_key_ending(
            "billing",
            "team-key-billing-ending-0012",
            "2099-01-01T00:00:00Z",
        )
        .start()
        .await;
    // One upstream answer, so the series that only exist once upstream has stated a quota do too.
    assert_eq!(gw.client().get("/v1/calls", BILLING).await.status, 200);
    let metrics = scrape(&gw.admin_client()).await;
    let exposed = metrics.names();

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/observability");
    let mut used = Vec::new();
    for file in ["dashboard.json", "alerts.yml", "alerts.test.yml"] {
        let body = std::fs::read_to_string(dir.join(file)).unwrap();
        used.extend(metric_names(&body).into_iter().map(|n| (file, n)));
    }
    for must in [
        "dialnexa_gateway_request_duration_seconds_bucket",
        "dialnexa_gateway_upstream_ratelimit_remaining",
        "dialnexa_gateway_upstream_calls_total",
        "dialnexa_gateway_upstream_hold_seconds",
        "process_cpu_seconds_total",
    ] {
        assert!(used.iter().any(|(_, n)| n == must), "{must} is not used");
    }
    let unknown: Vec<_> = used.iter().filter(|(_, n)| !exposed.contains(n)).collect();
    assert!(
        unknown.is_empty(),
        "names the gateway does not expose: {unknown:?}\n{metrics}"
    );
}
