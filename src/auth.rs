//! Step 1 and 2 of the pipeline: find the presented team key, identify its team by SHA-256 digest
//! (refusing a key past its `not_after`, stamping its last use), and decide whether the team may use
//! the method.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{header, HeaderMap, Method};
use sha2::{Digest, Sha256};

use crate::metrics::KeyLastUsed;

/// What a team may do: everything, or only read (GET and HEAD).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    ReadOnly,
}

/// SHA-256 of a key. Keys themselves are never stored; config holds only these.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    pub fn from_hex(hex_text: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_text.trim(), &mut bytes).ok()?;
        Some(Self(bytes))
    }

    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    /// First 8 hex digits: enough to follow a key through a rotation in the audit trail,
    /// far too little to recover or replay it.
    pub fn key_id(self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyDigest({}…)", self.key_id())
    }
}

/// A team key's life as requests see it: when it ends, and where its uses are stamped.
#[derive(Debug)]
pub struct KeyLife {
    /// Since the Unix epoch, worked out at load so that the check on every request is one
    /// comparison of the arrival time it already has.
    not_after: Option<Duration>,
    last_used: KeyLastUsed,
}

impl KeyLife {
    pub fn new(not_after: Option<SystemTime>, last_used: KeyLastUsed) -> Self {
        Self {
            // An end before 1970 has long passed: every arrival time is past it.
            not_after: not_after.map(|t| t.duration_since(UNIX_EPOCH).unwrap_or_default()),
            last_used,
        }
    }

    /// The key was presented by a request that arrived `at`: its use is stamped (an ended key
    /// still presented too, so the callers a removal would break stay visible), and from the key's
    /// end on it is refused with the moment it ended.
    #[inline]
    pub fn presented(&self, at: SystemTime) -> Result<(), SystemTime> {
        let at = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        self.last_used.stamp(at);
        match self.not_after {
            Some(end) if at >= end => Err(UNIX_EPOCH + end),
            _ => Ok(()),
        }
    }
}

/// The team key the client presented: `Authorization: Bearer <key>` first, else `X-Api-Key`.
/// An `Authorization` header with another scheme (say, Basic for some other hop) is not a team key,
/// so `X-Api-Key` still counts beside it.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    bearer_token(headers).or_else(|| {
        let key = headers.get("x-api-key")?.to_str().ok()?.trim();
        (!key.is_empty()).then_some(key)
    })
}

/// The token of `Authorization: Bearer <token>`.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let text = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = text.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Whether `access` allows `method`: read-only teams may only read.
pub fn allows(access: Access, method: &Method) -> bool {
    access == Access::ReadWrite || is_read(method)
}

/// The methods the gateway forwards, as the `Allow` header of its `405` lists them. Any other
/// (`TRACE`, `CONNECT`, lowercase or made-up ones) is refused before it could reach upstream with
/// the org key injected: an upstream that echoes `TRACE` would hand that key back.
pub const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// Whether the gateway forwards `method` at all (see [`ALLOWED_METHODS`]).
pub fn is_forwardable(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET
            | Method::HEAD
            | Method::POST
            | Method::PUT
            | Method::PATCH
            | Method::DELETE
            | Method::OPTIONS
    )
}

/// GET and HEAD: the methods that neither change state nor spend the write quota.
pub fn is_read(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// A team key (also the demo's admin token): a recognisable prefix (so leaked keys can be found by
/// secret scanners) and 256 random bits.
pub fn new_key() -> String {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    format!("dnxgw_{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn bearer_and_x_api_key_are_both_accepted() {
        assert_eq!(
            presented_key(&headers(&[("authorization", "Bearer abc")])),
            Some("abc")
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", "bearer  abc ")])),
            Some("abc")
        );
        assert_eq!(
            presented_key(&headers(&[("x-api-key", "xyz")])),
            Some("xyz")
        );
    }

    #[test]
    fn other_schemes_and_empty_keys_are_no_key() {
        assert_eq!(
            presented_key(&headers(&[("authorization", "Basic abc")])),
            None
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", "Bearer ")])),
            None
        );
        assert_eq!(presented_key(&headers(&[("x-api-key", " ")])), None);
        assert_eq!(
            presented_key(&headers(&[
                ("authorization", "Basic abc"),
                ("x-api-key", "xyz")
            ])),
            Some("xyz")
        );
        assert_eq!(presented_key(&HeaderMap::new()), None);
    }

    #[test]
    fn digest_round_trips_through_hex_and_key_id_is_its_prefix() {
        let d = KeyDigest::of("team-key");
        assert_eq!(KeyDigest::from_hex(&d.to_hex()), Some(d));
        assert_eq!(KeyDigest::from_hex(&d.to_hex().to_uppercase()), Some(d));
        assert!(d.to_hex().starts_with(&d.key_id()));
        assert_eq!(d.key_id().len(), 8);
        assert_eq!(KeyDigest::from_hex("abc"), None);
    }

    #[test]
    fn a_key_is_refused_from_its_end_on_and_not_before() {
        let end = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let metrics = crate::metrics::ConfigMetrics::default();
        let used = metrics.team_key(&"t".into(), "k".into(), Some(end));
        let life = KeyLife::new(Some(end), used);
        assert_eq!(life.presented(end - Duration::from_millis(1)), Ok(()));
        assert_eq!(life.presented(end), Err(end));
        assert_eq!(life.presented(end + Duration::from_secs(86_400)), Err(end));
        let forever = KeyLife::new(None, metrics.team_key(&"t".into(), "j".into(), None));
        assert_eq!(
            forever.presented(end + Duration::from_secs(1 << 40)),
            Ok(())
        );
    }

    #[test]
    fn read_only_teams_may_only_get_and_head() {
        assert!(allows(Access::ReadOnly, &Method::GET));
        assert!(allows(Access::ReadOnly, &Method::HEAD));
        assert!(!allows(Access::ReadOnly, &Method::PATCH));
        assert!(allows(Access::ReadWrite, &Method::DELETE));
    }
}
