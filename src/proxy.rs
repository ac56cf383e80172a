//! The request pipeline of the API listener, top to bottom:
//! route → identify → authorize → rate-limit → read body → cache or forward (+ invalidate) → respond,
//! with the audit line queued when the response body ends. Each step is a call into its own module.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::oneshot;

use crate::audit::{self, AuditLog, AuditRecord, AuditedBody};
use crate::auth::{self, KeyDigest};
use crate::body::{self, ProxyBody};
use crate::cache::{self, AgentCache, CacheOutcome, ClientDirective, FillOutcome, Lookup, Stored};
use crate::error::GatewayError;
use crate::header_text::{self, HeaderText};
use crate::metrics::RouteClass;
use crate::ratelimit::{self, Verdict};
use crate::request_id::{self, X_REQUEST_ID};
use crate::route::{self, AgentPath, Route};
use crate::state::{Gateway, Runtime, TeamState};
use crate::upstream::{Buffered, CacheFetch, Purpose, UpstreamRequest};

static X_CACHE: HeaderName = HeaderName::from_static("x-cache");
static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// A refused request's body is still read (and thrown away) up to this much, so the client is not
/// cut off mid-send and can read its answer, as NGINX does; beyond it the connection is simply closed.
const DRAIN_LIMIT: u64 = 16 * 1024 * 1024;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves one request of the API listener. Never fails: every refusal is an answer, every answer
/// carries its audit line.
pub async fn handle(
    gw: Arc<Gateway>,
    req: Request<Incoming>,
    client_ip: IpAddr,
) -> Response<AuditedBody> {
    if auth::is_read(req.method()) {
        return exchange(gw, req, client_ip).await;
    }
    // A write runs to its end in a task of its own, as with NGINX's `proxy_ignore_client_abort on`:
    // once sent, upstream may apply it whether or not the client stays, so the second invalidation
    // must follow upstream's answer, and the audit line must say what upstream did with it.
    let (answer, answered) = oneshot::channel();
    let writes = gw.clone();
    writes.spawn_unattended(async move {
        let resp = exchange(gw, req, client_ip).await;
        if let Err(resp) = answer.send(resp) {
            resp.into_body().client_gone(CLIENT_CLOSED_REQUEST);
        }
    });
    match answered.await {
        Ok(resp) => resp,
        // The task panicked, or was cancelled at shutdown: its `Exchange` wrote the audit line
        // as it was dropped.
        Err(_) => {
            let mut resp = Response::new(body::empty());
            *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            resp.map(AuditedBody::unaudited)
        }
    }
}

async fn exchange(
    gw: Arc<Gateway>,
    req: Request<Incoming>,
    client_ip: IpAddr,
) -> Response<AuditedBody> {
    let rt = gw.runtime();
    let request_id = request_id::from_headers(req.headers());
    let method = req.method().clone();
    let mut record = AuditRecord::new(
        // Always visible ASCII (kept only if sane, else minted as hex), so `to_str` never fails.
        request_id.to_str().unwrap_or_default().to_owned(),
        client_ip,
        &method,
        req.uri().path(),
    );
    record.class = Some(RouteClass::of(&method));
    let mut ex = Exchange {
        gw: &gw,
        rt: &rt,
        record,
        verdict: None,
        get_ok: None,
        answered: false,
        fill: None,
    };
    let resp = match ex.run(req, &request_id).await {
        Ok(resp) => resp,
        Err(e) => {
            ex.record.decision = e.decision();
            e.to_response(&ex.record.request_id)
        }
    };
    ex.finish(resp, request_id, &method)
}

/// One request on its way through the pipeline: what the audit line and the quota headers need.
struct Exchange<'a> {
    gw: &'a Gateway,
    /// An `Arc` so a shared cache fill, which outlives a request whose client leaves, can keep it.
    rt: &'a Arc<Runtime>,
    record: AuditRecord,
    verdict: Option<Verdict>,
    /// The identified team's `GET 200` counter (see `TeamCounters`).
    get_ok: Option<Counter>,
    /// Set once the response (and with it the audit line) has been handed over.
    answered: bool,
    /// While this request's cache fill may be fetching: what upstream answered it. The fill runs on
    /// if the client leaves (see `AgentCache::fill`), so the line of a client that left waits for it.
    fill: Option<oneshot::Receiver<Fetched>>,
}

/// What a cache fill's upstream request came back with.
struct Fetched {
    status: Option<u16>,
    took: Duration,
}

