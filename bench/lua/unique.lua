-- Cache misses: every request names an agent never asked for before (BENCH_PREFIX carries a
-- per-run nonce; each wrk thread counts on its own). A "slow-" prefix makes the fake upstream wait.
local prefix = os.getenv("BENCH_PREFIX") or "m"
local threads = 0
local counter = 0

function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

function request()
  counter = counter + 1
  return wrk.format("GET", string.format("/v1/agents2/%s-%d-%d", prefix, tid, counter))
end
