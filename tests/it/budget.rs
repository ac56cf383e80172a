//! The organisation's DialNexa quota on the wire (DESIGN, "The organisation's DialNexa quota,
//! shared fairly between its teams"): only upstream calls spend it, a team within its part is never
//! refused whatever the others do, idle parts are lent, refusals are `429 org_quota_exhausted`
//! (or STALE for an agent read), DialNexa's own `429` holds the org on every replica, and the
//! state outlives a reload. In front of the simulator with `--rate-limit` where DialNexa's own
//! count matters, else the recording fake.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use http::Method;

use dialnexa_gateway::demo::sim::{SimHandle, SimOptions, Simulator};

use crate::support::cluster::{require_redis, wait_for_readyz};
use crate::support::redis::{FaultyProxy, TestRedis};
use crate::support::*;

const CALLS: &str = "dialnexa_gateway_upstream_calls_total";
const REFUSED: &str = "dialnexa_gateway_org_budget_refused_total";
const BORROWED: &str = "dialnexa_gateway_org_budget_borrowed_total";
const HOLD: &str = "dialnexa_gateway_upstream_hold_seconds";

/// The simulated DialNexa with acme's key, enforcing `per_minute` as DialNexa does.
async fn sim(per_minute: u32) -> SimHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let options = SimOptions::new(ORG_KEY_ACME).rate_limit(NonZeroU32::new(per_minute).unwrap());
    Simulator::spawn_with(listener, options)
}

fn sim_url(sim: &SimHandle) -> String {
    format!("http://{}/v1", sim.addr)
}

/// What one team flooding upstream-bound requests got: answers by status.
#[derive(Debug, Default)]
struct Flood {
    ok: u64,
    refused_by_org: u64,
    other: Vec<u16>,
}

/// Sends `GET path` as `key`, one after another, until `until`; every answer is counted.
async fn flood(c: Client, key: &'static str, path: &'static str, until: Instant) -> Flood {
    let mut seen = Flood::default();
    while Instant::now() < until {
        let r = c.get(path, key).await;
        match (r.status, r.json()["code"].as_str()) {
            (200, _) => seen.ok += 1,
            (429, Some("org_quota_exhausted")) => seen.refused_by_org += 1,
            (status, _) => seen.other.push(status),
        }
    }
    seen
}

fn team(org: &'static str, team: &'static str) -> [(&'static str, &'static str); 2] {
    [("org", org), ("team", team)]
}

/// Burst 6 and 60 a minute for billing, support and viewer (share 1 each): 2 guaranteed each, and
/// one more every 3 s. Billing floods for 4.5 s; support spends its 2 at once and one more once
/// its part has refilled. DialNexa (the simulator, enforcing the same 60 a minute) refuses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_team_never_costs_a_team_within_its_part_and_dialnexa_refuses_nothing() {
    let sim = sim(60).await;
    let gw = GatewayBuilder::new(sim_url(&sim))
        .org_budget("acme", 60, 6)
        .start()
        .await;
    let started = Instant::now();
    let until = started + Duration::from_millis(4500);
    let flooding = tokio::spawn(flood(gw.client(), BILLING, "/v1/agents2", until));

    let c = gw.client();
    for _ in 0..2 {
        let r = c.get("/v1/agents2", SUPPORT).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    let spent = Instant::now();
    // Support's part refills one call every 3 s from its last spend (before `spent`): its third
    // call comes once it has, as a well-behaved client's would. The pause is the test's input,
    // not a wait for an event.
    tokio::time::sleep_until((spent + Duration::from_millis(3100)).into()).await;
    let r = c.get("/v1/agents2", SUPPORT).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    let flooded = flooding.await.unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    assert!(flooded.other.is_empty(), "{flooded:?}");
    assert!(flooded.refused_by_org > 0, "{flooded:?}");
    let (answered, refused) = sim.quota_counts();
    assert_eq!(refused, 0, "DialNexa refused calls the gateway sent");
    // GCRA: at most the burst plus the rate over the time it ran.
    let budget = 6.0 + elapsed;
    assert!(
        (answered as f64) <= budget,
        "{answered} calls upstream in {elapsed:.2} s, budget {budget:.2}"
    );
    assert_eq!(answered, flooded.ok + 3);

    let m = gw.metrics().await;
    assert_eq!(m.value(CALLS, &team("acme", "support")), 3.0);
    assert_eq!(m.value(CALLS, &team("acme", "billing")), flooded.ok as f64);
    let refused_org = [("org", "acme"), ("team", "billing"), ("reason", "org")];
    assert_eq!(
        m.value(REFUSED, &refused_org),
        flooded.refused_by_org as f64
    );
    let support_refused = [("org", "acme"), ("team", "support"), ("reason", "org")];
    assert_eq!(m.value(REFUSED, &support_refused), 0.0);
    gw.shutdown().await;
}

