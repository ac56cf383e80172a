//! Step 3: per-team quotas (GCRA), a general one and an optional stricter one for writes, and the
//! quota headers every response to an identified team carries.
//!
//! The pipeline asks [`Quotas`], an async seam: today the replica's own limiter (`local`) stands
//! behind it; a shared one can stand beside it without the pipeline changing.

mod local;
mod verdict;

pub use local::TeamLimiter;
pub use verdict::{apply_headers, QuotaKind, QuotaStatus, Verdict};

/// Where quota state lives. A refused request spends nothing, whichever answers.
#[derive(Debug, Clone, Copy, Default)]
pub enum Quotas {
    /// In this process: each team's [`TeamLimiter`], carried across reloads.
    #[default]
    Local,
}

impl Quotas {
    /// Spends one request of `team`'s quotas (the write quota too for writes), or nothing if any
    /// refuses.
    pub async fn check(&self, team: &TeamLimiter, is_write: bool) -> Verdict {
        match self {
            Self::Local => team.check(is_write),
        }
    }

    /// The quota state without spending anything, for answers refused before the limiter.
    pub async fn peek(&self, team: &TeamLimiter, is_write: bool) -> Verdict {
        match self {
            Self::Local => team.peek(is_write),
        }
    }
}
