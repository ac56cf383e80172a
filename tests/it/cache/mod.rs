//! The agent cache on the wire: hits and misses, org scoping, invalidation by writes (never the old
//! body once a write was answered), request coalescing, client and upstream cache directives,
//! size limits, stale-if-error, admin purge, and the cache metrics. One file per rule; this one
//! holds what they share.

mod coalescing;
mod directives;
mod hits;
mod invalidation;
mod metrics;
mod purge;
mod stale;
mod stored;
mod write_race;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;

use crate::support::client::raw_status;
use crate::support::*;

/// GET with the team key plus `headers`.
async fn get_with(c: &Client, path: &str, key: &str, headers: &[(&str, &str)]) -> TestResponse {
    let auth = bearer(key);
    let mut all = vec![("authorization", auth.as_str())];
    all.extend_from_slice(headers);
    c.send(Method::GET, path, &all, Bytes::new()).await
}

/// A GET running in a task of its own (on its own connection if `c` is busy).
fn spawn_get(c: &Client, path: &str, key: &'static str) -> JoinHandle<TestResponse> {
    let (c, path) = (c.clone(), path.to_owned());
    tokio::spawn(async move { c.get(&path, key).await })
}

/// Makes upstream answer agent GETs `{"fetch": n}`, n counting upstream GETs: which fetch a
/// client got tells a cached body from a refreshed one.
fn number_fetches(upstream: &FakeUpstream) {
    let fetches = Arc::new(AtomicU64::new(0));
    upstream.set_override(move |r| {
        (r.method == Method::GET && r.path().starts_with("/v1/agents")).then(|| {
            Reply::json(
                200,
                json!({"fetch": fetches.fetch_add(1, Ordering::SeqCst) + 1}),
            )
        })
    });
}

fn fetch_no(r: &TestResponse) -> u64 {
    r.json()["fetch"].as_u64().unwrap_or_else(|| {
        panic!(
            "no fetch number in {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        )
    })
}

/// The coalesced-waits counter, read in-process so tests can wait on it.
fn coalesced(gw: &TestGateway) -> u64 {
    gw.running().gateway().metrics.cache_coalesced.get()
}

async fn purge(gw: &TestGateway, auth: Option<&str>, body: &str) -> TestResponse {
    let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
    gw.admin_client()
        .send(
            Method::POST,
            "/admin/cache/purge",
            &headers,
            Bytes::from(body.to_owned()),
        )
        .await
}

/// The answers of `tasks`, in order.
async fn all_answers(tasks: Vec<JoinHandle<TestResponse>>) -> Vec<TestResponse> {
    let mut answers = Vec::with_capacity(tasks.len());
    for t in tasks {
        // Bounded, so a waiter that is never woken fails the test instead of hanging it.
        let answer = tokio::time::timeout(Duration::from_secs(20), t)
            .await
            .expect("every request was answered")
            .unwrap();
        answers.push(answer);
    }
    answers
}
