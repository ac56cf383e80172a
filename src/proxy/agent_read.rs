//! Step 4 for `GET /{agents2|agents}/{id}`: a fresh hit, a coalesced fill on a miss, a refresh
//! (client `no-cache`), a bypass (client `no-store`, or caching off), and stale-if-error. The read
//! ends in one named [`Read`]; [`Exchange::settle`] is the one place that records it.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderMap, Response, StatusCode};

use super::context::RequestCtx;
use super::fill_fetch::Fetch;
use super::forward;
use super::Exchange;
use crate::audit;
use crate::cache::{
    self, AgentCache, CacheStatus, ClientDirective, FillOutcome, Fresh, Fwd, Lookup, SharedVersion,
    Stored, Ticket,
};
use crate::error::GatewayError;
use crate::http::{self as body, ProxyBody};
use crate::route::{self, AgentPath};
use crate::telemetry;
use crate::upstream::{Buffered, Purpose};

/// Room for every header a cached answer leaves with (content type, cache, request id, quota):
/// growing the map from empty rehashed it twice per hit.
const ANSWER_HEADERS: usize = 16;

/// How an agent read was answered.
enum Read {
    /// From a fresh stored copy.
    Hit(Fresh),
    /// Upstream's whole answer to this request's own fetch, passed on as upstream sent it (a `5xx`
    /// with no expired copy to stand in included).
    Filled { answer: Arc<Buffered>, why: Fwd },
    /// Upstream's whole answer to a fetch another request led and this one waited on: passed on
    /// as a hit would be, so it never gets that request's `Set-Cookie` or quota headers.
    Joined { answer: Arc<Buffered>, why: Fwd },
    /// Upstream's answer, too large to keep: streamed to this request alone.
    TooLarge { resp: Response<ProxyBody>, why: Fwd },
    /// Forwarded without the cache (client `no-store`, or caching off); failures included.
    Bypass(Result<Response<ProxyBody>, GatewayError>),
    /// Upstream failed and an expired copy stood in (stale-if-error, RFC 5861). `failed` is
    /// upstream's failing answer (a `5xx`) if it gave one; `upstream` is whatever it answered.
    Stale {
        stored: Arc<Stored>,
        failed: Option<StatusCode>,
        upstream: Option<StatusCode>,
    },
    /// No answer to pass on: the gateway's own error, and what upstream answered if it did.
    Refused {
        error: GatewayError,
        why: Fwd,
        upstream: Option<StatusCode>,
    },
}

impl Read {
    fn refused(error: GatewayError, why: Fwd, upstream: Option<StatusCode>) -> Self {
        Self::Refused {
            error,
            why,
            upstream,
        }
    }
}

pub(super) async fn read(
    ex: &mut Exchange<'_>,
    ctx: &RequestCtx,
    agent: &AgentPath,
) -> Result<Response<ProxyBody>, GatewayError> {
    let read = outcome(ex, ctx, agent).await;
    ex.settle(read)
}

/// How the read is answered: from the cache, through it, or around it.
async fn outcome(ex: &mut Exchange<'_>, ctx: &RequestCtx, agent: &AgentPath) -> Read {
    let directive = cache::client_directive(&ctx.parts.headers);
    let cache = match ex.gw.enabled_cache(ex.snapshot) {
        Some(cache) if directive != ClientDirective::Bypass => Arc::clone(cache),
        // Caching off (`cache.enabled = false`) or the client's `no-store`: a cacheable read still
        // says how it was served.
        _ => return bypass(ex, ctx).await,
    };
    let (org, family, id) = (&ctx.team.settings.org.name, agent.family, &agent.id);
    let query = route::normalize_query(ctx.parts.uri.query());
    let version = &ex.version;
    let ticket = match directive {
        ClientDirective::Refresh => cache.refresh_ticket(org, family, id, &query, version),
        _ => match cache.lookup(org, family, id, &query, version).await {
            Lookup::Fresh(fresh) => return Read::Hit(fresh),
            Lookup::Miss(ticket) => ticket,
        },
    };
    let why = match (directive, version) {
        // No version could be had: the cache is left out (the fill still coalesces).
        (_, SharedVersion::Unavailable) => Fwd::Bypass,
        (ClientDirective::Refresh, _) => Fwd::Request,
        _ => Fwd::Miss,
    };
    let coalesce = directive == ClientDirective::Normal;
    fill(ex, ctx, &cache, &ticket, why, coalesce).await
}

