//! One upstream fetch per (variant, generation): concurrent misses wait on the first, whose fetch
//! runs in a task of its own so the client that started it leaving costs nobody a second request.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use http::Response;
use tokio::sync::{oneshot, watch};

use super::key::AgentKey;
use super::policy::is_personal;
use super::store::{AgentCache, Ticket};
use crate::error::GatewayError;
use crate::http::ProxyBody;
use crate::route::Family;
use crate::telemetry;
use crate::upstream::{Buffered, CacheFetch};

/// What a fill produced for this request.
pub enum FillOutcome {
    /// A whole upstream answer to this request's own fetch.
    Answer(Arc<Buffered>),
    /// A whole upstream answer to a fetch another request started and this one waited on: it is
    /// served as a hit would be, with the stored status, `Content-Type` and body only.
    Joined(Arc<Buffered>),
    /// Too large to cache; this request streams it.
    Streaming(Response<ProxyBody>),
    Failed(GatewayError),
}

/// What the leader of a fill publishes to the requests waiting on it.
#[derive(Clone)]
pub(super) enum Shared {
    Answer(Arc<Buffered>),
    Failed(GatewayError),
    /// The answer could not be shared (too large): fetch your own.
    FetchYourself,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(super) struct FillKey {
    key: AgentKey,
    family: Family,
    query: Box<str>,
    spelling: Option<Box<str>>,
    generation: u64,
    shared: Option<std::sync::Arc<str>>,
    keep: bool,
}

/// The fills in flight: what each will publish, and the span of the request that leads it (none
/// without tracing), which the requests that join it are linked to.
pub(super) type Inflight = Mutex<
    HashMap<FillKey, (watch::Receiver<Option<Shared>>, tracing::Span), foldhash::fast::RandomState>,
>;

/// Removes the leader's in-flight entry however the leader ends (answered, failed or cancelled).
struct InflightGuard<'a> {
    inflight: &'a Inflight,
    key: FillKey,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut map) = self.inflight.lock() {
            map.remove(&self.key);
        }
    }
}

impl AgentCache {
    /// Fetches through `fetch`, sharing one upstream request between concurrent misses of the same
    /// variant and generation when `coalesce` is set, and stores a cacheable answer.
    pub async fn fill<F, Fut>(
        self: &Arc<Self>,
        ticket: &Ticket,
        coalesce: bool,
        fetch: F,
    ) -> FillOutcome
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<CacheFetch, GatewayError>> + Send + 'static,
    {
        self.metrics.cache_misses.inc();
        if !coalesce {
            return self.lead(ticket, fetch, None).await;
        }
        let fill_key = FillKey {
            key: ticket.key.clone(),
            family: ticket.family,
            query: ticket.query.clone(),
            spelling: ticket.spelling.clone(),
            generation: ticket.generation,
            shared: ticket.shared.clone(),
            keep: ticket.keep,
        };
        loop {
            let (joined, leader) = {
                let Ok(mut map) = self.inflight.lock() else {
                    return self.lead(ticket, fetch, None).await;
                };
                match map.get(&fill_key) {
                    Some((rx, leading)) => {
                        telemetry::span::link(leading, &telemetry::span::current());
                        (Some(rx.clone()), None)
                    }
                    None => {
                        let (tx, rx) = watch::channel(None);
                        map.insert(fill_key.clone(), (rx, telemetry::span::current()));
                        (None, Some(tx))
                    }
                }
            };
            if let Some(tx) = leader {
                return self.lead_shared(ticket, fill_key, fetch, tx).await;
            }
            let Some(mut rx) = joined else { continue };
            self.metrics.cache_coalesced.inc();
            let shared = match rx.wait_for(Option::is_some).await {
                Ok(v) => v.clone(),
                // The leader was cancelled (its client went away): try again, maybe as the leader.
                Err(_) => continue,
            };
            return match shared {
                Some(Shared::Answer(a)) => FillOutcome::Joined(a),
                Some(Shared::Failed(e)) => FillOutcome::Failed(e),
                Some(Shared::FetchYourself) | None => self.lead(ticket, fetch, None).await,
            };
        }
    }

    /// Runs a fill that others wait on in a task of its own: the fetch belongs to every request
    /// sharing it, so the client that started it going away must not cancel it (NGINX likewise
    /// keeps reading a cacheable answer after its client aborts). The answer is still cached and
    /// the waiters get it from this one upstream request.
    async fn lead_shared<F, Fut>(
        self: &Arc<Self>,
        ticket: &Ticket,
        fill_key: FillKey,
        fetch: F,
        publish: watch::Sender<Option<Shared>>,
    ) -> FillOutcome
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<CacheFetch, GatewayError>> + Send + 'static,
    {
        let cache = Arc::clone(self);
        let ticket = ticket.clone();
        let (done, outcome) = oneshot::channel();
        tokio::spawn(async move {
            let _guard = InflightGuard {
                inflight: &cache.inflight,
                key: fill_key,
            };
            // No one to hand it to when the client left; a too-large answer's stream is dropped.
            let _ = done.send(cache.lead(&ticket, fetch, Some(publish)).await);
        });
        // Only a panic in the fetch loses the outcome; its waiters fetch again themselves.
        outcome
            .await
            .unwrap_or(FillOutcome::Failed(GatewayError::UpstreamUnreachable))
    }

    async fn lead<F, Fut>(
        &self,
        ticket: &Ticket,
        fetch: F,
        publish: Option<watch::Sender<Option<Shared>>>,
    ) -> FillOutcome
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<CacheFetch, GatewayError>>,
    {
        let (outcome, shared) = match fetch().await {
            Ok(CacheFetch::Buffered(answer)) if is_personal(&answer.headers) => {
                let answer = Arc::new(answer);
                (FillOutcome::Answer(answer), Shared::FetchYourself)
            }
            Ok(CacheFetch::Buffered(answer)) => {
                let answer = Arc::new(answer);
                // Stored before it is published, so a read that finds no fill in flight finds the entry.
                self.store(ticket, &answer).await;
                (FillOutcome::Answer(answer.clone()), Shared::Answer(answer))
            }
            Ok(CacheFetch::TooLarge(resp)) => (FillOutcome::Streaming(resp), Shared::FetchYourself),
            Err(e) => (FillOutcome::Failed(e.clone()), Shared::Failed(e)),
        };
        if let Some(tx) = publish {
            let _ = tx.send(Some(shared));
        }
        outcome
    }
}
