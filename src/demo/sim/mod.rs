//! The simulated DialNexa (`demo` and `sim`): an in-memory HTTP server shaped like the seed pages,
//! owning its routing, its auth (`Authorization: Bearer <org key>`), its organisation quota and
//! its added latency; agents, PATCH rules and the SDK's other routes live in the files beside it.
//!
//! Routes answer both under `/v1` and unversioned (the legacy paths the Python SDK 0.1.1 calls);
//! `agents2` and `agents` are two names for one store, as in the real API.

mod agents;
mod patch;
mod quota;
mod reply;
mod sdk_routes;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use rand::RngCore;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::server::limited::{serve_connection, Acceptor};
use crate::settings::ConnectionLimits;

pub use agents::ORGANIZATION_ID;

use agents::AgentStore;
use quota::OrgQuota;
use reply::{Refusal, Reply};
use sdk_routes::Catalog;

/// How a simulator is started: its organisation key, and the DialNexa edges it shows.
#[derive(Clone)]
pub struct SimOptions {
    /// Never logged nor echoed.
    org_key: String,
    latency: Duration,
    rate_limit: Option<NonZeroU32>,
    limits: ConnectionLimits,
}

impl SimOptions {
    pub fn new(org_key: impl Into<String>) -> Self {
        Self {
            org_key: org_key.into(),
            latency: Duration::ZERO,
            rate_limit: None,
            limits: crate::config::default_connection_limits(),
        }
    }

    /// What a client may hold without sending a request; by default the gateway's own defaults.
    pub fn limits(mut self, limits: ConnectionLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Added before every answer, as the network to the real API would.
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Enforces an organisation quota: past `per_minute` requests in a minute, `429`.
    pub fn rate_limit(mut self, per_minute: NonZeroU32) -> Self {
        self.rate_limit = Some(per_minute);
        self
    }
}

/// The simulated organisation: its key, its agents and catalogues, its quota.
/// Built only by [`Simulator::spawn`]; shared between the server task and the [`SimHandle`].
pub struct Simulator {
    /// Never logged nor echoed.
    org_key: String,
    latency: Duration,
    limits: ConnectionLimits,
    quota: OrgQuota,
    agents: Mutex<AgentStore>,
    catalog: Mutex<Catalog>,
}

/// A running simulator. Dropping it stops the server and closes its open connections.
pub struct SimHandle {
    pub addr: SocketAddr,
    sim: Arc<Simulator>,
    server: JoinHandle<()>,
}

impl SimHandle {
    /// How many agents (not deleted) the store holds right now.
    pub fn agent_count(&self) -> usize {
        self.sim.agents().len()
    }

    /// Authenticated requests answered so far, and how many of them the quota refused (`429`).
    pub fn quota_counts(&self) -> (u64, u64) {
        self.sim.quota.counts()
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A key for a simulator started without one: a recognisable prefix and 256 random bits.
pub fn new_org_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("dnxsim_{}", hex::encode(bytes))
}

// === impl Simulator ===

impl Simulator {
    /// Serves on `listener` with no quota and no added latency; see [`Simulator::spawn_with`].
    pub fn spawn(listener: TcpListener, org_key: String) -> SimHandle {
        Self::spawn_with(listener, SimOptions::new(org_key))
    }

    /// Serves on `listener` until the returned handle is dropped or the task is aborted.
    /// Requests must carry `Authorization: Bearer <org key>`; otherwise 401 in DialNexa's error
    /// shape. Must be called inside a Tokio runtime.
    pub fn spawn_with(listener: TcpListener, options: SimOptions) -> SimHandle {
        // A bound socket always has an address; if the OS says otherwise the accept loop
        // will fail too and log it, so an unspecified address is only a placeholder.
        let addr = listener.local_addr().unwrap_or_else(|err| {
            tracing::error!(%err, "simulator listener has no local address");
            SocketAddr::from(([0, 0, 0, 0], 0))
        });
        let sim = Arc::new(Simulator {
            org_key: options.org_key,
            latency: options.latency,
            limits: options.limits,
            quota: OrgQuota::new(options.rate_limit),
            agents: Mutex::new(AgentStore::seeded()),
            catalog: Mutex::new(Catalog::seeded()),
        });
        let server = tokio::spawn(accept_loop(listener, Arc::clone(&sim)));
        SimHandle { addr, sim, server }
    }

