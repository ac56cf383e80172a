//! Step 4 for `GET /{agents2|agents}/{id}`: a fresh hit, a coalesced fill on a miss, a refresh
//! (client `no-cache`), a bypass (client `no-store`, or caching off), and stale-if-error.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};

use super::forward;
use super::Exchange;
use crate::audit::{self, UpstreamReport};
use crate::cache::{
    self, CacheStatus, ClientDirective, FillOutcome, Fwd, Lookup, SharedVersion, Stored,
};
use crate::error::GatewayError;
use crate::http::{self as body, ProxyBody};
use crate::route::{self, AgentPath, Route};
use crate::state::TeamState;
use crate::telemetry;
use crate::upstream::{Buffered, CacheFetch, Purpose};

/// Room for every header a cached answer leaves with (content type, cache, request id, quota):
/// growing the map from empty rehashed it twice per hit.
const ANSWER_HEADERS: usize = 16;

pub(super) async fn read(
    ex: &mut Exchange<'_>,
    team: &Arc<TeamState>,
    route: &Route,
    agent: &AgentPath,
    parts: &Parts,
    request_id: &HeaderValue,
) -> Result<Response<ProxyBody>, GatewayError> {
    let Some(cache) = ex.gw.cache_enabled(ex.snapshot).cloned() else {
        // Caching is off (`cache.enabled = false`): a cacheable read still says how it was served.
        return bypass(ex, team, route, parts, request_id).await;
    };
    let org = &team.settings.org.name;
    let query = route::normalize_query(parts.uri.query());
    let directive = cache::client_directive(&parts.headers);
    let shared = &ex.shared;
    let ticket = match directive {
        ClientDirective::Bypass => return bypass(ex, team, route, parts, request_id).await,
        ClientDirective::Refresh => {
            cache.refresh_ticket(org, agent.family, &agent.id, &query, shared)
        }
        ClientDirective::Normal => match cache
            .lookup(org, agent.family, &agent.id, &query, shared)
            .await
        {
            Lookup::Fresh {
                stored,
                ttl_left,
                age,
            } => {
                ex.cache_status(CacheStatus::Hit { ttl_left, age });
                return Ok(stored_response(&stored));
            }
            Lookup::Miss(ticket) => ticket,
        },
    };
    let why = match (directive, &ex.shared) {
        // Cluster mode without Redis: the cache is left out (the fill still coalesces).
        (_, SharedVersion::Unavailable) => Fwd::Bypass,
        (ClientDirective::Refresh, _) => Fwd::Request,
        _ => Fwd::Miss,
    };
    // Before the fill, so a client that leaves while it runs is still audited as a miss.
    ex.cache_status(CacheStatus::Forwarded {
        why,
        status: None,
        detail: None,
    });

    let mut req = forward::upstream_request(
        ex,
        team,
        route,
        parts,
        Bytes::new(),
        request_id,
        Purpose::CacheFill,
    )?;
    let snapshot = Arc::clone(ex.snapshot);
    let gw = Arc::clone(ex.gw);
    let asking = Arc::clone(team);
    let timeout = snapshot.settings.upstream.timeout;
    let max_entry = cache.max_entry_bytes();
    let started = Instant::now();
    // This request's wait for the answer, its own fetch or another's; a shared fill's waiters are
    // linked to the fill they waited on (in `cache::coalesce`).
    let waiting = telemetry::span::step("cache fill");
    let parent = waiting.clone();
    let trace_id = ex.record().trace_id;
    // The fetch runs once however many requests share it, so it alone feeds the histogram; each
    // request's audit line has the time it waited for the answer. Should this client leave, its
    // pending line waits for the report.
    let report = ex.line.awaiting_fill();
    let fetch = move || async move {
        // Once per fill, by its leader: the requests waiting on it spend nothing.
        // Within the fill's span: the fetch may run in a task of its own, where no span is current.
        telemetry::in_span!(parent.clone(), gw.admission.before_upstream(&asking.part))?;
        // Opened here, by the one request that fetches, in whichever task runs the fetch.
        let call = req.traced(&parent, trace_id);
        let sent = Instant::now();
        let fetched = telemetry::in_span!(
            call.clone(),
            snapshot.upstream.fetch_buffered(&req, timeout, max_entry)
        );
        let took = sent.elapsed();
        gw.metrics.upstream_duration.observe(took.as_secs_f64());
        let answer = match &fetched {
            Ok(CacheFetch::Buffered(answer)) => Some((answer.status, &answer.headers)),
            Ok(CacheFetch::TooLarge(resp)) => Some((resp.status(), resp.headers())),
            Err(_) => None,
        };
        if let Some((status, headers)) = answer {
            gw.admission
                .upstream_answered(&asking.part, status, headers)
                .await;
        }
        let status = answer.map(|(status, _)| status);
        let error = fetched.as_ref().err().map(GatewayError::code);
        telemetry::span::upstream_answered(&call, status, error);
        let status = status.map(|s| s.as_u16());
        let _ = report.send(UpstreamReport { status, took });
        fetched
    };
    let outcome = telemetry::in_span!(
        waiting,
        cache.fill(&ticket, directive == ClientDirective::Normal, fetch)
    );
    ex.line.fill_done();
    ex.record().upstream_latency_ms = Some(audit::millis(started.elapsed()));

    // A request that waited on another's fetch is served what a hit would be.
    let joined = matches!(outcome, FillOutcome::Joined(_));
    let failure = match outcome {
        // Conditional headers are never sent on a fill, so a `304` has no body to pass on and the
        // client, which may not have asked conditionally either, must not see it.
        FillOutcome::Answer(answer) | FillOutcome::Joined(answer)
            if answer.status == StatusCode::NOT_MODIFIED =>
        {
            ex.record().upstream_status = Some(answer.status.as_u16());
            Failure::Gateway(GatewayError::UpstreamInvalid(
                "304 Not Modified to an unconditional request",
            ))
        }
        FillOutcome::Answer(answer) | FillOutcome::Joined(answer)
            if !answer.status.is_server_error() =>
        {
            return Ok(answered(ex, &answer, why, joined));
        }
        FillOutcome::Answer(answer) | FillOutcome::Joined(answer) => Failure::Upstream(answer),
        FillOutcome::Streaming(resp) => {
            let status = resp.status();
            ex.record().upstream_status = Some(status.as_u16());
            ex.cache_status(CacheStatus::Forwarded {
                why,
                status: Some(status),
                detail: Some("too-large"),
            });
            return Ok(resp);
        }
        FillOutcome::Failed(e) => Failure::Gateway(e),
    };

    // stale-if-error (RFC 5861): an upstream failure is answered from an expired copy if allowed.
    if let Some(stale) = cache.stale_for(&ticket) {
        let status = match &failure {
            Failure::Upstream(answer) => {
                ex.record().upstream_status = Some(answer.status.as_u16());
                Some(answer.status)
            }
            Failure::Gateway(_) => None,
        };
        ex.cache_status(CacheStatus::Stale {
            status,
            age: stale.age(),
        });
        return Ok(stored_response(&stale));
    }
    match failure {
        Failure::Upstream(answer) => Ok(answered(ex, &answer, why, joined)),
        Failure::Gateway(e) => Err(failed(ex, e, why)),
    }
}

