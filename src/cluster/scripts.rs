//! The server-side scripts: everything one request asks of Redis happens in one of them, atomically
//! and on Redis's clock. All numbers are integer microseconds: Lua numbers are doubles, `tostring`
//! loses digits past 14, and a Lua number returned to the client is cut to an integer.
//!
//! Keys of one organisation share its hash tag (`<prefix>:{<org>}:…`), so one script serves a
//! request and Redis Cluster can hold them.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

/// Quotas (and, for an agent, its shared version) for one request, and whether its org is held.
///
/// KEYS: general TAT, write TAT, the org's hold, then for an agent: org version, agent version,
/// writes in progress.
/// ARGV: mode (0 read, 1 agent read, 2 write, 3 agent write), general T and burst, write T and
/// burst (T = 0: no write quota), a fresh token, writes-in-progress lifetime in ms, versions'
/// lifetime in ms.
/// Returns `{refused_by, g_remaining, g_reset, w_remaining, w_reset, retry_after, version, writing,
/// held}`: `refused_by` 0 allowed, 1 general, 2 write; `w_remaining` -1 when no write quota
/// applied; `held` the ms left of a DialNexa hold on the org (0: none, and always 0 on refusal).
///
/// Both quotas are looked at before either is spent, and a refusal writes nothing at all: no TAT,
/// no version, nothing that names the agent (a refused request must not grow Redis, DESIGN "A
/// hostile team and a sick Redis"). So a refused write changes no version either.
///
/// Every key written expires. A version lives `versions' lifetime` (the cache's TTL plus its
/// stale-if-error window plus a fill's time upstream) after it was last written *or read*: `GETEX`
/// refreshes it on every admitted read, so it never expires under an entry that can still be
/// served. One that expires anyway (or is lost to a restart, a flush, an eviction) is created again
/// from the fresh token, which no replica has seen: entries cached under the old one stay dead,
/// so an expiry can cost a miss, never a stale answer.
///
/// An agent write that is allowed replaces the agent's version and counts itself in progress
/// (until `WRITE_END`, or its lifetime ends), so no fill is stored while upstream may still answer
/// the old body.
///
/// The hold (set by `cluster::budget`'s `HOLD`) is only read, one `PTTL` in the same round trip:
/// a request that then goes upstream for an org without a budget needs no second round trip to
/// learn whether it may (DESIGN "The organisation's DialNexa quota", "Cost").
pub(super) static ADMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local mode = tonumber(ARGV[1])
local gT, gB = tonumber(ARGV[2]), tonumber(ARGV[3])
local wT, wB = tonumber(ARGV[4]), tonumber(ARGV[5])

local function tat_of(key)
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  return tat
end
-- Requests allowed right now and time until full, for a bucket whose TAT is `tat`.
local function status(tat, T, B)
  local remaining = math.floor((now + T * B - tat) / T)
  if remaining < 0 then remaining = 0 end
  if remaining > B then remaining = B end
  return remaining, tat - now
end
local function spend(key, tat, T)
  local next = tat + T
  redis.call('SET', key, string.format('%d', next), 'PX', math.ceil((next - now) / 1000) + 1)
  return next
end

local gtat = tat_of(KEYS[1])
local has_write = mode >= 2 and wT > 0
local wtat = 0
if has_write then wtat = tat_of(KEYS[2]) end

-- The headers describe the first quota that refuses; Retry-After waits for both.
local refused_by, retry = 0, 0
if now < gtat - gT * (gB - 1) then
  refused_by, retry = 1, gtat - gT * (gB - 1) - now
end
if has_write and now < wtat - wT * (wB - 1) then
  if refused_by == 0 then refused_by = 2 end
  local wwait = wtat - wT * (wB - 1) - now
  if wwait > retry then retry = wwait end
end

if refused_by ~= 0 then
  local g_rem, g_reset = status(gtat, gT, gB)
  local w_rem, w_reset = -1, 0
  if has_write then w_rem, w_reset = status(wtat, wT, wB) end
  return {refused_by, g_rem, g_reset, w_rem, w_reset, retry, '', 0, 0}
end