/// Two teams (share 1 each) of a budget of 4 and 120 a minute: 2 guaranteed each, one more a
/// second. Billing alone gets the whole rate, twice its own part; support, waking, finds its part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_team_alone_borrows_the_idle_part_and_a_quiet_team_waking_finds_its_own() {
    let (upstream, gw) =
        setup_with(|config| config.without_team("viewer").org_budget("acme", 120, 4)).await;
    let started = Instant::now();
    let flooded = flood(
        gw.client(),
        BILLING,
        "/v1/calls",
        started + Duration::from_millis(3500),
    )
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    assert!(flooded.other.is_empty(), "{flooded:?}");
    // Its own part alone admits at most 2 + 1/s; the org's, 4 + 2/s (about 8 in 3.5 s: borrowing
    // starts once the org has a call beyond both teams' parts, a second in).
    let own_part = 2.0 + elapsed;
    assert!(
        flooded.ok as f64 > own_part,
        "{} calls in {elapsed:.2} s: no more than its own part ({own_part:.2})",
        flooded.ok
    );
    assert!(flooded.ok as f64 <= 4.0 + 2.0 * elapsed, "{flooded:?}");
    assert_eq!(upstream.count(&Method::GET, "/v1/calls") as u64, flooded.ok);

    // Support's part was kept whole while billing borrowed.
    for _ in 0..2 {
        assert_eq!(gw.client().get("/v1/calls", SUPPORT).await.status, 200);
    }
    let m = gw.metrics().await;
    assert!(m.value(BORROWED, &team("acme", "billing")) >= 1.0, "{m}");
    assert_eq!(m.value(BORROWED, &team("acme", "support")), 0.0);
    gw.shutdown().await;
}

/// A budget of one call: fifty concurrent cold reads of one agent share that one fill, and hits
/// after it spend nothing; the next call that would go upstream is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_and_coalesced_waiters_spend_nothing() {
    let (upstream, gw) = setup_with(|config| {
        config
            .without_team("support")
            .without_team("viewer")
            .org_budget("acme", 1, 1)
    })
    .await;
    // Long enough that the reads overlap the one fetch.
    upstream.set_delay(Method::GET, Duration::from_millis(300));
    let reads = (0..50)
        .map(|_| {
            let c = gw.client();
            async move { c.get("/v1/agents2/hot", BILLING).await }
        })
        .collect();
    for r in join_all(reads).await {
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    for _ in 0..10 {
        let hit = gw.client().get("/v1/agents2/hot", BILLING).await;
        assert_eq!((hit.status, hit.x_cache()), (200, "HIT"));
    }
    assert_eq!(upstream.count(&Method::GET, "/"), 1);
    let m = gw.metrics().await;
    assert_eq!(m.value(CALLS, &team("acme", "billing")), 1.0);

    // The budget had exactly that one call.
    let refused = gw.client().get("/v1/agents2", BILLING).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["code"], "org_quota_exhausted");
    assert_eq!(upstream.count(&Method::GET, "/"), 1);
    gw.shutdown().await;
}

