//! A quota as a config names it, `{ per_minute, burst }`: a team's `rate_limit` and
//! `write_rate_limit`, an org's `upstream_rate_limit`.

use std::num::NonZeroU32;

use super::number::{whole, Unit, Whole};
use super::problems::Problems;
use super::raw::RawRate;
use crate::settings::RateQuota;

/// A quota's `per_minute` and `burst`: the limiter counts in u32.
const RATE: Unit = Unit::new(1..=u32::MAX as u64);

pub(super) fn validate_rate(
    raw: Option<RawRate>,
    key: &str,
    p: &mut Problems,
) -> Option<RateQuota> {
    let raw = raw?;
    let mut part = |value: Option<Whole>, name: &str| {
        let key = format!("{key}.{name}");
        match value {
            None => {
                p.push(&key, "is required and must be at least 1");
                None
            }
            value => whole(value, 0, &key, RATE, p)
                .and_then(|n| u32::try_from(n).ok())
                .and_then(NonZeroU32::new),
        }
    };
    let per_minute = part(raw.per_minute, "per_minute");
    let burst = part(raw.burst, "burst");
    Some(RateQuota {
        per_minute: per_minute?,
        burst: burst?,
    })
}
