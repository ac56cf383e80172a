-- Cache hits spread over BENCH_AGENTS agents (default 10000), one picked at random per request.
-- The ids are the ones run.sh warmed (fetched once) with the same BENCH_PREFIX.
local n = tonumber(os.getenv("BENCH_AGENTS") or "10000")
local prefix = os.getenv("BENCH_PREFIX") or "a"
local threads = 0
local paths = {}

function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

function init(args)
  math.randomseed(os.time() * 100 + tid)
  for i = 0, n - 1 do
    paths[i] = string.format("/v1/agents2/%s%06d", prefix, i)
  end
end

function request()
  return wrk.format("GET", paths[math.random(0, n - 1)])
end
