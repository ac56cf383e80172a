//! DESIGN "A hostile team and a sick Redis": what one team can make Redis hold, what a refused
//! write changes, and how error replies and stalled writes count.

use super::*;
use crate::support::BinaryGateway;

/// Loud enough to count the link's own lines: its state changes are logged at warn and info.
const CLUSTER_LINES: &str = "warn,dialnexa_gateway::server=info,dialnexa_gateway::cluster=info";

/// A replica as the real binary, so its log lines can be counted.
async fn binary_replica(
    c: &Cluster,
    configure: impl Fn(GatewayBuilder) -> GatewayBuilder,
) -> BinaryGateway {
    let builder = GatewayBuilder::new(c.upstream.base_url())
        .in_cluster(&c.proxy.url())
        .binary_env("RUST_LOG", CLUSTER_LINES);
    configure(builder).spawn_binary().await
}

fn lines_with(gw: &BinaryGateway, what: &str) -> usize {
    gw.stderr_so_far()
        .lines()
        .filter(|l| l.contains(what))
        .count()
}

const LOST: &str = "cluster: Redis unavailable";
const BACK: &str = "cluster: Redis available";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_flooding_refused_requests_and_long_ids_cannot_fill_redis() {
    require_redis!();
    // Billing: a burst of 5, one more a second. Another org's team writes throughout.
    let c = Arc::new(
        cluster(2, |b| {
            b.team_quota("billing", 60, 5).write_quota("billing", 60, 2)
        })
        .await,
    );
    // A small Redis that refuses writes once full, as the shipped one does: room for what the
    // quotas allow, not for what the flood asks.
    let baseline = c.redis.info("used_memory");
    let cap = baseline + 2 * 1024 * 1024;
    assert_eq!(
        c.redis
            .cli(&["CONFIG", "SET", "maxmemory", &cap.to_string()]),
        "OK"
    );
    assert_eq!(
        c.redis
            .cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]),
        "OK"
    );
    let keys_before = c.redis.keys_and_ttls("dnxgw").len();

    let started = Instant::now();
    let rival = {
        let c = c.clone();
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..20 {
                let r = c
                    .client(1)
                    .patch("/v1/agents2/rival-1", RIVAL, r#"{"name":"r"}"#)
                    .await;
                statuses.push(r.status);
            }
            statuses
        })
    };
    // 400 distinct 8,000-character ids (3.2 MB of names), reads and writes, both replicas.
    let mut admitted = 0;
    for i in 0..400 {
        let id = format!("{i:05}{}", "x".repeat(7_995));
        let path = format!("/v1/agents2/{id}");
        let client = c.client(i % 2);
        let r = if i % 4 == 0 {
            client.patch(&path, BILLING, r#"{"name":"n"}"#).await
        } else {
            client.get(&path, BILLING).await
        };
        match r.status {
            200 => admitted += 1,
            429 => {}
            s => panic!("request {i}: {s} {}", String::from_utf8_lossy(&r.body)),
        }
    }
    let elapsed = started.elapsed();
    let rival = rival.await.unwrap();
    assert!(
        rival.iter().all(|s| *s == 200),
        "another org's writes: {rival:?}"
    );

    // What the quota allows: the burst and one a second since.
    let allowed = 5 + elapsed.as_secs() as usize + 1;
    assert!(admitted <= allowed, "{admitted} admitted in {elapsed:?}");
    let keys = c.redis.keys_and_ttls("dnxgw");
    // Per admitted request at most its agent's version and in-progress mark; a few per team
    // and org besides (quota TATs, org versions, the rival's agent, the probe's canary).
    let bound = keys_before + 2 * admitted + 16;
    assert!(
        keys.len() <= bound,
        "{} keys, bound {bound}: {keys:#?}",
        keys.len()
    );
    let forever: Vec<_> = keys.iter().filter(|(_, ttl)| *ttl < 0).collect();
    assert!(forever.is_empty(), "keys without expiry: {forever:?}");
    assert!(
        keys.iter().all(|(k, _)| k.len() < 120),
        "a key names an agent by its id: {keys:?}"
    );
    // Memory: the keys' own bytes, and room for the scripts and client buffers; nowhere near the
    // 3.2 MB the names alone would take.
    let grown = c.redis.info("used_memory").saturating_sub(baseline);
    let memory_bound = keys.len() as u64 * 512 + 256 * 1024;
    assert!(
        grown <= memory_bound,
        "Redis grew {grown} bytes, bound {memory_bound}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_over_its_write_quota_leaves_another_teams_hits_alone() {
    require_redis!();
    let c = cluster(2, |b| b.write_quota("billing", 6, 1)).await;
    let path = "/v1/agents2/w1";
    // One write allowed: it invalidates, as it should.
    assert_eq!(patch(&c.client(0), path).await.status, 200);
    c.client(1).get(path, SUPPORT).await;
    assert_eq!(c.client(1).get(path, SUPPORT).await.x_cache(), "HIT");
    for i in 0..5 {
        let refused = patch(&c.client(0), path).await;
        assert_eq!(refused.status, 429, "write {i}");
        let read = c.client(1).get(path, SUPPORT).await;
        assert_eq!(
            (read.x_cache(), read.version()),
            ("HIT", 2),
            "after refused write {i}"
        );
    }
    assert_eq!(
        c.upstream.count(&Method::PATCH, "/"),
        1,
        "refusals are never forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_out_of_memory_is_unavailable_with_its_reason_and_recovers_when_freed() {
    require_redis!();
    let c = cluster(0, |b| b).await;
    let gw = binary_replica(&c, |b| b.cluster_on_unavailable("refuse")).await;
    let admin = gw.admin_client();
    assert_eq!(gw.client().get("/v1/calls", BILLING).await.status, 200);
    assert_eq!(lines_with(&gw, BACK), 1, "{}", gw.stderr_so_far());

    // Full: every write Redis is asked for is refused with OOM.
    assert_eq!(c.redis.cli(&["CONFIG", "SET", "maxmemory", "1"]), "OK");
    let r = gw.client().get("/v1/calls", BILLING).await;
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (503, Some("cluster_unavailable"))
    );
    wait_for_readyz(&admin, "cluster: unavailable").await;
    let ready = ask_readyz(&admin).await;
    let body = String::from_utf8_lossy(&ready.body).into_owned();
    assert_eq!(ready.status, 503, "{body}");
    assert!(body.contains("OOM"), "/readyz names the reason: {body}");
    assert_eq!(
        gw.metrics().await.value("dialnexa_gateway_cluster_up", &[]),
        0.0
    );
    for _ in 0..20 {
        assert_eq!(gw.client().get("/v1/calls", BILLING).await.status, 503);
    }

    // Freed: the next probe succeeds, and everything is served again.
    assert_eq!(c.redis.cli(&["CONFIG", "SET", "maxmemory", "0"]), "OK");
    wait_for_readyz(&admin, "cluster: connected").await;
    assert_eq!(gw.client().get("/v1/calls", BILLING).await.status, 200);
    assert_eq!(
        gw.metrics().await.value("dialnexa_gateway_cluster_up", &[]),
        1.0
    );
    let log = gw.stderr_so_far();
    assert_eq!(lines_with(&gw, LOST), 1, "one line going down: {log}");
    assert_eq!(lines_with(&gw, BACK), 2, "one line coming back: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_writes_cost_a_timeout_per_probe_not_per_request() {
    require_redis!();
    let c = cluster(0, |b| b).await;
    let gw = binary_replica(&c, |b| b).await;
    let path = "/v1/agents2/pause-1";
    assert_eq!(patch(&gw.client(), path).await.status, 200);

    // Redis keeps accepting connections and answering PING, but holds every write for 5 s, as
    // during a failover.
    assert_eq!(c.redis.cli(&["CLIENT", "PAUSE", "5000", "WRITE"]), "OK");
    let paused = Instant::now();
    let mut slow = 0;
    let mut served = 0;
    while paused.elapsed() < Duration::from_millis(4_500) {
        let started = Instant::now();
        let r = gw.client().get(path, SUPPORT).await;
        assert_eq!(r.status, 200, "reads are served degraded");
        served += 1;
        // The deadline is 200 ms; a request that did not wait on Redis takes a few.
        if started.elapsed() >= Duration::from_millis(190) {
            slow += 1;
        }
    }
    assert!(served > 50, "only {served} requests in the pause");
    assert!(slow <= 2, "{slow} of {served} requests waited the deadline");
    // Back once the pause ends, on its own.
    wait_for_readyz(&gw.admin_client(), "cluster: connected").await;
    let write = patch(&gw.client(), path).await;
    assert_eq!(write.status, 200);
    let read = gw.client().get(path, SUPPORT).await;
    assert_eq!(read.version(), write.version());
    let log = gw.stderr_so_far();
    assert_eq!(lines_with(&gw, LOST), 1, "{log}");
    assert_eq!(lines_with(&gw, BACK), 2, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_turned_read_only_is_unavailable_and_degrade_stays_in_rotation_saying_why() {
    require_redis!();
    let c = cluster(1, |b| b).await;
    let path = "/v1/agents2/ro-1";
    assert_eq!(patch(&c.client(0), path).await.status, 200);
    // A primary demoted to a replica (of a server that is not there) answers writes READONLY.
    assert_eq!(c.redis.cli(&["REPLICAOF", "127.0.0.1", "1"]), "OK");
    c.wait_unavailable().await;
    let ready = readyz(&c.replicas[0]).await;
    let body = String::from_utf8_lossy(&ready.body).into_owned();
    assert_eq!(ready.status, 200, "degrade stays in rotation: {body}");
    assert!(body.contains("READONLY"), "{body}");
    assert_eq!(patch(&c.client(0), path).await.status, 503);
    let read = c.client(0).get(path, SUPPORT).await;
    assert_eq!((read.status, read.x_cache()), (200, "BYPASS"));
    assert_eq!(c.redis.cli(&["REPLICAOF", "NO", "ONE"]), "OK");
    c.wait_connected().await;
    assert_eq!(patch(&c.client(0), path).await.status, 200);
}
