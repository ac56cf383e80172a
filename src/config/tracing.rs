//! `[tracing]`: the OTLP collector spans are exported to, and the sampling of requests that bring
//! no sampled parent of their own.

use super::problems::Problems;
use super::raw::RawTracing;
use super::upstream::validate_base_url;
use crate::settings::TracingSettings;

/// DESIGN's example ratio: one request in ten traced keeps a busy gateway's exports small, while
/// a client that samples its own traces still gets every one of them (their sampled flag wins).
const DEFAULT_SAMPLE_RATIO: f64 = 0.1;
/// The name a trace view shows the gateway's spans under; OpenTelemetry's `service.name`.
const DEFAULT_SERVICE_NAME: &str = "dialnexa-gateway";

/// `demo --otlp-endpoint URL`: every request traced, under the default service name.
pub fn demo_tracing(otlp_endpoint: String) -> Result<TracingSettings, super::ConfigError> {
    let mut p = Problems(Vec::new());
    let raw = RawTracing {
        otlp_endpoint: Some(otlp_endpoint),
        sample_ratio: Some(1.0),
        service_name: None,
    };
    validate_tracing(raw, &mut p).ok_or(super::ConfigError { problems: p.0 })
}

pub(super) fn validate_tracing(raw: RawTracing, p: &mut Problems) -> Option<TracingSettings> {
    let before = p.0.len();
    let otlp_endpoint = match raw.otlp_endpoint {
        None => {
            p.push(
                "tracing.otlp_endpoint",
                "is required in [tracing] (e.g. \"http://otel-collector:4318\")",
            );
            None
        }
        // The same rules as the upstream's base URL (a host, no query), and plain HTTP: the
        // exporter's client is built without TLS (see Cargo.toml), so a node-local collector
        // or agent is the hop that speaks TLS onwards.
        Some(url) => match validate_base_url(&url) {
            Ok(_)
                if !url
                    .get(..7)
                    .is_some_and(|s| s.eq_ignore_ascii_case("http://")) =>
            {
                p.push(
                    "tracing.otlp_endpoint",
                    format!("{url:?} must start with http:// (send to a local collector, which can forward over TLS)"),
                );
                None
            }
            Ok(url) => Some(url),
            Err(why) => {
                p.push("tracing.otlp_endpoint", format!("{url:?} {why}"));
                None
            }
        },
    };
    let sample_ratio = raw.sample_ratio.unwrap_or(DEFAULT_SAMPLE_RATIO);
    // `contains` is false for NaN as well.
    if !(0.0..=1.0).contains(&sample_ratio) {
        p.push(
            "tracing.sample_ratio",
            format!("must be between 0 and 1, not {sample_ratio}"),
        );
    }
    let service_name = raw
        .service_name
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.into());
    if service_name.trim().is_empty() || service_name.chars().any(char::is_control) {
        p.push(
            "tracing.service_name",
            "must be a non-empty name without control characters",
        );
    }
    if p.0.len() != before {
        return None;
    }
    Some(TracingSettings {
        otlp_endpoint: otlp_endpoint?,
        sample_ratio,
        service_name,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{base, key_file, ONE_TEAM};
    use crate::settings::Settings;

    fn with_tracing(section: &str) -> Result<Settings, Vec<String>> {
        let key = key_file("org-key-made-up");
        let toml = base(key.path(), &format!("{ONE_TEAM}{section}\n"));
        Settings::from_toml_str(&toml).map_err(|e| e.problems)
    }

    #[test]
    fn no_tracing_section_exports_nothing() {
        assert_eq!(with_tracing("").unwrap().tracing, None);
    }

    #[test]
    fn a_tracing_section_gets_documented_defaults() {
        let t = with_tracing("[tracing]\notlp_endpoint = \"http://collector:4318/\"")
            .unwrap()
            .tracing
            .unwrap();
        assert_eq!(t.otlp_endpoint, "http://collector:4318");
        assert_eq!(t.sample_ratio, 0.1);
        assert_eq!(t.service_name, "dialnexa-gateway");
    }

    #[test]
    fn bad_endpoint_and_ratio_are_both_named() {
        let problems = with_tracing(
            "[tracing]\notlp_endpoint = \"collector:4318\"\nsample_ratio = 1.5\nservice_name = \"\"",
        )
        .unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[0].starts_with("tracing.otlp_endpoint: "),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("tracing.sample_ratio: "),
            "{problems:?}"
        );
        assert!(
            problems[2].starts_with("tracing.service_name: "),
            "{problems:?}"
        );
        let negative =
            with_tracing("[tracing]\notlp_endpoint = \"http://c:4318\"\nsample_ratio = -0.1")
                .unwrap_err();
        assert!(
            negative[0].starts_with("tracing.sample_ratio: "),
            "{negative:?}"
        );
        let tls = with_tracing("[tracing]\notlp_endpoint = \"https://c:4318\"").unwrap_err();
        assert!(tls[0].starts_with("tracing.otlp_endpoint: "), "{tls:?}");
        assert!(tls[0].contains("http://"), "{tls:?}");
        let missing = with_tracing("[tracing]\nsample_ratio = 1.0").unwrap_err();
        assert!(
            missing[0].starts_with("tracing.otlp_endpoint: "),
            "{missing:?}"
        );
    }

    #[test]
    fn unknown_tracing_key_is_refused() {
        let problems =
            with_tracing("[tracing]\notlp_endpoint = \"http://c:4318\"\nratio = 1").unwrap_err();
        assert!(problems.iter().any(|p| p.contains("ratio")), "{problems:?}");
    }
}
