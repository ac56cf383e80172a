//! What one request carries through steps 3 to 5 once steps 0-2 let it in (pingora's per-request
//! context): the team that sent it, where it goes, and its head.

use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;
use http::Method;

use super::Exchange;
use crate::error::GatewayError;
use crate::route::{AgentPath, Route};
use crate::state::TeamState;
use crate::upstream::{Purpose, Target, UpstreamRequest};

pub(super) struct RequestCtx {
    pub(super) team: Arc<TeamState>,
    pub(super) route: Route,
    /// Method, URI and headers as the client sent them; the body is read apart.
    pub(super) parts: Parts,
}

impl RequestCtx {
    /// The agent a cacheable read names: a `GET` of exactly `/{family}/{id}`.
    pub(super) fn agent_read(&self) -> Option<&AgentPath> {
        self.route
            .agent
            .as_ref()
            .filter(|a| a.is_item && self.parts.method == Method::GET)
    }

    /// This request made for upstream, counted in its org's upstream figures.
    pub(super) fn upstream_request(
        &self,
        ex: &Exchange<'_>,
        body: Bytes,
        purpose: Purpose,
    ) -> Result<UpstreamRequest, GatewayError> {
        let to = Target {
            base_url: &ex.snapshot.settings.upstream.base_url,
            path: &self.route.upstream_path,
            org: &self.team.settings.org,
            request_id: &ex.request_id,
        };
        UpstreamRequest::new(&self.parts, to, body, purpose)
            .map(|req| req.observed_by(self.team.counters.upstream.clone()))
    }
}
