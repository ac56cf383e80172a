//! The pipeline's spans and the request's trace id. Every helper returns a disabled span (a no-op
//! to enter, record or instrument with) unless the request is traced (`[tracing]` is on and the
//! sampler keeps it), so a request without tracing costs one branch per step.
//!
//! Only what DESIGN names goes into a span: methods, route templates, paths, statuses, the team's
//! and organisation's names, the client's address. Never a header value, a query value or a body.

use std::borrow::Cow;
use std::cell::RefCell;
use std::net::IpAddr;

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, Status, TraceContextExt};
use opentelemetry::Context;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub use opentelemetry::trace::TraceId;

use super::{enabled, export, SPAN_TARGET};

/// Parsed once: looking a header up by a `&str` name parses and hashes the name every time.
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// One request's trace: the id its audit line carries and, with tracing on, its server span.
pub struct RequestTrace {
    /// `None` without tracing and without a valid `traceparent`: the audit record's own made-up
    /// id stands.
    pub trace_id: Option<TraceId>,
    span: Span,
}

impl RequestTrace {
    /// The server span of a request, named `METHOD route-template`, its parent the client's
    /// `traceparent` (whose sampled flag the sampler follows). The sampler is asked first: a
    /// request it does not sample gets no span at all (and none of its steps do), only the trace
    /// id. Without tracing, only the trace id: the client's, or none (the audit record made one).
    pub fn start(method: &Method, path: &str, headers: &HeaderMap, client_ip: IpAddr) -> Self {
        if !enabled() {
            return Self {
                trace_id: incoming_trace_id(headers),
                span: Span::none(),
            };
        }
        let parent = if headers.contains_key(&TRACEPARENT) {
            TraceContextPropagator::new().extract(&HeaderExtractor(headers))
        } else {
            Context::new()
        };
        let parent_trace = parent.span().span_context().trace_id();
        let root = parent_trace == TraceId::INVALID;
        let trace_id = if root {
            random_trace_id()
        } else {
            parent_trace
        };
        if !export::samples(&parent, trace_id) {
            return Self {
                trace_id: Some(trace_id),
                span: Span::none(),
            };
        }
        let route = crate::route::parse(path).ok().map(|r| r.template());
        let name = match &route {
            Some(route) => format!("{method} {route}"),
            None => method.to_string(),
        };
        let span = tracing::info_span!(
            target: SPAN_TARGET,
            "request",
            otel.name = name,
            otel.kind = "server",
            http.request.method = method.as_str(),
            http.route = route.as_deref(),
            url.path = path,
            client.address = %client_ip,
        );
        let _ = span.set_parent(parent);
        if root {
            export::hand_trace_id(trace_id);
        }
        // Builds the span: the sampler says again what it said above, on the same trace id.
        let built = span.context().span().span_context().trace_id();
        export::clear_handed();
        Self {
            trace_id: Some(built),
            span,
        }
    }

    pub fn span(&self) -> &Span {
        &self.span
    }

    /// What the audit line says of the request, on its span: who, how the cache and the quota took
    /// part, and the status (a `5xx` is an error).
    pub fn answered(&self, status: StatusCode, said: Answered<'_>) {
        if self.span.is_none() {
            return;
        }
        let span = &self.span;
        span.set_attribute("http.response.status_code", i64::from(status.as_u16()));
        span.set_attribute("dialnexa.decision", said.decision.to_owned());
        let known = [
            ("dialnexa.team", said.team),
            ("dialnexa.org", said.org),
            ("dialnexa.cache", said.cache),
            ("dialnexa.limited_by", said.limited_by),
        ];
        for (key, value) in known {
            if let Some(value) = value {
                span.set_attribute(key, value.to_owned());
            }
        }
        if status.is_server_error() {
            span.set_status(Status::error(status.as_str().to_owned()));
        }
    }
}

/// The audit line's account of a request, as its server span carries it.
pub struct Answered<'a> {
    pub team: Option<&'a str>,
    pub org: Option<&'a str>,
    pub cache: Option<&'a str>,
    pub decision: &'a str,
    /// Which limit refused a `429` (`team`, `team_write`, `org`, `upstream`); absent otherwise.
    pub limited_by: Option<&'a str>,
}

/// An internal span for one step of the pipeline (`admission`, `cache fill`), a child of the
/// current one; none outside a traced request.
pub fn step(name: &'static str) -> Span {
    if current().is_none() {
        return Span::none();
    }
    tracing::info_span!(target: SPAN_TARGET, "step", otel.name = name, otel.kind = "internal")
}

/// The client span of one Redis round trip in cluster mode; none outside a traced request.
pub fn redis(command: &'static str) -> Span {
    if current().is_none() {
        return Span::none();
    }
    tracing::info_span!(
        target: SPAN_TARGET,
        "redis",
        otel.name = command,
        otel.kind = "client",
        db.system.name = "redis",
        db.operation.name = command,
    )
}

