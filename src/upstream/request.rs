//! The upstream request: URL, method and body, and the header hygiene both ways (credential swap,
//! hop-by-hop and proxy headers, what a shared cache fill may carry, re-framing of answers).

use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::Full;

use std::sync::Arc;

use crate::error::GatewayError;
use crate::metrics::OrgUpstream;
use crate::request_id::X_REQUEST_ID;
use crate::settings::Org;
use crate::telemetry::TraceId;

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

/// Where `Transfer-Encoding` sits in [`HOP_BY_HOP`].
const TRANSFER_ENCODING_AT: usize = 7;

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

/// Why a request goes upstream: a plain forward passes the client's negotiation headers through;
/// a cache fill asks for the full, uncompressed representation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Forward,
    CacheFill,
}

/// Where a request goes upstream and on whose behalf: what an upstream request is made of besides
/// the client's own head.
pub struct Target<'a> {
    /// `upstream.base_url`.
    pub base_url: &'a str,
    /// The route's path below it (the client's query is appended as sent).
    pub path: &'a str,
    /// The organisation whose key is injected.
    pub org: &'a Org,
    /// Sent on as `X-Request-Id`.
    pub request_id: &'a HeaderValue,
}

/// Everything needed to (re)send one upstream request.
pub struct UpstreamRequest {
    pub(super) method: Method,
    pub(super) uri: Uri,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
    /// The org's upstream figures, told of every answer (see [`UpstreamRequest::observed_by`]).
    pub(super) observer: Option<Arc<OrgUpstream>>,
}

