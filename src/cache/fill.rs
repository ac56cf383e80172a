//! A miss filled: one upstream fetch per [`FillKey`](super::coalesce::FillKey) when misses may
//! coalesce, its answer stored if it may be kept. A fill others wait on runs in the background, so
//! the client that started it leaving costs nobody a second request.

use std::future::Future;
use std::sync::Arc;

use http::Response;
use tokio::sync::oneshot;

use super::coalesce::{FillKey, LockStatus, Locked, WritePermit};
use super::policy::is_personal;
use super::store::{AgentCache, Ticket};
use crate::error::GatewayError;
use crate::http::ProxyBody;
use crate::upstream::{Buffered, CacheFetch};

/// What a fill produced for this request.
pub enum FillOutcome {
    /// A whole upstream answer to this request's own fetch.
    Filled(Arc<Buffered>),
    /// A whole upstream answer to a fetch another request led and this one waited on: it is
    /// served as a hit would be, with the stored status, `Content-Type` and body only.
    Joined(Arc<Buffered>),
    /// Too large to cache; this request streams it.
    TooLarge(Response<ProxyBody>),
    Failed(GatewayError),
}

impl Ticket {
    fn fill_key(&self) -> FillKey {
        FillKey {
            key: self.key.clone(),
            family: self.family,
            query: self.query.clone(),
            spelling: self.spelling.clone(),
            generation: self.generation,
            version: self.version.clone(),
            keep: self.keep,
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
            return self.fetch_and_store(ticket, fetch).await.0;
        }
        loop {
            let lock = match self.fills.lock(ticket.fill_key()) {
                Locked::Lead(permit) => return self.lead(ticket, fetch, permit).await,
                Locked::Wait(lock) => lock,
            };
            self.metrics.cache_coalesced.inc();
            match lock.wait().await {
                LockStatus::Done(answer) => return FillOutcome::Joined(answer),
                LockStatus::TransientError(e) => return FillOutcome::Failed(e),
                LockStatus::GiveUp => return self.fetch_and_store(ticket, fetch).await.0,
                // Try again, maybe as the leader.
                LockStatus::Dangling | LockStatus::Waiting => continue,
            }
        }
    }

    /// Runs a fill that others wait on in the background: the fetch belongs to every request
    /// sharing it, so the client that started it going away must not cancel it (NGINX likewise
    /// keeps reading a cacheable answer after its client aborts). The answer is still cached and
    /// the waiters get it from this one upstream request.
    async fn lead<F, Fut>(
        self: &Arc<Self>,
        ticket: &Ticket,
        fetch: F,
        permit: WritePermit,
    ) -> FillOutcome
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<CacheFetch, GatewayError>> + Send + 'static,
    {
        let cache = Arc::clone(self);
        let ticket = ticket.clone();
        let (done, outcome) = oneshot::channel();
        self.background.spawn_owed(async move {
            let (outcome, status) = cache.fetch_and_store(&ticket, fetch).await;
            permit.release(status);
            // No one to hand it to when the client left; a too-large answer's stream is dropped.
            let _ = done.send(outcome);
        });
        // Only a panic in the fetch (or the runtime ending) loses the outcome; its waiters find the
        // lock dangling and fetch again themselves.
        outcome
            .await
            .unwrap_or(FillOutcome::Failed(GatewayError::UpstreamUnreachable))
    }

    /// The fetch, and the store of an answer that may be kept: this request's outcome, and the
    /// status the requests waiting on it are left.
    async fn fetch_and_store<F, Fut>(&self, ticket: &Ticket, fetch: F) -> (FillOutcome, LockStatus)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<CacheFetch, GatewayError>>,
    {
        match fetch().await {
            Ok(CacheFetch::Buffered(answer)) if is_personal(&answer.headers) => {
                (FillOutcome::Filled(Arc::new(answer)), LockStatus::GiveUp)
            }
            Ok(CacheFetch::Buffered(answer)) => {
                let answer = Arc::new(answer);
                // Stored before it is released, so a read that finds no fill in flight finds the entry.
                self.store(ticket, &answer).await;
                (
                    FillOutcome::Filled(answer.clone()),
                    LockStatus::Done(answer),
                )
            }
            Ok(CacheFetch::TooLarge(resp)) => (FillOutcome::TooLarge(resp), LockStatus::GiveUp),
            Err(e) => (
                FillOutcome::Failed(e.clone()),
                LockStatus::TransientError(e),
            ),
        }
    }
}