/// Refused for the org's budget: `429` with Retry-After and the `"org"` policy, audited with
/// `limited_by: "org"`; an agent read with an expired entry is answered STALE instead. A team
/// quota refusal says `team`; other lines say null.
#[tokio::test]
async fn an_org_refusal_names_the_org_policy_and_an_agent_read_is_served_stale_instead() {
    let (upstream, gw) = setup_with(|config| {
        config
            .without_team("support")
            .without_team("viewer")
            .org_budget("acme", 1, 1)
            .cache_ttl_seconds(1)
            .cache_stale_if_error_seconds(60)
            .team_quota("rival", 6, 1)
            .team("writer", "globex", "team-key-writer-made-up")
            .write_quota("writer", 6, 1)
    })
    .await;
    let c = gw.client();
    let first = c.get("/v1/agents2/a1", BILLING).await;
    assert_eq!((first.status, first.x_cache()), (200, "MISS"));

    let refused = c.get("/v1/calls", BILLING).await;
    assert_eq!(refused.status, 429);
    let body = refused.json();
    assert_eq!(body["code"], "org_quota_exhausted");
    assert_eq!(body["statusCode"], 429);
    // One call a minute: the next in about a minute, whole seconds.
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((55..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(refused.header("ratelimit-policy"), Some("\"org\";q=1;w=60"));
    let reset = refused.header("ratelimit-reset").unwrap();
    assert_eq!(
        refused.header("ratelimit"),
        Some(format!("\"org\";r=0;t={reset}").as_str())
    );
    assert_eq!(refused.header("ratelimit-limit"), Some("1"));

    outlive_a_one_second_ttl().await;
    let stale = c.get("/v1/agents2/a1", BILLING).await;
    assert_eq!((stale.status, stale.x_cache()), (200, "STALE"));
    assert_eq!(stale.body, first.body);
    assert_eq!(upstream.count(&Method::GET, "/"), 1);

    // Another org's teams, refused by their own quotas.
    assert_eq!(c.get("/v1/calls", RIVAL).await.status, 200);
    assert_eq!(c.get("/v1/calls", RIVAL).await.status, 429);
    let writer = "team-key-writer-made-up";
    assert_eq!(c.patch("/v1/calls/c1", writer, "{}").await.status, 200);
    assert_eq!(c.patch("/v1/calls/c1", writer, "{}").await.status, 429);

    let lines = gw.audit_lines(7).await;
    let limited: Vec<(&str, &str, &serde_json::Value)> = lines
        .iter()
        .map(|l| {
            (
                l["path"].as_str().unwrap(),
                l["decision"].as_str().unwrap(),
                &l["limited_by"],
            )
        })
        .collect();
    assert_eq!(
        limited,
        vec![
            ("/v1/agents2/a1", "allowed", &serde_json::Value::Null),
            ("/v1/calls", "rate_limited", &serde_json::json!("org")),
            ("/v1/agents2/a1", "allowed", &serde_json::Value::Null),
            ("/v1/calls", "allowed", &serde_json::Value::Null),
            ("/v1/calls", "rate_limited", &serde_json::json!("team")),
            ("/v1/calls/c1", "allowed", &serde_json::Value::Null),
            (
                "/v1/calls/c1",
                "rate_limited",
                &serde_json::json!("team_write")
            ),
        ]
    );
    assert_eq!(lines[2]["cache"], "stale");
    gw.shutdown().await;
}

/// DialNexa's `429` reaches its client unchanged and holds the org: every team's upstream-bound
/// request is `429 upstream_quota_exhausted` until its Retry-After has passed, while hits and
/// STALE answers go on; then calls go upstream again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialnexas_429_holds_the_org_until_its_retry_after_and_no_longer() {
    let (upstream, gw) =
        setup_with(|config| config.cache_ttl_seconds(1).cache_stale_if_error_seconds(60)).await;
    let c = gw.client();
    assert_eq!(c.get("/v1/agents2/a1", SUPPORT).await.status, 200);
    let dialnexa_says_no = serde_json::json!({
        "statusCode": 429, "message": "ThrottlerException: Too Many Requests"
    });
    let answer = dialnexa_says_no.clone();
    upstream.set_override(move |rec| {
        (rec.path() == "/v1/calls")
            .then(|| Reply::json(429, answer.clone()).with_header("retry-after", "2"))
    });
    let upstream_429 = c.get("/v1/calls", BILLING).await;
    let held_at = Instant::now();
    assert_eq!(upstream_429.status, 429);
    assert_eq!(upstream_429.json(), dialnexa_says_no, "passed on unchanged");
    let calls = upstream.total();

    // Another team of the org: held, nothing sent.
    let held = c.get("/v1/agents2", SUPPORT).await;
    assert_eq!(held.status, 429);
    assert_eq!(held.json()["code"], "upstream_quota_exhausted");
    let retry: u64 = held.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    // The hit is served as always; past its TTL, the expired entry is served STALE.
    let hit = c.get("/v1/agents2/a1", SUPPORT).await;
    assert_eq!((hit.status, hit.x_cache()), (200, "HIT"));
    let m = gw.metrics().await;
    assert!(m.value(HOLD, &[("org", "acme")]) >= 1.0, "{m}");
    let by_upstream = [("org", "acme"), ("team", "support"), ("reason", "upstream")];
    assert_eq!(m.value(REFUSED, &by_upstream), 1.0);
    // Another org is not held.
    assert_eq!(c.get("/v1/agents2", RIVAL).await.status, 200);
    let calls = calls + 1;
    outlive_a_one_second_ttl().await;
    let stale = c.get("/v1/agents2/a1", SUPPORT).await;
    assert_eq!((stale.status, stale.x_cache()), (200, "STALE"));
    assert_eq!(upstream.total(), calls, "nothing of acme's went upstream");

    // The hold ends when DialNexa said, not before and not much after.
    wait_until_upstream_bound_passes(&c, held_at, Duration::from_secs(5)).await;
    let reopened = held_at.elapsed();
    assert!(
        reopened >= Duration::from_millis(1500) && reopened < Duration::from_millis(3000),
        "held for {reopened:?}"
    );
    assert_eq!(gw.metrics().await.value(HOLD, &[("org", "acme")]), 0.0);
    let lines = gw.audit();
    assert!(lines
        .iter()
        .any(|l| l["limited_by"] == "upstream" && l["decision"] == "rate_limited"));
    gw.shutdown().await;
}

/// A Retry-After of a day, and `X-RateLimit-Remaining: 0`: each holds the org, for at most
/// `max_upstream_hold_seconds`.
#[tokio::test]
async fn a_huge_retry_after_is_capped_and_an_empty_quota_holds_too() {
    let (upstream, gw) = setup_with(|config| config.org_max_hold_seconds("acme", 1)).await;
    upstream.set_override(|rec| {
        (rec.path() == "/v1/calls").then(|| {
            Reply::json(429, serde_json::json!({"statusCode": 429}))
                .with_header("retry-after", "86400")
        })
    });
    let c = gw.client();
    assert_eq!(c.get("/v1/calls", BILLING).await.status, 429);
    let held = c.get("/v1/agents2", BILLING).await;
    assert_eq!(held.json()["code"], "upstream_quota_exhausted");
    assert_eq!(held.header("retry-after"), Some("1"));
    let started = Instant::now();
    wait_until_upstream_bound_passes(&c, started, HOLD_CAP).await;

    // An answer saying no call is left: held until its reset (capped at 1 s here too).
    upstream.set_override(|rec| {
        (rec.path() == "/v1/calls").then(|| {
            Reply::json(200, serde_json::json!({}))
                .with_header("x-ratelimit-remaining", "0")
                .with_header("x-ratelimit-reset", "30")
        })
    });
    assert_eq!(c.get("/v1/calls", BILLING).await.status, 200);
    let held = c.get("/v1/agents2", SUPPORT).await;
    assert_eq!(held.json()["code"], "upstream_quota_exhausted");
    wait_until_upstream_bound_passes(&c, Instant::now(), HOLD_CAP).await;
    gw.shutdown().await;
}

/// The 1 s `max_upstream_hold_seconds` of the test below, and the slack of a loaded machine.
const HOLD_CAP: Duration = Duration::from_secs(3);

/// Polls an upstream-bound read until it is no longer held, at most `cap` after `since`; until
/// then it is refused as held.
async fn wait_until_upstream_bound_passes(c: &Client, since: Instant, cap: Duration) {
    let passes = async || {
        let r = c.get("/v1/agents2", SUPPORT).await;
        if r.status != 200 {
            assert_eq!(r.json()["code"], "upstream_quota_exhausted");
        }
        r.status == 200
    };
    let left = cap.saturating_sub(since.elapsed());
    wait_until_within(left, "the hold ends by its cap", passes).await;
}

/// What a team spent stays spent across a reload: the same budget refuses as before, and a larger
/// burst adds only its difference.
#[tokio::test]
async fn a_reload_keeps_what_the_org_spent() {
    let (_upstream, mut gw) = setup_with(|config| {
        config
            .without_team("support")
            .without_team("viewer")
            .org_budget("acme", 1, 2)
    })
    .await;
    let c = gw.client();
    for _ in 0..2 {
        assert_eq!(c.get("/v1/calls", BILLING).await.status, 200);
    }
    assert_eq!(c.get("/v1/calls", BILLING).await.status, 429);
    gw.rewrite_config(|config| config.team_quota("billing", 600, 60));
    gw.running().reload().expect("valid config reloads");
    assert_eq!(c.get("/v1/calls", BILLING).await.status, 429);
    gw.rewrite_config(|config| config.org_budget("acme", 1, 3));
    gw.running().reload().expect("valid config reloads");
    assert_eq!(c.get("/v1/calls", BILLING).await.status, 200);
    let refused = c.get("/v1/calls", BILLING).await;
    assert_eq!(refused.json()["code"], "org_quota_exhausted");
    gw.shutdown().await;
}

/// Replicas on one Redis, in front of `upstream`.
async fn replicas(
    redis: &TestRedis,
    upstream: &str,
    n: usize,
    configure: impl Fn(GatewayBuilder) -> GatewayBuilder,
) -> (FaultyProxy, Vec<TestGateway>) {
    let proxy = FaultyProxy::start(redis.socket()).await;
    let mut gws = Vec::new();
    for _ in 0..n {
        let builder = GatewayBuilder::new(upstream).in_cluster(&proxy.url());
        let gw = configure(builder).start().await;
        wait_for_readyz(&gw.admin_client(), "cluster: connected").await;
        gws.push(gw);
    }
    (proxy, gws)
}

/// The gateway's own count of its Redis round trips (those that answered).
const ROUND_TRIPS: &str = "dialnexa_gateway_cluster_redis_duration_seconds_count";

/// The Redis round trips `gw` makes for one request, `send(n)` being the `n`-th try of it: the
/// fewest of three, as the link's probe (once a second) counts in the same histogram and can only
/// add to a try.
async fn round_trips<F, Fut>(gw: &TestGateway, send: F) -> f64
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut fewest = f64::MAX;
    for n in 0..3 {
        let before = gw.metrics().await.value(ROUND_TRIPS, &[]);
        send(n).await;
        fewest = fewest.min(gw.metrics().await.value(ROUND_TRIPS, &[]) - before);
    }
    fewest
}

