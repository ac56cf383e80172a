//! Test fixtures: a recording fake upstream, a gateway started in-process (or as the real binary)
//! in front of it with a typed config, a small HTTP client (and `bearer()`), the one `/metrics`
//! reader, and the one [`wait_until`] for what happens in another task or process.

pub mod client;
pub mod cluster;
pub mod gateway;
pub mod metrics;
pub mod otlp;
pub mod raw;
pub mod redis;
pub mod upstream;

pub use client::{bearer, Client, TestResponse};
pub use gateway::{
    BinaryGateway, GatewayBuilder, TestGateway, ADMIN_TOKEN, BILLING, ORG_KEY_ACME, ORG_KEY_GLOBEX,
    RIVAL, SUPPORT, VIEWER,
};
pub use metrics::{scrape, scrape_accepting, Metrics};
pub use otlp::{absent_endpoint, ExportedSpan, OtlpCollector};
pub use raw::{RawConn, PATIENCE};
pub use upstream::{FakeUpstream, Reply};

use std::time::{Duration, Instant};

/// A fake upstream and a gateway with the standard config in front of it.
pub async fn setup() -> (FakeUpstream, TestGateway) {
    setup_with(|config| config).await
}

/// [`setup`], with the config changed by `configure` first.
pub async fn setup_with(
    configure: impl FnOnce(GatewayBuilder) -> GatewayBuilder,
) -> (FakeUpstream, TestGateway) {
    let upstream = FakeUpstream::start().await;
    let gw = configure(GatewayBuilder::new(upstream.base_url()))
        .start()
        .await;
    (upstream, gw)
}

/// Runs the futures concurrently (each on its own task) and returns their results in order.
pub async fn join_all<F>(futures: Vec<F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("request task"));
    }
    out
}

/// Lets a cache entry with `ttl_seconds = 1` expire. Expiry is then the behaviour under test and
/// the TTL is whole seconds: the clock is the input, there is no event to wait for.
pub async fn outlive_a_one_second_ttl() {
    tokio::time::sleep(Duration::from_millis(1100)).await;
}

/// How long [`wait_until`] waits: far beyond anything a passing test needs on a loaded machine,
/// so only a condition that will never hold runs it out.
const PATIENCE_FOR_EVENTS: Duration = Duration::from_secs(10);

/// Waits for `cond` to hold, polling; panics with `what` after 10 s. For conditions that become
/// true through another task or process (a request reaching upstream, an audit line being
/// written, `/readyz` changing), never for timing assumptions. `cond` may await, so it can ask
/// over HTTP.
pub async fn wait_until(what: &str, cond: impl AsyncFnMut() -> bool) {
    wait_until_within(PATIENCE_FOR_EVENTS, what, cond).await;
}

/// [`wait_until`], for a condition the product promises within `limit`.
pub async fn wait_until_within(limit: Duration, what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
