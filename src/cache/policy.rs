//! How a read meets the cache: what the client's `Cache-Control` asks, whether upstream's answer
//! may be kept or shared, and the one [`CacheStatus`] value per answer that renders `X-Cache`,
//! RFC 9211 `Cache-Status`, `Age` and the audit line's `cache` field.

use std::time::Duration;

use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::http::{header_number, HeaderText};

/// How the cache took part in answering a read, in a word: `X-Cache` and the audit `cache` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Miss,
    Bypass,
    Stale,
}

impl CacheOutcome {
    /// The audit line's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Bypass => "bypass",
            Self::Stale => "stale",
        }
    }

    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Self::Hit => "HIT",
            Self::Miss => "MISS",
            Self::Bypass => "BYPASS",
            Self::Stale => "STALE",
        })
    }
}

static X_CACHE: HeaderName = HeaderName::from_static("x-cache");
static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Why a cacheable read went upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fwd {
    /// Nothing fresh was stored.
    Miss,
    /// The client asked for a fresh copy (`no-cache`).
    Request,
    /// The cache was left out (client `no-store`, or caching off).
    Bypass,
}

impl Fwd {
    fn as_str(self) -> &'static str {
        match self {
            Self::Miss => "miss",
            Self::Request => "request",
            Self::Bypass => "bypass",
        }
    }
}

/// How the cache took part in one answer, whole: the one value that renders `X-Cache`, RFC 9211
/// `Cache-Status` and `Age` (see [`CacheStatus::render`]) and the audit field ([`CacheStatus::outcome`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from a fresh stored copy.
    Hit { ttl_left: Duration, age: Duration },
    /// Went upstream. `status` is upstream's, when it answered; `detail` says what else happened
    /// (`too-large` when the answer could not be kept, or the gateway's error code when it failed).
    Forwarded {
        why: Fwd,
        status: Option<StatusCode>,
        detail: Option<&'static str>,
    },
    /// Upstream failed (with `status` when it answered `5xx`) and an expired copy stood in.
    Stale {
        status: Option<StatusCode>,
        age: Duration,
    },
}

impl CacheStatus {
    pub fn outcome(self) -> CacheOutcome {
        match self {
            Self::Hit { .. } => CacheOutcome::Hit,
            Self::Forwarded {
                why: Fwd::Bypass, ..
            } => CacheOutcome::Bypass,
            Self::Forwarded { .. } => CacheOutcome::Miss,
            Self::Stale { .. } => CacheOutcome::Stale,
        }
    }

    /// Writes `X-Cache`, `Cache-Status` and `Age` (only answers from a stored copy have an age).
    /// Built without `format!`: hits and misses are nearly every answer.
    pub fn render(self, headers: &mut HeaderMap) {
        headers.insert(X_CACHE.clone(), self.outcome().header_value());
        let mut text = HeaderText::with_capacity(64);
        text.push("dialnexa-gateway; ");
        let age = match self {
            Self::Hit { ttl_left, age } => {
                text.push("hit; ttl=").push_u64(ttl_left.as_secs());
                Some(age)
            }
            Self::Forwarded {
                why,
                status,
                detail,
            } => {
                text.push("fwd=").push(why.as_str());
                if let Some(status) = status.filter(|_| why != Fwd::Bypass) {
                    text.push("; fwd-status=").push_u64(status.as_u16().into());
                }
                if let Some(detail) = detail {
                    text.push("; detail=").push(detail);
                }
                None
            }
            Self::Stale { status, age } => {
                text.push("fwd=stale");
                if let Some(status) = status {
                    text.push("; fwd-status=").push_u64(status.as_u16().into());
                }
                text.push("; detail=stale-if-error");
                Some(age)
            }
        };
        if let Some(value) = text.finish() {
            headers.insert(CACHE_STATUS.clone(), value);
        }
        match age {
            Some(age) => {
                headers.insert(header::AGE, header_number(age.as_secs()));
            }
            None => {
                headers.remove(header::AGE);
            }
        }
    }
}

/// What the client's `Cache-Control` asks of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientDirective {
    /// Use the cache normally.
    Normal,
    /// `no-cache` (or `max-age=0`, `Pragma: no-cache`): fetch fresh and refresh the entry.
    Refresh,
    /// `no-store`: neither read nor write the cache.
    Bypass,
}

pub fn client_directive(headers: &HeaderMap) -> ClientDirective {
    let mut refresh = false;
    for directive in cache_directives(headers) {
        if directive.eq_ignore_ascii_case("no-store") {
            return ClientDirective::Bypass;
        }
        refresh |= directive.eq_ignore_ascii_case("no-cache")
            || directive.eq_ignore_ascii_case("max-age=0");
    }
    // `Pragma: no-cache`, HTTP/1.0's spelling of the same ask (RFC 9111 §5.4).
    let pragma_no_cache = headers
        .get(header::PRAGMA)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("no-cache"));
    if refresh || pragma_no_cache {
        ClientDirective::Refresh
    } else {
        ClientDirective::Normal
    }
}