/// DESIGN "Cost", in cluster mode: a hit is one round trip; so is any other request of an org
/// without a budget (the hold comes with its quota), and an org with one makes exactly one more
/// for each upstream call. An agent write adds its second invalidation; a held org's requests
/// make no more than their admission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_cluster_mode_only_a_budget_adds_a_round_trip_and_only_to_an_upstream_call() {
    require_redis!();
    let redis = TestRedis::start();
    let upstream = FakeUpstream::start().await;
    // acme's budget refuses nothing here; globex (rival's org) has none.
    let (_proxy, gws) = replicas(&redis, &upstream.base_url(), 1, |c| {
        c.org_budget("acme", 60_000, 600)
    })
    .await;
    let gw = &gws[0];
    let c = gw.client();
    let patch_body = r#"{"llm":{"settings":{"temperature":0.2}}}"#;
    for (team, key, budget) in [("rival", RIVAL, 0.0), ("billing", BILLING, 1.0)] {
        let agent = |n: usize| format!("/v1/agents2/rt-{team}-{n}");
        let miss = round_trips(gw, |n| {
            let (c, path) = (&c, agent(n));
            async move {
                let r = c.get(&path, key).await;
                assert_eq!((r.status, r.x_cache()), (200, "MISS"), "{team}");
            }
        })
        .await;
        let hit = round_trips(gw, |n| {
            let (c, path) = (&c, agent(n));
            async move { assert_eq!(c.get(&path, key).await.x_cache(), "HIT", "{team}") }
        })
        .await;
        let forward = round_trips(gw, |_| async {
            assert_eq!(c.get("/v1/calls", key).await.status, 200, "{team}");
        })
        .await;
        let write = round_trips(gw, |_| async {
            let auth = format!("Bearer {key}");
            let r = c
                .send(Method::POST, "/v1/calls", &[("authorization", &auth)], "{}")
                .await;
            assert_eq!(r.status, 200, "{team}");
        })
        .await;
        let agent_write = round_trips(gw, |n| {
            let (c, path) = (&c, agent(n));
            async move { assert_eq!(c.patch(&path, key, patch_body).await.status, 200) }
        })
        .await;
        assert_eq!(
            (miss, hit, forward, write, agent_write),
            (1.0 + budget, 1.0, 1.0 + budget, 1.0 + budget, 2.0 + budget),
            "{team}: miss, hit, forward, write, agent write"
        );
    }
    assert_eq!(upstream.count(&Method::GET, "/v1/calls"), 6, "none refused");

    // Held by DialNexa: a refused upstream call is its admission's round trip alone, budget or not.
    upstream.set_override(|rec| {
        (rec.path() == "/v1/calls").then(|| {
            Reply::json(429, serde_json::json!({"statusCode": 429}))
                .with_header("retry-after", "30")
        })
    });
    for (team, key) in [("rival", RIVAL), ("billing", BILLING)] {
        assert_eq!(c.get("/v1/calls", key).await.status, 429);
        let held = round_trips(gw, |_| async {
            let r = c.get("/v1/calls", key).await;
            assert_eq!(r.json()["code"], "upstream_quota_exhausted");
        })
        .await;
        assert_eq!(held, 1.0, "{team}");
    }
    assert_eq!(upstream.count(&Method::GET, "/v1/calls"), 8);
    for gw in gws {
        gw.shutdown().await;
    }
}

