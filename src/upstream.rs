//! The forward step: builds the upstream request (credential swap, header hygiene, request id) and
//! sends it over one pooled hyper-util client (rustls, HTTP/1.1 or HTTP/2 by ALPN; plain http too).

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{
    header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri,
};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use crate::body::{self, ProxyBody};
use crate::config::Org;
use crate::error::GatewayError;
use crate::metrics::OrgUpstream;

/// Idle pooled connections are closed after this; kept below the usual 60 s upstream keep-alive so
/// the pool rarely picks a connection the server is about to close.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus the proxy ones; never forwarded in either direction.
/// Header names, not strings: comparing a parsed name with a standard one is a tag comparison.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Client headers that must not reach DialNexa: the team's credentials, the gateway's host, and
/// anything that would leak internal addresses.
static CLIENT_ONLY: [HeaderName; 9] = [
    header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    header::HOST,
    header::CONTENT_LENGTH,
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-real-ip"),
    header::FORWARDED,
];

/// Conditional and range headers are dropped on cache fills: a fill is shared by every waiter and
/// stored, so it must be the full representation.
static CONDITIONAL: [HeaderName; 6] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::RANGE,
    header::IF_RANGE,
];

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Why a request goes upstream: a plain forward passes the client's negotiation headers through;
/// a cache fill asks for the full, uncompressed representation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Forward,
    CacheFill,
}

/// Everything needed to (re)send one upstream request.
pub struct UpstreamRequest {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    /// The org's upstream figures, told of every answer (see [`UpstreamRequest::observed_by`]).
    observer: Option<Arc<OrgUpstream>>,
}

impl UpstreamRequest {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        base_url: &str,
        path: &str,
        query: Option<&str>,
        method: &Method,
        client_headers: &HeaderMap,
        org: &Org,
        request_id: &HeaderValue,
        body: Bytes,
        purpose: Purpose,
    ) -> Result<Self, GatewayError> {
        let mut url =
            String::with_capacity(base_url.len() + path.len() + query.map_or(0, |q| q.len() + 1));
        url.push_str(base_url);
        url.push_str(path);
        if let Some(q) = query {
            url.push('?');
            url.push_str(q);
        }
        let uri: Uri = url
            .parse()
            .map_err(|_| GatewayError::BadPath("path cannot be forwarded"))?;
        Ok(Self {
            method: method.clone(),
            uri,
            headers: upstream_headers(client_headers, org, request_id, purpose),
            body,
            observer: None,
        })
    }

    /// Has every answer to this request counted in the org's upstream figures (status class, the
    /// quota upstream states in `X-RateLimit-*`).
    pub fn observed_by(mut self, org: Arc<OrgUpstream>) -> Self {
        self.observer = Some(org);
        self
    }

    fn to_request(&self) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }
}

fn upstream_headers(
    client: &HeaderMap,
    org: &Org,
    request_id: &HeaderValue,
    purpose: Purpose,
) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(client.len() + 2);
    let connection_named = connection_tokens(client);
    for (name, value) in client {
        if HOP_BY_HOP.contains(name)
            || CLIENT_ONLY.contains(name)
            || connection_named
                .iter()
                .any(|t| t.eq_ignore_ascii_case(name.as_str()))
            || (purpose == Purpose::CacheFill
                && (CONDITIONAL.contains(name) || name == header::ACCEPT_ENCODING))
            // The gateway never answers `304` to a request without `If-None-Match`, so a date alone
            // must not give upstream a reason to (beside one, RFC 9110 §13.1.3 has it ignored anyway).
            || (name == header::IF_MODIFIED_SINCE && !client.contains_key(header::IF_NONE_MATCH))
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    if purpose == Purpose::CacheFill {
        out.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }
    out.insert(header::AUTHORIZATION, org.authorization.clone());
    out.insert(X_REQUEST_ID.clone(), request_id.clone());
    out
}

/// Header names a `Connection` header declares hop-by-hop, beyond the fixed list: `close` names
/// no header and `keep-alive` is on the list, so the usual `Connection` values give none (and no
/// allocation).
fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| {
            !t.is_empty()
                && !t.eq_ignore_ascii_case("close")
                && !t.eq_ignore_ascii_case("keep-alive")
        })
        .map(str::to_owned)
        .collect()
}

/// Removes hop-by-hop headers from an upstream answer before it goes to the client.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Answers carry few headers and few of those are hop-by-hop: note in one pass which are
    // present, then remove just those (probing the map for all nine cost ~4 % of a miss). A
    // `Connection` header is almost always a lone `keep-alive` or `close`, which names nothing
    // more; only another value is split into tokens.
    let mut present = [false; HOP_BY_HOP.len()];
    let mut names_more = false;
    for (name, value) in headers.iter() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
            let value = value.as_bytes();
            names_more |= name == header::CONNECTION
                && !value.eq_ignore_ascii_case(b"keep-alive")
                && !value.eq_ignore_ascii_case(b"close");
        }
    }
    if names_more {
        for name in connection_tokens(headers) {
            headers.remove(name.as_str());
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(name);
    }
}

