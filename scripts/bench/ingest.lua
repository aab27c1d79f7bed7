-- wrk script for the readings-path benchmark (docs/benchmarks.md, "Readings path").
--
--   BENCH_TOKEN=lt_… wrk -t2 -c32 -d10s -s scripts/bench/ingest.lua http://127.0.0.1:8080
--
-- Environment:
--   BENCH_TOKEN  the device token of `bench-1` (`lentera devices add bench-1 --kind
--                greenhouse` prints it), sent as `Authorization: Bearer …` on every
--                request: the platform is closed by default
--   BENCH_PATH   request path: /api/v1/readings (default) or /sensor (the seed's shape)
--   BENCH_BATCH  readings per request for /api/v1/readings: 1 sends one JSON object,
--                N > 1 a JSON array of N readings (default 1)
-- Every reading is `bench-1`'s: with a token a request may only carry readings of its
-- own device (another device's is 403 device_mismatch). None carries `ts`: ingest stamps
-- each reading it receives with its own microsecond per device (also N readings of one
-- request), so every reading of every request is a distinct row. A `ts` in the body
-- could not do that: the body is the same for every request, so the same N timestamps
-- would repeat and the historian would keep N rows in all.
-- /sensor always sends the seed client's body {"suhu": 27.5}, with the same bearer
-- token (a closed /sensor needs it to know the device); the seed's Flask server ignores
-- the header, so both sides get the same request.
-- The body is built once: the server does the same work for every request, and wrk
-- spends its time sending rather than formatting.
-- At the end one line is printed for scripts:
--   RESULT requests=<n> seconds=<s> readings_per_request=<b> non2xx=<n> socket_errors=<n> p99_ms=<ms>

local path = os.getenv("BENCH_PATH") or "/api/v1/readings"
local batch = tonumber(os.getenv("BENCH_BATCH") or "1")
local token = os.getenv("BENCH_TOKEN") or ""
if token == "" then
  io.stderr:write("ingest.lua: BENCH_TOKEN is not set (the device token of bench-1)\n")
  os.exit(2)
end

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
    items[i] = string.format('{"device":"bench-1","temperature":%.1f,"humidity":61.2}', 20 + (i % 100) / 10)
  end
  body = "[" .. table.concat(items, ",") .. "]"
end

wrk.method = "POST"
wrk.path = path
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. token

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d seconds=%.3f readings_per_request=%d non2xx=%d socket_errors=%d p99_ms=%.2f\n",
    summary.requests, summary.duration / 1e6, batch, e.status,
    e.connect + e.read + e.write + e.timeout, latency:percentile(99) / 1000))
end