/// How a fill failed: upstream answered `5xx`, or the gateway could not get an answer it may pass on.
enum Failure {
    Upstream(Arc<Buffered>),
    Gateway(GatewayError),
}

/// A cacheable read served without the cache: forwarded as is and marked `BYPASS`, failures included.
async fn bypass(
    ex: &mut Exchange<'_>,
    team: &TeamState,
    route: &Route,
    parts: &Parts,
    request_id: &HeaderValue,
) -> Result<Response<ProxyBody>, GatewayError> {
    ex.gw.metrics.cache_bypass.inc();
    ex.cache_status(CacheStatus::Forwarded {
        why: Fwd::Bypass,
        status: None,
        detail: None,
    });
    match forward::forward(ex, team, route, parts, Bytes::new(), request_id).await {
        Ok(resp) => {
            ex.cache_status(CacheStatus::Forwarded {
                why: Fwd::Bypass,
                status: Some(resp.status()),
                detail: None,
            });
            Ok(resp)
        }
        Err(e) => Err(failed(ex, e, Fwd::Bypass)),
    }
}

/// The gateway's own error (`502`, `504`) for a cacheable read: it still says how the cache took part.
fn failed(ex: &mut Exchange<'_>, e: GatewayError, why: Fwd) -> GatewayError {
    ex.cache_status(CacheStatus::Forwarded {
        why,
        status: None,
        detail: Some(e.code()),
    });
    e
}

/// Upstream's whole answer to a fill: as upstream sent it to the request that fetched it, and only
/// what a hit would carry to one that `joined` another's fetch (so it never gets that request's
/// upstream `Set-Cookie` or quota headers).
fn answered(
    ex: &mut Exchange<'_>,
    answer: &Buffered,
    why: Fwd,
    joined: bool,
) -> Response<ProxyBody> {
    ex.record().upstream_status = Some(answer.status.as_u16());
    ex.cache_status(CacheStatus::Forwarded {
        why,
        status: Some(answer.status),
        detail: None,
    });
    let mut resp = Response::new(body::full(answer.body.clone()));
    *resp.status_mut() = answer.status;
    if joined {
        *resp.headers_mut() = HeaderMap::with_capacity(ANSWER_HEADERS);
        if let Some(ct) = answer.headers.get(header::CONTENT_TYPE) {
            resp.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
        }
    } else {
        *resp.headers_mut() = answer.headers.clone();
        // Room for the gateway's own headers at once, rather than growing the copy while adding them.
        resp.headers_mut().reserve(ANSWER_HEADERS);
    }
    resp
}

/// A stored answer: its status, `Content-Type` and body; every other header is this request's own.
fn stored_response(stored: &Stored) -> Response<ProxyBody> {
    let mut resp = Response::new(body::full(stored.body.clone()));
    *resp.status_mut() = stored.status;
    *resp.headers_mut() = HeaderMap::with_capacity(ANSWER_HEADERS);
    if let Some(ct) = &stored.content_type {
        resp.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
    }
    resp
}
