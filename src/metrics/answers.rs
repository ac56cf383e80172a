//! `request_duration_seconds`: the whole answer time, by route class and cache outcome.

use prometheus_client::encoding::EncodeLabelSet;

/// Upper bounds of `request_duration_seconds`: 0.1 ms (a cache hit on loopback) to 30 s (past the
/// default upstream timeout), 1-2.5-5 per decade so that `histogram_quantile` stays within a factor
/// of 2.5 anywhere in between.
pub(super) const REQUEST_DURATION_BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// What kind of request an answer time belongs to: the reads the cache serves are orders of
/// magnitude faster than anything forwarded, so one histogram for all would hide both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteClass {
    /// `GET` of one agent (`/{agents2|agents}/{id}`), the read the cache serves.
    AgentRead,
    /// Any other `GET` or `HEAD`, refused ones included.
    OtherRead,
    /// Every other method.
    Write,
}

impl RouteClass {
    /// The class of a request before its path is known (a refusal of a malformed path stays here).
    pub fn of(method: &http::Method) -> Self {
        if method == http::Method::GET || method == http::Method::HEAD {
            Self::OtherRead
        } else {
            Self::Write
        }
    }

    /// The class once the path is parsed: `agent_item` is true for `/{family}/{id}` exactly.
    pub fn of_route(method: &http::Method, agent_item: bool) -> Self {
        match Self::of(method) {
            Self::OtherRead if agent_item && method == http::Method::GET => Self::AgentRead,
            class => class,
        }
    }

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::AgentRead => "agent_read",
            Self::OtherRead => "other_read",
            Self::Write => "write",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    pub route_class: &'static str,
    /// `hit`, `miss`, `bypass`, `stale`, or `none` for answers that did not reach the cache step.
    pub cache: &'static str,
}

/// The label sets of `request_duration_seconds` a request can have, in [`duration_slot`]'s order.
pub(super) const DURATION_SLOTS: [(RouteClass, Option<&str>); 7] = [
    (RouteClass::AgentRead, None),
    (RouteClass::AgentRead, Some("hit")),
    (RouteClass::AgentRead, Some("miss")),
    (RouteClass::AgentRead, Some("bypass")),
    (RouteClass::AgentRead, Some("stale")),
    (RouteClass::OtherRead, None),
    (RouteClass::Write, None),
];

pub(super) fn duration_slot(class: RouteClass, cache: Option<&str>) -> Option<usize> {
    DURATION_SLOTS.iter().position(|s| *s == (class, cache))
}

pub(super) fn duration_labels(class: RouteClass, cache: Option<&'static str>) -> DurationLabels {
    DurationLabels {
        route_class: class.as_str(),
        cache: cache.unwrap_or("none"),
    }
}
