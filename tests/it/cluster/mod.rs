//! Cluster mode (DESIGN, "Cluster mode: several replicas, one Redis"): two or three gateways in one
//! process, each its own server, in front of one recording fake upstream and one real
//! `redis-server` that the test owns. Redis is reached through a proxy the test can break.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use tokio::sync::Mutex;

use crate::support::cluster::{ask_readyz, readyz, require_redis, wait_for_readyz};
use crate::support::redis::{Fault, FaultyProxy, TestRedis};
use crate::support::*;

struct Cluster {
    redis: TestRedis,
    proxy: FaultyProxy,
    upstream: FakeUpstream,
    replicas: Vec<TestGateway>,
}

async fn cluster(n: usize, configure: impl Fn(GatewayBuilder) -> GatewayBuilder) -> Cluster {
    cluster_with(TestRedis::start(), n, configure).await
}

async fn cluster_with(
    redis: TestRedis,
    n: usize,
    configure: impl Fn(GatewayBuilder) -> GatewayBuilder,
) -> Cluster {
    let proxy = FaultyProxy::start(redis.socket()).await;
    let upstream = FakeUpstream::start().await;
    let mut replicas = Vec::new();
    for _ in 0..n {
        let builder = GatewayBuilder::new(upstream.base_url()).in_cluster(&proxy.url());
        replicas.push(configure(builder).start().await);
    }
    let c = Cluster {
        redis,
        proxy,
        upstream,
        replicas,
    };
    c.wait_connected().await;
    c
}

impl Cluster {
    fn client(&self, i: usize) -> Client {
        self.replicas[i].client()
    }

    async fn wait_connected(&self) {
        for r in &self.replicas {
            wait_for_readyz(&r.admin_client(), "cluster: connected").await;
        }
    }

    async fn wait_unavailable(&self) {
        for r in &self.replicas {
            wait_for_readyz(&r.admin_client(), "cluster: unavailable").await;
        }
    }
}

/// A write that touches no agent.
async fn post_call(c: &Client) -> TestResponse {
    c.write(Method::POST, "/v1/calls", BILLING, "{}").await
}

async fn patch(c: &Client, path: &str) -> TestResponse {
    c.patch(path, BILLING, r#"{"llm":{"settings":{"temperature":0.2}}}"#)
        .await
}

// === Read-after-write across replicas ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_through_one_replica_is_seen_by_the_next_get_through_every_other() {
    require_redis!();
    let c = cluster(3, |b| b).await;
    for i in 0..20 {
        let path = format!("/v1/agents2/raw-{i}");
        // B and C hold the agent.
        for r in [1, 2] {
            c.client(r).get(&path, SUPPORT).await;
            let hit = c.client(r).get(&path, SUPPORT).await;
            assert_eq!((hit.x_cache(), hit.version()), ("HIT", 1), "iteration {i}");
        }
        let patched = patch(&c.client(0), &path).await;
        assert_eq!((patched.status, patched.version()), (200, 2));
        // No pause: the next GET anywhere sees the write.
        for r in [1, 2] {
            let after = c.client(r).get(&path, SUPPORT).await;
            assert_eq!(
                after.version(),
                2,
                "iteration {i}, replica {r}: {}",
                after.x_cache()
            );
        }
        // Both families name one agent.
        let other = c
            .client(1)
            .get(&format!("/v1/agents/raw-{i}"), SUPPORT)
            .await;
        assert_eq!(other.version(), 2);
    }
    // Hits still happen in cluster mode: one upstream GET per (replica, variant, version).
    let hit = c.client(1).get("/v1/agents2/raw-0", SUPPORT).await;
    assert_eq!(hit.x_cache(), "HIT");
}

