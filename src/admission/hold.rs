//! DialNexa's own refusal, read from an upstream answer: how long the org must hold its calls.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{header, HeaderMap, HeaderName, StatusCode};

static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// `X-RateLimit-Reset` above this is a Unix time (seconds since 1970, past 2001-09-09), below it a
/// number of seconds: no window lasts 31 years, and no clock reads before 2001.
const RESET_IS_A_TIME_ABOVE: u64 = 1_000_000_000;
/// A `429` or an empty quota that says nothing of when it ends: one second, long enough not to
/// hammer DialNexa, short enough that guessing wrong costs little (its answers name the window).
const DEFAULT_HOLD_WITHOUT_HINT: Duration = Duration::from_secs(1);

/// The hold an upstream answer calls for, capped at `max`: after a `429`, or an answer that says
/// no call is left (`X-RateLimit-Remaining: 0`), until `Retry-After` (seconds), else
/// `X-RateLimit-Reset` (seconds, or a Unix time). `None` when the answer calls for none.
pub(super) fn hold_after(
    status: StatusCode,
    headers: &HeaderMap,
    max: Duration,
    now: SystemTime,
) -> Option<Duration> {
    let exhausted = status == StatusCode::TOO_MANY_REQUESTS
        || headers.get(&X_RATELIMIT_REMAINING).and_then(seconds) == Some(0);
    if !exhausted || max.is_zero() {
        return None;
    }
    let hint = headers
        .get(header::RETRY_AFTER)
        .and_then(seconds)
        .or_else(|| {
            let reset = headers.get(&X_RATELIMIT_RESET).and_then(seconds)?;
            if reset <= RESET_IS_A_TIME_ABOVE {
                return Some(reset);
            }
            let unix = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
            Some(reset.saturating_sub(unix))
        })
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_HOLD_WITHOUT_HINT);
    Some(hint.min(max)).filter(|d| !d.is_zero())
}

/// A whole number of seconds as these headers carry it; anything else (an HTTP date, a sign, a
/// fraction) is not guessed at.
fn seconds(value: &http::HeaderValue) -> Option<u64> {
    let digits = value.to_str().ok()?.trim();
    if digits.is_empty() || digits.len() > 18 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(status: u16, pairs: &[(&'static str, &str)], max_secs: u64) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.insert(*k, v.parse().unwrap());
        }
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        hold_after(
            StatusCode::from_u16(status).unwrap(),
            &headers,
            Duration::from_secs(max_secs),
            now,
        )
    }

    #[test]
    fn a_429_holds_until_retry_after_capped() {
        assert_eq!(
            hold(429, &[("retry-after", "7")], 60),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            hold(429, &[("retry-after", "86400")], 60),
            Some(Duration::from_secs(60))
        );
        // Retry-After wins over the reset; an HTTP date is not guessed at.
        assert_eq!(
            hold(
                429,
                &[("retry-after", "3"), ("x-ratelimit-reset", "40")],
                60
            ),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            hold(429, &[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")], 60),
            Some(DEFAULT_HOLD_WITHOUT_HINT)
        );
        assert_eq!(hold(429, &[], 60), Some(DEFAULT_HOLD_WITHOUT_HINT));
        // A cap of 0 turns holds off.
        assert_eq!(hold(429, &[("retry-after", "7")], 0), None);
    }

    #[test]
    fn an_empty_quota_holds_until_its_reset_in_seconds_or_as_a_unix_time() {
        assert_eq!(
            hold(
                200,
                &[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "12")],
                60
            ),
            Some(Duration::from_secs(12))
        );
        assert_eq!(
            hold(
                200,
                &[
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", "1800000030")
                ],
                60
            ),
            Some(Duration::from_secs(30))
        );
        // A reset already past calls for no hold.
        assert_eq!(
            hold(
                200,
                &[
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", "1700000000")
                ],
                60
            ),
            None
        );
        assert_eq!(hold(200, &[("x-ratelimit-remaining", "1")], 60), None);
        assert_eq!(hold(200, &[], 60), None);
    }
}
