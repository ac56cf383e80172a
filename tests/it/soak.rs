//! A bounded soak of the PATCH+GET mix with invalidations (issue: benchmark, "soak"). Ignored by
//! default; run it with
//!
//! ```sh
//! SOAK_SECONDS=180 cargo test --release --test it soak -- --ignored --nocapture
//! ```
//!
//! The cluster soak runs two replicas (the real binary) on one `redis-server` the test owns.
//!
//! It checks what a soak can: no errors, no stale read after an acknowledged PATCH, and memory that
//! stops growing once the working set is cached. It prints the RSS samples for docs/benchmarks.md.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::cluster::wait_for_readyz;
use crate::support::*;

const AGENTS: usize = 200;
const WORKERS: usize = 32;

/// The resident set of process `pid` (`self` for this one), in KiB.
fn rss_kib(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// What a soak counted.
struct Tally {
    requests: u64,
    errors: u64,
    stale: u64,
    /// RSS in KiB once a second, per process watched.
    samples: Vec<Vec<u64>>,
}

/// Drives the GET/PATCH mix through `clients` (worker `w` uses client `w % len`) for `seconds`,
/// sampling `rss` once a second.
async fn run_mix(clients: Vec<Client>, seconds: u64, rss: impl Fn() -> Vec<u64>) -> Tally {
    // The highest version a PATCH has been acknowledged with, per agent.
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..AGENTS).map(|_| AtomicU64::new(1)).collect());
    let (requests, stale, errors) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (c, acked, requests, stale, errors) = (
            clients[w % clients.len()].clone(),
            acked.clone(),
            requests.clone(),
            stale.clone(),
            errors.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut n: usize = w;
            while Instant::now() < deadline {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let agent = (n >> 33) % AGENTS;
                let family = if n.is_multiple_of(2) {
                    "agents2"
                } else {
                    "agents"
                };
                let path = format!("/v1/{family}/soak-{agent}");
                requests.fetch_add(1, Ordering::Relaxed);
                if (n >> 20).is_multiple_of(10) {
                    let r = c
                        .patch(&path, BILLING, r#"{"llm":{"temperature":0.2}}"#)
                        .await;
                    if r.status != 200 {
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    acked[agent].fetch_max(r.version(), Ordering::SeqCst);
                } else {
                    // Anything acknowledged before this GET was sent must be visible in its answer.
                    let floor = acked[agent].load(Ordering::SeqCst);
                    let r = c.get(&path, SUPPORT).await;
                    if r.status != 200 {
                        errors.fetch_add(1, Ordering::Relaxed);
                    } else if r.version() < floor {
                        stale.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let mut samples = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        samples.push(rss());
    }
    for w in workers {
        w.await.unwrap();
    }
    let watched = samples.first().map_or(0, Vec::len);
    Tally {
        requests: requests.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        stale: stale.load(Ordering::Relaxed),
        samples: (0..watched)
            .map(|p| samples.iter().map(|s| s[p]).collect())
            .collect(),
    }
}

/// The checks every soak makes, and its report for docs/benchmarks.md.
fn assert_sound(name: &str, seconds: u64, t: &Tally) {
    println!(
        "{name}: {seconds} s, {} requests, {} errors, {} stale reads",
        t.requests, t.errors, t.stale
    );
    assert!(t.requests > 0);
    assert_eq!(t.errors, 0, "errors");
    assert_eq!(t.stale, 0, "stale reads after an acknowledged PATCH");
    for (p, samples) in t.samples.iter().enumerate() {
        println!("{name}: process {p}: RSS KiB per second: {samples:?}");
        // Flat once warm: the second half never exceeds the first half's peak by more than 10 %,
        // or 4 MiB, whichever is more. The allocator grows the heap in steps of a few MiB, once in
        // a while (a 13.4 → 15.4 MiB step 20 s into a 45 s run), which is not growth; a leak of
        // even 2 bytes a request passes 4 MiB within a minute at these rates.
        let half = samples.len() / 2;
        let (first, second) = samples.split_at(half.max(1));
        let (peak1, peak2) = (
            first.iter().max().copied().unwrap_or(0),
            second.iter().max().copied().unwrap_or(0),
        );
        assert!(
            peak2 <= peak1 + (peak1 / 10).max(4096),
            "process {p}: RSS kept growing: first-half peak {peak1} KiB, second-half peak {peak2} KiB"
        );
    }
}

fn soak_seconds() -> u64 {
    std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long-running soak; see the module doc"]
async fn soak_mix_with_invalidations_has_no_errors_no_stale_reads_and_flat_memory() {
    let seconds = soak_seconds();
    let upstream = FakeUpstream::start().await;
    upstream.stop_recording();
    // Quotas far above what loopback can reach: this run is about the cache, not the limiter.
    let (per_minute, burst) = (4_000_000_000, 1_000_000);
    let gw = GatewayBuilder::new(upstream.base_url())
        .team_quota("billing", per_minute, burst)
        .team_quota("support", per_minute, burst)
        .start()
        .await;
    let tally = run_mix(vec![Client::new(gw.api)], seconds, || vec![rss_kib("self")]).await;
    assert_sound("soak", seconds, &tally);
}

/// Two replicas (the real binary, twice) in cluster mode on one `redis-server`, the mix spread
/// over both: no errors, no stale read through either, flat memory in each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long-running soak; see the module doc"]
async fn soak_two_replicas_in_cluster_mode_have_no_errors_no_stale_reads_and_flat_memory() {
    use crate::support::redis::{FaultyProxy, TestRedis};
    let seconds = soak_seconds();
    let redis = TestRedis::start();
    let proxy = FaultyProxy::start(redis.socket()).await;
    let upstream = FakeUpstream::start().await;
    upstream.stop_recording();
    let (per_minute, burst) = (4_000_000_000, 1_000_000);
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let builder = GatewayBuilder::new(upstream.base_url())
            .in_cluster(&proxy.url())
            .team_quota("billing", per_minute, burst)
            .team_quota("support", per_minute, burst);
        replicas.push(builder.spawn_binary().await);
    }
    // Both connected before the mix starts (a replica without Redis refuses agent writes).
    for r in &replicas {
        wait_for_readyz(&r.admin_client(), "cluster: connected").await;
    }
    let clients = replicas.iter().map(|r| r.client()).collect();
    let pids: Vec<String> = replicas.iter().map(|r| r.child.id().to_string()).collect();
    let tally = run_mix(clients, seconds, || {
        pids.iter().map(|p| rss_kib(p)).collect()
    })
    .await;
    assert_sound("cluster soak", seconds, &tally);
}