/// HTTP status NGINX logs for a client that closed the connection before it was answered.
const CLIENT_CLOSED_REQUEST: u16 = 499;

impl Drop for Exchange<'_> {
    /// The client went away before an answer existed (hyper drops the request future): the audit
    /// line is still written, with status 499.
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let mut record = Box::new(std::mem::take(&mut self.record));
        record.status = CLIENT_CLOSED_REQUEST;
        record.latency_ms = audit::millis(record.started.elapsed());
        match self.fill.take() {
            // `spawn_unattended` needs the runtime, which a request is always dropped inside.
            Some(fetched) if tokio::runtime::Handle::try_current().is_ok() => {
                let line = LateLine {
                    record: Some(record),
                    audit: self.gw.audit.clone(),
                };
                self.gw.spawn_unattended(line.after(fetched));
            }
            _ => self.gw.audit.submit_detached(record),
        }
    }
}

/// The audit line of a client that left while the cache fill it started was fetching: written
/// with upstream's status once the fetch is back (or at once if this request never fetched), and
/// as it is if shutdown cancels the wait.
struct LateLine {
    record: Option<Box<AuditRecord>>,
    audit: AuditLog,
}

impl LateLine {
    async fn after(mut self, fetched: oneshot::Receiver<Fetched>) {
        if let (Ok(f), Some(record)) = (fetched.await, self.record.as_mut()) {
            record.upstream_status = f.status;
            record.upstream_latency_ms = Some(audit::millis(f.took));
        }
    }
}

impl Drop for LateLine {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            self.audit.submit_detached(record);
        }
    }
}

