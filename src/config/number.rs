//! Whole numbers as operators write them, and the ranges the gateway can run with.
//!
//! The `config` crate turns `1.5` into `2`, `1e300` into `u64::MAX` and `true` into `1` when a
//! field is an integer; a value like that would be taken silently and could wedge or crash the
//! gateway later. So counts and durations are read as [`Whole`], which keeps whatever was written,
//! and [`whole`] checks it against its key's range, naming the key when it is out.

use std::fmt;
use std::ops::RangeInclusive;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::problems::Problems;

/// Timeouts above a day are typos (or an attempt at "never"), and values near `u64::MAX` overflow
/// the deadlines built from them.
pub(super) const MAX_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;
/// Cache lifetimes above a year are typos; moka panics at start on a lifetime of about 1,000 years.
pub(super) const MAX_TTL_SECONDS: u64 = 365 * 24 * 60 * 60;

/// A number from the config file or an env override, as written.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Whole {
    Value(u64),
    /// Beyond `u64`, as written: above every range.
    Huge(String),
    /// Below zero.
    Negative(String),
    /// A fraction or any other float, a boolean, or text that is not a whole number, as written.
    Fraction(String),
}

impl<'de> Deserialize<'de> for Whole {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(WholeVisitor)
    }
}

struct WholeVisitor;

