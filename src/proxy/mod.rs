//! THE PIPELINE of the API listener; read this file first. One request, top to bottom:
//!
//! route → identify → authorize → read body → rate-limit → agent read (cache) or forward
//! (+ invalidate around a write) → respond, with the audit line owned by a [`PendingLine`] from the
//! first step to the last. Each step is a call into its own room; the files beside this one are the
//! pipeline's own steps: `agent_read` (step 4), `forward` (steps 4-5), [`request_body`] and
//! `respond` (per-request headers, metrics, the hand-off to audit), and `context`, what an admitted
//! request carries through them.

use std::net::IpAddr;
use std::sync::Arc;

use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::oneshot;

use crate::admission::{Answer, Ask, LimitedBy, Verdict};
use crate::audit::{self, AuditRecord, AuditedBody, PendingLine};
use crate::auth::{self, KeyDigest};
use crate::cache::{fold_case, CacheStatus, SharedVersion};
use crate::error::GatewayError;
use crate::http::ProxyBody;
use crate::metrics::RouteClass;
use crate::request_id;
use crate::route::{self, Route};
use crate::state::{Gateway, Snapshot, TeamState};
use crate::telemetry::{self, RequestTrace};

mod agent_read;
mod context;
mod fill_fetch;
mod forward;
pub mod request_body;
mod respond;

use context::RequestCtx;
use request_body::BodyLimits;

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
    writes.background.spawn_unattended(async move {
        let resp = exchange(gw, req, client_ip).await;
        if let Err(resp) = answer.send(resp) {
            resp.into_body().abandon();
        }
    });
    match answered.await {
        Ok(resp) => resp,
        // The task panicked, or was cancelled at shutdown: its pending line was written as it
        // was dropped.
        Err(_) => {
            let mut resp = Response::new(crate::http::empty());
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
    let snapshot = gw.snapshot();
    let request_id = request_id::from_headers(req.headers());
    let method = req.method().clone();
    let mut record = AuditRecord::new(
        request_id::as_text(&request_id).to_owned(),
        client_ip,
        &method,
        req.uri().path(),
    );
    record.class = Some(RouteClass::of(&method));
    let trace = RequestTrace::start(&method, req.uri().path(), req.headers(), client_ip);
    if let Some(trace_id) = trace.trace_id {
        record.trace_id = trace_id;
    }
    let mut ex = Exchange {
        gw: &gw,
        snapshot: &snapshot,
        request_id,
        line: PendingLine::new(record, gw.audit.clone()),
        verdict: None,
        get_ok: None,
        cache: None,
        version: SharedVersion::NotShared,
        write: None,
    };
    let answer = match telemetry::in_span!(trace.span().clone(), ex.run(req)) {
        Ok(resp) => resp,
        Err(e) => {
            ex.record().decision = e.decision();
            match &e {
                // The org's headers describe the refusal, in place of the team's.
                GatewayError::OrgQuotaExhausted { .. } => {
                    ex.record().limited_by = Some(LimitedBy::Org);
                    ex.verdict = None;
                }
                GatewayError::UpstreamQuotaExhausted { .. } => {
                    ex.record().limited_by = Some(LimitedBy::Upstream);
                }
                _ => {}
            }
            e.to_response(&ex.record().request_id)
        }
    };
    ex.respond(answer, &method, &trace)
}

/// One request on its way through the pipeline: its pending audit line and what the answer's
/// per-request headers need.
struct Exchange<'a> {
    gw: &'a Arc<Gateway>,
    /// An `Arc` so a cache fill others wait on, which outlives a request whose client leaves, can
    /// keep it.
    snapshot: &'a Arc<Snapshot>,
    /// The client's `X-Request-Id` if sane, else one minted: sent upstream and in the answer.
    request_id: HeaderValue,
    line: PendingLine,
    verdict: Option<Verdict>,
    /// The identified team's `GET 200` counter (see `TeamCounters`).
    get_ok: Option<Counter>,
    /// How the cache took part, for agent reads; rendered into the answer by `respond`.
    cache: Option<CacheStatus>,
    /// The version of the agent this request reads or writes, as admission handed it: what the
    /// cache must match.
    version: SharedVersion,
    /// An agent write's second invalidation, owed since its first (when admission already made
    /// that one, for every replica).
    write: Option<forward::PendingInvalidation>,
}

