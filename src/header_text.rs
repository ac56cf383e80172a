//! Header values (and audit lines, see `audit_line`) assembled from text and numbers without
//! `core::fmt`. On the cache-hit path the
//! `format!` calls behind the quota and `Cache-Status` headers cost more instructions than the rest
//! of those headers together (callgrind), so the per-request values are written here by hand.

use std::sync::LazyLock;

use bytes::{BufMut, BytesMut};
use http::HeaderValue;

/// Numbers below this come from a table built once: `Age`, `RateLimit-Reset` and, for most
/// quotas, `RateLimit-Remaining` are small, and cloning a built value costs no allocation.
const SMALL_NUMBERS: u64 = 1024;

static SMALL: LazyLock<Vec<HeaderValue>> =
    LazyLock::new(|| (0..SMALL_NUMBERS).map(HeaderValue::from).collect());

/// `n` in decimal as a header value.
pub fn number(n: u64) -> HeaderValue {
    if n < SMALL_NUMBERS {
        SMALL[n as usize].clone()
    } else {
        HeaderValue::from(n)
    }
}

/// A header value being written: text pieces and decimal numbers, then [`HeaderText::finish`].
pub struct HeaderText(BytesMut);

impl HeaderText {
    pub fn with_capacity(capacity: usize) -> Self {
        Self(BytesMut::with_capacity(capacity))
    }

    pub fn push(&mut self, text: &str) -> &mut Self {
        self.0.put_slice(text.as_bytes());
        self
    }

    pub fn push_u64(&mut self, n: u64) -> &mut Self {
        self.0.put_slice(decimal(n, &mut [0; 20]));
        self
    }

    /// The value, without copying the bytes; `None` if the text is not a valid header value.
    pub fn finish(self) -> Option<HeaderValue> {
        HeaderValue::from_maybe_shared(self.0.freeze()).ok()
    }
}

/// `n` in decimal, written into the end of `buf`.
pub fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[at..]
}

/// Lowercase hex of `bytes` into `out` (which must be twice as long): `hex::encode` collects
/// `char`s into a `String` one at a time, which showed up on the per-request path.
pub fn hex_into<'a>(bytes: &[u8], out: &'a mut [u8]) -> &'a str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0x0f)];
    }
    let out = &out[..2 * bytes.len()];
    // Only ASCII hex digits were written.
    std::str::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_text_make_the_same_value_as_format() {
        for n in [0u64, 7, 10, 59, 1_000_000_000, u64::MAX] {
            let mut t = HeaderText::with_capacity(8);
            t.push("\"team\";r=")
                .push_u64(n)
                .push(";t=")
                .push_u64(n / 3);
            assert_eq!(
                t.finish().unwrap(),
                format!("\"team\";r={n};t={}", n / 3).as_str()
            );
        }
    }

    #[test]
    fn number_values_match_the_standard_ones() {
        for n in [
            0u64,
            1,
            9,
            10,
            599,
            1023,
            1024,
            1025,
            1_000_000_000,
            u64::MAX,
        ] {
            assert_eq!(number(n), HeaderValue::from(n));
        }
    }

    #[test]
    fn invalid_text_is_no_value() {
        let mut t = HeaderText::with_capacity(4);
        t.push("a\nb");
        assert!(t.finish().is_none());
    }

    #[test]
    fn hex_matches_the_hex_crate() {
        let bytes = [0u8, 1, 0x7f, 0x80, 0xab, 0xff, 0x10];
        let mut out = [0u8; 14];
        assert_eq!(hex_into(&bytes, &mut out), hex::encode(bytes));
    }
}