/// A cacheable read served without the cache: forwarded as is.
async fn bypass(ex: &mut Exchange<'_>, ctx: &RequestCtx) -> Read {
    ex.gw.metrics.cache_bypass.inc();
    ex.audit_cache_as(Fwd::Bypass);
    Read::Bypass(forward::forward(ex, ctx, Bytes::new()).await)
}

/// A miss (or a refresh) filled through the cache, one fetch for concurrent misses if `coalesce`.
async fn fill(
    ex: &mut Exchange<'_>,
    ctx: &RequestCtx,
    cache: &Arc<AgentCache>,
    ticket: &Ticket,
    why: Fwd,
    coalesce: bool,
) -> Read {
    // Before the fill, so a client that leaves while it runs is still audited as a miss.
    ex.audit_cache_as(why);
    let req = match ctx.upstream_request(ex, Bytes::new(), Purpose::CacheFill) {
        Ok(req) => req,
        Err(error) => return Read::refused(error, why, None),
    };
    let started = Instant::now();
    // This request's wait for the answer, its own fetch or another's; the waiters of a fill are
    // linked to the fill they waited on (in `cache::coalesce`).
    let waiting = telemetry::span::step("cache fill");
    let fetch = Fetch::new(ex, ctx, req, cache.max_entry_bytes(), waiting.clone());
    let outcome = telemetry::in_span!(waiting, cache.fill(ticket, coalesce, move || fetch.run()));
    ex.line.fill_done();
    ex.record().upstream_latency_ms = Some(audit::millis(started.elapsed()));

    let (answer, joined) = match outcome {
        FillOutcome::Filled(answer) => (answer, false),
        FillOutcome::Joined(answer) => (answer, true),
        FillOutcome::TooLarge(resp) => return Read::TooLarge { resp, why },
        FillOutcome::Failed(e) => {
            if matches!(
                e,
                GatewayError::OrgQuotaExhausted { .. }
                    | GatewayError::UpstreamQuotaExhausted { .. }
            ) {
                // Refused right before the call: nothing went upstream, so no upstream latency.
                ex.record().upstream_latency_ms = None;
            }
            return stale_or(cache, ticket, Read::refused(e, why, None));
        }
    };
    // Conditional headers are never sent on a fill, so a `304` has no body to pass on and the
    // client, which may not have asked conditionally either, must not see it.
    if answer.status == StatusCode::NOT_MODIFIED {
        let error = GatewayError::UpstreamInvalid("304 Not Modified to an unconditional request");
        let refused = Read::refused(error, why, Some(answer.status));
        return stale_or(cache, ticket, refused);
    }
    let failed = answer.status.is_server_error();
    let read = match joined {
        true => Read::Joined { answer, why },
        false => Read::Filled { answer, why },
    };
    if failed {
        stale_or(cache, ticket, read)
    } else {
        read
    }
}

/// A failed fill's answer, or an expired copy in its place if one may stand in.
fn stale_or(cache: &AgentCache, ticket: &Ticket, failed: Read) -> Read {
    let Some(stored) = cache.stale_for(ticket) else {
        return failed;
    };
    let (failed, upstream) = match failed {
        Read::Filled { answer, .. } | Read::Joined { answer, .. } => {
            (Some(answer.status), Some(answer.status))
        }
        Read::Refused { upstream, .. } => (None, upstream),
        _ => (None, None),
    };
    Read::Stale {
        stored,
        failed,
        upstream,
    }
}

