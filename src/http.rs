//! HTTP vocabulary every room shares: the one response body type every stage hands back (a boxed
//! stream of bytes, so cached answers, gateway errors and streamed upstream bodies travel through
//! the same pipeline).

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A `HEAD` answer carries a `GET` answer's headers and never a body. hyper leaves the body out
/// itself on HTTP/1.1 but sends it on HTTP/2, where the client then sees a protocol error: the
/// gateway's own answers (errors, probes) are the ones with a body to leave out.
/// The `Content-Length` stays the one the `GET` would have (RFC 9110 §8.6).
pub fn drop_for_head(method: &http::Method, resp: &mut http::Response<ProxyBody>) {
    if method != http::Method::HEAD {
        return;
    }
    let length = http_body::Body::size_hint(resp.body()).exact();
    if let Some(length) = length.filter(|n| *n > 0) {
        resp.headers_mut()
            .entry(http::header::CONTENT_LENGTH)
            .or_insert_with(|| http::HeaderValue::from(length));
    }
    *resp.body_mut() = empty();
}
