//! `X-Request-Id`: keep a sane client value, otherwise mint one. Sent upstream and back.

use http::{HeaderMap, HeaderName, HeaderValue};
use rand::RngCore;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

const MAX_LEN: usize = 128;

/// The client's id if it is 1..=128 visible ASCII characters, else a fresh random one.
pub fn from_headers(headers: &HeaderMap) -> HeaderValue {
    match headers.get(&X_REQUEST_ID) {
        Some(v) if is_sane(v.as_bytes()) => v.clone(),
        _ => generate(),
    }
}

/// The id as text, for the audit line and error bodies. Every id [`from_headers`] and [`generate`]
/// return is visible ASCII (a client's kept only if it is, a minted one hex), so the text is whole:
/// the empty fallback is for a value from elsewhere, which the gateway never hands here.
pub fn as_text(id: &HeaderValue) -> &str {
    id.to_str().unwrap_or_default()
}

fn is_sane(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_LEN && id.iter().all(|b| b.is_ascii_graphic())
}

/// 128 random bits as 32 hex digits.
pub fn generate() -> HeaderValue {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    let mut text = [0u8; 32];
    // 32 bytes of room for 16 bytes' hex is exactly enough, so encoding cannot fail.
    let _ = hex::encode_to_slice(bytes, &mut text);
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&text).expect("hex is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(id: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_bytes(id).unwrap());
        h
    }

    #[test]
    fn sane_client_ids_are_kept() {
        assert_eq!(from_headers(&with(b"abc-123_X.y")), "abc-123_X.y");
        assert_eq!(as_text(&from_headers(&with(b"abc-123_X.y"))), "abc-123_X.y");
        assert_eq!(from_headers(&with(&[b'a'; 128])).len(), 128);
    }

    #[test]
    fn long_spaced_or_missing_ids_are_replaced() {
        for bad in [&[b'a'; 129][..], b"has space", b"\xff\xfe"] {
            let id = from_headers(&with(bad));
            assert_eq!(id.len(), 32, "{bad:?}");
            assert_eq!(as_text(&id).len(), 32, "{bad:?}");
        }
        assert_ne!(
            from_headers(&HeaderMap::new()),
            from_headers(&HeaderMap::new())
        );
    }
}
