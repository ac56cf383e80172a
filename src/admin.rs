//! The admin listener: `/healthz`, `/readyz`, `/metrics`, and the token-protected `/admin/*` API.
//! Probes and metrics are not audited; `/admin/*` actions are, with `team = null`.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use crate::audit::{AuditRecord, AuditedBody, PendingLine};
use crate::auth::{self, KeyDigest};
use crate::cache::Scope;
use crate::cluster::Phase;
use crate::error::GatewayError;
use crate::http::{self as body, ProxyBody};
use crate::proxy::request_body::{self, BodyLimits};
use crate::request_id::{self, X_REQUEST_ID};
use crate::settings::OnUnavailable;
use crate::state::Gateway;
use crate::state::Moment;

/// Purge requests are tiny JSON objects.
const ADMIN_BODY_LIMIT: u64 = 64 * 1024;

pub async fn handle(
    gw: Arc<Gateway>,
    req: Request<Incoming>,
    client_ip: IpAddr,
) -> Response<AuditedBody> {
    let method = req.method().clone();
    let mut resp = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz") => probe(StatusCode::OK, "ok"),
        (&Method::GET | &Method::HEAD, "/readyz") if gw.is_draining() => {
            probe(StatusCode::SERVICE_UNAVAILABLE, "draining")
        }
        (&Method::GET | &Method::HEAD, "/readyz") => {
            readyz(gw.cluster_state(), &gw.snapshot().settings.fingerprint)
        }
        (&Method::GET, "/metrics") => {
            gw.cache.refresh_gauges().await;
            gw.admission.refresh_gauges();
            let (content_type, text) = if wants_openmetrics(req.headers()) {
                (OPENMETRICS, gw.metrics.encode())
            } else {
                (PROMETHEUS_TEXT, gw.metrics.encode_prometheus_text())
            };
            let mut resp = Response::new(body::full(text));
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            resp
        }
        (_, path) if path.starts_with("/admin/") => {
            return admin_api(gw, req, client_ip).await;
        }
        _ => {
            let id = request_id::generate();
            GatewayError::NotFound.to_response(request_id::as_text(&id))
        }
    };
    body::drop_for_head(&method, &mut resp);
    resp.map(AuditedBody::unaudited)
}

/// Ready unless draining, or refusing for want of Redis; the body names the cluster's state and,
/// while it is unavailable, why (a Redis error reply, a deadline, a refused connection), then
/// which config this replica serves, as `config_info` shows it.
fn readyz(cluster: Option<(Phase, OnUnavailable)>, fingerprint: &str) -> Response<ProxyBody> {
    let (status, text) = cluster_readiness(cluster);
    probe(status, format!("{text}; config: {fingerprint}"))
}

fn cluster_readiness(cluster: Option<(Phase, OnUnavailable)>) -> (StatusCode, String) {
    let (phase, mode) = match cluster {
        None => return (StatusCode::OK, "ready".to_owned()),
        Some((Phase::Up, _)) => return (StatusCode::OK, "ready; cluster: connected".to_owned()),
        Some(state) => state,
    };
    let why = match &phase {
        Phase::Down(why) => why,
        _ => "the connection closed; reconnecting",
    };
    match mode {
        // Under `degrade` a replica without Redis still serves, so it stays in rotation.
        OnUnavailable::Degrade => (
            StatusCode::OK,
            format!("ready; cluster: unavailable ({why}), degraded (local quotas, no cache, agent writes 503)"),
        ),
        OnUnavailable::Refuse => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready; cluster: unavailable ({why}), refusing requests"),
        ),
    }
}

fn probe(status: StatusCode, text: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut resp = Response::new(body::full(text.into()));
    *resp.status_mut() = status;
    resp
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    org: Option<String>,
    agent_id: Option<String>,
}

async fn admin_api(
    gw: Arc<Gateway>,
    req: Request<Incoming>,
    client_ip: IpAddr,
) -> Response<AuditedBody> {
    let request_id = request_id::from_headers(req.headers());
    let mut record = AuditRecord::new(
        request_id::as_text(&request_id).to_owned(),
        client_ip,
        req.method(),
        req.uri().path(),
    );
    record.key_id = auth::presented_key(req.headers()).map(|k| KeyDigest::of(k).key_id());
    // Admin actions make no spans, but their line joins the caller's trace all the same.
    if let Some(trace_id) = crate::telemetry::span::incoming_trace_id(req.headers()) {
        record.trace_id = trace_id;
    }
    // The admin token is a Bearer token only: `X-Api-Key` is the team keys' header.
    let digest = auth::bearer_token(req.headers()).map(KeyDigest::of);
    let method = req.method().clone();
    let mut line = PendingLine::new(record, gw.audit.clone());
    let result = admin_action(&gw, req, digest, line.record()).await;
    let mut resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            let record = line.record();
            record.decision = e.decision();
            e.to_response(&record.request_id)
        }
    };
    resp.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
    body::drop_for_head(&method, &mut resp);
    let status = resp.status().as_u16();
    resp.map(|b| line.attach(status, b))
}