local g_rem, g_reset = status(spend(KEYS[1], gtat, gT), gT, gB)
local w_rem, w_reset = -1, 0
if has_write then w_rem, w_reset = status(spend(KEYS[2], wtat, wT), wT, wB) end

local version, writing = '', 0
if mode == 1 or mode == 3 then
  local life = ARGV[8]
  local ov = redis.call('GETEX', KEYS[4], 'PX', life)
  if not ov then
    ov = ARGV[6]
    redis.call('SET', KEYS[4], ov, 'PX', life)
  end
  local av
  if mode == 3 then
    av = ARGV[6]
    redis.call('SET', KEYS[5], av, 'PX', life)
    redis.call('INCR', KEYS[6])
    redis.call('PEXPIRE', KEYS[6], ARGV[7])
  else
    av = redis.call('GETEX', KEYS[5], 'PX', life)
    if not av then
      av = ARGV[6]
      redis.call('SET', KEYS[5], av, 'PX', life)
    end
  end
  version = ov .. '/' .. av
  if tonumber(redis.call('GET', KEYS[6]) or '0') > 0 then writing = 1 end
end
-- -2: no hold (the key expired or was never set).
local held = redis.call('PTTL', KEYS[3])
if held < 0 then held = 0 end
return {0, g_rem, g_reset, w_rem, w_reset, 0, version, writing, held}
"#,
    )
});

/// The second invalidation of an agent write, once upstream's answer (or failure) is back.
/// KEYS: agent version, writes in progress. ARGV: a fresh token, versions' lifetime in ms.
/// `DECR` of a mark that expired creates `-1`, deleted at once: nothing is left without expiry.
pub(super) static WRITE_END: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if redis.call('DECR', KEYS[2]) <= 0 then redis.call('DEL', KEYS[2]) end
return 1
"#,
    )
});

/// What one admission asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Read = 0,
    AgentRead = 1,
    Write = 2,
    AgentWrite = 3,
}

/// The admission script's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmitReply {
    /// 0 allowed, 1 refused by the general quota, 2 by the write quota.
    pub refused_by: u8,
    pub general_remaining: u32,
    pub general_reset_us: u64,
    /// `None` when no write quota applied.
    pub write: Option<(u32, u64)>,
    pub retry_after_us: u64,
    /// `<org version>/<agent version>` for agent requests.
    pub version: Option<String>,
    /// A write to the agent is in progress somewhere: nothing may be served or stored.
    pub writing: bool,
    /// DialNexa holds the org for this much longer (`None`: it does not, or the request was
    /// refused).
    pub held: Option<Duration>,
}

pub(super) type RawReply = (i64, i64, i64, i64, i64, i64, String, i64, i64);

impl AdmitReply {
    pub(super) fn from_raw(raw: RawReply) -> Self {
        let (refused_by, g_rem, g_reset, w_rem, w_reset, retry, version, writing, held) = raw;
        let count = |n: i64| u32::try_from(n.max(0)).unwrap_or(u32::MAX);
        let micros = |n: i64| u64::try_from(n.max(0)).unwrap_or(0);
        Self {
            refused_by: u8::try_from(refused_by.clamp(0, 2)).unwrap_or(0),
            general_remaining: count(g_rem),
            general_reset_us: micros(g_reset),
            write: (w_rem >= 0).then(|| (count(w_rem), micros(w_reset))),
            retry_after_us: micros(retry),
            version: (!version.is_empty()).then_some(version),
            writing: writing != 0,
            held: u64::try_from(held)
                .ok()
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis),
        }
    }
}

/// The integration tests' `redis-server` fixture, so that there is one way to start one.
#[cfg(test)]
#[allow(dead_code)] // The integration tests use the rest of it (proxies, Sentinels).
#[path = "../../tests/it/support/redis.rs"]
mod redis_fixture;

/// The scripts against a real `redis-server`: what they write, and that it all expires.
#[cfg(test)]
mod tests {
    use redis::Commands;

    use super::redis_fixture::{redis_available, TestRedis};
    use super::*;