impl Exchange<'_> {
    /// The one place an agent read is recorded: how the cache took part (the answer's `X-Cache`,
    /// `Cache-Status` and `Age`, and the audit field) and upstream's status, then its answer.
    fn settle(&mut self, read: Read) -> Result<Response<ProxyBody>, GatewayError> {
        let forwarded = |why, status, detail| CacheStatus::Forwarded {
            why,
            status,
            detail,
        };
        let (status, upstream, answer) = match read {
            Read::Hit(Fresh {
                stored,
                ttl_left,
                age,
            }) => (
                CacheStatus::Hit { ttl_left, age },
                None,
                Ok(stored_response(&stored)),
            ),
            Read::Filled { answer, why } => (
                forwarded(why, Some(answer.status), None),
                Some(answer.status),
                Ok(as_upstream_sent(&answer)),
            ),
            Read::Joined { answer, why } => (
                forwarded(why, Some(answer.status), None),
                Some(answer.status),
                Ok(as_a_hit(&answer)),
            ),
            Read::TooLarge { resp, why } => (
                forwarded(why, Some(resp.status()), Some("too-large")),
                Some(resp.status()),
                Ok(resp),
            ),
            // `forward` recorded upstream's status.
            Read::Bypass(Ok(resp)) => (
                forwarded(Fwd::Bypass, Some(resp.status()), None),
                None,
                Ok(resp),
            ),
            Read::Bypass(Err(e)) => (forwarded(Fwd::Bypass, None, Some(e.code())), None, Err(e)),
            Read::Stale {
                stored,
                failed,
                upstream,
            } => (
                CacheStatus::Stale {
                    status: failed,
                    age: stored.age(),
                },
                upstream,
                Ok(stored_response(&stored)),
            ),
            Read::Refused {
                error,
                why,
                upstream,
            } => (
                forwarded(why, None, Some(error.code())),
                upstream,
                Err(error),
            ),
        };
        self.cache = Some(status);
        let record = self.record();
        record.cache = Some(status.outcome());
        if let Some(upstream) = upstream {
            record.upstream_status = Some(upstream.as_u16());
        }
        answer
    }

    /// What the audit line says of the cache until the read is settled: a client that leaves
    /// while upstream is asked is still audited as a miss (or a bypass).
    fn audit_cache_as(&mut self, why: Fwd) {
        let status = CacheStatus::Forwarded {
            why,
            status: None,
            detail: None,
        };
        self.record().cache = Some(status.outcome());
    }
}

/// Upstream's whole answer as it sent it, with room for the gateway's own headers.
fn as_upstream_sent(answer: &Buffered) -> Response<ProxyBody> {
    let mut resp = Response::new(body::full(answer.body.clone()));
    *resp.status_mut() = answer.status;
    *resp.headers_mut() = answer.headers.clone();
    // Room for the gateway's own headers at once, rather than growing the copy while adding them.
    resp.headers_mut().reserve(ANSWER_HEADERS);
    resp
}

/// Upstream's whole answer with only what a hit would carry: status, `Content-Type`, body.
fn as_a_hit(answer: &Buffered) -> Response<ProxyBody> {
    answer_with(
        answer.status,
        answer.headers.get(header::CONTENT_TYPE),
        &answer.body,
    )
}

/// A stored answer: its status, `Content-Type` and body; every other header is this request's own.
fn stored_response(stored: &Stored) -> Response<ProxyBody> {
    answer_with(stored.status, stored.content_type.as_ref(), &stored.body)
}

fn answer_with(
    status: StatusCode,
    content_type: Option<&http::HeaderValue>,
    bytes: &Bytes,
) -> Response<ProxyBody> {
    let mut resp = Response::new(body::full(bytes.clone()));
    *resp.status_mut() = status;
    *resp.headers_mut() = HeaderMap::with_capacity(ANSWER_HEADERS);
    if let Some(ct) = content_type {
        resp.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
    }
    resp
}
