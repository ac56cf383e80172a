//! The figures `/metrics` serves, in Prometheus text format (prometheus-client). Stages record into
//! this one struct; nothing else keeps counters of its own. Every label value comes from the config
//! (team, org) or from a fixed set, never from a path, an id or a header, so the series stay bounded.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

mod answers;
mod budget;
mod cluster;
mod config;
mod labels;
mod process;
mod upstream;

pub use answers::RouteClass;
pub use budget::{BudgetCounters, BudgetMetrics};
pub use cluster::ClusterMetrics;
pub use config::{ConfigMetrics, KeyLastUsed};
pub use labels::*;
pub use upstream::OrgUpstream;

use answers::{
    duration_labels, duration_slot, DurationLabels, DURATION_SLOTS, REQUEST_DURATION_BUCKETS,
};
use process::ProcessCollector;
use upstream::STATUS_CLASSES;

/// The prefix of every family but the standard `process_*` ones.
const PREFIX: &str = "dialnexa_gateway";

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

    fn register(mut self) -> Self {
        let mut root = Registry::default();
        // The process figures keep their standard names, without the gateway's prefix, so that
        // dashboards made for any Prometheus client work unchanged.
        root.register_collector(Box::new(ProcessCollector));
        let r = root.sub_registry_with_prefix(PREFIX);
        r.register(
            "requests",
            "Requests answered on the API listener",
            self.requests.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "Time from a request's arrival until its answer's last byte was handed over, by route \
             class (agent_read, other_read, write) and cache outcome (hit, miss, bypass, stale, none)",
            Unit::Seconds,
            self.request_duration.clone(),
        );
        r.register_with_unit(
            "upstream_request_duration",
            "Time until upstream's response head arrived",
            Unit::Seconds,
            self.upstream_duration.clone(),
        );
        r.register(
            "upstream_responses",
            "Upstream answers by org and status class (2xx, 3xx, 4xx without 429, 429, 5xx)",
            self.upstream_responses.clone(),
        );
        r.register(
            "upstream_ratelimit_remaining",
            "Requests left in the org's upstream quota, from the last X-RateLimit-Remaining",
            self.ratelimit_remaining.clone(),
        );
        r.register(
            "upstream_ratelimit_limit",
            "The org's upstream quota, from the last X-RateLimit-Limit",
            self.ratelimit_limit.clone(),
        );
        r.register(
            "build_info",
            "Always 1; the gateway's version in its label",
            self.build_info.clone(),
        );
        r.register(
            "trace_spans_dropped",
            "Spans not exported: the export queue was full or the collector refused or timed out \
             ([tracing] only)",
            crate::telemetry::spans_dropped(),
        );
        self.cluster.register(r);
        self.budget.register(r);
        self.config.register(r);
        r.register(
            "cache_hits",
            "Agent reads answered from the cache",
            self.cache_hits.clone(),
        );
        r.register(
            "cache_misses",
            "Agent reads fetched from upstream",
            self.cache_misses.clone(),
        );
        r.register(
            "cache_stale",
            "Expired entries served because upstream failed (stale-if-error)",
            self.cache_stale.clone(),
        );
        r.register(
            "cache_bypass",
            "Agent reads that skipped the cache (client no-store)",
            self.cache_bypass.clone(),
        );
        r.register(
            "cache_coalesced",
            "Agent reads that waited for another request's upstream fetch",
            self.cache_coalesced.clone(),
        );
        r.register(
            "cache_invalidations",
            "Agent invalidations caused by writes or purges",
            self.cache_invalidations.clone(),
        );
        r.register(
            "cache_evictions",
            "Entries evicted for size or expiry",
            self.cache_evictions.clone(),
        );
        r.register_with_unit(
            "cache",
            "Bytes held by the agent cache",
            Unit::Bytes,
            self.cache_bytes.clone(),
        );
        r.register(
            "cache_entries",
            "Agents held by the cache",
            self.cache_entries.clone(),
        );
        r.register(
            "ratelimit_allowed",
            "Requests the team's quota allowed",
            self.rate_allowed.clone(),
        );
        r.register(
            "ratelimit_limited",
            "Requests refused with 429 by the team's quota",
            self.rate_limited.clone(),
        );
        r.register(
            "audit_lines_written",
            "Audit lines written to the sink",
            self.audit_written.clone(),
        );
        r.register(
            "audit_lines_failed",
            "Audit lines the sink failed to take",
            self.audit_failed.clone(),
        );
        r.register(
            "audit_backpressure_waits",
            "Requests that waited for room in the audit buffer",
            self.audit_backpressure_waits.clone(),
        );
        r.register(
            "config_reloads",
            "Config reloads by result (ok, failed)",
            self.config_reloads.clone(),
        );
        self.registry = root;
        self
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

    /// A team's most used counters, resolved once per config snapshot: looking a label set up in
    /// its family hashes it with SipHash under a lock, ~500 instructions every request paid twice.
    pub fn team_counters(&self, team: &Arc<str>, org: &Arc<str>) -> TeamCounters {
        let label = TeamLabel {
            team: TeamName(team.clone()),
        };
        let get_ok = RequestLabels {
            team: label.team.clone(),
            method: Cow::Borrowed("GET"),
            status: 200,
        };
        TeamCounters {
            allowed: self.rate_allowed.get_or_create(&label).clone(),
            limited: self.rate_limited.get_or_create(&label).clone(),
            get_ok: self.requests.get_or_create(&get_ok).clone(),
            upstream: Arc::new(self.org_upstream(org)),
        }
    }

    /// An org's upstream handles. Its answer counters exist at 0 from the start, for the same
    /// reason as `config_reloads`: an alert on `increase()` must see the first 5xx or 429.
    fn org_upstream(&self, org: &Arc<str>) -> OrgUpstream {
        let org = TeamName(org.clone());
        OrgUpstream {
            responses: STATUS_CLASSES.map(|status_class| {
                self.upstream_responses
                    .get_or_create(&UpstreamResponseLabels {
                        org: org.clone(),
                        status_class,
                    })
                    .clone()
            }),
            label: OrgLabel { org },
            remaining_family: self.ratelimit_remaining.clone(),
            limit_family: self.ratelimit_limit.clone(),
            remaining: OnceLock::new(),
            limit: OnceLock::new(),
        }
    }

    /// Drops the upstream series of an org a reload removed (no team of the new config uses it).
    pub fn forget_org(&self, org: &str) {
        let org = TeamName(Arc::from(org));
        for status_class in STATUS_CLASSES {
            self.upstream_responses.remove(&UpstreamResponseLabels {
                org: org.clone(),
                status_class,
            });
        }
        let label = OrgLabel { org };
        self.ratelimit_remaining.remove(&label);
        self.ratelimit_limit.remove(&label);
        self.budget.forget_org(&label.org.0);
    }

    /// Drops per-team series of teams a reload removed, so label sets stay bounded.
    pub fn forget_team(&self, team: &str) {
        let label = TeamLabel {
            team: TeamName(Arc::from(team)),
        };
        self.rate_allowed.remove(&label);
        self.rate_limited.remove(&label);
    }

    /// OpenMetrics text, as prometheus-client renders it.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The classic Prometheus text format (0.0.4), for scrapers that do not ask for OpenMetrics.
    pub fn encode_prometheus_text(&self) -> String {
        openmetrics_to_prometheus_text(&self.encode())
    }
}

/// The two formats differ, for what is rendered here, only in how a counter is named: OpenMetrics
/// declares `# TYPE x counter` for samples named `x_total`, the classic format declares the sample
/// name itself. `# UNIT` and `# EOF` do not exist there and are dropped.
fn openmetrics_to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let declared = ["# HELP ", "# TYPE "].into_iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match declared {
            Some(renamed) => out.push_str(&renamed),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::upstream::header_count;
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

    #[test]
    fn classic_text_names_counters_by_their_samples() {
        let m = Metrics::new();
        m.cache_hits.inc();
        let text = m.encode_prometheus_text();
        assert!(text.contains("# TYPE dialnexa_gateway_cache_hits_total counter\n"));
        assert!(text.contains("# HELP dialnexa_gateway_cache_hits_total "));
        assert!(text.contains("dialnexa_gateway_cache_hits_total 1\n"));
        assert!(text.contains("# TYPE dialnexa_gateway_cache_bytes gauge\n"));
        assert!(
            text.contains("# TYPE dialnexa_gateway_upstream_request_duration_seconds histogram\n")
        );
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
    }
}
