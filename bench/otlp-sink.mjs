// A tiny OTLP/HTTP receiver for the load benchmark: takes every export (protobuf or JSON), answers
// 200 with an empty body of the same type, and counts what it got, so a "tracing on" variant pays
// the full cost of exporting without a collector on the machine.
// Usage: node bench/otlp-sink.mjs PORT   (prints "listening PORT"; PORT 0 = any free port)
//   POST /v1/traces, /v1/metrics, ...  -> 200, counted
//   GET  /stats                        -> {"/v1/traces":{"requests":N,"bytes":B}, ...}
import http from "node:http"

const port = Number(process.argv[2] ?? 0)
const stats = {}

const server = http.createServer((req, res) => {
  if (req.method === "GET" && req.url === "/stats") {
    res.writeHead(200, { "content-type": "application/json" })
    res.end(JSON.stringify(stats))
    return
  }
  let bytes = 0
  req.on("data", (chunk) => (bytes += chunk.length))
  req.on("end", () => {
    const entry = (stats[req.url] ??= { requests: 0, bytes: 0 })
    entry.requests++
    entry.bytes += bytes
    res.writeHead(200, { "content-type": req.headers["content-type"] ?? "application/x-protobuf" })
    res.end()
  })
})
server.keepAliveTimeout = 65_000
server.listen(port, "127.0.0.1", () => console.log(`listening ${server.address().port}`))