    /// The store's lock. Nothing panics while holding it, so a poisoned lock still holds sound data.
    fn agents(&self) -> MutexGuard<'_, AgentStore> {
        self.agents.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// As [`Simulator::agents`]; never taken while holding that one's guard the other way round.
    fn catalog(&self) -> MutexGuard<'_, Catalog> {
        self.catalog.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(value) = req.headers().get(AUTHORIZATION) else {
            return false;
        };
        let Some((scheme, token)) = value.as_bytes().split_first_chunk::<7>() else {
            return false;
        };
        // An empty org key must not let `Bearer ` through.
        scheme.eq_ignore_ascii_case(b"bearer ")
            && !self.org_key.is_empty()
            && token == self.org_key.as_bytes()
    }

    /// In DialNexa's order: authenticate, count against the quota, answer. Every answer waits
    /// the added latency first, refusals included, as a slow network would make them.
    async fn handle(&self, req: Request<Incoming>) -> Reply {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let request_id = req.headers().get("x-request-id").cloned();
        let mut reply = if !self.authorized(&req) {
            reply::error(StatusCode::UNAUTHORIZED, "Invalid or missing API key")
        } else {
            let verdict = self.quota.take();
            let mut reply = if verdict.allowed {
                self.route(req).await
            } else {
                let message = format!(
                    "Too many requests for this organization; retry in {} seconds",
                    verdict.retry_after_secs()
                );
                reply::error(StatusCode::TOO_MANY_REQUESTS, message)
            };
            verdict.write_headers(reply.headers_mut());
            reply
        };
        if let Some(id) = request_id {
            reply.headers_mut().insert("x-request-id", id);
        }
        reply
    }

    async fn route(&self, req: Request<Incoming>) -> Reply {
        let (parts, body) = req.into_parts();
        let (method, path, query) = (&parts.method, parts.uri.path(), parts.uri.query());
        let Some(segments) = api_segments(path) else {
            return reply::no_route(method, path);
        };
        let answer = match body_of(&parts, body, self.limits.body_timeout).await {
            Ok(body) => match segments.as_slice() {
                [family] if is_agents(family) => self.agents_route(method, None, query, &body),
                [family, id] if is_agents(family) && is_id(id) => {
                    self.agents_route(method, Some(id), query, &body)
                }
                _ => sdk_routes::route(self, method, &segments, query, &body),
            },
            Err(refusal) => Err(refusal),
        };
        match answer {
            Ok(Some(reply)) => reply,
            Ok(None) => reply::no_route(method, path),
            Err(refusal) => refusal.into(),
        }
    }

    /// `/agents2` and `/agents` (list, create) and `/{family}/{id}` (get, patch, delete);
    /// `Ok(None)` for a method these routes do not take.
    fn agents_route(
        &self,
        method: &Method,
        id: Option<&str>,
        query: Option<&str>,
        body: &Bytes,
    ) -> Result<Option<Reply>, Refusal> {
        let reply = match (method, id) {
            (&Method::GET | &Method::HEAD, None) => {
                reply::ok(&reply::Listing::whole(self.agents().list()))
            }
            (&Method::POST, None) => {
                let body = reply::json_object(body)?;
                reply::json(StatusCode::CREATED, &self.agents().create(&body)?)
            }
            (&Method::GET | &Method::HEAD, Some(id)) => {
                let version = reply::positive_param(query, "version_number")?;
                reply::ok(&self.agents().get(id, version)?)
            }
            (&Method::PATCH, Some(id)) => {
                let body = reply::json_object(body)?;
                reply::ok(&self.agents().patch(id, &body)?)
            }
            (&Method::DELETE, Some(id)) => reply::ok(&self.agents().delete(id)?),
            _ => return Ok(None),
        };
        Ok(Some(reply))
    }
}

/// The request body, read (bounded) only for the methods that carry one here; others' is ignored.
async fn body_of(parts: &Parts, body: Incoming, idle: Duration) -> Result<Bytes, Refusal> {
    if matches!(parts.method, Method::POST | Method::PATCH) {
        reply::read_body(parts, body, idle).await
    } else {
        Ok(Bytes::new())
    }
}

/// The path's segments after the optional `/v1`, or `None` for another version (`/v2/...`).
/// Empty segments are skipped, so a trailing `/` names the same route (Express's default).
fn api_segments(path: &str) -> Option<Vec<&str>> {
    let mut segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.first() {
        Some(first) if first.eq_ignore_ascii_case("v1") => {
            segments.remove(0);
            Some(segments)
        }
        Some(first) if is_version(first) => None,
        _ => Some(segments),
    }
}

fn is_version(segment: &str) -> bool {
    let mut bytes = segment.bytes();
    matches!(bytes.next(), Some(b'v' | b'V'))
        && segment.len() > 1
        && bytes.all(|b| b.is_ascii_digit())
}

/// Case-insensitively, as DialNexa's router (Express's default) matches.
fn is_agents(segment: &str) -> bool {
    segment.eq_ignore_ascii_case("agents2") || segment.eq_ignore_ascii_case("agents")
}

/// Ids are echoed in messages and used as keys, so only plain ones are accepted.
fn is_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `<prefix>_` and 12 lowercase base-36 characters, like `agt_k7m2nq9xw4p8`; `taken` guards
/// the astronomically rare collision.
fn fresh_id(prefix: &str, taken: impl Fn(&str) -> bool) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    loop {
        let mut bytes = [0u8; 12];
        rand::rng().fill_bytes(&mut bytes);
        let tail: String = bytes
            .iter()
            .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
            .collect();
        let id = format!("{prefix}_{tail}");
        if !taken(&id) {
            return id;
        }
    }
}

