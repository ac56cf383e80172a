//! The upstream request: URL, method and body, and the header hygiene both ways (credential swap,
//! hop-by-hop and proxy headers, what a shared cache fill may carry, re-framing of answers).

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::Full;

use crate::error::GatewayError;
use crate::request_id::X_REQUEST_ID;
use crate::settings::Org;

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

/// Everything needed to (re)send one upstream request.
pub struct UpstreamRequest {
    pub(super) method: Method,
    pub(super) uri: Uri,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
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
        })
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
    for (name, value) in client {
        if HOP_BY_HOP.contains(name)
            || CLIENT_ONLY.contains(name)
            || connection_named
                .iter()
                .any(|t| t.eq_ignore_ascii_case(name.as_str()))
            || name == header::COOKIE
            // The gateway never answers `304` to a request without `If-None-Match`, so a date alone
            // must not give upstream a reason to (beside one, RFC 9110 §13.1.3 has it ignored anyway).
            || (name == header::IF_MODIFIED_SINCE && !client.contains_key(header::IF_NONE_MATCH))
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    if let Some(cookie) = one_cookie(client) {
        out.insert(header::COOKIE, cookie);
    }
    out.insert(header::AUTHORIZATION, org.authorization.clone());
    out.insert(X_REQUEST_ID.clone(), request_id.clone());
    out
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
    for name in &FILL_SHARED {
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
