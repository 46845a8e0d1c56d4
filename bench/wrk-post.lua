-- Loaded by bench/run.mjs for the streaming runs: POST a small JSON body with the API key.
-- Env: BENCH_KEY (required), BENCH_BODY (optional JSON body).
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY") or '{"model":"llama3.1:8b-instruct-q4_K_M","prompt":"Why is the sky blue?","stream":true}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "")

-- Same report as bench/wrk-report.lua: exact totals as one JSON line.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
