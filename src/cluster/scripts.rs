//! The server-side scripts: everything one request asks of Redis happens in one of them, atomically
//! and on Redis's clock. All numbers are integer microseconds: Lua numbers are doubles, `tostring`
//! loses digits past 14, and a Lua number returned to the client is cut to an integer.
//!
//! Keys of one organisation share its hash tag (`<prefix>:{<org>}:…`), so one script serves a
//! request and Redis Cluster can hold them.

use std::sync::LazyLock;

use redis::Script;

/// Quotas (and, for an agent, its shared version) for one request.
///
/// KEYS: general TAT, write TAT, then for an agent: org version, agent version, writes in progress.
/// ARGV: mode (0 read, 1 agent read, 2 write, 3 agent write), general T and burst, write T and
/// burst (T = 0: no write quota), a fresh token, writes-in-progress lifetime in ms, versions'
/// lifetime in ms.
/// Returns `{refused_by, g_remaining, g_reset, w_remaining, w_reset, retry_after, version, writing}`:
/// `refused_by` 0 allowed, 1 general, 2 write; `w_remaining` -1 when no write quota applied.
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
  return {refused_by, g_rem, g_reset, w_rem, w_reset, retry, '', 0}
end

local g_rem, g_reset = status(spend(KEYS[1], gtat, gT), gT, gB)
local w_rem, w_reset = -1, 0
if has_write then w_rem, w_reset = status(spend(KEYS[2], wtat, wT), wT, wB) end

local version, writing = '', 0
if mode == 1 or mode == 3 then
  local life = ARGV[8]
  local ov = redis.call('GETEX', KEYS[3], 'PX', life)
  if not ov then
    ov = ARGV[6]
    redis.call('SET', KEYS[3], ov, 'PX', life)
  end
  local av
  if mode == 3 then
    av = ARGV[6]
    redis.call('SET', KEYS[4], av, 'PX', life)
    redis.call('INCR', KEYS[5])
    redis.call('PEXPIRE', KEYS[5], ARGV[7])
  else
    av = redis.call('GETEX', KEYS[4], 'PX', life)
    if not av then
      av = ARGV[6]
      redis.call('SET', KEYS[4], av, 'PX', life)
    end
  end
  version = ov .. '/' .. av
  if tonumber(redis.call('GET', KEYS[5]) or '0') > 0 then writing = 1 end
end
return {0, g_rem, g_reset, w_rem, w_reset, 0, version, writing}
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
}

pub(super) type RawReply = (i64, i64, i64, i64, i64, i64, String, i64);

impl AdmitReply {
    pub(super) fn from_raw(raw: RawReply) -> Self {
        let (refused_by, g_rem, g_reset, w_rem, w_reset, retry, version, writing) = raw;
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
        }
    }
}
