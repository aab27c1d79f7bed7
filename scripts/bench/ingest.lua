-- wrk script for the readings-path benchmark (docs/benchmarks.md, "Readings path").
--
--   wrk -t2 -c32 -d10s -s scripts/bench/ingest.lua http://127.0.0.1:8080
--
-- Environment:
--   BENCH_PATH   request path: /api/v1/readings (default) or /sensor (the seed's shape)
--   BENCH_BATCH  readings per request for /api/v1/readings: 1 sends one JSON object,
--                N > 1 a JSON array of N readings from N devices (default 1)
-- /sensor always sends the seed client's body {"suhu": 27.5}.
-- The body is built once: the server does the same work for every request, and wrk
-- spends its time sending rather than formatting.
-- At the end one line is printed for scripts:
--   RESULT requests=<n> seconds=<s> readings_per_request=<b> non2xx=<n> socket_errors=<n>

local path = os.getenv("BENCH_PATH") or "/api/v1/readings"
local batch = tonumber(os.getenv("BENCH_BATCH") or "1")

local body
if path == "/sensor" then
  batch = 1
  body = '{"suhu": 27.5}'
elseif batch <= 1 then
  batch = 1
  body = '{"device":"bench-1","temperature":27.5,"humidity":61.2}'
else
  local items = {}
  for i = 1, batch do
    items[i] = string.format('{"device":"bench-%d","temperature":%.1f,"humidity":61.2}', i, 20 + (i % 100) / 10)
  end
  body = "[" .. table.concat(items, ",") .. "]"
end

wrk.method = "POST"
wrk.path = path
wrk.body = body
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d seconds=%.3f readings_per_request=%d non2xx=%d socket_errors=%d p99_ms=%.2f\n",
    summary.requests, summary.duration / 1e6, batch, e.status,
    e.connect + e.read + e.write + e.timeout, latency:percentile(99) / 1000))
end