impl Exchange<'_> {
    async fn run(
        &mut self,
        req: Request<Incoming>,
        request_id: &HeaderValue,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        let (parts, incoming) = req.into_parts();
        let is_read = auth::is_read(&parts.method);
        let (team, route) = match self.admit(&parts, is_read) {
            Ok(admitted) => admitted,
            Err(e) => {
                discard_body(incoming, &parts, &mut self.record.bytes_in).await;
                return Err(e);
            }
        };
        let body = read_body(
            incoming,
            &parts,
            self.rt.settings.server.max_body_bytes,
            &mut self.record.bytes_in,
        )
        .await?;
        if !is_read {
            self.record.changed_fields = audit::changed_fields(&body);
        }

        let cacheable = route
            .agent
            .as_ref()
            .filter(|a| a.is_item && parts.method == Method::GET);
        match (cacheable, self.gw.cache_enabled(self.rt)) {
            (Some(agent), Some(cache)) => {
                self.read_agent(cache, &team, &route, agent, &parts, request_id)
                    .await
            }
            // Caching is off (`cache.enabled = false`): a cacheable read still says how it was served.
            (Some(_), None) => Ok(self.bypass(&team, &route, &parts, request_id).await),
            (None, _) => {
                self.forward(&team, &route, &parts, body, request_id, Purpose::Forward)
                    .await
            }
        }
    }

    /// Steps 1-3, in DESIGN's order of refusals: a malformed path, then `401`, `403`, `429`.
    fn admit(
        &mut self,
        parts: &Parts,
        is_read: bool,
    ) -> Result<(Arc<TeamState>, Route), GatewayError> {
        // The team is looked up first so that every answer, refusals of bad paths included, is
        // audited with the key that was presented and carries the team's quota; but a malformed path
        // is refused before anything else, identified or not.
        let team = self.identify(&parts.headers);
        let route = match route::parse(parts.uri.path()) {
            Ok(route) => route,
            Err(e) => {
                self.verdict = team.map(|t| t.limiter.peek(!is_read));
                return Err(e);
            }
        };
        self.record.agent_id = route.agent.as_ref().map(|a| a.id.clone());
        let agent_item = route.agent.as_ref().is_some_and(|a| a.is_item);
        self.record.class = Some(RouteClass::of_route(&parts.method, agent_item));

        let team = team.ok_or(GatewayError::Unauthenticated)?;
        if !auth::allows(team.team.access, &parts.method) {
            self.verdict = Some(team.limiter.peek(!is_read));
            return Err(GatewayError::ReadOnly);
        }
        self.rate_limit(&team, is_read)?;
        Ok((team, route))
    }

    /// Step 1: the team behind the presented key, by digest; `None` is a `401` once the path passed.
    fn identify(&mut self, headers: &HeaderMap) -> Option<Arc<TeamState>> {
        let digest = auth::presented_key(headers).map(KeyDigest::of);
        self.record.key_id = digest.map(KeyDigest::key_id);
        let team = self.rt.team(&digest?)?.clone();
        self.record.team = Some(team.team.name.clone());
        self.record.org = Some(team.team.org.name.clone());
        self.get_ok = Some(team.counters.get_ok.clone());
        Some(team)
    }

    /// Step 3: after authentication and before the cache, so cache hits spend quota too: a hit still
    /// costs the gateway work, and a team's quota should not depend on what other teams warmed.
    fn rate_limit(&mut self, team: &TeamState, is_read: bool) -> Result<(), GatewayError> {
        let verdict = team.limiter.check(!is_read);
        let retry_after = verdict.retry_after;
        self.verdict = Some(verdict);
        match retry_after {
            Some(retry_after) => {
                team.counters.limited.inc();
                Err(GatewayError::RateLimited { retry_after })
            }
            None => {
                team.counters.allowed.inc();
                Ok(())
            }
        }
    }

    /// Steps 4-5 for everything but cacheable agent reads: forward, streaming the answer back, and
    /// invalidate the agent around a write.
    async fn forward(
        &mut self,
        team: &TeamState,
        route: &Route,
        parts: &Parts,
        body: Bytes,
        request_id: &HeaderValue,
        purpose: Purpose,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        let req = self.upstream_request(team, route, parts, body, request_id, purpose)?;
        let timeout = self.rt.settings.upstream.timeout;
        let pending = self.invalidation_for(team, route, &parts.method).await;
        let started = Instant::now();
        let result = self.rt.upstream.send(&req, timeout).await;
        self.upstream_took(started.elapsed());
        if let Some(pending) = pending {
            // Again once the answer (or failure) is back: a read that filled in between is dropped too.
            self.record.invalidated += pending.complete().await;
        }
        let resp = result?;
        self.record.upstream_status = Some(resp.status().as_u16());
        // A `304` has no body to pass on, and a client that sent no `If-None-Match` has nothing to
        // reuse it with (`If-Modified-Since` alone is not sent upstream, see `upstream_headers`).
        if resp.status() == StatusCode::NOT_MODIFIED
            && !parts.headers.contains_key(header::IF_NONE_MATCH)
        {
            return Err(GatewayError::UpstreamInvalid(
                "304 Not Modified to a request without If-None-Match",
            ));
        }
        Ok(crate::upstream::passthrough(resp, timeout))
    }

    fn upstream_request(
        &self,
        team: &TeamState,
        route: &Route,
        parts: &Parts,
        body: Bytes,
        request_id: &HeaderValue,
        purpose: Purpose,
    ) -> Result<UpstreamRequest, GatewayError> {
        UpstreamRequest::new(
            &self.rt.settings.upstream.base_url,
            &route.upstream_path,
            parts.uri.query(),
            &parts.method,
            &parts.headers,
            &team.team.org,
            request_id,
            body,
            purpose,
        )
        .map(|req| req.observed_by(team.counters.upstream.clone()))
    }

    /// For a write to an agent or below it: invalidates now (as it is sent upstream) and returns the
    /// second invalidation, due when the answer is back.
    async fn invalidation_for(
        &mut self,
        team: &TeamState,
        route: &Route,
        method: &Method,
    ) -> Option<PendingInvalidation> {
        let agent = route.agent.as_ref().filter(|_| !auth::is_read(method))?;
        // Also while caching is off: entries stored before a reload turned it off outlive it.
        let cache = &self.gw.cache;
        self.record.invalidated += cache.invalidate(&team.team.org.name, &agent.id).await;
        Some(PendingInvalidation {
            cache: cache.clone(),
            org: team.team.org.name.clone(),
            agent: agent.id.clone(),
            armed: true,
        })
    }

    fn upstream_took(&mut self, took: Duration) {
        self.record.upstream_latency_ms = Some(audit::millis(took));
        self.gw
            .metrics
            .upstream_duration
            .observe(took.as_secs_f64());
    }

    /// Step 4 for `GET /{agents2|agents}/{id}`: hit, coalesced miss, refresh or bypass.
    async fn read_agent(
        &mut self,
        cache: &Arc<AgentCache>,
        team: &TeamState,
        route: &Route,
        agent: &AgentPath,
        parts: &Parts,
        request_id: &HeaderValue,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        let org = &team.team.org.name;
        let query = route::normalize_query(parts.uri.query());
        let directive = cache::client_directive(&parts.headers);
        let ticket = match directive {
            ClientDirective::Bypass => {
                return Ok(self.bypass(team, route, parts, request_id).await);
            }
            ClientDirective::Refresh => cache.refresh_ticket(org, agent.family, &agent.id, &query),
            ClientDirective::Normal => {
                match cache.lookup(org, agent.family, &agent.id, &query).await {
                    Lookup::Fresh {
                        stored,
                        ttl_left,
                        age,
                    } => {
                        self.record.cache = Some(CacheOutcome::Hit);
                        let mut resp = stored_response(&stored);
                        mark_hit(&mut resp, ttl_left, age);
                        return Ok(resp);
                    }
                    Lookup::Miss(ticket) => ticket,
                }
            }
        };
        // Before the fill, so a client that leaves while it runs is still audited as a miss.
        self.record.cache = Some(CacheOutcome::Miss);

        let req = self.upstream_request(
            team,
            route,
            parts,
            Bytes::new(),
            request_id,
            Purpose::CacheFill,
        )?;
        let rt = Arc::clone(self.rt);
        let metrics = Arc::clone(&self.gw.metrics);
        let timeout = rt.settings.upstream.timeout;
        let max_entry = cache.max_entry_bytes();
        let started = Instant::now();
        // The fetch runs once however many requests share it, so it alone feeds the histogram;
        // each request's audit line has the time it waited for the answer.
        let (fetched_tx, fetched_rx) = oneshot::channel();
        let fetch = move || async move {
            let sent = Instant::now();
            let fetched = rt.upstream.fetch_buffered(&req, timeout, max_entry).await;
            let took = sent.elapsed();
            metrics.upstream_duration.observe(took.as_secs_f64());
            let status = match &fetched {
                Ok(CacheFetch::Buffered(answer)) => Some(answer.status.as_u16()),
                Ok(CacheFetch::TooLarge(resp)) => Some(resp.status().as_u16()),
                Err(_) => None,
            };
            // Only read if the client left meanwhile.
            let _ = fetched_tx.send(Fetched { status, took });
            fetched
        };
        self.fill = Some(fetched_rx);
        let outcome = cache
            .fill(&ticket, directive == ClientDirective::Normal, fetch)
            .await;
        self.fill = None;
        self.record.upstream_latency_ms = Some(audit::millis(started.elapsed()));
        let fwd = if directive == ClientDirective::Refresh {
            "request"
        } else {
            "miss"
        };

        let failure = match outcome {
            // Conditional headers are never sent on a fill, so a `304` has no body to pass on and
            // the client, which may not have asked conditionally either, must not see it.
            FillOutcome::Answer(answer) if answer.status == StatusCode::NOT_MODIFIED => {
                self.record.upstream_status = Some(answer.status.as_u16());
                Ok(GatewayError::UpstreamInvalid(
                    "304 Not Modified to an unconditional request",
                ))
            }
            FillOutcome::Answer(answer) if !answer.status.is_server_error() => {
                return Ok(self.miss_response(&answer, fwd));
            }
            FillOutcome::Answer(answer) => Err(answer),
            FillOutcome::Streaming(mut resp) => {
                self.record.cache = Some(CacheOutcome::Miss);
                self.record.upstream_status = Some(resp.status().as_u16());
                let status = format!(
                    "dialnexa-gateway; fwd={fwd}; fwd-status={}; detail=too-large",
                    resp.status().as_u16()
                );
                mark(&mut resp, CacheOutcome::Miss, status, None);
                return Ok(resp);
            }
            FillOutcome::Failed(e) => Ok(e),
        };
        // stale-if-error (RFC 5861): an upstream failure is answered from an expired copy if allowed.
        if let Some(stale) = cache.stale_for(&ticket) {
            self.record.cache = Some(CacheOutcome::Stale);
            let mut resp = stored_response(&stale);
            let fwd_status = match &failure {
                Err(answer) => {
                    self.record.upstream_status = Some(answer.status.as_u16());
                    format!("; fwd-status={}", answer.status.as_u16())
                }
                Ok(_) => String::new(),
            };
            let status = format!("dialnexa-gateway; fwd=stale{fwd_status}; detail=stale-if-error");
            mark(&mut resp, CacheOutcome::Stale, status, Some(stale.age()));
            return Ok(resp);
        }
        match failure {
            Err(answer) => Ok(self.miss_response(&answer, fwd)),
            Ok(e) => Ok(self.error_response(&e, CacheOutcome::Miss, fwd)),
        }
    }

    /// A cacheable read served without the cache (client `no-store`, or caching turned off): forwarded
    /// as is and marked `BYPASS`, failures included.
    async fn bypass(
        &mut self,
        team: &TeamState,
        route: &Route,
        parts: &Parts,
        request_id: &HeaderValue,
    ) -> Response<ProxyBody> {
        self.record.cache = Some(CacheOutcome::Bypass);
        self.gw.metrics.cache_bypass.inc();
        let forwarded = self
            .forward(
                team,
                route,
                parts,
                Bytes::new(),
                request_id,
                Purpose::Forward,
            )
            .await;
        match forwarded {
            Ok(mut resp) => {
                mark(
                    &mut resp,
                    CacheOutcome::Bypass,
                    "dialnexa-gateway; fwd=bypass".into(),
                    None,
                );
                resp
            }
            Err(e) => self.error_response(&e, CacheOutcome::Bypass, "bypass"),
        }
    }

    /// The gateway's own error (`502`, `504`) for a cacheable read. Built here rather than in
    /// `handle` so it still carries `X-Cache` and `Cache-Status`, as every agent read answer does.
    fn error_response(
        &mut self,
        e: &GatewayError,
        outcome: CacheOutcome,
        fwd: &str,
    ) -> Response<ProxyBody> {
        self.record.cache = Some(outcome);
        self.record.decision = e.decision();
        let mut resp = e.to_response(&self.record.request_id);
        let status = format!("dialnexa-gateway; fwd={fwd}; detail={}", e.code());
        mark(&mut resp, outcome, status, None);
        resp
    }

    fn miss_response(&mut self, answer: &Buffered, fwd: &str) -> Response<ProxyBody> {
        self.record.cache = Some(CacheOutcome::Miss);
        self.record.upstream_status = Some(answer.status.as_u16());
        let mut resp = Response::new(body::full(answer.body.clone()));
        *resp.status_mut() = answer.status;
        *resp.headers_mut() = answer.headers.clone();
        // Room for the gateway's own headers at once, rather than growing the copy while adding them.
        resp.headers_mut().reserve(ANSWER_HEADERS);
        // Built without `format!`: a miss is the second most frequent answer.
        let mut status = HeaderText::with_capacity(56);
        status
            .push("dialnexa-gateway; fwd=")
            .push(fwd)
            .push("; fwd-status=")
            .push_u64(answer.status.as_u16().into());
        mark_with(&mut resp, CacheOutcome::Miss, status.finish(), None);
        resp
    }

    /// Adds the per-request headers, records the request, and attaches the audit line to the body.
    fn finish(
        mut self,
        mut resp: Response<ProxyBody>,
        request_id: HeaderValue,
        method: &Method,
    ) -> Response<AuditedBody> {
        body::drop_for_head(method, &mut resp);
        let headers = resp.headers_mut();
        headers.insert(X_REQUEST_ID.clone(), request_id);
        if let Some(verdict) = &self.verdict {
            ratelimit::apply_headers(verdict, headers);
        }
        let status = resp.status().as_u16();
        self.record.status = status;
        match &self.get_ok {
            Some(get_ok) if *method == Method::GET && status == 200 => {
                get_ok.inc();
            }
            _ => self
                .gw
                .metrics
                .request(self.record.team.as_ref(), method, status),
        };
        let log = self.gw.audit.clone();
        self.answered = true;
        let record = std::mem::take(&mut self.record);
        resp.map(|b| AuditedBody::new(b, record, log))
    }
}

