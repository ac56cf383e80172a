//! Running it: the admin listener (probes, metrics), SIGHUP reloads, SIGTERM drains, SIGUSR1
//! reopens the audit file, secrets stay out of the output, and the `check` / `hash-key` /
//! `gen-key` subcommands, against the real binary where signals, exit codes and stderr are the
//! point. This file holds what they share.

mod admin_listener;
mod reload;
mod secrets;
mod signals;
mod subcommands;

use std::future::Future;
use std::time::{Duration, Instant};

use crate::support::*;

/// The async sibling of [`wait_until`], for conditions only an HTTP answer can tell.
pub(crate) async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const RELOADS: &str = "dialnexa_gateway_config_reloads_total";
const OK: &[(&str, &str)] = &[("result", "ok")];
const FAILED: &[(&str, &str)] = &[("result", "failed")];
