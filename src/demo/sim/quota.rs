//! The organisation's DialNexa quota: a fixed one-minute window, advertised on every
//! authenticated answer in `X-RateLimit-*` and, when enforced, refused with `429` and
//! `Retry-After` (NestJS's throttler, which DialNexa's headers and errors are shaped like).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use hyper::header::{HeaderMap, HeaderValue, RETRY_AFTER};

const WINDOW: Duration = Duration::from_secs(60);
/// What is advertised when no quota is enforced: a figure a real organisation might have.
pub(super) const ADVERTISED_PER_MINUTE: u32 = 1000;

pub(super) struct OrgQuota {
    per_minute: u32,
    /// Without `--rate-limit` the headers still move, but nothing is refused.
    enforced: bool,
    window: Mutex<Window>,
    /// Requests counted against the quota, and those refused, since the start: what a test of a
    /// client's manners asks DialNexa.
    answered: AtomicU64,
    refused: AtomicU64,
}

struct Window {
    started: Instant,
    used: u32,
}

/// One request's standing against the quota.
pub(super) struct Verdict {
    pub allowed: bool,
    limit: u32,
    remaining: u32,
    /// Whole seconds until the window starts over, at least 1.
    reset_secs: u64,
}

impl OrgQuota {
    pub fn new(enforced_per_minute: Option<std::num::NonZeroU32>) -> Self {
        Self {
            per_minute: enforced_per_minute.map_or(ADVERTISED_PER_MINUTE, |n| n.get()),
            enforced: enforced_per_minute.is_some(),
            window: Mutex::new(Window {
                started: Instant::now(),
                used: 0,
            }),
            answered: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Authenticated requests answered so far, and how many of them were refused with `429`.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.answered.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }

    /// Counts one request, unless it is refused (a refused request spends nothing).
    pub fn take(&self) -> Verdict {
        let now = Instant::now();
        // Nothing panics while holding the lock, so a poisoned one still holds sound counts.
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        if now.duration_since(window.started) >= WINDOW {
            *window = Window {
                started: now,
                used: 0,
            };
        }
        let allowed = window.used < self.per_minute || !self.enforced;
        if allowed {
            window.used = window.used.saturating_add(1);
        } else {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        self.answered.fetch_add(1, Ordering::Relaxed);
        let remaining = self.per_minute.saturating_sub(window.used);
        let left = WINDOW.saturating_sub(now.duration_since(window.started));
        Verdict {
            allowed,
            limit: self.per_minute,
            // Unenforced, it never says the quota is empty: a client that believes it (the
            // gateway holds the org) would stop for nothing.
            remaining: if self.enforced {
                remaining
            } else {
                remaining.max(1)
            },
            reset_secs: left.as_millis().div_ceil(1000).max(1) as u64,
        }
    }
}

impl Verdict {
    pub fn retry_after_secs(&self) -> u64 {
        self.reset_secs
    }

    /// `X-RateLimit-*` on the answer, and `Retry-After` when refused.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        headers.insert("x-ratelimit-limit", HeaderValue::from(self.limit));
        headers.insert("x-ratelimit-remaining", HeaderValue::from(self.remaining));
        headers.insert("x-ratelimit-reset", HeaderValue::from(self.reset_secs));
        if !self.allowed {
            headers.insert(RETRY_AFTER, HeaderValue::from(self.reset_secs));
        }
    }
}
