//! DESIGN "Redis restarts and failover": a closed connection noticed when it closes, a restarted
//! Redis found within a second, Sentinel failover with `min_replicas_acked`.

use super::*;
use crate::support::redis::TestSentinel;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_connection_is_noticed_at_once_and_replaced_straight_away() {
    require_redis!();
    let c = cluster(2, |b| b).await;
    let path = "/v1/agents2/kill-1";
    assert_eq!(patch(&c.client(0), path).await.status, 200);
    for round in 1..=5 {
        // Redis closes every client connection (as a proxy or an idle timeout would) and stays
        // up. No request is in flight, and the link's own probe runs once a second: only the
        // close itself can tell the replicas this soon.
        let killed = Instant::now();
        c.redis.cli(&["CLIENT", "KILL", "TYPE", "normal"]);
        for (r, gw) in c.replicas.iter().enumerate() {
            let reconnected = async || {
                let m = gw.metrics().await;
                m.value("dialnexa_gateway_cluster_reconnects_total", &[]) == f64::from(round)
            };
            let what = format!("replica {r} reconnects");
            wait_until_within(Duration::from_secs(5), &what, reconnected).await;
            let took = killed.elapsed();
            assert!(
                took < Duration::from_millis(400),
                "round {round}, replica {r}: {took:?}"
            );
        }
        for r in 0..2 {
            let w = patch(&c.client(r), path).await;
            assert_eq!(
                w.status,
                200,
                "round {round}, replica {r}: {}",
                String::from_utf8_lossy(&w.body)
            );
        }
    }
    for r in &c.replicas {
        assert_eq!(
            r.metrics().await.value("dialnexa_gateway_cluster_up", &[]),
            1.0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_during_a_reconnection_is_sent_once_on_the_new_connection() {
    require_redis!();
    // A deadline ample for a loaded machine: the write waits within it for the new connection.
    let c = cluster(1, |b| b.cluster_timeout_ms(1_000)).await;
    let path = "/v1/agents2/resend-1";
    assert_eq!(patch(&c.client(0), path).await.status, 200);
    // Every round trip takes 30 ms: replacing a connection (handshake, probe) takes over 100 ms,
    // so the write below arrives while the link is replacing the connection Redis just closed.
    c.proxy.set_delay(Duration::from_millis(30));
    for round in 1..=3 {
        c.redis.cli(&["CLIENT", "KILL", "TYPE", "normal"]);
        // Once the replica knows (a request sent before it does meets the dead connection, and
        // its fate is unknown: that one is answered 503, never sent twice).
        wait_for_readyz(&c.replicas[0].admin_client(), "reconnecting").await;
        let w = patch(&c.client(0), path).await;
        assert_eq!(
            w.status,
            200,
            "round {round}: {}",
            String::from_utf8_lossy(&w.body)
        );
        c.wait_connected().await;
    }
    let m = c.replicas[0].metrics().await;
    assert_eq!(
        m.value("dialnexa_gateway_cluster_reconnects_total", &[]),
        3.0
    );
    assert_eq!(
        c.upstream.count(&Method::PATCH, "/"),
        4,
        "each write forwarded once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_redis_serves_agent_writes_again_within_a_second() {
    require_redis!();
    let mut c = cluster(2, |b| b).await;
    let path = "/v1/agents2/restart-1";
    for r in 0..2 {
        assert_eq!(patch(&c.client(r), path).await.status, 200);
    }
    // Killed and started again between two writes: no probe has run in between.
    c.redis.restart_empty();
    let accepting = Instant::now();
    c.wait_connected().await;
    let found = accepting.elapsed();
    assert!(
        found < Duration::from_millis(1_500),
        "found again after {found:?}"
    );
    for r in 0..2 {
        let w = patch(&c.client(r), path).await;
        assert_eq!(
            w.status,
            200,
            "replica {r}: {}",
            String::from_utf8_lossy(&w.body)
        );
    }
    for r in &c.replicas {
        let m = r.metrics().await;
        assert_eq!(m.value("dialnexa_gateway_cluster_up", &[]), 1.0);
        assert_eq!(
            m.value("dialnexa_gateway_cluster_reconnects_total", &[]),
            1.0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_replicas_it_asks_for_agent_writes_are_refused_and_hits_go_on() {
    require_redis!();
    let primary = TestRedis::start_tcp(&[]);
    let primary_port = primary.port().to_string();
    // A deadline that a loaded machine's replica acknowledges within, once there is one.
    let c = cluster_with(primary, 1, |b| {
        b.cluster_min_replicas_acked(1).cluster_timeout_ms(1_000)
    })
    .await;
    let path = "/v1/agents2/acked-1";
    let hot = "/v1/agents2/acked-hot";
    c.client(0).get(hot, SUPPORT).await;
    assert_eq!(c.client(0).get(hot, SUPPORT).await.x_cache(), "HIT");

    // The write waits its deadline for a replica that is not there, on its own connection.
    let writer = c.client(0);
    let write = tokio::spawn(async move { patch(&writer, path).await });
    let mut slowest = Duration::ZERO;
    let mut hits = 0;
    while !write.is_finished() {
        let started = Instant::now();
        let hit = c.client(0).get(hot, SUPPORT).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!((hit.status, hit.x_cache()), (200, "HIT"));
        hits += 1;
    }
    let write = write.await.unwrap();
    assert_eq!(
        write.status,
        503,
        "{}",
        String::from_utf8_lossy(&write.body)
    );
    assert_eq!(write.json()["code"], "cluster_unavailable");
    assert_eq!(c.upstream.count(&Method::PATCH, "/"), 0, "never forwarded");
    assert!(hits >= 5, "only {hits} hits while the write waited");
    // Behind the WAIT (1 s), the first hit would have waited it out, and no other would fit.
    assert!(
        slowest < Duration::from_millis(900),
        "a hit waited {slowest:?} behind the write's WAIT"
    );
    // Writes that touch no agent, and reads, go on; the agent written to is cached again at once
    // (the refused write's in-progress mark was lifted).
    assert_eq!(post_call(&c.client(0)).await.status, 200);
    c.client(0).get(path, SUPPORT).await;
    assert_eq!(c.client(0).get(path, SUPPORT).await.x_cache(), "HIT");
    let m = c.replicas[0].metrics().await;
    assert_eq!(m.value("dialnexa_gateway_cluster_up", &[]), 1.0);
    assert_eq!(
        m.value("dialnexa_gateway_cluster_unacknowledged_writes_total", &[]),
        1.0
    );

    // With a replica connected, the same write is acknowledged and goes through.
    let replica = TestRedis::start_tcp(&["--replicaof", "127.0.0.1", &primary_port]);
    wait_until("the replica is in sync", async || in_sync(&replica)).await;
    let write = patch(&c.client(0), path).await;
    assert_eq!(
        write.status,
        200,
        "{}",
        String::from_utf8_lossy(&write.body)
    );
    assert_eq!(c.upstream.count(&Method::PATCH, "/"), 1);
    let read = c.client(0).get(path, SUPPORT).await;
    assert_eq!((read.x_cache(), read.version()), ("MISS", write.version()));
    // Each of an agent write's two version changes is followed by its own `WAIT` (a round trip
    // more each, on the writer connection); nothing else waits.
    let before = wait_calls(&c.redis);
    assert_eq!(patch(&c.client(0), path).await.status, 200);
    assert_eq!(c.client(0).get(path, SUPPORT).await.status, 200);
    assert_eq!(post_call(&c.client(0)).await.status, 200);
    assert_eq!(wait_calls(&c.redis) - before, 2);
}

/// How many `WAIT`s Redis has run (`INFO commandstats`).
fn wait_calls(redis: &TestRedis) -> u64 {
    let stats = redis.cli(&["INFO", "commandstats"]);
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_wait:calls="))
        .and_then(|l| l.split(',').next())
        .map_or(0, |n| n.parse().expect("a count"))
}

/// Whether a replica has finished its first sync and follows its primary.
fn in_sync(replica: &TestRedis) -> bool {
    replica
        .cli(&["INFO", "replication"])
        .contains("master_link_status:up")
}

/// A Sentinel's view of `master`: (replicas, other Sentinels), from `SENTINEL master`.
fn sentinel_view(sentinel: &TestSentinel, master: &str) -> (u32, u32) {
    let out = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &sentinel.port.to_string(),
            "SENTINEL",
            "master",
            master,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    let field = |name: &str| -> u32 {
        lines
            .iter()
            .position(|l| *l == name)
            .and_then(|i| lines.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("num-slaves"), field("num-other-sentinels"))
}

/// A primary, a replica and three Sentinels; two gateway replicas with `min_replicas_acked = 1`;
/// reads and PATCHes through both while the primary is killed (SIGKILL) and the Sentinels promote
/// the replica, then while the Sentinels switch back with both alive (the old primary closes its
/// clients' connections, or answers `READONLY`). Service resumes on its own each time (the killed primary, started again, becomes the
/// new one's replica, so writes can be acknowledged again), and no read returns a body older than
/// a PATCH answered before the read began.
///
/// Without `min_replicas_acked` this checker cannot catch an old read here, and a second run would
/// prove nothing: every gateway replica sees its connection close (or `READONLY`) and empties its
/// cache on reconnecting, so an entry from before a lost version change survives nowhere; and the
/// one remaining window (a write in flight across the failover whose end cannot reach Redis within
/// its 1 s, while another replica fills the agent from upstream before upstream has applied the
/// write) needs upstream to take longer than the promotion, seconds here against 5 ms.
/// What `WAIT` protects in production is an endpoint that fails over under connections it keeps,
/// and that in-flight write (docs/operations.md, "Redis high availability").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_keeps_read_after_write_and_service_resumes_by_itself() {
    require_redis!();
    const MASTER: &str = "dnxgw-test";
    let mut primary = TestRedis::start_tcp(&[]);
    let replica = TestRedis::start_tcp(&["--replicaof", "127.0.0.1", &primary.port().to_string()]);
    wait_until("the replica is in sync", async || in_sync(&replica)).await;
    let sentinels: Vec<TestSentinel> = (0..3)
        .map(|_| TestSentinel::start(MASTER, primary.port()))
        .collect();
    // Sentinels find the replica and each other through the primary (hello messages every 2 s).
    wait_until_within(
        Duration::from_secs(15),
        "the Sentinels see the replica and each other",
        async || sentinels.iter().all(|s| sentinel_view(s, MASTER) == (1, 2)),
    )
    .await;
    let addrs: Vec<String> = sentinels.iter().map(TestSentinel::addr).collect();
    let upstream = FakeUpstream::start().await;
    upstream.set_delay(Method::GET, Duration::from_millis(3));
    upstream.set_delay(Method::PATCH, Duration::from_millis(5));
    let mut gateways = Vec::new();
    for _ in 0..2 {
        let gw = GatewayBuilder::new(upstream.base_url())
            .cluster_sentinels(&addrs, MASTER)
            .cluster_timeout_ms(500)
            .cluster_min_replicas_acked(1)
            .start()
            .await;
        wait_for_readyz(&gw.admin_client(), "cluster: connected").await;
        gateways.push(gw);
    }
    let clients: Arc<Vec<Client>> = Arc::new(gateways.iter().map(|g| g.client()).collect());

    let history = Arc::new(Mutex::new(Vec::<Op>::new()));
    let refused = Arc::new(Mutex::new(Vec::<Instant>::new()));
    // Set once service has resumed for a while: the workers stop then.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..6u64 {
        let (clients, history, refused, stop) = (
            clients.clone(),
            history.clone(),
            refused.clone(),
            stop.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (w * 0x0100_0000_01b3);
            let mut next = move || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let agent = (next() % 2) as usize;
                let replica = (next() % 2) as usize;
                let write = next() % 4 == 0;
                let path = format!("/v1/agents2/failover-{agent}");
                let invoked = Instant::now();
                let r = if write {
                    patch(&clients[replica], &path).await
                } else {
                    clients[replica].get(&path, SUPPORT).await
                };
                let completed = Instant::now();
                match (write, r.status) {
                    (_, 200) => history.lock().await.push(Op {
                        agent,
                        write,
                        invoked,
                        completed,
                        version: r.version(),
                        replica,
                    }),
                    // While no primary acknowledges, agent writes are refused, never forwarded.
                    (true, 503) => refused.lock().await.push(invoked),
                    (_, s) => panic!("{s}: {}", String::from_utf8_lossy(&r.body)),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }

    // Some history first (writes acknowledged through both replicas), then kill the primary.
    let writes_since = async |since: Instant, through: usize| {
        let history = history.lock().await;
        (0..2).all(|r| {
            history
                .iter()
                .filter(|o| o.write && o.replica == r && o.invoked > since)
                .count()
                >= through
        })
    };
    let started = Instant::now();
    wait_until("writes acknowledged before the kill", async || {
        writes_since(started, 5).await
    })
    .await;
    let killed = Instant::now();
    primary.kill();
    wait_until_within(
        Duration::from_secs(15),
        "the Sentinels promote the replica",
        async || {
            sentinels
                .iter()
                .all(|s| s.primary_port(MASTER) == Some(replica.port()))
        },
    )
    .await;
    let promoted = killed.elapsed();
    // The old primary comes back empty, as the new primary's replica (as an operator, or the
    // Sentinels within their 10 s INFO period, would make it).
    primary.restart_as_replica_of(replica.port());
    wait_until_within(
        Duration::from_secs(20),
        "the old primary replicates the new one",
        async || in_sync(&primary),
    )
    .await;
    let resumed = killed.elapsed();

    // Then a failover with both alive, as for maintenance: the Sentinels make the old primary
    // close its clients' connections, and it answers READONLY from then on; either sends each
    // gateway replica back to the Sentinels for the new one.
    // First, writes acknowledged through both replicas in the second after resumption, where
    // none may be refused.
    wait_until(
        "writes acknowledged again after the promotion",
        async || writes_since(killed + resumed + Duration::from_secs(1), 3).await,
    )
    .await;
    let switching = killed.elapsed();
    // The Sentinels take a moment to deem the restarted server a good replica (a ping, an INFO).
    wait_until_within(
        Duration::from_secs(20),
        "SENTINEL FAILOVER says OK",
        async || sentinels[0].failover(MASTER) == "OK",
    )
    .await;
    wait_until_within(
        Duration::from_secs(20),
        "the Sentinels switch back",
        async || {
            sentinels
                .iter()
                .all(|s| s.primary_port(MASTER) == Some(primary.port()))
        },
    )
    .await;
    // The demoted primary follows the new one (the Sentinels tell it so within their 10 s INFO
    // period; the test does not wait that long).
    replica.cli(&["REPLICAOF", "127.0.0.1", &primary.port().to_string()]);
    wait_until_within(
        Duration::from_secs(20),
        "the demoted primary follows",
        async || in_sync(&replica),
    )
    .await;
    let switched = killed.elapsed();
    eprintln!("promoted {promoted:?}, resumed {resumed:?}, switched {switching:?}..{switched:?}");
    // Service after the switch back: writes acknowledged through both replicas past the second
    // in which refusals are forgiven.
    wait_until("writes acknowledged after the switch back", async || {
        writes_since(killed + switched + Duration::from_secs(1), 3).await
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }

    let history = history.lock().await.clone();
    let after = |t: Duration| {
        history
            .iter()
            .filter(|o| o.write && o.invoked > killed + t)
            .count()
    };
    assert!(
        after(switched) > 5,
        "writes did not resume (promoted after {promoted:?}, replicated after {resumed:?}, \
         switched back after {switched:?})"
    );
    // Once a replica acknowledges again, no write is refused: the scripts, gone from the promoted
    // server's cache, were loaded by the probe before requests used the new connection.
    let refused = refused.lock().await.clone();
    let late: Vec<_> = refused
        .iter()
        .map(|t| t.duration_since(killed))
        .filter(|t| {
            (*t > resumed + Duration::from_secs(1) && *t < switching)
                || *t > switched + Duration::from_secs(1)
        })
        .collect();
    assert!(
        late.is_empty(),
        "writes refused after {resumed:?} (switch back from {switching:?} to {switched:?}): {late:?}"
    );
    let reads = history.iter().filter(|o| !o.write).count();
    assert!(reads > 200, "too little history: {reads} reads");
    let stale = stale_reads(&history);
    assert!(stale.is_empty(), "stale reads: {stale:#?}");
}