/// The current span (the pipeline's step or the request's server span); none outside a traced
/// request, and at no cost without tracing.
pub fn current() -> Span {
    if !enabled() {
        return Span::none();
    }
    Span::current()
}

/// The client span of one upstream call, a child of `parent` (none when `parent` is: the request
/// is not traced). `url.full` has the query's values replaced (they may carry anything a client
/// put there).
pub fn upstream(parent: &Span, method: &Method, uri: &Uri) -> Span {
    if parent.is_none() {
        return Span::none();
    }
    tracing::info_span!(
        target: SPAN_TARGET,
        parent: parent,
        "upstream",
        otel.name = method.as_str(),
        otel.kind = "client",
        http.request.method = method.as_str(),
        server.address = uri.host().unwrap_or_default(),
        server.port = uri.port_u16().or_else(|| default_port(uri)).map(i64::from),
        url.full = %redacted_url(uri),
    )
}

/// Upstream's answer to a call, on its client span: `None` is a call that got no answer (refused,
/// reset, timed out), an error as a `5xx` is.
pub fn upstream_answered(span: &Span, status: Option<StatusCode>, error: Option<&'static str>) {
    if span.is_none() {
        return;
    }
    if let Some(status) = status {
        span.set_attribute("http.response.status_code", i64::from(status.as_u16()));
    }
    let error = match (error, status) {
        (Some(kind), _) => Some(Cow::Borrowed(kind)),
        // OpenTelemetry's HTTP conventions: a 5xx is named by its status code.
        (None, Some(status)) if status.is_server_error() => {
            Some(Cow::Owned(status.as_str().to_owned()))
        }
        _ => None,
    };
    if let Some(kind) = error {
        span.set_attribute("error.type", kind.clone());
        span.set_status(Status::error(kind));
    }
}

/// What a step decided (`dialnexa.budget`: `part`, `borrowed`, `org` or `upstream`), on its span.
pub fn decided(span: &Span, attribute: &'static str, decision: &'static str) {
    if span.is_none() {
        return;
    }
    span.set_attribute(attribute, decision);
}

/// A call that failed (`kind` names how), on its span.
pub fn failed(span: &Span, kind: &'static str) {
    if span.is_none() {
        return;
    }
    span.set_attribute("error.type", kind);
    span.set_status(Status::error(kind));
}

/// Gives upstream the gateway's place in the trace: the client span's `traceparent` (with
/// `tracestate`) for a traced request; for one the sampler left out, the request's trace id with
/// an id of the gateway's own, unsampled. Without tracing the client's pass unchanged.
pub fn propagate(span: &Span, trace_id: TraceId, headers: &mut HeaderMap) {
    if !enabled() {
        return;
    }
    if !span.is_none() {
        let cx = span.context();
        if cx.span().span_context().is_valid() {
            TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
            // The propagator writes `tracestate` even when the trace has none: an empty header
            // is noise upstream (W3C: send it only with members).
            if headers
                .get("tracestate")
                .is_some_and(|v| v.as_bytes().is_empty())
            {
                headers.remove("tracestate");
            }
            return;
        }
    }
    let mut value = *b"00-00000000000000000000000000000000-0000000000000000-00";
    let span_id = random_span_id();
    // Both fit their slots exactly.
    let _ = hex::encode_to_slice(trace_id.to_bytes(), &mut value[3..35]);
    let _ = hex::encode_to_slice(span_id.to_be_bytes(), &mut value[36..52]);
    if let Ok(value) = HeaderValue::from_bytes(&value) {
        headers.insert(TRACEPARENT.clone(), value);
    }
}

/// Links two spans both ways: a cache fill and a request that joined it and waited.
pub fn link(fill: &Span, waiter: &Span) {
    if fill.is_none() || waiter.is_none() {
        return;
    }
    let fill_cx = span_context(fill);
    let waiter_cx = span_context(waiter);
    fill.add_link(waiter_cx);
    waiter.add_link(fill_cx);
}

fn span_context(span: &Span) -> SpanContext {
    span.context().span().span_context().clone()
}

fn default_port(uri: &Uri) -> Option<u16> {
    match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    }
}

/// The URL without its query's values: `?version_number=REDACTED`.
fn redacted_url(uri: &Uri) -> Cow<'_, str> {
    let Some(query) = uri.query() else {
        return Cow::Owned(uri.to_string());
    };
    let mut out = String::with_capacity(uri.to_string().len());
    if let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) {
        out.push_str(scheme);
        out.push_str("://");
        out.push_str(authority.as_str());
    }
    out.push_str(uri.path());
    for (i, pair) in query.split('&').filter(|p| !p.is_empty()).enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        match pair.split_once('=') {
            Some((name, _)) => {
                out.push_str(name);
                out.push_str("=REDACTED");
            }
            None => out.push_str(pair),
        }
    }
    Cow::Owned(out)
}

