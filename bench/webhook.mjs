// A tiny usage webhook for the benchmark: accepts every record (204) and counts them.
// Usage: node bench/webhook.mjs PORT   (prints "listening PORT"; PORT 0 = any free port)
//   POST /         -> 204, the record counted by outcome and by whether it carries token counts
//   GET  /stats    -> {"records":N,"outcomes":{...},"withCounts":N,"bytes":N}
import http from "node:http"

const stats = { records: 0, outcomes: {}, withCounts: 0, bytes: 0, invalid: 0 }

const server = http.createServer((req, res) => {
  if (req.method === "GET" && req.url === "/stats") {
    res.writeHead(200, { "content-type": "application/json" })
    res.end(JSON.stringify(stats))
    return
  }
  const chunks = []
  req.on("data", (c) => chunks.push(c))
  req.on("end", () => {
    const body = Buffer.concat(chunks)
    stats.bytes += body.length
    try {
      const record = JSON.parse(body.toString())
      stats.records++
      stats.outcomes[record.outcome] = (stats.outcomes[record.outcome] ?? 0) + 1
      if (typeof record.eval_count === "number") stats.withCounts++
    } catch {
      stats.invalid++
    }
    res.writeHead(204)
    res.end()
  })
})
server.keepAliveTimeout = 65_000
server.listen(Number(process.argv[2] ?? 0), "127.0.0.1", () => console.log(`listening ${server.address().port}`))