/// The second invalidation of a write. If the client goes away before upstream answers, the
/// request future is dropped; the invalidation still happens, from a task of its own.
struct PendingInvalidation {
    cache: Arc<AgentCache>,
    org: Arc<str>,
    agent: String,
    armed: bool,
}

impl PendingInvalidation {
    async fn complete(mut self) -> u64 {
        self.armed = false;
        self.cache.invalidate(&self.org, &self.agent).await
    }
}

impl Drop for PendingInvalidation {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (cache, org, agent) = (
            self.cache.clone(),
            self.org.clone(),
            std::mem::take(&mut self.agent),
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                cache.invalidate(&org, &agent).await;
            });
        }
    }
}

/// Room for every header a cached answer leaves with (content type, cache, request id, quota):
/// growing the map from empty rehashed it twice per hit.
const ANSWER_HEADERS: usize = 16;

fn stored_response(stored: &Stored) -> Response<ProxyBody> {
    let mut resp = Response::new(body::full(stored.body.clone()));
    *resp.status_mut() = stored.status;
    *resp.headers_mut() = HeaderMap::with_capacity(ANSWER_HEADERS);
    if let Some(ct) = &stored.content_type {
        resp.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
    }
    resp
}

/// `X-Cache`, RFC 9211 `Cache-Status`, and `Age` for answers that came from the cache.
fn mark(
    resp: &mut Response<ProxyBody>,
    outcome: CacheOutcome,
    cache_status: String,
    age: Option<Duration>,
) {
    mark_with(resp, outcome, HeaderValue::try_from(cache_status).ok(), age);
}

