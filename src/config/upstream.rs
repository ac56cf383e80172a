//! `[upstream]`: DialNexa's base URL and the timeouts of calls to it. The OTLP collector's
//! `otlp_endpoint` follows the same URL rules.

use super::number::timeout_ms;
use super::problems::Problems;
use super::raw::RawUpstream;
use crate::settings::UpstreamSettings;

/// 2 s: a TCP (and TLS) connect to DialNexa takes milliseconds; one that takes seconds will not
/// succeed, and the request's time is better spent on the `502`.
const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 2_000;
/// 15 s for upstream's response head: DialNexa's slowest writes (agent creation) take a few
/// seconds; past this a client is better served by a `504` than by waiting on.
const DEFAULT_UPSTREAM_TIMEOUT_MS: u64 = 15_000;

pub(super) fn validate_upstream(raw: RawUpstream, p: &mut Problems) -> Option<UpstreamSettings> {
    let base_url = match raw.base_url {
        None => {
            p.push(
                "upstream.base_url",
                "is required (e.g. \"https://api.dialnexa.com/v1\")",
            );
            None
        }
        Some(url) => match validate_base_url(&url) {
            Ok(url) => Some(url),
            Err(why) => {
                p.push("upstream.base_url", format!("{url:?} {why}"));
                None
            }
        },
    };
    let connect_timeout = timeout_ms(
        raw.connect_timeout_ms,
        DEFAULT_CONNECT_TIMEOUT_MS,
        "upstream.connect_timeout_ms",
        p,
    );
    let timeout = timeout_ms(
        raw.timeout_ms,
        DEFAULT_UPSTREAM_TIMEOUT_MS,
        "upstream.timeout_ms",
        p,
    );
    Some(UpstreamSettings {
        base_url: base_url?,
        connect_timeout: connect_timeout?,
        timeout: timeout?,
    })
}

pub(super) fn validate_base_url(url: &str) -> Result<String, &'static str> {
    let uri: http::Uri = url.parse().map_err(|_| "is not a valid URL")?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err("must start with http:// or https://"),
    }
    if uri.authority().is_none_or(|a| a.host().is_empty()) {
        return Err("has no host");
    }
    // `http::Uri` takes any digits as a port; the connector would fail every request on them.
    let port = url::Url::parse(url).map(|u| u.port());
    if !matches!(port, Ok(None) | Ok(Some(1..))) {
        return Err("has a port outside 1 to 65535");
    }
    if uri.query().is_some() {
        return Err("must not carry a query string");
    }
    Ok(url.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_url_port_must_be_one_a_socket_can_have() {
        assert!(validate_base_url("http://127.0.0.1:65535/v1").is_ok());
        for url in [
            "http://127.0.0.1:99999/v1",
            "https://h:0/v1",
            "http://h:65536",
        ] {
            assert!(validate_base_url(url).is_err(), "{url}");
        }
    }
}