    const KEYS: [&str; 6] = [
        "{t}:q:g",
        "{t}:q:w",
        "{t}:hold",
        "{t}:v",
        "{t}:v:a:x",
        "{t}:w:a:x",
    ];
    /// One request a minute, a burst of one: the second request is refused.
    const MINUTE_US: u64 = 60_000_000;

    /// A server, or `None` (loudly) where none is installed and none is required.
    fn server() -> Option<(TestRedis, redis::Connection)> {
        if !redis_available() {
            assert!(
                std::env::var_os("DNXGW_REQUIRE_REDIS").is_none(),
                "redis-server is required (DNXGW_REQUIRE_REDIS) but not installed"
            );
            eprintln!("SKIPPED: redis-server is not installed");
            return None;
        }
        let redis = TestRedis::start();
        let url = format!("redis+unix://{}", redis.socket().display());
        let conn = redis::Client::open(url).unwrap().get_connection().unwrap();
        Some((redis, conn))
    }

    fn admit(
        conn: &mut redis::Connection,
        mode: Mode,
        write_burst: u32,
        token: &str,
    ) -> AdmitReply {
        let mut call = ADMIT.prepare_invoke();
        KEYS.iter().for_each(|k| {
            call.key(*k);
        });
        call.arg(mode as u8)
            .arg(MINUTE_US)
            .arg(1)
            .arg(MINUTE_US)
            .arg(write_burst)
            .arg(token)
            .arg(5_000)
            .arg(60_000);
        AdmitReply::from_raw(call.invoke(conn).unwrap())
    }

    fn keys(conn: &mut redis::Connection) -> Vec<(String, i64)> {
        let mut keys: Vec<String> = conn.keys("*").unwrap();
        keys.sort();
        keys.into_iter()
            .map(|k| {
                let ttl: i64 = conn.pttl(&k).unwrap();
                (k, ttl)
            })
            .collect()
    }

    #[test]
    fn a_refusal_writes_nothing_and_everything_written_expires() {
        let Some((_redis, mut conn)) = server() else {
            return;
        };
        let read = admit(&mut conn, Mode::AgentRead, 1, "t1");
        assert_eq!(
            (read.refused_by, read.version.as_deref()),
            (0, Some("t1/t1"))
        );
        let written = keys(&mut conn);
        assert_eq!(
            written.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["{t}:q:g", "{t}:v", "{t}:v:a:x"]
        );
        assert!(written.iter().all(|(_, ttl)| *ttl > 0), "{written:?}");

        // Refused by the general quota: not a key more, none refreshed, no version made. Every
        // key is left shorter-lived than anything the script writes, so a refresh would show.
        conn.del::<_, ()>("{t}:v:a:x").unwrap();
        for (key, _) in keys(&mut conn) {
            conn.pexpire::<_, ()>(&key, 50_000).unwrap();
        }
        let before: Vec<String> = keys(&mut conn).into_iter().map(|(k, _)| k).collect();
        let refused = admit(&mut conn, Mode::AgentRead, 1, "t2");
        assert_eq!((refused.refused_by, refused.version), (1, None));
        let refused_write = admit(&mut conn, Mode::AgentWrite, 1, "t3");
        assert_eq!(refused_write.refused_by, 1);
        let after = keys(&mut conn);
        assert_eq!(
            after.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
            before
        );
        assert!(after.iter().all(|(_, ttl)| *ttl <= 50_000), "{after:?}");
    }

    #[test]
    fn a_write_refused_by_the_write_quota_changes_no_version() {
        let Some((_redis, mut conn)) = server() else {
            return;
        };
        // A burst of 1 for writes; the general quota is spent fresh each time.
        let first = admit(&mut conn, Mode::AgentWrite, 1, "w1");
        assert_eq!(
            (first.refused_by, first.version.as_deref()),
            (0, Some("w1/w1"))
        );
        assert!(first.writing);
        conn.del::<_, ()>("{t}:q:g").unwrap();
        let second = admit(&mut conn, Mode::AgentWrite, 1, "w2");
        assert_eq!((second.refused_by, second.version), (2, None));
        let version: String = conn.get("{t}:v:a:x").unwrap();
        let in_progress: i64 = conn.get("{t}:w:a:x").unwrap();
        assert_eq!((version.as_str(), in_progress), ("w1", 1));
    }

