//! Running it: the admin listener (probes, metrics), SIGHUP reloads, SIGTERM drains, SIGUSR1
//! reopens the audit file, secrets stay out of the output, and the `check` / `hash-key` /
//! `gen-key` subcommands, against the real binary where signals, exit codes and stderr are the
//! point. This file holds what they share.

mod admin_listener;
mod key_life;
mod reload;
mod secrets;
mod signals;
mod subcommands;
mod watch;

use std::time::Duration;

use crate::support::*;

/// The `Authorization` upstream saw for a `billing` request sent with `request_id` (unique per
/// call): the organisation key the gateway injected.
async fn org_key_seen_upstream(c: &Client, upstream: &FakeUpstream, request_id: &str) -> String {
    let auth = bearer(BILLING);
    let headers = [
        ("authorization", auth.as_str()),
        ("x-request-id", request_id),
    ];
    let r = c
        .send(
            http::Method::GET,
            "/v1/calls",
            &headers,
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = upstream
        .request_with_id(request_id)
        .expect("request reached upstream");
    seen.headers["authorization"].to_str().unwrap().to_owned()
}

const RELOADS: &str = "dialnexa_gateway_config_reloads_total";
const OK: &[(&str, &str)] = &[("result", "ok")];
const FAILED: &[(&str, &str)] = &[("result", "failed")];
