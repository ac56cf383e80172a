//! Cluster mode's figures.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// Cluster mode, seen from outside (DESIGN, "Cluster mode"): whether this replica reaches Redis,
/// how its calls fail and take, and how many requests it served degraded.
#[derive(Clone)]
pub struct ClusterMetrics {
    pub up: Gauge,
    pub errors: Counter,
    pub redis_duration: Histogram,
    pub degraded: Counter,
    /// Connections made after the first: each a loss the link recovered from.
    pub reconnects: Counter,
    /// Agent writes' version changes fewer Redis replicas acknowledged than `min_replicas_acked`.
    pub unacknowledged: Counter,
}

impl ClusterMetrics {
    pub(super) fn new() -> Self {
        Self {
            up: Gauge::default(),
            errors: Counter::default(),
            // 50 µs .. ~0.8 s: loopback Redis to a call at the edge of its deadline.
            redis_duration: Histogram::new(exponential_buckets(0.00005, 2.0, 15)),
            degraded: Counter::default(),
            reconnects: Counter::default(),
            unacknowledged: Counter::default(),
        }
    }

    pub(super) fn register(&self, r: &mut Registry) {
        r.register(
            "cluster_up",
            "1 while this replica reaches the cluster's Redis, 0 while it does not (or runs alone)",
            self.up.clone(),
        );
        r.register(
            "cluster_errors",
            "Redis calls (probes while down included) that failed or outlasted cluster.timeout_ms",
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
        r.register(
            "cluster_reconnects",
            "Connections to Redis made after the first (each one a loss recovered from)",
            self.reconnects.clone(),
        );
        r.register(
            "cluster_unacknowledged_writes",
            "Agent writes' version changes fewer Redis replicas acknowledged than cluster.min_replicas_acked",
            self.unacknowledged.clone(),
        );
    }
}
