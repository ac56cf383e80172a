//! What the limiter says about one request ([`Verdict`]) and the quota headers every answer to an
//! identified team carries, built from it: the `RateLimit-*` trio and the httpapi draft's pair.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::error::whole_seconds;
use crate::http::{header_number, HeaderText};
use crate::settings::RateQuota;

/// Which of a team's quotas a status describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    General,
    Write,
}

/// What refused a request: the `limited_by` of its audit line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitedBy {
    /// The team's general quota.
    Team,
    /// The team's write quota.
    TeamWrite,
    /// The organisation's DialNexa budget, as the gateway shares it out.
    Org,
    /// DialNexa itself: the organisation is held after upstream refused it.
    Upstream,
}

impl LimitedBy {
    /// The audit line's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Team => "team",
            Self::TeamWrite => "team_write",
            Self::Org => "org",
            Self::Upstream => "upstream",
        }
    }
}

/// One quota's state as of this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaStatus {
    pub kind: QuotaKind,
    pub quota: RateQuota,
    /// Requests allowed right now.
    pub remaining: u32,
    /// Time until the bucket is full again.
    pub reset: Duration,
}

/// What the limiter says about one request, with everything the headers need.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub general: QuotaStatus,
    pub write: Option<QuotaStatus>,
    /// `Some(wait)` when refused: the time until the refusing quota lets one request through.
    pub retry_after: Option<Duration>,
    /// The quota that refused the request, which its headers then describe.
    pub(super) refused_by: Option<QuotaKind>,
    pub(super) fixed: Arc<FixedHeaders>,
}

/// The header values that only change with the quotas, built once per limiter instead of per
/// answer (each was an allocation and a number formatted on every request).
#[derive(Debug)]
pub(super) struct FixedHeaders {
    general: QuotaHeaders,
    write: Option<QuotaHeaders>,
}

/// `RateLimit-Limit` and `RateLimit-Policy` for one quota.
#[derive(Debug)]
pub(super) struct QuotaHeaders {
    limit: HeaderValue,
    policy: Option<HeaderValue>,
}

impl QuotaHeaders {
    /// `"team";q=<per_minute>;w=60`: DESIGN's one policy name whichever quota binds, so a client
    /// reads one form; `q` tells the quotas apart.
    pub(super) fn new(quota: RateQuota) -> Self {
        let mut policy = HeaderText::with_capacity(32);
        policy
            .push(POLICY_NAME)
            .push(";q=")
            .push_u64(u64::from(quota.per_minute.get()))
            .push(";w=60");
        Self {
            limit: HeaderValue::from(quota.burst.get()),
            policy: policy.finish(),
        }
    }
}

pub(super) const POLICY_NAME: &str = "\"team\"";

impl FixedHeaders {
    pub(super) fn new(general: RateQuota, write: Option<RateQuota>) -> Self {
        Self {
            general: QuotaHeaders::new(general),
            write: write.map(QuotaHeaders::new),
        }
    }
}

impl Verdict {
    /// Which team quota refused the request, if one did.
    pub fn limited_by(&self) -> Option<LimitedBy> {
        match self.refused_by? {
            QuotaKind::General => Some(LimitedBy::Team),
            QuotaKind::Write => Some(LimitedBy::TeamWrite),
        }
    }

    /// The quota that binds: the one that refused the request, else the one with fewer requests left.
    pub(super) fn binding(&self) -> QuotaStatus {
        match (self.refused_by, self.write) {
            (Some(QuotaKind::General), _) => self.general,
            (Some(QuotaKind::Write), Some(w)) => w,
            (None, Some(w)) if w.remaining <= self.general.remaining => w,
            _ => self.general,
        }
    }
}

/// Time GCRA needs to earn back one request.
pub(super) fn emission_interval(q: RateQuota) -> Duration {
    Duration::from_secs(60) / q.per_minute.get()
}

/// The arithmetic behind the headers. `wait` is set when the request was refused.
pub(super) fn status(
    kind: QuotaKind,
    quota: RateQuota,
    remaining: u32,
    wait: Option<Duration>,
) -> QuotaStatus {
    let t = emission_interval(quota);
    let burst = quota.burst.get();
    let reset = match wait {
        // Empty: the first cell comes back after `wait`, the rest one interval apart.
        Some(wait) => wait + t * burst.saturating_sub(1),
        None => t * burst.saturating_sub(remaining),
    };
    QuotaStatus {
        kind,
        quota,
        remaining,
        reset,
    }
}

static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Writes the quota headers, all describing the binding quota: the `RateLimit-*` trio and the
/// httpapi draft's structured `RateLimit-Policy` and `RateLimit` pair.
pub fn apply_headers(verdict: &Verdict, headers: &mut HeaderMap) {
    let binding = verdict.binding();
    let reset = reset_seconds(binding.reset);
    let fixed = match (binding.kind, &verdict.fixed.write) {
        (QuotaKind::Write, Some(write)) => write,
        _ => &verdict.fixed.general,
    };
    headers.insert(RATELIMIT_LIMIT.clone(), fixed.limit.clone());
    headers.insert(
        RATELIMIT_REMAINING.clone(),
        header_number(binding.remaining.into()),
    );
    headers.insert(RATELIMIT_RESET.clone(), header_number(reset));
    if let Some(v) = &fixed.policy {
        headers.insert(RATELIMIT_POLICY.clone(), v.clone());
    }
    let mut current = HeaderText::with_capacity(48);
    current
        .push(POLICY_NAME)
        .push(";r=")
        .push_u64(u64::from(binding.remaining))
        .push(";t=")
        .push_u64(reset);
    if let Some(v) = current.finish() {
        headers.insert(RATELIMIT.clone(), v);
    }
}

/// Whole seconds until full: zero when already full, otherwise rounded up.
pub(super) fn reset_seconds(d: Duration) -> u64 {
    if d.is_zero() {
        0
    } else {
        whole_seconds(d)
    }
}