/// Escaped and plain reserved characters are one agent on every replica: a write under one
/// spelling through one replica drops a read cached under the other on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_under_one_spelling_is_seen_under_the_other_through_every_replica() {
    require_redis!();
    let c = cluster(2, |b| b).await;
    for (plain, escaped) in [("a:b", "a%3Ab"), ("{x}", "%7Bx%7D")] {
        let (plain, escaped) = (
            format!("/v1/agents2/{plain}"),
            format!("/v1/agents2/{escaped}"),
        );
        let filled = c.client(1).get(&plain, SUPPORT).await;
        assert_eq!((filled.x_cache(), filled.version()), ("MISS", 1), "{plain}");
        let hit = c.client(1).get(&escaped, SUPPORT).await;
        assert_eq!((hit.x_cache(), hit.version()), ("HIT", 1), "{escaped}");

        let patched = patch(&c.client(0), &escaped).await;
        assert_eq!((patched.status, patched.version()), (200, 2), "{escaped}");
        for path in [&plain, &escaped] {
            let after = c.client(1).get(path, SUPPORT).await;
            assert_eq!(after.version(), 2, "{path}: {}", after.x_cache());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_fill_that_raced_a_patch_on_another_replica_is_never_served_after_it() {
    require_redis!();
    let c = cluster(2, |b| b).await;
    c.upstream
        .set_delay(Method::GET, Duration::from_millis(200));
    for i in 0..5 {
        let path = format!("/v1/agents2/slow-{i}");
        let b = c.client(1);
        let p = path.clone();
        let slow = tokio::spawn(async move { b.get(&p, SUPPORT).await });
        // The fill is at upstream, holding the old version, before the write starts.
        wait_until("the slow GET reached upstream", async || {
            c.upstream.count(&Method::GET, &path) == 1
        })
        .await;
        let patched = patch(&c.client(0), &path).await;
        assert_eq!(patched.version(), 2);
        assert_eq!(
            slow.await.unwrap().version(),
            1,
            "it began before the write"
        );
        // It was not stored under a version anyone will read again.
        let after = c.client(1).get(&path, SUPPORT).await;
        assert_eq!(
            (after.x_cache(), after.version()),
            ("MISS", 2),
            "iteration {i}"
        );
        let cached = c.client(1).get(&path, SUPPORT).await;
        assert_eq!(
            (cached.x_cache(), cached.version()),
            ("HIT", 2),
            "iteration {i}"
        );
    }
}

/// The history checker: every read older than a write answered before the read was invoked, with
/// the version it should at least have seen.
fn stale_reads(history: &[Op]) -> Vec<(Op, u64)> {
    let mut stale = Vec::new();
    for read in history.iter().filter(|o| !o.write) {
        // The newest version any write answered before this read was invoked.
        let floor = history
            .iter()
            .filter(|w| w.write && w.agent == read.agent && w.completed < read.invoked)
            .map(|w| w.version)
            .max()
            .unwrap_or(1);
        if read.version < floor {
            stale.push((read.clone(), floor));
        }
    }
    stale
}

/// One operation as a client saw it: when it was invoked and completed, and the version it got.
#[derive(Debug, Clone)]
struct Op {
    agent: usize,
    write: bool,
    invoked: Instant,
    completed: Instant,
    version: u64,
    /// Which replica answered: the report of a stale read names it.
    replica: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_no_get_after_an_answered_patch_returns_an_older_version_through_any_replica() {
    require_redis!();
    let c = Arc::new(cluster(3, |b| b).await);
    // Upstream takes a little while, so fills and writes overlap across replicas.
    c.upstream.set_delay(Method::GET, Duration::from_millis(3));
    c.upstream
        .set_delay(Method::PATCH, Duration::from_millis(5));
    let history = Arc::new(Mutex::new(Vec::<Op>::new()));
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..12u64 {
        let (c, history) = (c.clone(), history.clone());
        workers.push(tokio::spawn(async move {
            // A fixed seed per worker: a failure names a history that can be run again.
            let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (w * 0x0100_0000_01b3);
            let mut next = move || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            for _ in 0..60 {
                if started.elapsed() > Duration::from_secs(20) {
                    break;
                }
                let agent = (next() % 3) as usize;
                let replica = (next() % 3) as usize;
                let write = next() % 5 == 0;
                let path = format!("/v1/agents2/hist-{agent}");
                let client = c.client(replica);
                let invoked = Instant::now();
                let r = if write {
                    patch(&client, &path).await
                } else {
                    client.get(&path, SUPPORT).await
                };
                let completed = Instant::now();
                assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                history.lock().await.push(Op {
                    agent,
                    write,
                    invoked,
                    completed,
                    version: r.version(),
                    replica,
                });
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let history = history.lock().await.clone();
    let reads = history.iter().filter(|o| !o.write).count();
    assert!(
        reads > 300,
        "too little history to mean anything: {reads} reads"
    );
    let stale = stale_reads(&history);
    assert!(stale.is_empty(), "stale reads: {stale:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_for_its_body_invalidates_nothing_on_any_replica() {
    require_redis!();
    let c = cluster(2, |b| b.max_body_bytes(64).request_body_timeout_ms(300)).await;
    let path = "/v1/agents2/big1";
    c.client(1).get(path, SUPPORT).await;
    assert_eq!(c.client(1).get(path, SUPPORT).await.x_cache(), "HIT");
    let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(200));
    let r = c.client(0).patch(path, BILLING, &big).await;
    assert_eq!(r.status, 413);
    // A body that stalls: answered 408, also never forwarded.
    let mut raw = tokio::net::TcpStream::connect(c.replicas[0].api)
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut raw,
        format!(
            "PATCH {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {BILLING}\r\ncontent-length: 40\r\n\r\n{{\"na"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let stalled = c.replicas[0].audit_lines(2).await;
    assert!(stalled.iter().any(|l| l["status"] == 408), "{stalled:?}");
    assert_eq!(c.upstream.count(&Method::PATCH, "/"), 0);
    // Neither reached the other replica: its entry is still served.
    let after = c.client(1).get(path, SUPPORT).await;
    assert_eq!((after.x_cache(), after.version()), ("HIT", 1));
}

// === One quota per team ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_together_admit_exactly_one_burst_with_consistent_headers() {
    require_redis!();
    // One cell every 10 s: nothing refills while the test runs, so counts are exact.
    let c = cluster(3, |b| {
        b.team_quota("billing", 6, 5).write_quota("billing", 6, 2)
    })
    .await;
    let mut allowed = 0;
    let mut remaining_seen = Vec::new();
    for i in 0..12 {
        let r = c.client(i % 3).get("/v1/calls", BILLING).await;
        match r.status {
            200 => {
                allowed += 1;
                remaining_seen.push(r.header("ratelimit-remaining").unwrap().to_owned());
            }
            429 => {
                assert!(r.header("retry-after").is_some());
                assert_eq!(r.header("ratelimit-remaining"), Some("0"));
            }
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(allowed, 5, "three replicas, one burst of 5");
    assert_eq!(remaining_seen, ["4", "3", "2", "1", "0"]);
    // Refused requests spent nothing: the write quota is still whole, but the general one is
    // empty, so a write is refused by it and spends no write cell either.
    let w = post_call(&c.client(1)).await;
    assert_eq!(w.status, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_quota_is_one_across_replicas_and_refusals_spend_nothing() {
    require_redis!();
    let c = cluster(2, |b| {
        b.team_quota("billing", 600, 100)
            .write_quota("billing", 6, 2)
    })
    .await;
    let mut statuses = Vec::new();
    for i in 0..5 {
        let r = post_call(&c.client(i % 2)).await;
        statuses.push(r.status);
        if r.status == 429 {
            assert_eq!(
                r.header("ratelimit-limit"),
                Some("2"),
                "the write quota binds"
            );
        }
    }
    assert_eq!(statuses, [200, 200, 429, 429, 429]);
    assert_eq!(c.upstream.count(&Method::POST, "/v1/calls"), 2);
    // Reads still have their own quota.
    assert_eq!(c.client(0).get("/v1/calls", BILLING).await.status, 200);
}

// === Purges reach every replica ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_through_one_replica_drops_the_others_entries() {
    require_redis!();
    let c = cluster(2, |b| b).await;
    let warm = |path: &'static str| {
        let b = c.client(1);
        async move {
            b.get(path, SUPPORT).await;
            assert_eq!(b.get(path, SUPPORT).await.x_cache(), "HIT");
        }
    };
    let purge = |body: &'static str| {
        let a = c.replicas[0].admin_client();
        async move {
            let r = a
                .send(
                    Method::POST,
                    "/admin/cache/purge",
                    &[("authorization", &bearer(ADMIN_TOKEN))],
                    body,
                )
                .await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        }
    };
    for body in [
        r#"{"org":"acme","agent_id":"p1"}"#,
        r#"{"org":"acme"}"#,
        r#"{"agent_id":"p1"}"#,
        "{}",
    ] {
        warm("/v1/agents2/p1").await;
        purge(body).await;
        let after = c.client(1).get("/v1/agents2/p1", SUPPORT).await;
        assert_eq!(
            after.x_cache(),
            "MISS",
            "purge {body} did not reach replica B"
        );
    }
}

// === Redis unavailable ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_degrade_serves_reads_refuses_agent_writes_and_recovers_by_itself() {
    require_redis!();
    let mut c = cluster(2, |b| b).await;
    let path = "/v1/agents2/d1";
    c.client(0).get(path, SUPPORT).await;
    assert_eq!(c.client(0).get(path, SUPPORT).await.x_cache(), "HIT");

    c.redis.kill();
    // The first call notices (or the link's reconnect loop does); then every replica says so.
    let first = c.client(0).get(path, SUPPORT).await;
    assert_eq!(first.status, 200);
    c.wait_unavailable().await;

    let read = c.client(0).get(path, SUPPORT).await;
    assert_eq!(
        (read.status, read.x_cache()),
        (200, "BYPASS"),
        "no hit without Redis"
    );
    let before = c.upstream.count(&Method::PATCH, "/");
    let write = patch(&c.client(1), path).await;
    assert_eq!(write.status, 503);
    assert_eq!(write.json()["code"], "cluster_unavailable");
    assert_eq!(
        c.upstream.count(&Method::PATCH, "/"),
        before,
        "never forwarded"
    );
    // Writes that touch no agent, and other reads, keep being served on local quotas.
    let call = post_call(&c.client(1)).await;
    assert_eq!(call.status, 200);
    assert!(call.header("ratelimit-remaining").is_some());
    let ready = readyz(&c.replicas[0]).await;
    assert_eq!(ready.status, 200, "degrade stays in rotation");
    let metrics = c.replicas[0].metrics().await;
    assert_eq!(metrics.value("dialnexa_gateway_cluster_up", &[]), 0.0);
    assert!(metrics.value("dialnexa_gateway_cluster_degraded_requests_total", &[]) >= 1.0);
    let audit = c.replicas[1].audit_lines(1).await;
    let refused = audit
        .iter()
        .find(|l| l["status"] == 503)
        .expect("the 503 is audited");
    assert_eq!(refused["decision"], "allowed");

    // Back, empty: every replica resumes by itself, and nothing from before is served.
    c.redis.restart_empty();
    c.wait_connected().await;
    let patched = patch(&c.client(1), path).await;
    assert_eq!(patched.status, 200);
    let after = c.client(0).get(path, SUPPORT).await;
    assert_eq!(
        (after.x_cache(), after.version()),
        ("MISS", patched.version())
    );
    let metrics = c.replicas[0].metrics().await;
    assert_eq!(metrics.value("dialnexa_gateway_cluster_up", &[]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_answers_every_request_503_and_readyz_503_until_redis_is_back() {
    require_redis!();
    let mut c = cluster_with(TestRedis::start(), 1, |b| {
        b.cluster_on_unavailable("refuse")
    })
    .await;
    assert_eq!(c.client(0).get("/v1/calls", BILLING).await.status, 200);
    c.redis.kill();
    let _ = c.client(0).get("/v1/calls", BILLING).await;
    c.wait_unavailable().await;
    for (path, key) in [
        ("/v1/calls", BILLING),
        ("/v1/agents2/r1", BILLING),
        ("/v1/calls", "nobody"),
    ] {
        let r = c.client(0).get(path, key).await;
        assert_eq!(r.status, 503, "{path}");
        assert_eq!(r.json()["code"], "cluster_unavailable");
    }
    assert_eq!(readyz(&c.replicas[0]).await.status, 503);
    c.redis.restart_empty();
    c.wait_connected().await;
    assert_eq!(readyz(&c.replicas[0]).await.status, 200);
    assert_eq!(c.client(0).get("/v1/calls", BILLING).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_or_black_holed_redis_costs_a_timeout_not_a_hang_and_recovers() {
    require_redis!();
    let c = cluster(1, |b| b).await;
    let path = "/v1/agents2/h1";
    for fault in ["pause", "blackhole", "delay"] {
        match fault {
            "pause" => c.redis.pause(),
            "blackhole" => c.proxy.set(Fault::Blackhole),
            _ => c.proxy.set_delay(Duration::from_millis(600)),
        }
        let started = Instant::now();
        let r = c.client(0).get(path, SUPPORT).await;
        assert_eq!(r.status, 200, "{fault}: degraded, still served");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{fault}: a request waited {:?}",
            started.elapsed()
        );
        c.wait_unavailable().await;
        // While down, requests do not wait on Redis at all.
        let r = c.client(0).get(path, SUPPORT).await;
        assert_eq!((r.status, r.x_cache()), (200, "BYPASS"), "{fault}");
        match fault {
            "pause" => c.redis.resume(),
            _ => c.proxy.set(Fault::Pass),
        }
        c.wait_connected().await;
        let r = c.client(0).get(path, SUPPORT).await;
        assert_eq!(r.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_or_lost_keys_never_make_an_old_entry_current() {
    require_redis!();
    let c = cluster(2, |b| b).await;
    let path = "/v1/agents2/f1";
    c.client(1).get(path, SUPPORT).await;
    assert_eq!(c.client(1).get(path, SUPPORT).await.x_cache(), "HIT");
    assert_eq!(c.redis.cli(&["FLUSHALL"]), "OK");
    let after = c.client(1).get(path, SUPPORT).await;
    assert_eq!(
        after.x_cache(),
        "MISS",
        "a version Redis forgot is a new version"
    );
    assert_eq!(c.client(1).get(path, SUPPORT).await.x_cache(), "HIT");
    // The scripts are gone from Redis too; they come back by themselves.
    assert_eq!(c.redis.cli(&["SCRIPT", "FLUSH"]), "OK");
    let patched = patch(&c.client(0), path).await;
    assert_eq!(patched.status, 200);
    let read = c.client(1).get(path, SUPPORT).await;
    assert_eq!(read.version(), patched.version());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requirepass_with_the_password_from_the_environment() {
    require_redis!();
    // Made up for this test; read by the config loader from this variable.
    let password = "test-redis-secret-8b1f";
    std::env::set_var("DNXGW_TEST_REDIS_PASSWORD", password);
    let redis = TestRedis::start_with(Some(password));
    let c = cluster_with(redis, 2, |b| {
        b.cluster_password_env("DNXGW_TEST_REDIS_PASSWORD")
    })
    .await;
    let path = "/v1/agents2/pw1";
    c.client(1).get(path, SUPPORT).await;
    patch(&c.client(0), path).await;
    assert_eq!(c.client(1).get(path, SUPPORT).await.version(), 2);
    assert!(c.redis.cli(&["DBSIZE"]).parse::<u64>().unwrap() > 0);
    for r in &c.replicas {
        let text = std::fs::read_to_string(&r.audit_path).unwrap_or_default();
        assert!(!text.contains(password));
        assert!(!r.metrics().await.to_string().contains(password));
    }
}

/// DESIGN "Tracing": in cluster mode the admission's Redis round trip is a client span of its own,
/// below the admission step; a round trip that fails is an error. The Redis password stays out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_round_trip_is_a_span_of_the_requests_trace() {
    require_redis!();
    let password = "test-redis-secret-trace-41c2";
    let redis = TestRedis::start_with(Some(password));
    let proxy = FaultyProxy::start(redis.socket()).await;
    let upstream = FakeUpstream::start().await;
    let collector = OtlpCollector::start().await;
    let gw = GatewayBuilder::new(upstream.base_url())
        .in_cluster(&proxy.url())
        .cluster_password_env("DNXGW_TEST_REDIS_PASSWORD_TRACE")
        .binary_env("DNXGW_TEST_REDIS_PASSWORD_TRACE", password)
        .tracing_endpoint(&collector.endpoint())
        .tracing_sample_ratio(1.0)
        .spawn_binary()
        .await;
    let send = |trace: &'static str| {
        let c = gw.client();
        let auth = bearer(BILLING);
        async move {
            let tp = format!("00-{trace}-00f067aa0ba902b7-01");
            c.send(
                Method::GET,
                "/v1/calls",
                &[("authorization", &auth), ("traceparent", &tp)],
                "",
            )
            .await
        }
    };
    const UP: &str = "5bf92f3577b34da6a3ce929d0e0e4736";
    const DOWN: &str = "6bf92f3577b34da6a3ce929d0e0e4736";
    assert_eq!(send(UP).await.status, 200);
    proxy.set(Fault::Blackhole);
    // Degraded: served on local quotas once the round trip times out.
    assert_eq!(send(DOWN).await.status, 200);

    let spans = collector.trace(UP, 4).await;
    let admission = spans.iter().find(|s| s.name == "admission").unwrap();
    let round_trip = spans
        .iter()
        .find(|s| s.attr_str("db.system.name") == Some("redis"))
        .unwrap_or_else(|| panic!("no Redis span in {spans:#?}"));
    assert_eq!(round_trip.kind, crate::support::otlp::CLIENT);
    assert_eq!(round_trip.parent_span_id, admission.span_id);
    assert_ne!(round_trip.status_code, crate::support::otlp::ERROR);
    let spans = collector.trace(DOWN, 4).await;
    let round_trip = spans
        .iter()
        .find(|s| s.attr_str("db.system.name") == Some("redis"))
        .unwrap();
    assert_eq!(round_trip.status_code, crate::support::otlp::ERROR);
    let raw = collector.raw();
    assert!(!raw
        .windows(password.len())
        .any(|w| w == password.as_bytes()));
}

mod failover;
mod hostile;
