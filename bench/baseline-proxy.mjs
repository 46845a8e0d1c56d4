// The benchmark's baseline: the reverse proxy a competent engineer writes by hand with node:http + undici.
// Usage: node bench/baseline-proxy.mjs PORT UPSTREAM_PORT KEY   (prints "listening PORT" when ready)
import { timingSafeEqual } from "node:crypto"
import http from "node:http"
import { pipeline } from "node:stream"
import { Pool } from "undici"

const [port, upstreamPort, key] = process.argv.slice(2)
if (!port || !upstreamPort || !key) throw new Error("usage: node bench/baseline-proxy.mjs PORT UPSTREAM_PORT KEY")
const upstreamHost = `127.0.0.1:${upstreamPort}`
const pool = new Pool(`http://${upstreamHost}`, { keepAliveTimeout: 60_000 })
const expected = Buffer.from(`Bearer ${key}`)
const HOP = [
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade"
]
const strip = (headers, extra) => {
  const out = { ...headers }
  for (const name of (headers.connection ?? "").toString().split(",")) delete out[name.trim().toLowerCase()]
  for (const name of HOP.concat(extra)) delete out[name]
  return out
}
const authorized = (value) => {
  const got = Buffer.from(value ?? "")
  return got.length === expected.length && timingSafeEqual(got, expected)
}

const server = http.createServer((req, res) => {
  if (req.url === "/ping") {
    res.writeHead(200, { "content-length": 0 })
    return res.end()
  } // liveness, no key, like the real proxy
  if (!authorized(req.headers.authorization)) {
    res.writeHead(401, { "content-type": "application/json" })
    return res.end("{\"error\":\"unauthorized\"}")
  }
  const abort = new AbortController()
  res.on("close", () => {
    if (!res.writableFinished) abort.abort()
  })
  const headers = strip(req.headers, ["authorization"])
  headers.host = upstreamHost
  const hasBody = req.method !== "GET" && req.method !== "HEAD"
  pool.request({ path: req.url, method: req.method, headers, body: hasBody ? req : null, signal: abort.signal }).then(
    ({ statusCode, headers, body }) => {
      res.writeHead(statusCode, strip(headers, []))
      pipeline(body, res, () => {})
    },
    () => {
      if (!res.headersSent) {
        res.writeHead(502, { "content-type": "application/json" })
        res.end("{\"error\":\"bad gateway\"}")
      } else res.destroy()
    }
  )
})
server.keepAliveTimeout = 65_000
server.listen(Number(port), "127.0.0.1", () => console.log(`listening ${server.address().port}`))
process.on("SIGTERM", () => {
  server.close()
  pool.close().then(() => process.exit(0))
  setTimeout(() => process.exit(0), 500).unref()
})
