//! Where every family is registered, under its name and help text: the list `/metrics` serves.

use prometheus_client::registry::{Registry, Unit};

use super::process::ProcessCollector;
use super::{trace_spans_dropped, Metrics, PREFIX};

impl Metrics {
    pub(super) fn register(mut self) -> Self {
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
            trace_spans_dropped(),
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
}
