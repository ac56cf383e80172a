//! Steps 4-5 for everything but cacheable agent reads: the request forwarded with the org key
//! injected, the answer streamed back, and a write to an agent invalidated around it (when it is
//! sent upstream, and again when its answer or failure is back).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Response, StatusCode};

use super::context::RequestCtx;
use super::Exchange;
use crate::audit;
use crate::auth;
use crate::cache::Scope;
use crate::error::GatewayError;
use crate::http::ProxyBody;
use crate::state::{Gateway, Moment};
use crate::telemetry;
use crate::upstream::Purpose;

/// Forwards the request and streams upstream's answer back.
pub(super) async fn forward(
    ex: &mut Exchange<'_>,
    ctx: &RequestCtx,
    body: Bytes,
) -> Result<Response<ProxyBody>, GatewayError> {
    let mut req = ctx.upstream_request(ex, body, Purpose::Forward)?;
    ex.gw.admission.before_upstream(&ctx.team.part).await?;
    let call = req.traced(&telemetry::span::current(), ex.record().trace_id);
    let timeout = ex.snapshot.settings.upstream.timeout;
    let pending = invalidate_before(ex, ctx).await;
    let started = Instant::now();
    let result = telemetry::in_span!(call.clone(), ex.snapshot.upstream.send(&req, timeout));
    upstream_took(ex, started.elapsed());
    match &result {
        Ok(resp) => {
            telemetry::span::upstream_answered(&call, Some(resp.status()), None);
            ex.gw
                .admission
                .upstream_answered(&ctx.team.part, resp.status(), resp.headers())
                .await;
        }
        Err(e) => telemetry::span::upstream_answered(&call, None, Some(e.code())),
    }
    if let Some(pending) = pending {
        // Again once the answer (or failure) is back: a read that filled in between is dropped too.
        ex.record().invalidated += pending.complete().await;
    }
    let resp = result?;
    ex.record().upstream_status = Some(resp.status().as_u16());
    // A `304` has no body to pass on, and a client that sent no `If-None-Match` has nothing to
    // reuse it with (`If-Modified-Since` alone is not sent upstream, see `upstream::request`).
    if resp.status() == StatusCode::NOT_MODIFIED
        && !ctx.parts.headers.contains_key(header::IF_NONE_MATCH)
    {
        return Err(GatewayError::UpstreamInvalid(
            "304 Not Modified to a request without If-None-Match",
        ));
    }
    Ok(crate::upstream::passthrough(resp, timeout))
}

/// Step 5, first time: for a write to an agent or below it, invalidates now (as it is sent
/// upstream) and returns the second invalidation, due when the answer is back.
async fn invalidate_before(ex: &mut Exchange<'_>, ctx: &RequestCtx) -> Option<PendingInvalidation> {
    let agent = ctx
        .route
        .agent
        .as_ref()
        .filter(|_| !auth::is_read(&ctx.parts.method))?;
    // Owed already if admission made the first invalidation for every replica.
    let pending = ex.write.take().unwrap_or_else(|| {
        PendingInvalidation::new(
            Arc::clone(ex.gw),
            ctx.team.settings.org.name.clone(),
            agent.id.clone(),
        )
    });
    // Also while caching is off: entries stored before a reload turned it off outlive it. It
    // cannot fail: at this moment it reaches only this replica.
    if let Some(scope) = &pending.scope {
        ex.record().invalidated += ex
            .gw
            .invalidate(scope, Moment::WriteSent)
            .await
            .unwrap_or(0);
    }
    Some(pending)
}

/// The upstream time of this request's own forward, for its audit line and the histogram.
fn upstream_took(ex: &mut Exchange<'_>, took: Duration) {
    ex.record().upstream_latency_ms = Some(audit::millis(took));
    ex.gw.metrics.upstream_duration.observe(took.as_secs_f64());
}

/// The second invalidation of a write. If the request is dropped before upstream answers (shutdown
/// cut it off), or fails between its admission and upstream once admission made the first one, the
/// invalidation still happens, in the background, where shutdown waits for it.
pub(super) struct PendingInvalidation {
    gw: Arc<Gateway>,
    /// Taken once done.
    scope: Option<Scope>,
}

impl PendingInvalidation {
    pub(super) fn new(gw: Arc<Gateway>, org: Arc<str>, agent: String) -> Self {
        Self {
            gw,
            scope: Some(Scope::Agent { org, agent }),
        }
    }

    async fn complete(mut self) -> u64 {
        match self.scope.take() {
            Some(scope) => invalidate_after(&self.gw, &scope).await,
            None => 0,
        }
    }
}

/// Step 5, second time, once the write's answer (or failure) is back. If it cannot reach the other
/// replicas, the write has still happened: its first invalidation (at admission) marked it in
/// progress, which keeps every replica from serving or storing the agent until that lapses, so no
/// stale entry can be served.
async fn invalidate_after(gw: &Gateway, scope: &Scope) -> u64 {
    match gw.invalidate(scope, Moment::WriteAnswered).await {
        Ok(dropped) => dropped,
        // The outage is logged once and counted where the replicas' link is kept.
        Err(e) => {
            tracing::debug!(error = %e, "a write's second invalidation did not reach the other replicas");
            0
        }
    }
}

impl Drop for PendingInvalidation {
    fn drop(&mut self) {
        let Some(scope) = self.scope.take() else {
            return;
        };
        // Outside a runtime (the process is ending) there is nowhere to run it.
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let gw = Arc::clone(&self.gw);
        self.gw.background.spawn_owed(async move {
            invalidate_after(&gw, &scope).await;
        });
    }
}
