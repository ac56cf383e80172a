//! Steps 4-5 for everything but cacheable agent reads: the request forwarded with the org key
//! injected, the answer streamed back, and a write to an agent invalidated around it (when it is
//! sent upstream, and again when its answer or failure is back).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderValue, Method, Response, StatusCode};

use super::Exchange;
use crate::audit;
use crate::auth;
use crate::cache::Scope;
use crate::error::GatewayError;
use crate::http::ProxyBody;
use crate::route::Route;
use crate::state::{Gateway, Moment, TeamState};
use crate::telemetry;
use crate::upstream::{Purpose, UpstreamRequest};

/// Forwards the request and streams upstream's answer back.
pub(super) async fn forward(
    ex: &mut Exchange<'_>,
    team: &TeamState,
    route: &Route,
    parts: &Parts,
    body: Bytes,
    request_id: &HeaderValue,
) -> Result<Response<ProxyBody>, GatewayError> {
    let mut req = upstream_request(ex, team, route, parts, body, request_id, Purpose::Forward)?;
    ex.gw.admission.before_upstream(&team.part).await?;
    let call = req.traced(&telemetry::span::current(), ex.record().trace_id);
    let timeout = ex.snapshot.settings.upstream.timeout;
    let pending = invalidate_before(ex, team, route, &parts.method).await;
    let started = Instant::now();
    let result = telemetry::in_span!(call.clone(), ex.snapshot.upstream.send(&req, timeout));
    upstream_took(ex, started.elapsed());
    match &result {
        Ok(resp) => {
            telemetry::span::upstream_answered(&call, Some(resp.status()), None);
            ex.gw
                .admission
                .upstream_answered(&team.part, resp.status(), resp.headers())
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
        && !parts.headers.contains_key(header::IF_NONE_MATCH)
    {
        return Err(GatewayError::UpstreamInvalid(
            "304 Not Modified to a request without If-None-Match",
        ));
    }
    Ok(crate::upstream::passthrough(resp, timeout))
}

pub(super) fn upstream_request(
    ex: &Exchange<'_>,
    team: &TeamState,
    route: &Route,
    parts: &Parts,
    body: Bytes,
    request_id: &HeaderValue,
    purpose: Purpose,
) -> Result<UpstreamRequest, GatewayError> {
    UpstreamRequest::new(
        &ex.snapshot.settings.upstream.base_url,
        &route.upstream_path,
        parts.uri.query(),
        &parts.method,
        &parts.headers,
        &team.settings.org,
        request_id,
        body,
        purpose,
    )
    .map(|req| req.observed_by(team.counters.upstream.clone()))
}

/// Step 5, first time: for a write to an agent or below it, invalidates now (as it is sent
/// upstream) and returns the second invalidation, due when the answer is back.
async fn invalidate_before(
    ex: &mut Exchange<'_>,
    team: &TeamState,
    route: &Route,
    method: &Method,
) -> Option<PendingInvalidation> {
    let agent = route.agent.as_ref().filter(|_| !auth::is_read(method))?;
    // In cluster mode it is owed since the quota step, which replaced the shared version.
    let pending = ex.write.take().unwrap_or_else(|| {
        PendingInvalidation::new(
            Arc::clone(ex.gw),
            team.settings.org.name.clone(),
            agent.id.clone(),
        )
    });
    // Also while caching is off: entries stored before a reload turned it off outlive it. It
    // cannot fail: in cluster mode this moment reaches only this replica.
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
/// cut it off), or, in cluster mode, fails between its admission and upstream, the invalidation
/// still happens, from a task of its own.
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
            Some(scope) => answered(&self.gw, &scope).await,
            None => 0,
        }
    }
}

/// The second invalidation. If the cluster cannot take it, the write has still happened: its
/// first invalidation (in the quota step) counted it in progress, which keeps every replica from
/// serving or storing the agent until that lapses, so no stale entry can be served.
async fn answered(gw: &Gateway, scope: &Scope) -> u64 {
    match gw.invalidate(scope, Moment::WriteAnswered).await {
        Ok(dropped) => dropped,
        // The link logs the outage once and counts the error; this write's first invalidation and
        // in-progress mark keep every replica from serving or storing the agent meanwhile.
        Err(e) => {
            tracing::debug!(error = %e, "a write's second invalidation did not reach the cluster");
            0
        }
    }
}

impl Drop for PendingInvalidation {
    fn drop(&mut self) {
        let Some(scope) = self.scope.take() else {
            return;
        };
        let gw = Arc::clone(&self.gw);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                answered(&gw, &scope).await;
            });
        }
    }
}