async fn admin_action(
    gw: &Gateway,
    req: Request<Incoming>,
    digest: Option<KeyDigest>,
    record: &mut AuditRecord,
) -> Result<Response<ProxyBody>, GatewayError> {
    let snapshot = gw.snapshot();
    let (parts, incoming) = req.into_parts();
    let refusal = match snapshot.settings.admin_token {
        None => Some(GatewayError::AdminDisabled),
        Some(expected) if digest != Some(expected) => Some(GatewayError::AdminUnauthenticated),
        Some(_) if parts.method != Method::POST || parts.uri.path() != "/admin/cache/purge" => {
            Some(GatewayError::NotFound)
        }
        Some(_) => None,
    };
    if let Some(refusal) = refusal {
        // Read what the client is still sending, so it gets its answer rather than a reset.
        request_body::discard(incoming, &parts, &mut record.bytes_in).await;
        return Err(refusal);
    }
    let limits = BodyLimits {
        max_bytes: ADMIN_BODY_LIMIT,
        idle: snapshot.settings.server.limits.body_timeout,
    };
    // The same reader as the API listener's: an oversized body is `413` after it was drained.
    let bytes = request_body::read(incoming, &parts, limits, &mut record.bytes_in).await?;
    let purge: PurgeRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        PurgeRequest::default()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            GatewayError::InvalidAdminRequest(format!(
                "expected {{\"org\": ..., \"agent_id\": ...}}: {e}"
            ))
        })?
    };
    record.org = purge.org.as_deref().map(Arc::from);
    record.agent_id = purge.agent_id.clone();
    // An empty name matches nothing: answered as a mistake, not as a purge of nothing (and never
    // widened to "every organisation" or "every agent", which leaving the field out means).
    for (field, value) in [("org", &purge.org), ("agent_id", &purge.agent_id)] {
        if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
            return Err(GatewayError::InvalidAdminRequest(format!(
                "\"{field}\" must not be empty (leave it out to purge every {})",
                if field == "org" {
                    "organisation"
                } else {
                    "agent"
                }
            )));
        }
    }
    let scope = Scope::of_purge(purge.org.as_deref(), purge.agent_id.as_deref());
    let purged = gw.invalidate(&scope, Moment::Purge).await?;
    record.invalidated = purged;
    let body = serde_json::json!({
        "purged": purged,
        "org": purge.org,
        "agent_id": purge.agent_id,
    });
    let mut resp = Response::new(body::full(body.to_string()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A scraper that prefers OpenMetrics (Prometheus does) gets it, with types and units; anyone else
/// gets the classic Prometheus text format. Preference by the `q` weights of `Accept`: OpenMetrics
/// when it is acceptable (`q` > 0) and weighs at least as much as any text type.
fn wants_openmetrics(headers: &http::HeaderMap) -> bool {
    let (mut openmetrics, mut text) = (0.0_f32, 0.0_f32);
    let items = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','));
    for item in items {
        let mut params = item.split(';').map(str::trim);
        let media = params.next().unwrap_or("").to_ascii_lowercase();
        let q = params
            .find_map(|p| p.strip_prefix("q=").and_then(|q| q.parse::<f32>().ok()))
            .unwrap_or(1.0);
        match media.as_str() {
            "application/openmetrics-text" => openmetrics = openmetrics.max(q),
            "text/plain" | "text/*" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    openmetrics > 0.0 && openmetrics >= text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> bool {
        let mut h = http::HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        wants_openmetrics(&h)
    }

    #[test]
    fn openmetrics_only_when_preferred() {
        // What Prometheus sends.
        assert!(accept("application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"));
        assert!(accept("application/openmetrics-text"));
        assert!(!accept("*/*"));
        assert!(!accept("text/plain"));
        assert!(!accept("application/openmetrics-text;q=0"));
        assert!(!accept(
            "text/plain;version=0.0.4;q=0.9,application/openmetrics-text;q=0.1"
        ));
        assert!(!wants_openmetrics(&http::HeaderMap::new()));
    }
}
