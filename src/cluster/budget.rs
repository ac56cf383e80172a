//! The organisation's budget and DialNexa's holds, shared by every replica: one script on Redis's
//! clock decides each upstream call exactly as the replica's own budget would (see
//! `admission::budget` for the algorithm; this is the same integer arithmetic in Lua), and a hold
//! is one key with an expiry. Both keys carry the org's hash tag. Only an org with a budget asks
//! [`SPEND`]; every request learns of a hold from the admission script's answer already.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{key, micros, Cluster, ClusterError, HOLD_KEY};

/// One upstream call asks the org's budget, and whether the org is held (a hold set since the
/// request's admission refuses it too).
///
/// KEYS: the budget hash, the hold key. ARGV: the team's index among the parts (1-based),
/// per_minute, burst, S (sum of shares, at least 1), then for each team (by name) its name, share
/// and guaranteed burst.
/// Returns `{outcome, wait_us, full_us}`: outcome 0 within its part, 1 borrowed, 2 refused by the
/// budget, 3 held (wait = the hold's time left).
///
/// The hash keeps each bucket as its deficit (units below full) and the instant of its last spend:
/// fields `o`/`o@` for the org, `g:<team>`/`g@<team>` for a team's guaranteed part, and `s`, the
/// sum of shares its units were counted in (a reload that reweighs the teams rescales). Nothing is
/// written on refusal; an admission sets the key to expire once every bucket in it is full again,
/// so an expired key and a full budget are the same thing.
static SPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local held = redis.call('PTTL', KEYS[2])
if held > 0 then return {3, held * 1000, 0} end
local i = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local pm, B, S = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local unit = 60000000 * S
local org_rate, org_cap = pm * S, B * unit
local n = (#ARGV - 4) / 3
local names, rates, caps = {}, {}, {}
local fields = {'o', 'o@'}
for j = 1, n do
  names[j] = ARGV[2 + 3 * j]
  rates[j] = pm * tonumber(ARGV[3 + 3 * j])
  caps[j] = tonumber(ARGV[4 + 3 * j]) * unit
  fields[#fields + 1] = 'g:' .. names[j]
  fields[#fields + 1] = 'g@' .. names[j]
end
fields[#fields + 1] = 's'
local raw = redis.call('HMGET', KEYS[1], unpack(fields))
-- Every figure is a whole number below 2^53, so these doubles are exact integers.
local function ceil_div(a, b)
  local q = math.floor(a / b)
  local r = a - q * b
  while r < 0 do q, r = q - 1, r + b end
  while r >= b do q, r = q + 1, r - b end
  if r > 0 then q = q + 1 end
  return q
end
local function deficit_at(d, at, when, rate)
  if rate == 0 or d == 0 then return d end
  local elapsed = when - at
  if elapsed < 0 then elapsed = 0 end
  if elapsed > d / rate + 1 then return 0 end
  local left = d - rate * elapsed
  if left < 0 then left = 0 end
  return left
end
local od, oat = tonumber(raw[1] or '0'), tonumber(raw[2] or '0')
local td, tat = {}, {}
for j = 1, n do
  td[j] = tonumber(raw[1 + 2 * j] or '0')
  tat[j] = tonumber(raw[2 + 2 * j] or '0')
end
-- Saved under other shares (a reload reweighed the teams): the same calls, in the new units.
local saved_s = tonumber(raw[#fields] or '0')
local rescaled = saved_s > 0 and saved_s ~= S
if rescaled then
  od = math.ceil(od / saved_s * S)
  for j = 1, n do td[j] = math.ceil(td[j] / saved_s * S) end
end
local function org_at(dt)
  local v = org_cap - deficit_at(od, oat, now + dt, org_rate)
  if v < 0 then v = 0 end
  return v
end
local function team_at(j, dt)
  local v = caps[j] - deficit_at(td[j], tat[j], now + dt, rates[j])
  if v < 0 then v = 0 end
  return v
end
local function reserved(dt)
  local sum = 0
  for j = 1, n do sum = sum + team_at(j, dt) end
  return sum
end
local function save(spend_team)
  local odn = deficit_at(od, oat, now, org_rate) + unit
  local set = {'o', string.format('%d', odn), 'o@', string.format('%d', now), 's', string.format('%d', S)}
  local longest = ceil_div(odn, org_rate)
  for j = 1, n do
    if rates[j] > 0 then
      local d = deficit_at(td[j], tat[j], now, rates[j])
      if j == spend_team or rescaled then
        if j == spend_team then d = d + unit end
        set[#set + 1] = 'g:' .. names[j]
        set[#set + 1] = string.format('%d', d)
        set[#set + 1] = 'g@' .. names[j]
        set[#set + 1] = string.format('%d', now)
      end
      local full = ceil_div(d, rates[j])
      if full > longest then longest = full end
    end
  end
  redis.call('HSET', KEYS[1], unpack(set))
  redis.call('PEXPIRE', KEYS[1], ceil_div(longest, 1000) + 1)
end
local o = org_at(0)
if team_at(i, 0) >= unit and o >= unit then
  save(i)
  return {0, 0, 0}
end
if o >= unit and o - unit >= reserved(0) then
  save(0)
  return {1, 0, 0}
end
-- Refused: the sooner of its own part refilling to one call and the org gaining room to lend.
local org_full = ceil_div(deficit_at(od, oat, now, org_rate), org_rate)
local wait = -1
if rates[i] > 0 then
  local need_team = 0
  local own = team_at(i, 0)
  if own < unit then need_team = ceil_div(unit - own, rates[i]) end
  local need_org = 0
  if o < unit then need_org = ceil_div(unit - o, org_rate) end
  wait = math.max(need_team, need_org)
end
local function room(dt) return org_at(dt) >= unit + reserved(dt) end
if room(org_full) then
  local lo, hi = 0, org_full
  while lo < hi do
    local mid = lo + math.floor((hi - lo) / 2)
    if room(mid) then hi = mid else lo = mid + 1 end
  end
  if wait < 0 or lo < wait then wait = lo end
end
if wait < 0 then
  wait = org_full
  for j = 1, n do
    if rates[j] > 0 then
      local full = ceil_div(deficit_at(td[j], tat[j], now, rates[j]), rates[j])
      if full > wait then wait = full end
    end
  end
end
if wait < 1 then wait = 1 end
return {2, wait, org_full}
"#,
    )
});

/// Holds the org for `ms` milliseconds, unless it is already held for longer.
/// KEYS: the hold key. ARGV: the hold in milliseconds.
static HOLD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local ms = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < ms then
  redis.call('SET', KEYS[1], '1', 'PX', ms)
end
return 1
"#,
    )
});

/// One upstream call's question to the shared budget.
#[derive(Debug, Clone, Copy)]
pub struct BudgetAsk<'a> {
    pub per_minute: u64,
    pub burst: u64,
    pub total_shares: u64,
    /// The org's teams: name, share and guaranteed burst, in the order the script indexes them.
    pub parts: &'a [(&'a str, u64, u64)],
    /// The asking team's index in `parts`.
    pub team: usize,
}

/// The shared budget's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetReply {
    Within,
    Borrowed,
    Refused { wait: Duration, full: Duration },
    Held { left: Duration },
}

