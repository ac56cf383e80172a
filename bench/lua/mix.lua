-- Reads and writes on BENCH_AGENTS agents (default 1000): BENCH_PATCH_PERCENT (default 10) of the
-- requests PATCH a random agent, the rest GET a random one. In the gateway every PATCH invalidates
-- that agent, so the next GET of it is a miss; NGINX and HAProxy cannot invalidate on a write.
local n = tonumber(os.getenv("BENCH_AGENTS") or "1000")
local pct = tonumber(os.getenv("BENCH_PATCH_PERCENT") or "10")
local prefix = os.getenv("BENCH_PREFIX") or "x"
local body = '{"llm":{"settings":{"temperature":0.4}},"first_message":"Hello again"}'
local patch_headers = {}
local threads = 0
local paths = {}

function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

function init(args)
  math.randomseed(os.time() * 100 + tid)
  -- A headers table replaces wrk.headers (the -H team key), so PATCH gets a copy of them.
  for name, value in pairs(wrk.headers) do
    patch_headers[name] = value
  end
  patch_headers["Content-Type"] = "application/json"
  for i = 0, n - 1 do
    paths[i] = string.format("/v1/agents2/%s%06d", prefix, i)
  end
end

function request()
  local path = paths[math.random(0, n - 1)]
  if math.random(1, 100) <= pct then
    return wrk.format("PATCH", path, patch_headers, body)
  end
  return wrk.format("GET", path)
end