impl UpstreamRequest {
    /// The request `client` sent, made for upstream: to `to`, with `body`, its headers cleaned for
    /// `purpose`.
    pub fn new(
        client: &Parts,
        to: Target<'_>,
        body: Bytes,
        purpose: Purpose,
    ) -> Result<Self, GatewayError> {
        let (base_url, path, query) = (to.base_url, to.path, client.uri.query());
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
            method: client.method.clone(),
            uri,
            headers: upstream_headers(&client.headers, to.org, to.request_id, purpose),
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

    /// Opens the client span of this call (a child of `parent`, none when the request is not
    /// traced) and, with tracing on, gives upstream the gateway's `traceparent` in trace
    /// `trace_id` in place of the client's.
    pub fn traced(&mut self, parent: &tracing::Span, trace_id: TraceId) -> tracing::Span {
        let span = crate::telemetry::span::upstream(parent, &self.method, &self.uri);
        crate::telemetry::span::propagate(&span, trace_id, &mut self.headers);
        span
    }

    pub(super) fn to_request(&self) -> Request<Full<Bytes>> {
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
    if purpose == Purpose::CacheFill {
        return fill_headers(client, org, request_id);
    }
    let mut out = HeaderMap::with_capacity(client.len() + 2);
    let connection_named = connection_tokens(client);
    let named = |name: &HeaderName| {
        connection_named
            .iter()
            .any(|t| t.eq_ignore_ascii_case(name.as_str()))
    };
    for (name, value) in client {
        if HOP_BY_HOP.contains(name)
            || CLIENT_ONLY.contains(name)
            || is_forwarding_header(name)
            || named(name)
            || name == header::COOKIE
            // The gateway never answers `304` to a request without `If-None-Match`, so a date alone
            // must not give upstream a reason to (beside one, RFC 9110 §13.1.3 has it ignored anyway).
            || (name == header::IF_MODIFIED_SINCE && !client.contains_key(header::IF_NONE_MATCH))
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    if let Some(cookie) = one_cookie(client).filter(|_| !named(&header::COOKIE)) {
        out.insert(header::COOKIE, cookie);
    }
    out.insert(header::AUTHORIZATION, org.authorization.clone());
    out.insert(X_REQUEST_ID.clone(), request_id.clone());
    out
}

/// `X-Forwarded-*` of any kind (`-Port`, `-Server`, `-Prefix` as much as `-For`): they describe the
/// hops inside, which upstream has no business learning.
fn is_forwarding_header(name: &HeaderName) -> bool {
    name.as_str().starts_with("x-forwarded-")
}

/// What an HTTP/2 client sends as several `Cookie` fields ("crumbs"), joined with `"; "` into the
/// one field an HTTP/1.1 upstream expects (RFC 9113 §8.2.3).
fn one_cookie(client: &HeaderMap) -> Option<HeaderValue> {
    let mut crumbs = client.get_all(header::COOKIE).iter();
    let first = crumbs.next()?;
    let mut joined = first.as_bytes().to_vec();
    for crumb in crumbs {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(crumb.as_bytes());
    }
    HeaderValue::from_bytes(&joined).ok()
}

/// Headers a request of the organisation may share with every other, sent on a cache fill
/// besides the org key, identity encoding and the request id. A fill is stored for, and handed
/// to, every team of the organisation, so nothing one requester sent of its own (cookies,
/// languages, custom headers, preconditions) may shape it.
static FILL_SHARED: [HeaderName; 3] = [
    header::ACCEPT,
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
];

fn fill_headers(client: &HeaderMap, org: &Org, request_id: &HeaderValue) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(FILL_SHARED.len() + 3);
    let connection_named = connection_tokens(client);
    for name in &FILL_SHARED {
        // A header the client declared hop-by-hop is its own, even one the org would share.
        if connection_named
            .iter()
            .any(|t| t.eq_ignore_ascii_case(name.as_str()))
        {
            continue;
        }
        for value in client.get_all(name) {
            out.append(name.clone(), value.clone());
        }
    }
    out.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
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
        // By bytes, not `to_str`: a value with one non-ASCII byte still names its other headers.
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| {
            !t.is_empty()
                && !t.eq_ignore_ascii_case(b"close")
                && !t.eq_ignore_ascii_case(b"keep-alive")
        })
        .map(|t| String::from_utf8_lossy(t).into_owned())
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
    // RFC 9112 §6.3: beside `Transfer-Encoding`, a `Content-Length` says nothing true about the
    // body; passed on, a client would read that many bytes and take the rest for the next answer.
    // Without it hyper frames the body the gateway actually sends.
    if present[TRANSFER_ENCODING_AT] {
        headers.remove(header::CONTENT_LENGTH);
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(name);
    }
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
            upstream_rate_limit: None,
            max_upstream_hold: std::time::Duration::from_secs(60),
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
    fn transfer_encoding_is_where_reframing_looks_for_it() {
        assert_eq!(HOP_BY_HOP[TRANSFER_ENCODING_AT], header::TRANSFER_ENCODING);
    }

    #[test]
    fn an_answer_with_both_framings_loses_its_content_length() {
        let mut both = HeaderMap::new();
        both.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        both.insert("content-length", HeaderValue::from_static("5"));
        strip_hop_by_hop(&mut both);
        assert!(both.is_empty(), "{both:?}");
        let mut length_only = HeaderMap::new();
        length_only.insert("content-length", HeaderValue::from_static("5"));
        strip_hop_by_hop(&mut length_only);
        assert_eq!(length_only["content-length"], "5");
    }

    #[test]
    fn cookie_crumbs_reach_upstream_as_one_cookie() {
        let mut h = HeaderMap::new();
        h.append("cookie", HeaderValue::from_static("a=1"));
        h.append("cookie", HeaderValue::from_static("b=2"));
        let out = upstream_headers(
            &h,
            &org(),
            &HeaderValue::from_static("rid"),
            Purpose::Forward,
        );
        assert_eq!(
            out.get_all("cookie").iter().collect::<Vec<_>>(),
            ["a=1; b=2"]
        );
    }

    #[test]
    fn a_fill_sends_only_what_the_organisation_shares() {
        let mut h = client_headers();
        h.insert("cookie", HeaderValue::from_static("session=team-a"));
        h.insert("accept-language", HeaderValue::from_static("de"));
        h.insert("x-team-secret", HeaderValue::from_static("1"));
        let out = upstream_headers(
            &h,
            &org(),
            &HeaderValue::from_static("rid"),
            Purpose::CacheFill,
        );
        let mut names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "accept",
                "accept-encoding",
                "authorization",
                "traceparent",
                "x-request-id"
            ]
        );
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
        let (client, ()) = Request::get("/v1/agents2/a1?version_number=3")
            .body(())
            .unwrap()
            .into_parts();
        let to = Target {
            base_url: "https://api.dialnexa.com/v1",
            path: "/agents2/a1",
            org: &org(),
            request_id: &HeaderValue::from_static("rid"),
        };
        let r = UpstreamRequest::new(&client, to, Bytes::new(), Purpose::Forward).unwrap();
        assert_eq!(
            r.uri.to_string(),
            "https://api.dialnexa.com/v1/agents2/a1?version_number=3"
        );
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;
    use std::sync::Arc;