impl Cluster {
    /// One round trip: one call of `org`'s budget spent, unless the budget or a hold refuses it.
    pub async fn spend_budget(
        &self,
        org: &str,
        ask: BudgetAsk<'_>,
    ) -> Result<BudgetReply, ClusterError> {
        let tag = self.org_tag(org);
        let mut invocation = SPEND.prepare_invoke();
        invocation
            .key(key(&tag, &[":b"]))
            .key(key(&tag, &[HOLD_KEY]))
            .arg(ask.team + 1)
            .arg(ask.per_minute)
            .arg(ask.burst)
            .arg(ask.total_shares.max(1));
        for (name, share, guaranteed) in ask.parts {
            invocation.arg(*name).arg(*share).arg(*guaranteed);
        }
        let (outcome, wait, full): (i64, i64, i64) = self
            .link
            .call(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await?;
        let us = |n: i64| Duration::from_micros(u64::try_from(n).unwrap_or(0));
        Ok(match outcome {
            0 => BudgetReply::Within,
            1 => BudgetReply::Borrowed,
            3 => BudgetReply::Held { left: us(wait) },
            // 2. The script answers nothing else, and an unknown outcome must not send a call
            // upstream.
            _ => BudgetReply::Refused {
                wait: us(wait),
                full: us(full),
            },
        })
    }

    /// Holds `org` on every replica for `hold` (DialNexa refused it, or said it has no calls left).
    pub async fn hold(&self, org: &str, hold: Duration) -> Result<(), ClusterError> {
        let tag = self.org_tag(org);
        let ms = micros(hold).div_ceil(1000).max(1);
        let mut invocation = HOLD.prepare_invoke();
        invocation.key(key(&tag, &[HOLD_KEY])).arg(ms);
        self.link
            .call(|mut conn| async move { invocation.invoke_async::<i64>(&mut conn).await })
            .await
            .map(drop)
    }
}