/// Every directive of every `Cache-Control` field, trimmed, in the order sent (RFC 9111 §5.2: a
/// comma-separated list, names compared without case). A field that is not visible ASCII is
/// skipped whole. The one reading of `Cache-Control`, the client's and upstream's alike. The
/// `headers` crate's `CacheControl` parses the same, but would bring `sha1`, `base64` and `mime`
/// along for the three directives read here.
fn cache_directives(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// An answer made for the request that asked and no other (DESIGN, cache rules): it sets a cookie,
/// or says with `Vary` that it depends on request headers a fill does not send (only
/// `Accept-Encoding`, which a fill pins to `identity`, is harmless). Neither stored nor handed to
/// the requests that waited on it.
pub fn is_personal(headers: &HeaderMap) -> bool {
    headers.contains_key(header::SET_COOKIE)
        || headers
            .get_all(header::VARY)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .any(|name| !name.is_empty() && !name.eq_ignore_ascii_case(b"accept-encoding"))
}

/// Upstream forbids storing: `no-store` (and `no-cache`, which would need revalidation we do not do).
/// `private` does not: the cache is per organisation. A compressed body is not stored either: fills
/// ask for identity, the cache keeps bodies uncompressed, and an upstream that compresses anyway
/// would have its encoding replayed to clients that never accepted it.
pub(super) fn upstream_forbids_store(headers: &HeaderMap) -> bool {
    let encoded = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    encoded
        || cache_directives(headers)
            .any(|d| d.eq_ignore_ascii_case("no-store") || d.eq_ignore_ascii_case("no-cache"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_that_set_cookies_or_vary_on_request_headers_are_personal() {
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, HeaderValue::from_static(v));
            }
            is_personal(&h)
        };
        assert!(!with(&[("content-type", "application/json")]));
        assert!(!with(&[("vary", "Accept-Encoding")]));
        assert!(!with(&[("vary", "accept-encoding, ")]));
        assert!(with(&[("vary", "Accept-Encoding, Accept-Language")]));
        assert!(with(&[("vary", "accept-encoding"), ("vary", "Cookie")]));
        assert!(with(&[("vary", "*")]));
        assert!(with(&[("set-cookie", "session=1")]));
    }

    #[test]
    fn cache_control_is_read_alike_in_requests_and_answers() {
        let with = |values: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::CACHE_CONTROL, HeaderValue::from_static(v));
            }
            (client_directive(&h), upstream_forbids_store(&h))
        };
        assert_eq!(with(&[]), (ClientDirective::Normal, false));
        assert_eq!(
            with(&["max-age=60 , private"]),
            (ClientDirective::Normal, false)
        );
        assert_eq!(
            with(&["max-age=60", " No-Cache"]),
            (ClientDirective::Refresh, true)
        );
        assert_eq!(with(&["public,NO-STORE"]), (ClientDirective::Bypass, true));
        // `max-age=0` asks a fresh copy of the cache; in an answer it forbids nothing.
        assert_eq!(with(&["MAX-AGE=0"]), (ClientDirective::Refresh, false));
    }

    fn rendered(status: CacheStatus) -> (String, String, Option<String>) {
        let mut h = HeaderMap::new();
        h.insert(header::AGE, HeaderValue::from_static("9"));
        status.render(&mut h);
        let text = |n: &str| h.get(n).map(|v| v.to_str().unwrap().to_owned());
        (
            text("x-cache").unwrap(),
            text("cache-status").unwrap(),
            text("age"),
        )
    }

    #[test]
    fn one_value_renders_x_cache_cache_status_and_age_together() {
        let secs = Duration::from_secs;
        assert_eq!(
            rendered(CacheStatus::Hit {
                ttl_left: secs(42),
                age: secs(18)
            }),
            (
                "HIT".into(),
                "dialnexa-gateway; hit; ttl=42".into(),
                Some("18".into())
            )
        );
        let miss = CacheStatus::Forwarded {
            why: Fwd::Miss,
            status: Some(StatusCode::OK),
            detail: None,
        };
        assert_eq!(
            rendered(miss),
            (
                "MISS".into(),
                "dialnexa-gateway; fwd=miss; fwd-status=200".into(),
                None
            )
        );
        assert_eq!(miss.outcome(), CacheOutcome::Miss);
        let big = CacheStatus::Forwarded {
            why: Fwd::Request,
            status: Some(StatusCode::OK),
            detail: Some("too-large"),
        };
        assert_eq!(
            rendered(big).1,
            "dialnexa-gateway; fwd=request; fwd-status=200; detail=too-large"
        );
        let bypass = CacheStatus::Forwarded {
            why: Fwd::Bypass,
            status: Some(StatusCode::OK),
            detail: None,
        };
        assert_eq!(
            rendered(bypass),
            ("BYPASS".into(), "dialnexa-gateway; fwd=bypass".into(), None)
        );
        let failed = CacheStatus::Forwarded {
            why: Fwd::Miss,
            status: None,
            detail: Some("upstream_timeout"),
        };
        assert_eq!(
            rendered(failed).1,
            "dialnexa-gateway; fwd=miss; detail=upstream_timeout"
        );
        let stale = CacheStatus::Stale {
            status: Some(StatusCode::BAD_GATEWAY),
            age: secs(70),
        };
        assert_eq!(
            rendered(stale),
            (
                "STALE".into(),
                "dialnexa-gateway; fwd=stale; fwd-status=502; detail=stale-if-error".into(),
                Some("70".into())
            )
        );
    }
}