/// The first test again through two replicas on one Redis: billing floods through one, support
/// keeps within its part through the other; the budget holds across both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_budget_and_a_team_within_its_part_is_never_refused() {
    require_redis!();
    let redis = TestRedis::start();
    let sim = sim(60).await;
    let (_proxy, gws) = replicas(&redis, &sim_url(&sim), 2, |c| c.org_budget("acme", 60, 6)).await;
    let started = Instant::now();
    // A hit is one Redis round trip, as without a budget: the budget is not asked. (The fill
    // before it is the viewer's, from its own part.)
    let viewer = gws[1].client();
    assert_eq!(
        viewer.get("/v1/agents2/agt_abc123", VIEWER).await.status,
        200
    );
    let hit = round_trips(&gws[1], |_| async {
        let hit = viewer.get("/v1/agents2/agt_abc123", VIEWER).await;
        assert_eq!(hit.x_cache(), "HIT");
    })
    .await;
    assert_eq!(hit, 1.0);

    let until = started + Duration::from_millis(4500);
    let flooding = tokio::spawn(flood(gws[0].client(), BILLING, "/v1/agents2", until));
    let c = gws[1].client();
    for _ in 0..2 {
        let r = c.get("/v1/agents2", SUPPORT).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    let spent = Instant::now();
    // Support's part refills one call every 3 s from its last spend; the pause is the test's input.
    tokio::time::sleep_until((spent + Duration::from_millis(3100)).into()).await;
    let r = c.get("/v1/agents2", SUPPORT).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let flooded = flooding.await.unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    assert!(flooded.other.is_empty(), "{flooded:?}");
    assert!(flooded.refused_by_org > 0, "{flooded:?}");
    let (answered, refused) = sim.quota_counts();
    assert_eq!(refused, 0, "DialNexa refused calls the gateways sent");
    assert!(
        (answered as f64) <= 6.0 + elapsed,
        "{answered} calls upstream in {elapsed:.2} s"
    );
    assert_eq!(answered, flooded.ok + 3 + 1);
    for gw in gws {
        gw.shutdown().await;
    }
}

