-- Loaded by bench/run.mjs for every wrk run. With BENCH_POST=1 the request is a POST of BENCH_BODY
-- with Content-Type and the key (BENCH_KEY); otherwise a plain GET whose key comes from wrk -H.
-- No request() or response() hook either way, so wrk keeps its fast static-request path; done()
-- prints exact totals as one JSON line.
if os.getenv("BENCH_POST") == "1" then
  wrk.method = "POST"
  wrk.body = os.getenv("BENCH_BODY") or '{"model":"llama3.1:8b-instruct-q4_K_M","prompt":"Why is the sky blue?","stream":true}'
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "")
end

-- BENCH_RATE (requests a second, all connections together) paces the load: each connection waits
-- connections / rate seconds before each request (wrk's delay() hook), so the rate is at most that.
local rate = tonumber(os.getenv("BENCH_RATE") or "")
if rate then
  local connections = tonumber(os.getenv("BENCH_CONNECTIONS") or "1")
  function delay()
    return 1000 * connections / rate
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