    #[test]
    fn a_read_keeps_its_version_alive_and_a_lost_one_comes_back_fresh() {
        let Some((_redis, mut conn)) = server() else {
            return;
        };
        admit(&mut conn, Mode::AgentRead, 1, "r1");
        conn.pexpire::<_, ()>("{t}:v:a:x", 50).unwrap();
        conn.del::<_, ()>("{t}:q:g").unwrap();
        let again = admit(&mut conn, Mode::AgentRead, 1, "r2");
        assert_eq!(
            again.version.as_deref(),
            Some("r1/r1"),
            "read, not replaced"
        );
        let ttl: i64 = conn.pttl("{t}:v:a:x").unwrap();
        assert!(ttl > 50_000, "refreshed to the versions' lifetime: {ttl}");
        // Lost (expired, evicted, flushed): made again from a token no entry was stored under.
        conn.del::<_, ()>(&["{t}:v:a:x", "{t}:q:g"]).unwrap();
        let fresh = admit(&mut conn, Mode::AgentRead, 1, "r3");
        assert_eq!(fresh.version.as_deref(), Some("r1/r3"));
    }

    #[test]
    fn the_org_s_hold_comes_with_the_quota_and_is_only_read() {
        let Some((_redis, mut conn)) = server() else {
            return;
        };
        let free = admit(&mut conn, Mode::Read, 1, "h1");
        assert_eq!((free.refused_by, free.held), (0, None));

        conn.pset_ex::<_, _, ()>("{t}:hold", "1", 30_000).unwrap();
        conn.del::<_, ()>("{t}:q:g").unwrap();
        for mode in [Mode::Read, Mode::AgentRead, Mode::Write, Mode::AgentWrite] {
            let held = admit(&mut conn, mode, 5, "h2");
            assert_eq!(held.refused_by, 0);
            let left = held.held.expect("held");
            assert!(
                left > Duration::from_secs(29) && left <= Duration::from_secs(30),
                "{left:?}"
            );
            conn.del::<_, ()>("{t}:q:g").unwrap();
        }
        // Read, not written: its expiry is the one its setter gave it.
        let ttl: i64 = conn.pttl("{t}:hold").unwrap();
        assert!(ttl > 29_000 && ttl <= 30_000, "{ttl}");

        // A refused request learns nothing more than that it is refused.
        admit(&mut conn, Mode::Read, 1, "h3");
        let refused = admit(&mut conn, Mode::Read, 1, "h4");
        assert_eq!((refused.refused_by, refused.held), (1, None));

        // Over: not held, and no hold key made.
        conn.del::<_, ()>(&["{t}:hold", "{t}:q:g"]).unwrap();
        let over = admit(&mut conn, Mode::AgentRead, 1, "h5");
        assert_eq!((over.refused_by, over.held), (0, None));
        assert!(!conn.exists::<_, bool>("{t}:hold").unwrap());
    }

    #[test]
    fn a_write_end_replaces_the_version_and_leaves_no_mark_behind() {
        let Some((_redis, mut conn)) = server() else {
            return;
        };
        admit(&mut conn, Mode::AgentWrite, 5, "e1");
        let end = |conn: &mut redis::Connection, token: &str| {
            WRITE_END
                .key("{t}:v:a:x")
                .key("{t}:w:a:x")
                .arg(token)
                .arg(60_000)
                .invoke::<i64>(conn)
                .unwrap()
        };
        end(&mut conn, "e2");
        let version: String = conn.get("{t}:v:a:x").unwrap();
        assert_eq!(version, "e2");
        assert!(!conn.exists::<_, bool>("{t}:w:a:x").unwrap());
        // An end whose mark already lapsed leaves none (no -1 without expiry).
        end(&mut conn, "e3");
        assert!(!conn.exists::<_, bool>("{t}:w:a:x").unwrap());
        let written = keys(&mut conn);
        assert!(written.iter().all(|(_, ttl)| *ttl > 0), "{written:?}");
    }
}
