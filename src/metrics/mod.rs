//! The figures `/metrics` serves, in Prometheus text format (prometheus-client). Stages record into
//! this one struct; nothing else keeps counters of its own. Every label value comes from the config
//! (team, org) or from a fixed set, never from a path, an id or a header, so the series stay bounded.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

mod answers;
mod budget;
mod cluster;
mod config;
mod labels;
mod process;
mod register;
mod team;
mod text;
mod upstream;

pub use answers::RouteClass;
pub use budget::{BudgetCounters, BudgetMetrics};
pub use cluster::ClusterMetrics;
pub use config::{ConfigMetrics, KeyLastUsed};
pub use labels::*;
pub use team::TeamCounters;
pub use upstream::OrgUpstream;

use answers::{
    duration_labels, duration_slot, DurationLabels, DURATION_SLOTS, REQUEST_DURATION_BUCKETS,
};

/// The prefix of every family but the standard `process_*` ones.
const PREFIX: &str = "dialnexa_gateway";

/// Spans lost on the way to the collector. A process-wide counter rather than a field of
/// [`Metrics`]: the OTLP exporter counts from the SDK's own thread, which holds no [`Metrics`].
static TRACE_SPANS_DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);

/// The handle on `trace_spans_dropped_total` (the same counter every time).
pub fn trace_spans_dropped() -> Counter {
    TRACE_SPANS_DROPPED.clone()
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub upstream_duration: Histogram,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub cache_stale: Counter,
    pub cache_bypass: Counter,
    pub cache_coalesced: Counter,
    pub cache_invalidations: Counter,
    pub cache_evictions: Counter,
    pub cache_bytes: Gauge,
    pub cache_entries: Gauge,
    pub rate_allowed: Family<TeamLabel, Counter>,
    pub rate_limited: Family<TeamLabel, Counter>,
    pub audit_written: Counter,
    pub audit_failed: Counter,
    pub audit_backpressure_waits: Counter,
    pub config_reloads: Family<ResultLabel, Counter>,
    /// Cluster mode's figures (registered always; flat without `[cluster]`).
    pub cluster: ClusterMetrics,
    /// The org budget's figures.
    pub budget: BudgetMetrics,
    /// The config served and its team keys' lives.
    pub config: ConfigMetrics,
    request_duration: Family<DurationLabels, Histogram, fn() -> Histogram>,
    /// `request_duration`'s series, by [`duration_slot`]: resolved once, so that observing an
    /// answer takes no family lookup (a hash under a lock).
    durations: [Histogram; DURATION_SLOTS.len()],
    upstream_responses: Family<UpstreamResponseLabels, Counter>,
    ratelimit_remaining: Family<OrgLabel, Gauge>,
    ratelimit_limit: Family<OrgLabel, Gauge>,
    build_info: Family<[(&'static str, &'static str); 1], Gauge>,
    /// The label of requests no team was identified for.
    no_team: TeamName,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let request_duration: Family<DurationLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(REQUEST_DURATION_BUCKETS));
        let durations = DURATION_SLOTS.map(|(class, cache)| {
            request_duration
                .get_or_create(&duration_labels(class, cache))
                .clone()
        });
        let m = Self {
            registry: Registry::default(),
            requests: Family::default(),
            // 0.5 ms .. ~16 s: from loopback upstreams to DialNexa's slowest writes.
            upstream_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            cache_stale: Counter::default(),
            cache_bypass: Counter::default(),
            cache_coalesced: Counter::default(),
            cache_invalidations: Counter::default(),
            cache_evictions: Counter::default(),
            cache_bytes: Gauge::default(),
            cache_entries: Gauge::default(),
            rate_allowed: Family::default(),
            rate_limited: Family::default(),
            audit_written: Counter::default(),
            audit_failed: Counter::default(),
            audit_backpressure_waits: Counter::default(),
            config_reloads: Family::default(),
            cluster: ClusterMetrics::new(),
            budget: BudgetMetrics::default(),
            config: ConfigMetrics::default(),
            request_duration,
            durations,
            upstream_responses: Family::default(),
            ratelimit_remaining: Family::default(),
            ratelimit_limit: Family::default(),
            build_info: Family::default(),
            no_team: TeamName(Arc::from("")),
        };
        // Both results exist at 0 from the start: Prometheus' `increase()` cannot see the first
        // increment of a series that appears already at 1, so an alert on failed reloads would
        // miss the first (usually the only) failure.
        for result in ["ok", "failed"] {
            let _ = m.config_reloads.get_or_create(&ResultLabel { result });
        }
        m.build_info
            .get_or_create(&[("version", env!("CARGO_PKG_VERSION"))])
            .set(1);
        m.register()
    }

    /// Observes a request's whole answer time; called once per answered request, when its audit
    /// line is sealed.
    pub fn answered(&self, class: RouteClass, cache: Option<&'static str>, took: Duration) {
        let secs = took.as_secs_f64();
        match duration_slot(class, cache) {
            Some(i) => self.durations[i].observe(secs),
            // A combination no request has today (a cache outcome on a write): still counted.
            None => self
                .request_duration
                .get_or_create(&duration_labels(class, cache))
                .observe(secs),
        }
    }

    pub fn request(&self, team: Option<&Arc<str>>, method: &http::Method, status: u16) {
        let method = match crate::http::method_name(method) {
            // Arbitrary method names would make the label set unbounded.
            Cow::Owned(_) => Cow::Borrowed("OTHER"),
            standard => standard,
        };
        self.requests
            .get_or_create(&RequestLabels {
                team: team.map_or_else(|| self.no_team.clone(), |t| TeamName(t.clone())),
                method,
                status,
            })
            .inc();
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.config_reloads
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Drops per-team series of teams a reload removed, so label sets stay bounded.
    pub fn forget_team(&self, team: &str) {
        let label = TeamLabel {
            team: TeamName(Arc::from(team)),
        };
        self.rate_allowed.remove(&label);
        self.rate_limited.remove(&label);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

    #[test]
    fn encodes_conventional_names_with_units_and_labels() {
        let m = Metrics::new();
        m.request(Some(&Arc::from("billing")), &http::Method::GET, 200);
        m.cache_hits.inc();
        m.upstream_duration.observe(0.01);
        m.reload(false);
        let text = m.encode();
        assert!(
            text.contains(
                "dialnexa_gateway_requests_total{team=\"billing\",method=\"GET\",status=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("dialnexa_gateway_cache_hits_total 1"));
        assert!(text.contains("dialnexa_gateway_upstream_request_duration_seconds_bucket"));
        assert!(text.contains("dialnexa_gateway_config_reloads_total{result=\"failed\"} 1"));
        assert!(text.contains("dialnexa_gateway_cache_bytes "));
    }

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn answer_times_are_counted_by_route_class_and_cache_outcome() {
        let m = Metrics::new();
        m.answered(
            RouteClass::AgentRead,
            Some("hit"),
            Duration::from_micros(50),
        );
        m.answered(
            RouteClass::AgentRead,
            Some("miss"),
            Duration::from_millis(40),
        );
        m.answered(RouteClass::Write, None, Duration::from_secs(3));
        // Not a combination requests have today, but still counted, under its own labels.
        m.answered(RouteClass::Write, Some("hit"), Duration::from_secs(1));
        let text = m.encode();
        let h = "dialnexa_gateway_request_duration_seconds";
        let count = |labels: &str| sample(&text, &format!("{h}_count{{{labels}}}"));
        assert_eq!(
            count(r#"route_class="agent_read",cache="hit""#),
            Some(1.0),
            "{text}"
        );
        assert_eq!(count(r#"route_class="agent_read",cache="miss""#), Some(1.0));
        assert_eq!(count(r#"route_class="write",cache="none""#), Some(1.0));
        assert_eq!(count(r#"route_class="write",cache="hit""#), Some(1.0));
        // Every possible label set is there from the start, at 0.
        assert_eq!(count(r#"route_class="other_read",cache="none""#), Some(0.0));
        assert_eq!(
            count(r#"route_class="agent_read",cache="stale""#),
            Some(0.0)
        );
        let bucket = |le: &str| {
            sample(
                &text,
                &format!(r#"{h}_bucket{{le="{le}",route_class="agent_read",cache="hit"}}"#),
            )
        };
        assert_eq!(bucket("0.0001"), Some(1.0), "{text}");
        assert_eq!(bucket("30.0"), Some(1.0));
        assert_eq!(
            sample(
                &text,
                &format!(r#"{h}_bucket{{le="2.5",route_class="write",cache="none"}}"#)
            ),
            Some(0.0)
        );
    }

    #[test]
    fn route_class_follows_method_and_path() {
        use http::Method;
        assert_eq!(
            RouteClass::of_route(&Method::GET, true),
            RouteClass::AgentRead
        );
        assert_eq!(
            RouteClass::of_route(&Method::HEAD, true),
            RouteClass::OtherRead
        );
        assert_eq!(
            RouteClass::of_route(&Method::GET, false),
            RouteClass::OtherRead
        );
        assert_eq!(
            RouteClass::of_route(&Method::PATCH, true),
            RouteClass::Write
        );
        assert_eq!(RouteClass::of(&Method::DELETE), RouteClass::Write);
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn upstream_answers_count_by_org_and_class_and_keep_the_last_stated_quota() {
        let m = Metrics::new();
        let acme = m
            .team_counters(&Arc::from("billing"), &Arc::from("acme"))
            .upstream;
        let text = m.encode();
        let series = |text: &str, name: &str, labels: &str| {
            sample(text, &format!("dialnexa_gateway_{name}{{{labels}}}"))
        };
        // Counters exist at 0 before any answer; the quota gauges do not (0 would read "exhausted").
        assert_eq!(
            series(
                &text,
                "upstream_responses_total",
                r#"org="acme",status_class="5xx""#
            ),
            Some(0.0)
        );
        assert!(!text.contains("upstream_ratelimit_remaining{"), "{text}");

        let quota = [
            ("x-ratelimit-limit", "600"),
            ("x-ratelimit-remaining", "598"),
        ];
        acme.answered(StatusCode::OK, &headers(&quota));
        acme.answered(StatusCode::CREATED, &HeaderMap::new());
        acme.answered(
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("x-ratelimit-remaining", " 0 ")]),
        );
        acme.answered(
            StatusCode::NOT_FOUND,
            &headers(&[("x-ratelimit-limit", "lots")]),
        );
        acme.answered(StatusCode::BAD_GATEWAY, &HeaderMap::new());
        let text = m.encode();
        for (class, n) in [
            ("2xx", 2.0),
            ("3xx", 0.0),
            ("4xx", 1.0),
            ("429", 1.0),
            ("5xx", 1.0),
        ] {
            let labels = format!(r#"org="acme",status_class="{class}""#);
            assert_eq!(
                series(&text, "upstream_responses_total", &labels),
                Some(n),
                "{class}: {text}"
            );
        }
        // The last answer that stated a figure wins; absent or garbage ones change nothing.
        assert_eq!(
            series(&text, "upstream_ratelimit_remaining", r#"org="acme""#),
            Some(0.0)
        );
        assert_eq!(
            series(&text, "upstream_ratelimit_limit", r#"org="acme""#),
            Some(600.0)
        );

        m.forget_org("acme");
        assert!(!m.encode().contains(r#"org="acme""#));
    }

    #[test]
    fn build_info_and_process_figures_are_served_under_their_standard_names() {
        let m = Metrics::new();
        let text = m.encode();
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            sample(
                &text,
                &format!(r#"dialnexa_gateway_build_info{{version="{version}"}}"#)
            ),
            Some(1.0),
            "{text}"
        );
        let rss = sample(&text, "process_resident_memory_bytes").unwrap_or(0.0);
        assert!(rss > 1e5, "{text}");
        assert!(sample(&text, "process_cpu_seconds_total").is_some_and(|v| v >= 0.0));
        let (open, max) = (
            sample(&text, "process_open_fds").unwrap_or(0.0),
            sample(&text, "process_max_fds").unwrap_or(0.0),
        );
        assert!(open >= 3.0 && max >= open, "{open} {max}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let started = sample(&text, "process_start_time_seconds").unwrap_or(0.0);
        assert!(
            started > now - 86_400.0 && started <= now + 1.0,
            "{started} {now}"
        );

        let classic = m.encode_prometheus_text();
        assert!(classic.contains("# TYPE process_cpu_seconds_total counter\n"));
        assert!(classic.contains("# TYPE process_resident_memory_bytes gauge\n"));
        assert!(classic.contains("# TYPE dialnexa_gateway_build_info gauge\n"));
    }
}
