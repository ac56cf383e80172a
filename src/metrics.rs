//! The figures `/metrics` serves, in Prometheus text format (prometheus-client). Stages record into
//! this one struct; nothing else keeps counters of its own.

use std::borrow::Cow;
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// A team name as a label value, shared with the config: labelling a request allocates nothing
/// (a `String` label was two allocations per request on the cache-hit path).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct TeamName(pub Arc<str>);

impl EncodeLabelValue for TeamName {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&&*self.0, encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Empty for requests no team was identified for.
    pub team: TeamName,
    pub method: Cow<'static, str>,
    pub status: u16,
}

/// Handles on one team's most used series (they share the family's value): its quota counters,
/// and its `GET`s answered `200`, by far the most frequent `requests` label set.
#[derive(Clone, Debug, Default)]
pub struct TeamCounters {
    pub allowed: Counter,
    pub limited: Counter,
    pub get_ok: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TeamLabel {
    pub team: TeamName,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
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
        let mut registry = Registry::with_prefix("dialnexa_gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered on the API listener",
            requests.clone(),
        );
        // 0.5 ms .. ~16 s: from loopback upstreams to DialNexa's slowest writes.
        let upstream_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register_with_unit(
            "upstream_request_duration",
            "Time until upstream's response head arrived",
            Unit::Seconds,
            upstream_duration.clone(),
        );
        let m = Self {
            requests,
            upstream_duration,
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
            no_team: TeamName(Arc::from("")),
            registry,
        };
        // Both results exist at 0 from the start: Prometheus' `increase()` cannot see the first
        // increment of a series that appears already at 1, so an alert on failed reloads would
        // miss the first (usually the only) failure.
        for result in ["ok", "failed"] {
            let _ = m.config_reloads.get_or_create(&ResultLabel { result });
        }
        m.register_rest()
    }

    fn register_rest(mut self) -> Self {
        let r = &mut self.registry;
        self.cluster.register(r);
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
        self
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
    pub fn team_counters(&self, team: &Arc<str>) -> TeamCounters {
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
        }
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

/// Cluster mode, seen from outside (DESIGN, "Cluster mode"): whether this replica reaches Redis,
/// how its calls fail and take, and how many requests it served degraded.
#[derive(Clone)]
pub struct ClusterMetrics {
    pub up: Gauge,
    pub errors: Counter,
    pub redis_duration: Histogram,
    pub degraded: Counter,
}

impl ClusterMetrics {
    fn new() -> Self {
        Self {
            up: Gauge::default(),
            errors: Counter::default(),
            // 50 µs .. ~0.8 s: loopback Redis to a call at the edge of its deadline.
            redis_duration: Histogram::new(exponential_buckets(0.00005, 2.0, 15)),
            degraded: Counter::default(),
        }
    }

    fn register(&self, r: &mut Registry) {
        r.register(
            "cluster_up",
            "1 while this replica reaches the cluster's Redis, 0 while it does not (or runs alone)",
            self.up.clone(),
        );
        r.register(
            "cluster_errors",
            "Redis calls that failed or outlasted cluster.timeout_ms",
            self.errors.clone(),
        );
        r.register_with_unit(
            "cluster_redis_duration",
            "Round-trip time of Redis calls that answered",
            Unit::Seconds,
            self.redis_duration.clone(),
        );
        r.register(
            "cluster_degraded_requests",
            "Requests served without Redis (on_unavailable = degrade): local quotas, no cache",
            self.degraded.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