/// An upstream answer read whole (for the cache and for coalesced waiters).
#[derive(Debug)]
pub struct Buffered {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What a cache fill got: the whole answer, or an answer too large to keep, already half read.
pub enum CacheFetch {
    Buffered(Buffered),
    TooLarge(Response<ProxyBody>),
}

/// The CAs an upstream certificate may chain to: the Mozilla roots built in, so the binary works in
/// a bare container, and the system's store (`/etc/ssl/certs`, or `SSL_CERT_FILE`/`SSL_CERT_DIR` as
/// OpenSSL reads them), so a private CA installed the usual way is trusted too. Read again whenever
/// the upstream client is rebuilt (a reload that changes `connect_timeout_ms`).
fn trusted_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let system = rustls_native_certs::load_native_certs();
    for e in &system.errors {
        tracing::warn!(error = %e, "could not read the system's CA certificates");
    }
    let (added, ignored) = roots.add_parsable_certificates(system.certs);
    tracing::debug!(added, ignored, "system CA certificates");
    roots
}

/// The pooled upstream client.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    connect_timeout: Duration,
}

impl Upstream {
    pub fn new(connect_timeout: Duration) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        // ring with the default protocol versions is always a valid provider.
        .expect("ring provider supports the default TLS versions")
        .with_root_certificates(trusted_roots())
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        Self {
            client,
            connect_timeout,
        }
    }

    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Sends `req`, answering `502` when upstream cannot be reached and `504` past `deadline`.
    /// An idempotent read is retried once when a pooled connection turned out to be closed.
    pub async fn send(
        &self,
        req: &UpstreamRequest,
        timeout: Duration,
    ) -> Result<Response<Incoming>, GatewayError> {
        self.send_until(req, Instant::now() + timeout, timeout)
            .await
    }

    async fn send_until(
        &self,
        req: &UpstreamRequest,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Response<Incoming>, GatewayError> {
        let retryable = req.method == Method::GET || req.method == Method::HEAD;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent =
                tokio::time::timeout_at(deadline, self.client.request(req.to_request())).await;
            match sent {
                Err(_) => return Err(GatewayError::UpstreamTimeout(timeout)),
                Ok(Ok(resp)) => {
                    // The one place every upstream answer, forwarded or filling the cache, passes.
                    if let Some(org) = &req.observer {
                        org.answered(resp.status(), resp.headers());
                    }
                    return Ok(resp);
                }
                Ok(Err(e)) if retryable && attempt == 1 && closed_before_answer(&e) => continue,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, source = ?e.source(), uri = %req.uri, "upstream request failed");
                    return Err(GatewayError::UpstreamUnreachable);
                }
            }
        }
    }

    /// Sends a cache fill and reads the answer whole if it fits in `max_bytes`.
    /// `timeout` covers the whole answer, body included.
    pub async fn fetch_buffered(
        &self,
        req: &UpstreamRequest,
        timeout: Duration,
        max_bytes: u64,
    ) -> Result<CacheFetch, GatewayError> {
        let deadline = Instant::now() + timeout;
        let resp = self.send_until(req, deadline, timeout).await?;
        let (mut parts, mut incoming) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut total: u64 = 0;
        loop {
            let frame = match tokio::time::timeout_at(deadline, incoming.frame()).await {
                Err(_) => return Err(GatewayError::UpstreamTimeout(timeout)),
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    tracing::warn!(error = %e, "upstream body failed");
                    return Err(GatewayError::UpstreamUnreachable);
                }
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            total += data.len() as u64;
            chunks.push(data);
            if total > max_bytes {
                let resp =
                    Response::from_parts(parts, body::Prefixed::boxed(chunks, incoming, timeout));
                return Ok(CacheFetch::TooLarge(resp));
            }
        }
        Ok(CacheFetch::Buffered(Buffered {
            status: parts.status,
            headers: parts.headers,
            body: exact_body(&chunks, total as usize),
        }))
    }
}

/// The body in one block of exactly its size from the system allocator, for the cache to keep.
/// A slice of hyper's read buffer would pin the whole buffer; the binary's allocator (mimalloc,
/// see `main.rs`) would round a ~3 KiB block up to its size class, by as much as a tenth, which
/// broke the RSS target (100k cached agents ≤ 1.3× their body bytes: 1.33× against 1.25×).
fn exact_body(chunks: &[Bytes], total: usize) -> Bytes {
    type SystemBox = allocator_api2::boxed::Box<[u8], std::alloc::System>;
    // Copied with one `memcpy` (allocator-api2's `Vec::extend_from_slice` copies byte by byte,
    // which callgrind put at ~30k instructions for a 3 KiB body).
    let kept = match chunks {
        [one] => SystemBox::from(&one[..]),
        many => {
            let mut whole = Vec::with_capacity(total);
            many.iter().for_each(|c| whole.extend_from_slice(c));
            SystemBox::from(&whole[..])
        }
    };
    Bytes::from_owner(kept)
}

