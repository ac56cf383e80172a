//! What every upstream answer says of its organisation: its status class, and the quota DialNexa
//! states in `X-RateLimit-*`, which tells ops how close an org is to being locked out.

use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::labels::OrgLabel;

pub(super) static X_RATELIMIT_REMAINING: HeaderName =
    HeaderName::from_static("x-ratelimit-remaining");

pub(super) static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");

/// `upstream_responses_total`'s classes. `429` has its own, outside `4xx`: it is upstream's quota
/// refusing the org, the one client error an operator acts on by itself, and with it apart the
/// classes still add up to every answer.
pub(super) const STATUS_CLASSES: [&str; 5] = ["2xx", "3xx", "4xx", "429", "5xx"];

pub(super) fn status_class(status: StatusCode) -> usize {
    match status.as_u16() {
        429 => 3,
        200..=299 => 0,
        300..=399 => 1,
        400..=499 => 2,
        // 5xx, and the codes no sane upstream ends an exchange with (1xx, 600-999): both say
        // upstream misbehaved.
        _ => 4,
    }
}

/// One organisation's upstream figures, resolved once per config snapshot so that an upstream
/// answer costs a few atomic operations rather than family lookups.
#[derive(Debug)]
pub struct OrgUpstream {
    pub(super) responses: [Counter; STATUS_CLASSES.len()],
    pub(super) label: OrgLabel,
    pub(super) remaining_family: Family<OrgLabel, Gauge>,
    pub(super) limit_family: Family<OrgLabel, Gauge>,
    /// Created by the first answer that carries the header: an org never heard from has no quota
    /// series, rather than one at 0 that would look exhausted.
    pub(super) remaining: OnceLock<Gauge>,
    pub(super) limit: OnceLock<Gauge>,
}

impl OrgUpstream {
    /// Records an upstream answer: its status class, and the org's quota as upstream last stated it.
    pub fn answered(&self, status: StatusCode, headers: &HeaderMap) {
        self.responses[status_class(status)].inc();
        for (name, gauge, family) in [
            (
                &X_RATELIMIT_REMAINING,
                &self.remaining,
                &self.remaining_family,
            ),
            (&X_RATELIMIT_LIMIT, &self.limit, &self.limit_family),
        ] {
            if let Some(value) = headers.get(name).and_then(header_count) {
                gauge
                    .get_or_init(|| family.get_or_create(&self.label).clone())
                    .set(value);
            }
        }
    }
}

/// A non-negative decimal count, as `X-RateLimit-*` headers carry; anything else (absent, empty,
/// signed, fractional, a list, too long for an `i64`) is ignored rather than guessed at.
pub(super) fn header_count(value: &HeaderValue) -> Option<i64> {
    let digits = value.as_bytes().trim_ascii();
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0i64, |n, d| n * 10 + i64::from(d - b'0')),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_headers_are_plain_decimal_counts_or_nothing() {
        let count = |v: &'static str| header_count(&HeaderValue::from_static(v));
        assert_eq!(count("42"), Some(42));
        assert_eq!(count(" 7\t"), Some(7));
        assert_eq!(count("0"), Some(0));
        assert_eq!(count("999999999999999999"), Some(999_999_999_999_999_999));
        for bad in [
            "",
            " ",
            "-1",
            "+1",
            "1.5",
            "10, 10;w=60",
            "1e3",
            "9999999999999999999",
        ] {
            assert_eq!(count(bad), None, "{bad:?}");
        }
    }
}