    use super::*;

    /// Headers that never go upstream whatever the client sent (beside `Connection` itself and the
    /// ones it names).
    const NEVER_FORWARDED: [&str; 16] = [
        "x-api-key",
        "host",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
        "proxy-connection",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "forwarded",
        "x-real-ip",
    ];

    /// What a cache fill may send, and nothing else.
    const FILL_ALLOWED: [&str; 6] = [
        "accept",
        "accept-encoding",
        "authorization",
        "x-request-id",
        "traceparent",
        "tracestate",
    ];

    fn org() -> Org {
        let mut authorization = HeaderValue::from_static("Bearer org-key");
        authorization.set_sensitive(true);
        Org {
            name: Arc::from("acme"),
            authorization,
            upstream_rate_limit: None,
            max_upstream_hold: std::time::Duration::from_secs(60),
        }
    }

    /// Any bytes a header value may hold: visible ASCII, space, tab and obs-text.
    fn value() -> impl Strategy<Value = HeaderValue> {
        prop::collection::vec(any::<u8>(), 0..12).prop_map(|bytes| {
            let bytes: Vec<u8> = bytes
                .into_iter()
                .map(|b| {
                    if (b < 0x20 && b != b'\t') || b == 0x7f {
                        b'x'
                    } else {
                        b
                    }
                })
                .collect();
            HeaderValue::from_bytes(&bytes).unwrap()
        })
    }

