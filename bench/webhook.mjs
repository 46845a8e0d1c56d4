// A tiny usage webhook for the benchmark: accepts every record (204) and counts them.
// Usage: node bench/webhook.mjs PORT   (prints "listening PORT"; PORT 0 = any free port)
//   POST <any path>  -> 204, each record counted by outcome and by whether it carries token counts
//                       (a body is one record, or a batch's JSON array of them)
//   GET  /stats      -> {"records":N,"posts":N,"outcomes":{...},"withCounts":N,"bytes":N,"invalid":N}
// BENCH_WEBHOOK_DELAY_MS: each answer waits that long, as a webhook that far away would (the POSTs
// of one connection still answered in order).
//
// It speaks just enough HTTP/1.1 over raw TCP (requests with Content-Length, kept alive) to cost
// next to nothing: it shares 2 cores with wrk, the upstream and the proxy under test, and every
// CPU cycle it takes slows those, not the proxy's metering. A request it cannot read closes the
// connection (a chunked body, a missing Content-Length, a head over 16 KiB).
import net from "node:net"

const stats = { records: 0, posts: 0, outcomes: {}, withCounts: 0, bytes: 0, invalid: 0 }
const DELAY_MS = Number(process.env.BENCH_WEBHOOK_DELAY_MS ?? 0)
const NO_CONTENT = Buffer.from("HTTP/1.1 204 No Content\r\n\r\n")
const MAX_HEAD = 16 * 1024

const count = (body) => {
  stats.posts++
  stats.bytes += body.length
  const text = body.toString("latin1")
  if (text.charCodeAt(0) !== 123 /* { */ && text.charCodeAt(0) !== 91 /* [ */) {
    stats.invalid++
    return
  }
  // Every record has one "outcome" and, with counts, a numeric "eval_count".
  for (let at = text.indexOf("\"outcome\":\""); at >= 0; at = text.indexOf("\"outcome\":\"", at + 11)) {
    stats.records++
    const outcome = text.slice(at + 11, text.indexOf("\"", at + 11))
    stats.outcomes[outcome] = (stats.outcomes[outcome] ?? 0) + 1
  }
  for (let at = text.indexOf("\"eval_count\":"); at >= 0; at = text.indexOf("\"eval_count\":", at + 13)) {
    if (/\d/.test(text[at + 13])) stats.withCounts++
  }
}

const server = net.createServer((socket) => {
  socket.setNoDelay(true)
  let pending = Buffer.alloc(0)
  socket.on("data", (chunk) => {
    pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk])
    for (;;) {
      const headEnd = pending.indexOf("\r\n\r\n")
      if (headEnd < 0) {
        if (pending.length > MAX_HEAD) socket.destroy()
        return
      }
      const head = pending.subarray(0, headEnd).toString("latin1")
      if (head.startsWith("GET /stats ")) {
        const json = JSON.stringify(stats)
        socket.write(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(json)}\r\n\r\n${json}`)
        pending = pending.subarray(headEnd + 4)
        continue
      }
      const length = /\r\ncontent-length:\s*(\d+)/i.exec(head)
      if (length === null || /\r\ntransfer-encoding:/i.test(head)) return void socket.destroy()
      const end = headEnd + 4 + Number(length[1])
      if (pending.length < end) return
      count(pending.subarray(headEnd + 4, end))
      pending = pending.subarray(end)
      if (DELAY_MS > 0) setTimeout(() => socket.writable && socket.write(NO_CONTENT), DELAY_MS)
      else socket.write(NO_CONTENT)
    }
  })
  socket.on("error", () => {})
})
server.listen(Number(process.argv[2] ?? 0), "127.0.0.1", () => console.log(`listening ${server.address().port}`))