/// [`mark`] with the `Cache-Status` value already built.
fn mark_with(
    resp: &mut Response<ProxyBody>,
    outcome: CacheOutcome,
    cache_status: Option<HeaderValue>,
    age: Option<Duration>,
) {
    let headers = resp.headers_mut();
    headers.insert(X_CACHE.clone(), outcome.header_value());
    if let Some(v) = cache_status {
        headers.insert(CACHE_STATUS.clone(), v);
    }
    match age {
        Some(age) => {
            headers.insert(header::AGE, header_text::number(age.as_secs()));
        }
        None => {
            headers.remove(header::AGE);
        }
    }
}

/// [`mark`] for a fresh hit, `Cache-Status: dialnexa-gateway; hit; ttl=<s>`, built without `format!`
/// (the most frequent answer of all).
fn mark_hit(resp: &mut Response<ProxyBody>, ttl_left: Duration, age: Duration) {
    let headers = resp.headers_mut();
    headers.insert(X_CACHE.clone(), CacheOutcome::Hit.header_value());
    let mut status = HeaderText::with_capacity(40);
    status
        .push("dialnexa-gateway; hit; ttl=")
        .push_u64(ttl_left.as_secs());
    if let Some(v) = status.finish() {
        headers.insert(CACHE_STATUS.clone(), v);
    }
    headers.insert(header::AGE, header_text::number(age.as_secs()));
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Reads the request body whole, refusing it past `limit` whether it declared its length or not.
/// Bodies are small JSON documents bounded by `limit`; holding them lets the gateway refuse an
/// oversized one before anything reaches upstream and name the changed fields in the audit line.
/// `seen` counts the bytes received, refused ones included.
async fn read_body(
    mut incoming: Incoming,
    parts: &Parts,
    limit: u64,
    seen: &mut u64,
) -> Result<Bytes, GatewayError> {
    if http_body::Body::is_end_stream(&incoming) {
        // No body (nearly every read): no buffer, no clock read.
        return Ok(Bytes::new());
    }
    let declared = content_length(&parts.headers);
    if declared.is_some_and(|len| len > limit) {
        discard_body(incoming, parts, seen).await;
        return Err(GatewayError::BodyTooLarge { limit });
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
    while let Some(frame) = incoming.frame().await {
        let frame = frame.map_err(|_| GatewayError::BodyUnreadable)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        *seen += data.len() as u64;
        if *seen > limit {
            discard_body(incoming, parts, seen).await;
            return Err(GatewayError::BodyTooLarge { limit });
        }
        buf.extend_from_slice(&data);
    }
    Ok(buf.freeze())
}

/// Reads and throws away the rest of a body the gateway refused (`400`, `401`, `403`, `429`,
/// `413`), so the client can finish sending and read its answer. On HTTP/1 a connection closed
/// with request bytes unread is reset by the kernel, and the client usually loses the answer with
/// it; on HTTP/2 the stream is reset instead, which clients such as curl also report as a failure.
/// NGINX discards such bodies too. Bounded by `DRAIN_LIMIT` bytes in all and `DRAIN_TIMEOUT`; past
/// either the connection or stream is simply closed. A client waiting on `Expect: 100-continue`
/// has sent nothing yet and is told by the answer itself not to.
async fn discard_body(mut incoming: Incoming, parts: &Parts, seen: &mut u64) {
    let waits_to_send = *seen == 0
        && parts
            .headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if http_body::Body::is_end_stream(&incoming)
        || waits_to_send
        || content_length(&parts.headers).is_some_and(|len| len > DRAIN_LIMIT)
    {
        return;
    }
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    while *seen <= DRAIN_LIMIT {
        match tokio::time::timeout_at(deadline, incoming.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    *seen += data.len() as u64;
                }
            }
            // Ended, broke off, or too slow: nothing more to wait for.
            _ => return,
        }
    }
}