/// Accepts until aborted, under the same connection limits as the gateway's API listener (one
/// implementation: [`crate::server::limited`]). Connections live in a `JoinSet` owned by this
/// task, so aborting the task (dropping the handle) also closes every open connection.
async fn accept_loop(listener: TcpListener, sim: Arc<Simulator>) {
    let mut connections = JoinSet::new();
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    let mut acceptor = Acceptor::new(&sim.limits);
    // Never told to stop: the task is aborted instead.
    let (_running, stop) = watch::channel(false);
    let mut stopping = stop.clone();
    while let Some(accepted) = acceptor.accept(&listener, &mut stopping).await {
        while connections.try_join_next().is_some() {}
        let (sim, builder, stop) = (Arc::clone(&sim), builder.clone(), stop.clone());
        connections.spawn(async move {
            let limits = sim.limits;
            let handler = move |req| {
                let sim = Arc::clone(&sim);
                async move { sim.handle(req).await }
            };
            let ended = serve_connection(
                &builder,
                accepted.stream,
                &limits,
                stop,
                reply::request_timeout,
                handler,
            )
            .await;
            if let Some(err) = ended.error {
                tracing::debug!(%err, "simulator connection ended with an error");
            }
            drop(accepted.permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_unversioned_paths_name_the_same_routes_and_other_versions_none() {
        assert_eq!(
            api_segments("/v1/agents2/agt_a"),
            Some(vec!["agents2", "agt_a"])
        );
        assert_eq!(
            api_segments("/agents2/agt_a/"),
            Some(vec!["agents2", "agt_a"])
        );
        assert_eq!(api_segments("/V1/calls"), Some(vec!["calls"]));
        assert_eq!(api_segments("/v2/agents2"), None);
        assert_eq!(api_segments("/voices"), Some(vec!["voices"]));
        assert_eq!(api_segments("/"), Some(vec![]));
    }

    #[test]
    fn fresh_ids_look_like_dialnexa_ids() {
        let id = fresh_id("agt", |_| false);
        assert_eq!(id.len(), 16, "{id}");
        assert!(id.starts_with("agt_"));
        assert!(id[4..]
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()));
    }

    #[test]
    fn query_parameters_are_decoded() {
        let query = Some("a=1&version_number=2&name=Ava%20G+x&empty");
        assert_eq!(
            reply::query_param(query, "name").as_deref(),
            Some("Ava G x")
        );
        assert_eq!(reply::query_param(query, "empty").as_deref(), Some(""));
        assert_eq!(reply::query_param(query, "missing"), None);
        assert!(matches!(
            reply::positive_param(query, "version_number"),
            Ok(Some(2))
        ));
        assert!(reply::positive_param(Some("version_number=0"), "version_number").is_err());
        assert!(reply::positive_param(Some("version_number=x"), "version_number").is_err());
    }

    #[test]
    fn an_enforced_quota_refuses_past_its_limit_and_spends_nothing_on_refusals() {
        let quota = OrgQuota::new(NonZeroU32::new(2));
        assert!(quota.take().allowed);
        assert!(quota.take().allowed);
        let refused = quota.take();
        assert!(!refused.allowed);
        assert!((1..=60).contains(&refused.retry_after_secs()));
        let mut headers = hyper::HeaderMap::new();
        refused.write_headers(&mut headers);
        assert_eq!(headers["x-ratelimit-limit"], "2");
        assert_eq!(headers["x-ratelimit-remaining"], "0");
        assert!(headers.contains_key(hyper::header::RETRY_AFTER));
        assert_eq!(quota.counts(), (3, 1));
        let unenforced = OrgQuota::new(None);
        for _ in 0..quota::ADVERTISED_PER_MINUTE + 5 {
            let verdict = unenforced.take();
            assert!(verdict.allowed);
            // Never an empty quota it does not enforce.
            let mut headers = hyper::HeaderMap::new();
            verdict.write_headers(&mut headers);
            assert_ne!(headers["x-ratelimit-remaining"], "0");
        }
    }
}
