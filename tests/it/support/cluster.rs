//! The gateway side of the cluster-mode tests: a gateway pointed at a test Redis, `/readyz` read
//! and waited on, and the skip-or-fail rule for machines without `redis-server`. (`redis.rs`, the
//! servers themselves, is shared with the library's script tests and knows no gateway.)

use std::time::Duration;

use http::Method;

use super::{wait_until_within, Client, TestGateway, TestResponse};

/// Skips (loudly) where no `redis-server` is installed, unless `DNXGW_REQUIRE_REDIS` is set, as
/// `.ci/run` sets it after installing one: there a missing server fails the test.
macro_rules! require_redis {
    () => {
        if !$crate::support::redis::redis_available() {
            assert!(
                std::env::var_os("DNXGW_REQUIRE_REDIS").is_none(),
                "redis-server is required (DNXGW_REQUIRE_REDIS) but not installed"
            );
            eprintln!("SKIPPED: redis-server is not installed");
            return;
        }
    };
}
pub(crate) use require_redis;

pub async fn readyz(gw: &TestGateway) -> TestResponse {
    ask_readyz(&gw.admin_client()).await
}

pub async fn ask_readyz(admin: &Client) -> TestResponse {
    admin.send(Method::GET, "/readyz", &[], "").await
}

/// Waits until `/readyz` says `what`: state changes happen in the replica's own time (a deadline
/// running out, a reconnection), which the test observes rather than predicts.
pub async fn wait_for_readyz(admin: &Client, what: &str) {
    let says = format!("/readyz says {what:?}");
    let said = async || String::from_utf8_lossy(&ask_readyz(admin).await.body).contains(what);
    wait_until_within(Duration::from_secs(15), &says, said).await;
}
