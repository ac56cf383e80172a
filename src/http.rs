//! HTTP vocabulary every room shares: the one response body type every stage hands back (a boxed
//! stream of bytes, so cached answers, gateway errors and streamed upstream bodies travel through
//! the same pipeline), the one spelling of a method's name, and header values built without
//! `core::fmt`: on the cache-hit path the `format!` calls behind the quota and `Cache-Status`
//! headers cost more instructions than the rest of those headers together (callgrind).

use std::borrow::Cow;
use std::sync::LazyLock;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, Method};
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

/// The first error of type `E` in `err`'s chain of causes, `err` itself included: hyper's
/// errors arrive wrapped (in the client's, in the connection's), and what they say is asked of
/// hyper's own. The walk is anyhow's `Chain`, usable on any error without making an `anyhow::Error`.
pub fn find_cause<'a, E: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    anyhow::Chain::new(err).find_map(|e| e.downcast_ref::<E>())
}

/// The method's name for metrics labels and audit lines: the standard ones without an allocation.
pub fn method_name(method: &Method) -> Cow<'static, str> {
    Cow::Borrowed(match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => return Cow::Owned(method.as_str().to_owned()),
    })
}

/// Numbers below this come from a table built once: `Age`, `RateLimit-Reset` and, for most
/// quotas, `RateLimit-Remaining` are small, and cloning a built value costs no allocation.
const SMALL_NUMBERS: u64 = 1024;

static SMALL: LazyLock<Vec<HeaderValue>> =
    LazyLock::new(|| (0..SMALL_NUMBERS).map(HeaderValue::from).collect());

/// `n` in decimal as a header value.
pub fn header_number(n: u64) -> HeaderValue {
    if n < SMALL_NUMBERS {
        SMALL[n as usize].clone()
    } else {
        HeaderValue::from(n)
    }
}

/// A header value being written: text pieces and decimal numbers, then [`HeaderText::finish`].
pub struct HeaderText(BytesMut);

impl HeaderText {
    pub fn with_capacity(capacity: usize) -> Self {
        Self(BytesMut::with_capacity(capacity))
    }

    pub fn push(&mut self, text: &str) -> &mut Self {
        self.0.put_slice(text.as_bytes());
        self
    }

    pub fn push_u64(&mut self, n: u64) -> &mut Self {
        self.0.put_slice(itoa::Buffer::new().format(n).as_bytes());
        self
    }

    /// The value, without copying the bytes; `None` if the text is not a valid header value.
    pub fn finish(self) -> Option<HeaderValue> {
        HeaderValue::from_maybe_shared(self.0.freeze()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_is_found_at_any_depth_and_only_of_its_type() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] Inner);
        #[derive(Debug, thiserror::Error)]
        #[error("inner")]
        struct Inner(#[source] std::num::ParseIntError);
        let parse = "x".parse::<u8>().unwrap_err();
        let wrapped = Outer(Inner(parse.clone()));
        assert_eq!(
            find_cause::<std::num::ParseIntError>(&wrapped),
            Some(&parse)
        );
        assert_eq!(find_cause::<std::num::ParseIntError>(&parse), Some(&parse));
        assert!(find_cause::<std::fmt::Error>(&wrapped).is_none());
    }

    #[test]
    fn numbers_and_text_make_the_same_value_as_format() {
        for n in [0u64, 7, 10, 59, 1_000_000_000, u64::MAX] {
            let mut t = HeaderText::with_capacity(8);
            t.push("\"team\";r=")
                .push_u64(n)
                .push(";t=")
                .push_u64(n / 3);
            assert_eq!(
                t.finish().unwrap(),
                format!("\"team\";r={n};t={}", n / 3).as_str()
            );
        }
    }

    #[test]
    fn number_values_match_the_standard_ones() {
        for n in [
            0u64,
            1,
            9,
            10,
            599,
            1023,
            1024,
            1025,
            1_000_000_000,
            u64::MAX,
        ] {
            assert_eq!(header_number(n), HeaderValue::from(n));
        }
    }

    #[test]
    fn invalid_text_is_no_value() {
        let mut t = HeaderText::with_capacity(4);
        t.push("a\nb");
        assert!(t.finish().is_none());
    }
}