    /// Names a client might send: its own, the usual ones, and every one the gateway must drop.
    fn name() -> impl Strategy<Value = HeaderName> {
        prop_oneof![
            3 => "x-[a-z0-9-]{1,8}".prop_map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap()),
            2 => prop::sample::select(vec![
                "accept", "accept-encoding", "accept-language", "content-type", "user-agent",
                "if-none-match", "if-modified-since", "if-match", "traceparent", "tracestate",
                "x-request-id", "authorization",
            ])
            .prop_map(HeaderName::from_static),
            3 => prop::sample::select(NEVER_FORWARDED.to_vec()).prop_map(HeaderName::from_static),
        ]
    }

    /// A `Connection` value: options, some naming headers the request carries, in any case, with
    /// any spacing.
    /// `obs_text`: sometimes add an option that is not text (bytes above 0x7f).
    fn connection(names: Vec<HeaderName>, obs_text: bool) -> impl Strategy<Value = HeaderValue> {
        let mut tokens: Vec<String> = names.iter().map(|n| n.as_str().to_owned()).collect();
        tokens
            .extend(["close", "keep-alive", "Keep-Alive", "upgrade", "x-other"].map(String::from));
        tokens.push("cookie".to_owned());
        (
            prop::collection::vec(
                (prop::sample::select(tokens), any::<bool>(), 0usize..3),
                1..4,
            ),
            prop::option::weighted(0.2, prop::sample::select(vec![&b"\xe9"[..], b"x-\xff"])),
        )
            .prop_map(move |(picks, junk)| {
                let text: Vec<String> = picks
                    .into_iter()
                    .map(|(t, upper, spaces)| {
                        let t = if upper { t.to_ascii_uppercase() } else { t };
                        format!("{}{t}{}", " ".repeat(spaces), "\t".repeat(spaces % 2))
                    })
                    .collect();
                let mut bytes = text.join(",").into_bytes();
                // Now and then an option that is not text: the others are still named.
                if let Some(junk) = junk.filter(|_| obs_text) {
                    bytes.push(b',');
                    bytes.extend_from_slice(junk);
                }
                HeaderValue::from_bytes(&bytes).unwrap()
            })
    }

    /// A client's headers: pairs of any of the names above, cookie crumbs, and sometimes a
    /// `Connection` naming some of them.
    fn client_headers(obs_text: bool) -> impl Strategy<Value = (HeaderMap, Vec<HeaderValue>)> {
        (
            prop::collection::vec((name(), value()), 0..12),
            prop::collection::vec("[a-z]{1,4}=[a-zA-Z0-9]{0,4}", 0..4),
        )
            .prop_flat_map(move |(pairs, crumbs)| {
                let names: Vec<HeaderName> = pairs.iter().map(|(n, _)| n.clone()).collect();
                (
                    Just(pairs),
                    Just(crumbs),
                    prop::option::of(connection(names, obs_text)),
                )
            })
            .prop_map(|(pairs, crumbs, connection)| {
                let mut h = HeaderMap::new();
                for (n, v) in pairs {
                    h.append(n, v);
                }
                let crumbs: Vec<HeaderValue> = crumbs
                    .iter()
                    .map(|c| HeaderValue::from_str(c).unwrap())
                    .collect();
                for c in &crumbs {
                    h.append(header::COOKIE, c.clone());
                }
                if let Some(c) = connection {
                    h.append(header::CONNECTION, c);
                }
                (h, crumbs)
            })
    }

    fn request_id() -> impl Strategy<Value = HeaderValue> {
        "[!-~]{1,16}".prop_map(|s| HeaderValue::from_str(&s).unwrap())
    }

    /// The header names the client's `Connection` fields name, lower-cased, read from the bytes.
    fn named_by_connection(client: &HeaderMap) -> Vec<String> {
        client
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(|t| String::from_utf8_lossy(t).trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect()
    }

    fn all<'a>(h: &'a HeaderMap, name: &str) -> Vec<&'a HeaderValue> {
        h.get_all(name).iter().collect()
    }

    /// What both purposes promise: the org's key once, the request id once, no credential of the
    /// client's, no hop-by-hop or forwarding header.
    fn assert_common(out: &HeaderMap, rid: &HeaderValue) -> Result<(), TestCaseError> {
        prop_assert_eq!(all(out, "authorization"), [&org().authorization]);
        prop_assert_eq!(all(out, "x-request-id"), [rid]);
        for gone in NEVER_FORWARDED {
            prop_assert!(!out.contains_key(gone), "{gone} sent upstream: {out:?}");
        }
        Ok(())
    }

    /// Nothing the client's `Connection` names goes upstream (RFC 9110 §7.6.1).
    /// `exempt`: names whose own property is checked elsewhere.
    fn assert_connection_honoured(
        client: &HeaderMap,
        out: &HeaderMap,
        exempt: &[&str],
    ) -> Result<(), TestCaseError> {
        for named in named_by_connection(client) {
            // The gateway's own headers, not the client's, may carry a name `Connection` used.
            if ["authorization", "x-request-id", "accept-encoding"].contains(&named.as_str())
                || exempt.contains(&named.as_str())
            {
                continue;
            }
            prop_assert!(
                !out.contains_key(named.as_str()),
                "{named} is named by Connection yet sent upstream: {out:?}"
            );
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn a_forward_carries_only_what_may_leave(
            (client, crumbs) in client_headers(false),
            rid in request_id(),
        ) {
            let out = upstream_headers(&client, &org(), &rid, Purpose::Forward);
            assert_common(&out, &rid)?;
            assert_connection_honoured(&client, &out, &["cookie"])?;
            let cookies = all(&out, "cookie");
            if named_by_connection(&client).iter().any(|t| t == "cookie") {
                // See a_forward_sends_no_cookie_connection_names.
            } else if crumbs.is_empty() {
                prop_assert!(cookies.is_empty(), "{cookies:?}");
            } else {
                let joined: Vec<&str> = crumbs.iter().map(|c| c.to_str().unwrap()).collect();
                prop_assert_eq!(cookies, [&HeaderValue::from_str(&joined.join("; ")).unwrap()]);
            }
        }

        #[test]
        fn a_forward_keeps_the_rest_of_the_client_headers(
            (client, _) in client_headers(false),
            rid in request_id(),
        ) {
            let out = upstream_headers(&client, &org(), &rid, Purpose::Forward);
            let named = named_by_connection(&client);
            for name in client.keys() {
                let n = name.as_str();
                let dropped = NEVER_FORWARDED.contains(&n)
                    || ["authorization", "x-request-id", "cookie"].contains(&n)
                    || named.iter().any(|t| t == n)
                    || (n == "if-modified-since" && !client.contains_key("if-none-match"));
                if !dropped {
                    prop_assert_eq!(all(&out, n), all(&client, n), "{}", n);
                }
            }
        }

        #[test]
        fn a_fill_carries_only_what_the_organisation_shares(
            (client, _) in client_headers(false),
            rid in request_id(),
        ) {
            let out = upstream_headers(&client, &org(), &rid, Purpose::CacheFill);
            assert_common(&out, &rid)?;
            for name in out.keys() {
                prop_assert!(FILL_ALLOWED.contains(&name.as_str()), "{name} sent on a fill: {out:?}");
            }
            prop_assert_eq!(all(&out, "accept-encoding"), [&HeaderValue::from_static("identity")]);
            let named = named_by_connection(&client);
            for shared in ["accept", "traceparent", "tracestate"] {
                if !named.iter().any(|t| t == shared) {
                    prop_assert_eq!(all(&out, shared), all(&client, shared), "{}", shared);
                }
            }
        }

        #[test]
        fn a_fill_sends_nothing_connection_names(
            (client, _) in client_headers(false),
            rid in request_id(),
        ) {
            let out = upstream_headers(&client, &org(), &rid, Purpose::CacheFill);
            assert_connection_honoured(&client, &out, &[])?;
        }

        #[test]
        fn a_forward_sends_no_cookie_connection_names(
            (client, _) in client_headers(false),
            rid in request_id(),
        ) {
            let out = upstream_headers(&client, &org(), &rid, Purpose::Forward);
            assert_connection_honoured(&client, &out, &[])?;
        }

        #[test]
        fn a_forward_sends_nothing_a_non_text_connection_names(
            (client, _) in client_headers(true),
            rid in request_id(),
        ) {
            let out = upstream_headers(&client, &org(), &rid, Purpose::Forward);
            assert_connection_honoured(&client, &out, &["cookie"])?;
        }

        #[test]
        fn no_x_forwarded_header_reaches_upstream(
            (client, _) in client_headers(false),
            forwarded in prop::collection::vec(
                (
                    prop::sample::select(vec![
                        "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto",
                        "x-forwarded-port", "x-forwarded-server", "x-forwarded-prefix",
                        "x-forwarded-ssl", "x-forwarded-client-cert",
                    ]),
                    value(),
                ),
                1..4,
            ),
            rid in request_id(),
            purpose in prop::sample::select(vec![Purpose::Forward, Purpose::CacheFill]),
        ) {
            let mut client = client;
            for (name, value) in forwarded {
                client.append(name, value);
            }
            let out = upstream_headers(&client, &org(), &rid, purpose);
            for name in out.keys() {
                prop_assert!(!name.as_str().starts_with("x-forwarded-"), "{name} sent upstream");
            }
        }
    }
}
