//! An HTTP(S) base URL as the config names one: the upstream's `base_url` and the OTLP collector's
//! `otlp_endpoint` follow the same rules.

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