/// DialNexa's `429` answered to replica A holds replica B too, though B never saw it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialnexa_429_seen_by_one_replica_holds_the_other() {
    require_redis!();
    let redis = TestRedis::start();
    let upstream = FakeUpstream::start().await;
    upstream.set_override(|rec| {
        (rec.path() == "/v1/calls").then(|| {
            Reply::json(429, serde_json::json!({"statusCode": 429}))
                .with_header("retry-after", "30")
        })
    });
    let (_proxy, gws) = replicas(&redis, &upstream.base_url(), 2, |c| c).await;
    assert_eq!(gws[0].client().get("/v1/calls", BILLING).await.status, 429);
    let calls = upstream.total();
    let held = gws[1].client().get("/v1/agents2", SUPPORT).await;
    assert_eq!(held.status, 429);
    assert_eq!(held.json()["code"], "upstream_quota_exhausted");
    let retry: u64 = held.header("retry-after").unwrap().parse().unwrap();
    assert!((29..=30).contains(&retry), "Retry-After {retry}");
    // B learnt of the hold with the request's quota: no round trip of its own to refuse it.
    let refusal = round_trips(&gws[1], |_| async {
        let r = gws[1].client().get("/v1/agents2", BILLING).await;
        assert_eq!(r.json()["code"], "upstream_quota_exhausted");
    })
    .await;
    assert_eq!(refusal, 1.0);
    assert_eq!(upstream.total(), calls, "replica B sent nothing of acme's");
    // Another org's calls still go.
    assert_eq!(gws[1].client().get("/v1/agents2", RIVAL).await.status, 200);
    let m = gws[1].metrics().await;
    assert!(m.value(HOLD, &[("org", "acme")]) >= 29.0, "{m}");
    for gw in gws {
        gw.shutdown().await;
    }
}