impl Exchange<'_> {
    async fn run(&mut self, req: Request<Incoming>) -> Result<Response<ProxyBody>, GatewayError> {
        let (parts, incoming) = req.into_parts();
        let is_read = auth::is_read(&parts.method);

        // Steps 0-2: route, identify, authorize. A refused request's body is still read and
        // thrown away, so its client gets the answer instead of a reset.
        let (team, route) = match self.route_and_authorize(&parts, is_read).await {
            Ok(authorized) => authorized,
            Err(e) => {
                request_body::discard(incoming, &parts, &mut self.record().bytes_in).await;
                return Err(e);
            }
        };

        // The body, whole (413 past `max_body_bytes`, 408 when it stalls), before anything is sent.
        let limits = BodyLimits {
            max_bytes: self.snapshot.settings.server.max_body_bytes,
            idle: self.snapshot.settings.server.limits.body_timeout,
        };
        let body = request_body::read(incoming, &parts, limits, &mut self.record().bytes_in).await;
        let ctx = RequestCtx { team, route, parts };

        // Step 3, once the body is in: admission may replace the version of the agent a write
        // names (for every replica), which must happen only for a write that will be forwarded. A
        // quota refusal still comes before a 413 or 408, as DESIGN orders them, and those spend
        // quota as before.
        telemetry::in_span!(
            telemetry::span::step("admission"),
            self.ask_admission(&ctx, body.is_ok())
        )?;
        let body = body?;
        if !is_read {
            self.record().changed_fields = audit::changed_fields(&body);
        }

        // Step 4: a cacheable agent read goes through the cache; everything else is forwarded,
        // a write to an agent with step 5's invalidation before and after.
        match ctx.agent_read() {
            Some(agent) => agent_read::read(self, &ctx, agent).await,
            None => forward::forward(self, &ctx, body).await,
        }
    }

    /// Steps 0-2, in DESIGN's order of refusals: a malformed path or method, then `401`, `403`.
    async fn route_and_authorize(
        &mut self,
        parts: &Parts,
        is_read: bool,
    ) -> Result<(Arc<TeamState>, Route), GatewayError> {
        // The team is looked up first so that every answer, refusals of bad paths included, is
        // audited with the key that was presented and carries the team's quota; but a malformed
        // request is refused before anything else, identified or not.
        let team = self.identify(&parts.headers);
        // Admission cannot decide at all (its shared store is gone and the operator chose to
        // refuse): nothing is served, but the line still names who asked.
        if self.gw.admission.refusing() {
            return Err(GatewayError::ClusterUnavailable);
        }
        let route = match well_formed(parts) {
            Ok(route) => route,
            Err(e) => {
                if let Ok(team) = &team {
                    self.peek_quota(team, is_read).await;
                }
                return Err(e);
            }
        };
        self.record().agent_id = route.agent.as_ref().map(|a| a.id.clone());
        let agent_item = route.agent.as_ref().is_some_and(|a| a.is_item);
        self.record().class = Some(RouteClass::of_route(&parts.method, agent_item));

        let team = team?;
        if !auth::allows(team.settings.access, &parts.method) {
            self.peek_quota(&team, is_read).await;
            return Err(GatewayError::ReadOnly);
        }
        Ok((team, route))
    }

    /// Step 1: the team behind the presented key, by digest, if the key has not ended; an `Err` is
    /// a `401` once the path passed.
    fn identify(&mut self, headers: &HeaderMap) -> Result<Arc<TeamState>, GatewayError> {
        let digest = auth::presented_key(headers).map(KeyDigest::of);
        self.record().key_id = digest.map(KeyDigest::key_id);
        let snapshot = self.snapshot;
        let key = digest
            .and_then(|d| snapshot.key(&d))
            .ok_or(GatewayError::Unauthenticated)?;
        let arrived = self.record().ts;
        key.life
            .presented(arrived)
            .map_err(|ended| GatewayError::KeyExpired { ended })?;
        let team = key.team.clone();
        let record = self.record();
        record.team = Some(team.settings.name.clone());
        record.org = Some(team.settings.org.name.clone());
        self.get_ok = Some(team.counters.get_ok.clone());
        Ok(team)
    }

    /// Step 3: after authentication and before the cache, so cache hits spend quota too: a hit still
    /// costs the gateway work, and a team's quota should not depend on what other teams warmed.
    /// The same answer hands over the version of the agent a cacheable read names, or replaces it
    /// for a write to the agent (when replicas share versions).
    async fn ask_admission(
        &mut self,
        ctx: &RequestCtx,
        forwardable: bool,
    ) -> Result<(), GatewayError> {
        let (team, method) = (&*ctx.team, &ctx.parts.method);
        let is_write = !auth::is_read(method);
        let agent = ctx
            .route
            .agent
            .as_ref()
            .filter(|a| forwardable && (is_write || (a.is_item && method == Method::GET)));
        let folded = agent.map(|a| fold_case(&a.id));
        let ask = Ask {
            limiter: &team.limiter,
            team: &team.settings.name,
            org: &team.settings.org.name,
            is_write,
            agent: folded.as_deref(),
            upstream_timeout: self.snapshot.settings.upstream.timeout,
        };
        let (verdict, version) = match self.gw.admission.admit(ask).await? {
            Answer::Admitted { verdict, version } => (verdict, version),
            Answer::Refused {
                verdict,
                why,
                retry_after,
            } => {
                self.verdict = Some(verdict);
                team.counters.limited.inc();
                return Err(self.limited(why, GatewayError::RateLimited { retry_after }));
            }
        };
        if let (true, Some(agent), SharedVersion::Current(_)) = (is_write, agent, &version) {
            // The write's first invalidation reached every replica with admission's answer: from
            // here on its second one is owed, whether or not the write gets as far as upstream.
            self.write = Some(forward::PendingInvalidation::new(
                Arc::clone(self.gw),
                team.settings.org.name.clone(),
                agent.id.clone(),
            ));
        }
        self.version = version;
        self.verdict = Some(verdict);
        team.counters.allowed.inc();
        Ok(())
    }

    /// A refusal by `why`, recorded for the audit line's `limited_by`.
    fn limited(&mut self, why: LimitedBy, e: GatewayError) -> GatewayError {
        self.record().limited_by = Some(why);
        e
    }

    /// The quota headers of an answer refused before the limiter: the state, nothing spent.
    async fn peek_quota(&mut self, team: &TeamState, is_read: bool) {
        self.verdict = Some(self.gw.admission.peek(&team.limiter, !is_read).await);
    }

    fn record(&mut self) -> &mut AuditRecord {
        self.line.record()
    }
}

/// Step 0: a path the gateway serves, with a method it forwards. A method outside the allow-list
/// is refused with the malformed paths: `TRACE` to an upstream that echoes it would hand back the
/// org key injected.
fn well_formed(parts: &Parts) -> Result<Route, GatewayError> {
    let route = route::parse(parts.uri.path())?;
    if !auth::is_forwardable(&parts.method) {
        return Err(GatewayError::MethodNotAllowed(parts.method.to_string()));
    }
    Ok(route)
}
