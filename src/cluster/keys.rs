//! How keys are named: `<prefix>:{<org>}:…`, an agent by a fixed-size digest of its id, and the
//! fresh tokens versions are made of.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use rand::RngCore;
use sha2::{Digest, Sha256};

/// After an org's tag, the key of its DialNexa hold: set by the budget's `HOLD`, read by `ADMIT`
/// and `SPEND`.
pub(super) const HOLD_KEY: &str = ":hold";

/// `<prefix>:{~canary}`: organisation names are `[a-z0-9_-]+`, so no organisation shares it.
pub(super) fn canary_tag(prefix: &str) -> String {
    key(prefix, &[":{~canary}"])
}

/// An agent as keys name it: the first 128 bits of the SHA-256 of its canonical id, in hex. A key
/// is then 32 characters whatever the id's length, so a client choosing long ids cannot make Redis
/// hold more. 128 bits make a collision out of reach even for someone searching for one, and one
/// would only make two agents share a version: each write to either invalidates both (a miss, never
/// a stale answer, since entries are still stored under their own id).
pub(super) struct AgentDigest([u8; 32]);

impl AgentDigest {
    pub(super) fn of(agent: &str) -> Self {
        let digest = Sha256::digest(agent.as_bytes());
        let mut hex = [0u8; 32];
        // 16 bytes always fit 32 hex digits.
        let _ = hex::encode_to_slice(&digest[..16], &mut hex);
        Self(hex)
    }

    pub(super) fn as_str(&self) -> &str {
        // Hex digits are ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// A Redis key written straight into a command from its parts.
pub(super) struct Key<'a>(pub(super) &'a [&'a str]);

impl redis::ToRedisArgs for Key<'_> {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + redis::RedisWrite,
    {
        let mut arg = out.writer_for_next_arg();
        for part in self.0 {
            // Writing into the command's own buffer cannot fail.
            let _ = std::io::Write::write_all(&mut arg, part.as_bytes());
        }
    }
}

/// `head` followed by `parts`, in one allocation: a request builds up to six keys, and `format!`
/// for each was a measurable part of a cluster-mode hit (callgrind).
pub(super) fn key(head: &str, parts: &[&str]) -> String {
    let mut key = String::with_capacity(head.len() + parts.iter().map(|p| p.len()).sum::<usize>());
    key.push_str(head);
    parts.iter().for_each(|p| key.push_str(p));
    key
}

pub(super) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A version no replica, restart or flush will produce twice: this process's 128 random bits
/// (drawn once) and a counter. Cheap enough to draw for every read, which needs one only when Redis
/// has no version for the agent yet.
pub(super) fn token() -> String {
    static PROCESS: LazyLock<String> = LazyLock::new(|| {
        let mut bytes = [0u8; 16];
        rand::rng().fill_bytes(&mut bytes);
        hex::encode(bytes)
    });
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    key(&PROCESS, &["-", itoa::Buffer::new().format(n)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_is_named_by_32_hex_digits_whatever_its_length() {
        let long = "x".repeat(64_000);
        for id in ["a", "agt_abc123", long.as_str()] {
            let d = AgentDigest::of(id);
            assert_eq!(d.as_str().len(), 32);
            assert!(d.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
            assert_eq!(d.as_str(), AgentDigest::of(id).as_str());
        }
        assert_ne!(AgentDigest::of("a").as_str(), AgentDigest::of("b").as_str());
        // SHA-256("abc") begins ba7816bf8f01cfea414140de5dae2223.
        assert_eq!(
            AgentDigest::of("abc").as_str(),
            "ba7816bf8f01cfea414140de5dae2223"
        );
    }

    #[test]
    fn tokens_never_repeat() {
        let a = token();
        let b = token();
        assert_ne!(a, b);
        assert!(a.len() > 32, "{a}");
    }
}