/// The trace id of a valid W3C `traceparent` (version `00` exactly as specified, a later version
/// by its first four fields; never `ff`; neither id all zeros), read from its first value as the
/// propagator reads it. By hand rather than through the propagator, which builds a whole context:
/// this runs on every request without tracing. (The propagator also takes ids shorter than W3C's
/// fixed widths; those are no parent here, and with tracing on the span's own id is used anyway.)
pub fn incoming_trace_id(headers: &HeaderMap) -> Option<TraceId> {
    let v = headers.get(&TRACEPARENT)?.as_bytes().trim_ascii();
    let lower_hex = |b: &[u8]| {
        b.iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let (version, trace, span, flags) = (&v[..2], &v[3..35], &v[36..52], &v[53..55]);
    if !(lower_hex(version) && lower_hex(trace) && lower_hex(span) && lower_hex(flags))
        || version == b"ff"
        || (version == b"00" && v.len() != 55)
        || (version != b"00" && v.len() > 55 && v[55] != b'-')
    {
        return None;
    }
    let mut id = [0u8; 16];
    hex::decode_to_slice(trace, &mut id).ok()?;
    let zero_span = span.iter().all(|c| *c == b'0');
    let trace_id = TraceId::from_bytes(id);
    (trace_id != TraceId::INVALID && !zero_span).then_some(trace_id)
}

thread_local! {
    /// Trace ids need to be unpredictable enough not to collide, not secret: a fast generator,
    /// seeded per thread from the OS, draws one in a few instructions (the thread's ChaCha
    /// generator took five times as many, on every request).
    static IDS: RefCell<SmallRng> = RefCell::new(SmallRng::from_os_rng());
}

/// A trace id for a request that brought none: 16 random bytes, never all zeros.
pub fn random_trace_id() -> TraceId {
    IDS.with_borrow_mut(|rng| loop {
        let id = TraceId::from(rng.random::<u128>());
        if id != TraceId::INVALID {
            return id;
        }
    })
}

/// A span id of the gateway's own, never all zeros.
fn random_span_id() -> u64 {
    IDS.with_borrow_mut(|rng| loop {
        let id = rng.random::<u64>();
        if id != 0 {
            return id;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(traceparent: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in traceparent {
            h.append("traceparent", v.parse().unwrap());
        }
        h
    }

    /// What the propagator, which the spans' parent comes from, makes of the same header.
    fn by_propagator(h: &HeaderMap) -> Option<TraceId> {
        let cx = TraceContextPropagator::new().extract(&HeaderExtractor(h));
        let sc = cx.span().span_context().clone();
        sc.is_valid().then(|| sc.trace_id())
    }

    #[test]
    fn the_trace_id_is_read_as_the_propagator_reads_it() {
        let cases = [
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            " 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01 ",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0g",
            "garbage",
            "",
        ];
        for case in cases {
            let h = headers(&[case]);
            assert_eq!(incoming_trace_id(&h), by_propagator(&h), "{case:?}");
        }
        let valid = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        assert_eq!(
            incoming_trace_id(&headers(&[valid])).unwrap().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        let other = "00-11111111111111111111111111111111-b7ad6b7169203331-01";
        assert_eq!(
            incoming_trace_id(&headers(&[valid, other])),
            by_propagator(&headers(&[valid, other]))
        );
        assert_eq!(incoming_trace_id(&HeaderMap::new()), None);
    }

    #[test]
    fn made_trace_ids_differ_and_are_valid() {
        let (a, b) = (random_trace_id(), random_trace_id());
        assert_ne!(a, b);
        assert_ne!(a, TraceId::INVALID);
    }

    #[test]
    fn url_full_keeps_query_names_not_values() {
        let uri: Uri = "https://api.example.test:8443/v1/agents2/ag-1?api_key=sk-made-up&flag"
            .parse()
            .unwrap();
        assert_eq!(
            redacted_url(&uri),
            "https://api.example.test:8443/v1/agents2/ag-1?api_key=REDACTED&flag"
        );
        let plain: Uri = "http://h/v1/calls".parse().unwrap();
        assert_eq!(redacted_url(&plain), "http://h/v1/calls");
    }

    #[test]
    fn without_tracing_no_span_is_made() {
        assert!(step("admission").is_none());
        assert!(upstream(&Span::none(), &Method::GET, &"http://h/x".parse().unwrap()).is_none());
        let trace = RequestTrace::start(
            &Method::GET,
            "/v1/agents2/x",
            &HeaderMap::new(),
            "127.0.0.1".parse().unwrap(),
        );
        assert!(trace.span().is_none());
    }
}