/// The cluster's script and the replica's own budget decide alike: random orgs (teams, shares,
/// bursts) and random calls through both, the script on a real `redis-server`. At 1 call a minute
/// nothing refills while the test runs, so the two clocks cannot tell them apart; a refusal's wait
/// agrees to within the time between the two decisions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_budget_decides_every_call_as_the_local_one_does() {
    use dialnexa_gateway::admission::{team_parts, Admission};
    use dialnexa_gateway::cluster::Cluster;
    use dialnexa_gateway::error::GatewayError;
    use dialnexa_gateway::metrics::{BudgetMetrics, Metrics};
    use dialnexa_gateway::settings::{ClusterSettings, OnUnavailable, RedisTarget, Settings};
    use rand::{Rng, SeedableRng};

    require_redis!();
    let redis = TestRedis::start();
    let proxy = FaultyProxy::start(redis.socket()).await;
    let settings = ClusterSettings {
        target: RedisTarget::Url(proxy.url()),
        password: None,
        key_prefix: "equivalence".into(),
        timeout: Duration::from_secs(2),
        on_unavailable: OnUnavailable::Refuse,
        min_replicas_acked: 0,
    };
    let cluster_metrics = Metrics::new().cluster.clone();
    let cluster = Cluster::start(&settings, cluster_metrics.clone(), || {}).unwrap();
    wait_until("connected to Redis", async || cluster.is_up()).await;
    let shared = Admission::shared(cluster);

    let mut rng = rand::rngs::StdRng::seed_from_u64(24);
    let mut refusals = 0;
    for case in 0..12 {
        let teams: Vec<u32> = (0..rng.random_range(1..5))
            .map(|_| rng.random_range(0..4))
            .collect();
        let burst = rng.random_range(teams.len()..teams.len() + 6) + 1;
        let mut toml = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nbase_url = \"http://127.0.0.1:1/v1\"\n\
             [orgs.org{case}]\napi_key_env = \"PATH\"\n\
             upstream_rate_limit = {{ per_minute = 1, burst = {burst} }}\n"
        );
        for (i, share) in teams.iter().enumerate() {
            toml.push_str(&format!(
                "[teams.t{case}x{i}]\norg = \"org{case}\"\nkey_sha256 = [\"{}\"]\n\
                 rate_limit = {{ per_minute = 60, burst = 10 }}\nupstream_share = {share}\n",
                format!("{:02x}", case * 8 + i).repeat(32)
            ));
        }
        // Shares the config check refuses (no room to lend to a share-0 team) are not a case.
        let Ok(config) = Settings::from_toml_str(&toml) else {
            continue;
        };
        let (local_metrics, shared_metrics) = (BudgetMetrics::default(), BudgetMetrics::default());
        let local_parts = team_parts(&config.teams, &local_metrics);
        let shared_parts = team_parts(&config.teams, &shared_metrics);
        let local = Admission::local();
        for _ in 0..30 {
            let team = &config.teams[rng.random_range(0..config.teams.len())].name;
            let here = local.before_upstream(&local_parts[team]).await;
            let there = shared.before_upstream(&shared_parts[team]).await;
            match (&here, &there) {
                (Ok(()), Ok(())) => {}
                (
                    Err(GatewayError::OrgQuotaExhausted { retry_after: a, .. }),
                    Err(GatewayError::OrgQuotaExhausted { retry_after: b, .. }),
                ) => {
                    refusals += 1;
                    let apart = a.abs_diff(*b);
                    assert!(apart < Duration::from_millis(500), "waits {a:?} and {b:?}");
                }
                _ => {
                    panic!("case {case} ({teams:?}, burst {burst}), {team}: {here:?} vs {there:?}")
                }
            }
        }
        for team in &config.teams {
            let (org, name) = (&team.org.name, &team.name);
            let (l, s) = (
                local_metrics.counters(org, name),
                shared_metrics.counters(org, name),
            );
            assert_eq!(l.calls.get(), s.calls.get(), "calls of {name}");
            assert_eq!(l.borrowed.get(), s.borrowed.get(), "borrowed by {name}");
        }
    }
    assert!(
        refusals > 20,
        "the cases hardly refused anything ({refusals})"
    );
    // Every shared decision was the script's: none fell back to the replica's own budget.
    assert_eq!(cluster_metrics.errors.get(), 0);
    let keys = redis.cli(&["--scan", "--pattern", "equivalence:{org*}:b"]);
    assert!(keys.lines().count() >= 8, "{keys}");
}

/// Without Redis (`degrade`), a replica keeps to its own copy of the budget rather than none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_a_replica_keeps_its_own_budget() {
    require_redis!();
    let mut redis = TestRedis::start();
    let upstream = FakeUpstream::start().await;
    let (_proxy, gws) = replicas(&redis, &upstream.base_url(), 1, |c| {
        c.without_team("support")
            .without_team("viewer")
            .org_budget("acme", 1, 2)
    })
    .await;
    redis.kill();
    let c = gws[0].client();
    // The first call finds Redis gone (and waits out its timeout), the rest do not ask it.
    for _ in 0..2 {
        assert_eq!(c.get("/v1/calls", BILLING).await.status, 200);
    }
    wait_for_readyz(&gws[0].admin_client(), "cluster: unavailable").await;
    let refused = c.get("/v1/calls", BILLING).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["code"], "org_quota_exhausted");
    assert_eq!(upstream.count(&Method::GET, "/v1/calls"), 2);
    for gw in gws {
        gw.shutdown().await;
    }
}