/// hyper's "connection closed before message completed": the pooled connection died under us.
fn closed_before_answer(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            return h.is_incomplete_message();
        }
        source = s.source();
    }
    false
}

/// An upstream answer streamed to the client as is, minus hop-by-hop headers.
/// Upstream going quiet for `idle` mid-body cuts the answer off.
pub fn passthrough(resp: Response<Incoming>, idle: Duration) -> Response<ProxyBody> {
    let (mut parts, incoming) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body::stream(incoming, idle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn org() -> Org {
        let mut authorization = HeaderValue::from_static("Bearer org-key");
        authorization.set_sensitive(true);
        Org {
            name: Arc::from("acme"),
            authorization,
        }
    }

    fn client_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer team-key"),
            ("x-api-key", "team-key"),
            ("host", "gateway.internal"),
            ("connection", "keep-alive, x-drop-me"),
            ("x-drop-me", "1"),
            ("keep-alive", "timeout=5"),
            ("x-forwarded-for", "10.0.0.7"),
            ("content-type", "application/json"),
            ("accept", "application/json"),
            ("user-agent", "dialnexa-python/0.1.1"),
            ("traceparent", "00-abc-def-01"),
            ("accept-encoding", "gzip, deflate"),
            ("if-none-match", "\"v1\""),
        ] {
            h.insert(k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn forward_swaps_credentials_and_strips_hop_by_hop() {
        let h = upstream_headers(
            &client_headers(),
            &org(),
            &HeaderValue::from_static("rid"),
            Purpose::Forward,
        );
        assert_eq!(h["authorization"], "Bearer org-key");
        assert!(h["authorization"].is_sensitive());
        assert_eq!(h.get_all("authorization").iter().count(), 1);
        for gone in [
            "x-api-key",
            "host",
            "connection",
            "x-drop-me",
            "keep-alive",
            "x-forwarded-for",
        ] {
            assert!(h.get(gone).is_none(), "{gone} leaked upstream");
        }
        for kept in [
            "content-type",
            "accept",
            "user-agent",
            "traceparent",
            "accept-encoding",
            "if-none-match",
        ] {
            assert!(h.get(kept).is_some(), "{kept} not forwarded");
        }
        assert_eq!(h["x-request-id"], "rid");
    }

    #[test]
    fn a_modification_date_goes_upstream_only_beside_an_entity_tag() {
        let forward = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            upstream_headers(
                &h,
                &org(),
                &HeaderValue::from_static("rid"),
                Purpose::Forward,
            )
        };
        let date = ("if-modified-since", "Wed, 21 Oct 2026 07:28:00 GMT");
        assert!(forward(&[date]).get("if-modified-since").is_none());
        let both = forward(&[date, ("if-none-match", "\"v1\"")]);
        assert!(both.get("if-modified-since").is_some());
        assert!(both.get("if-none-match").is_some());
        // Preconditions of writes are not about `304`: they pass.
        let write = forward(&[("if-match", "\"v1\""), ("if-unmodified-since", date.1)]);
        assert!(write.get("if-match").is_some());
        assert!(write.get("if-unmodified-since").is_some());
    }

    #[test]
    fn a_kept_body_is_its_chunks_in_order() {
        let one = [Bytes::from_static(b"{\"id\":\"a1\"}")];
        assert_eq!(exact_body(&one, 11), one[0]);
        let many = [
            Bytes::from_static(b"{\"id\""),
            Bytes::new(),
            Bytes::from_static(b":\"a1\"}"),
        ];
        assert_eq!(
            exact_body(&many, 11),
            Bytes::from_static(b"{\"id\":\"a1\"}")
        );
        assert!(exact_body(&[], 0).is_empty());
    }

    #[test]
    fn answers_lose_hop_by_hop_headers_and_the_ones_connection_names() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, X-Internal, close"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("x-internal", "1"),
            ("content-type", "application/json"),
            ("x-ratelimit-remaining", "9"),
        ] {
            h.insert(k, HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "x-ratelimit-remaining"]);
    }

    #[test]
    fn cache_fill_asks_for_identity_and_the_full_representation() {
        let h = upstream_headers(
            &client_headers(),
            &org(),
            &HeaderValue::from_static("rid"),
            Purpose::CacheFill,
        );
        assert_eq!(h["accept-encoding"], "identity");
        assert!(h.get("if-none-match").is_none());
    }

    #[test]
    fn upstream_url_is_base_plus_path_plus_original_query() {
        let r = UpstreamRequest::new(
            "https://api.dialnexa.com/v1",
            "/agents2/a1",
            Some("version_number=3"),
            &Method::GET,
            &HeaderMap::new(),
            &org(),
            &HeaderValue::from_static("rid"),
            Bytes::new(),
            Purpose::Forward,
        )
        .unwrap();
        assert_eq!(
            r.uri.to_string(),
            "https://api.dialnexa.com/v1/agents2/a1?version_number=3"
        );
    }
}