impl Visitor<'_> for WholeVisitor {
    type Value = Whole;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a whole number")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Whole, E> {
        Ok(Whole::Value(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Whole, E> {
        Ok(u64::try_from(v).map_or_else(|_| Whole::Negative(v.to_string()), Whole::Value))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Whole, E> {
        Ok(u64::try_from(v).map_or_else(|_| Whole::Huge(v.to_string()), Whole::Value))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Whole, E> {
        match u64::try_from(v) {
            Ok(v) => Ok(Whole::Value(v)),
            Err(_) if v < 0 => Ok(Whole::Negative(v.to_string())),
            Err(_) => Ok(Whole::Huge(v.to_string())),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Whole, E> {
        Ok(Whole::Fraction(format!("{v:?}")))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Whole, E> {
        Ok(Whole::Fraction(v.to_string()))
    }

    /// A quoted number in the file (`"300"`) is read as the number, as it always was.
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Whole, E> {
        let digits = v.strip_prefix('+').unwrap_or(v);
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(digits
                .parse()
                .map_or_else(|_| Whole::Huge(digits.to_owned()), Whole::Value));
        }
        match v.strip_prefix('-') {
            Some(rest) if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) => {
                Ok(Whole::Negative(v.to_owned()))
            }
            _ => Ok(Whole::Fraction(format!("{v:?}"))),
        }
    }
}

/// What a key's number means, for its problem lines.
#[derive(Clone, Copy)]
pub(super) struct Unit {
    /// The range the gateway can run with.
    pub(super) range: (u64, u64),
    /// The upper bound in words, e.g. "one day"; `None` names the number alone.
    pub(super) max_in_words: Option<&'static str>,
    /// Added to the "must be greater than 0" line, e.g. how to turn the feature off instead.
    pub(super) zero_hint: &'static str,
}

impl Unit {
    pub(super) const fn new(range: RangeInclusive<u64>) -> Self {
        Self {
            range: (*range.start(), *range.end()),
            max_in_words: None,
            zero_hint: "",
        }
    }

    pub(super) const fn max_in_words(mut self, words: &'static str) -> Self {
        self.max_in_words = Some(words);
        self
    }

    pub(super) const fn zero_hint(mut self, hint: &'static str) -> Self {
        self.zero_hint = hint;
        self
    }
}

/// Milliseconds of a timeout: more than zero, at most a day.
pub(super) const TIMEOUT_MS: Unit =
    Unit::new(1..=MAX_TIMEOUT_MS).max_in_words("86400000 ms, one day");

/// `value` (or `default` when absent) checked against `unit`; `None` once its problem is reported.
pub(super) fn whole(
    value: Option<Whole>,
    default: u64,
    key: &str,
    unit: Unit,
    p: &mut Problems,
) -> Option<u64> {
    let (min, max) = unit.range;
    let most = || {
        unit.max_in_words
            .map_or_else(|| max.to_string(), str::to_owned)
    };
    match value.unwrap_or(Whole::Value(default)) {
        Whole::Value(n) if (min..=max).contains(&n) => Some(n),
        Whole::Value(0) if min == 1 => {
            p.push(key, format!("must be greater than 0{}", unit.zero_hint));
            None
        }
        Whole::Value(n) if n < min => {
            p.push(key, format!("must be at least {min}, not {n}"));
            None
        }
        Whole::Value(n) => {
            p.push(key, format!("must be at most {}, not {n}", most()));
            None
        }
        Whole::Huge(text) => {
            p.push(key, format!("must be at most {}, not {text}", most()));
            None
        }
        Whole::Negative(text) => {
            p.push(key, format!("must not be negative, not {text}"));
            None
        }
        Whole::Fraction(text) => {
            p.push(key, format!("must be a whole number, not {text}"));
            None
        }
    }
}

/// A timeout in milliseconds: more than zero, at most a day.
pub(super) fn timeout_ms(
    value: Option<Whole>,
    default: u64,
    key: &str,
    p: &mut Problems,
) -> Option<Duration> {
    whole(value, default, key, TIMEOUT_MS, p).map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, unit: Unit) -> Result<u64, String> {
        let value: Whole = config::Config::builder()
            .add_source(config::File::from_str(
                &format!("v = {text}"),
                config::FileFormat::Toml,
            ))
            .build()
            .and_then(|c| c.get("v"))
            .unwrap();
        let mut p = Problems(Vec::new());
        whole(Some(value), 0, "k", unit, &mut p).ok_or_else(|| p.0.join("; "))
    }

    #[test]
    fn whole_numbers_in_range_are_taken_as_written() {
        assert_eq!(check("5", TIMEOUT_MS), Ok(5));
        assert_eq!(check("86400000", TIMEOUT_MS), Ok(MAX_TIMEOUT_MS));
        assert_eq!(check("\"300\"", TIMEOUT_MS), Ok(300));
    }

    #[test]
    fn fractions_floats_booleans_negatives_and_text_are_refused_naming_the_key() {
        for (text, says) in [
            ("1.5", "k: must be a whole number, not 1.5"),
            ("1e300", "k: must be a whole number, not 1e300"),
            ("true", "k: must be a whole number, not true"),
            ("\"soon\"", "k: must be a whole number, not \"soon\""),
            ("-1", "k: must not be negative, not -1"),
            ("\"-3\"", "k: must not be negative, not -3"),
            (
                "\"99999999999999999999999\"",
                "k: must be at most 86400000 ms, one day, not 99999999999999999999999",
            ),
            ("0", "k: must be greater than 0"),
            (
                "86400001",
                "k: must be at most 86400000 ms, one day, not 86400001",
            ),
            (
                "9223372036854775807",
                "k: must be at most 86400000 ms, one day, not 9223372036854775807",
            ),
        ] {
            let problem = check(text, TIMEOUT_MS).unwrap_err();
            assert!(problem.starts_with(says), "{text}: {problem}");
        }
    }

    #[test]
    fn a_bounded_count_names_its_bounds() {
        let unit = Unit::new(2..=10).zero_hint(" (or leave it out)");
        assert_eq!(check("1", unit), Err("k: must be at least 2, not 1".into()));
        assert_eq!(
            check("11", unit),
            Err("k: must be at most 10, not 11".into())
        );
        let unit = Unit::new(1..=10).zero_hint(" (or leave it out)");
        assert_eq!(
            check("0", unit),
            Err("k: must be greater than 0 (or leave it out)".into())
        );
    }
}
