// The latency benchmark's client: CONCURRENCY kept-alive connections, each streaming
// POST /api/generate answers back to back for SECONDS, timing every NDJSON line as it arrives.
//   node bench/latency-client.mjs PORT CONCURRENCY SECONDS [KEY]
// Prints one line `LATENCY_JSON {...}`: streams completed, time to first token (request written to
// first line read) and the gaps between consecutive lines of a stream, as p50/p99/max in ms.
//
// Raw TCP and a hand-made HTTP/1.1 reader, so that the client's own cost stays small next to what it
// measures. Connection i starts i/CONCURRENCY of a stream's length after the first, so streams
// are spread over time as independent users' are, not in lockstep.
import net from "node:net"

const [port, concurrency, seconds, key] = [
  Number(process.argv[2]),
  Number(process.argv[3]),
  Number(process.argv[4]),
  process.argv[5]
]
const STREAM_MS = Number(process.env.BENCH_STREAM_MS ?? 2000)
const body = JSON.stringify({ model: "llama3.1:8b-instruct-q4_K_M", prompt: "Why is the sky blue?", stream: true })
const request = Buffer.from(
  `POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Type: application/json\r\n` +
    (key ? `Authorization: Bearer ${key}\r\n` : "") + `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`
)
const NEWLINE = 10
const CLOSE_BRACE = 125

const ttft = []
const gaps = []
let streams = 0
const errors = []
const started = performance.now()
const deadline = started + seconds * 1000

const connection = (index) =>
  new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1")
    socket.setNoDelay(true)
    let sentAt = 0
    let last = 0
    let lines = 0
    let done = false
    let tail = "" // the last bytes seen, for markers split across reads
    let prev = 0 // the byte before this chunk, for a `}\n` split across reads
    const next = () => {
      if (performance.now() >= deadline) {
        socket.end()
        return resolve()
      }
      sentAt = performance.now()
      last = 0
      lines = 0
      done = false
      tail = ""
      prev = 0
      socket.write(request)
    }
    socket.on("connect", () => setTimeout(next, (index * STREAM_MS) / concurrency))
    socket.on("data", (chunk) => {
      const now = performance.now()
      // An NDJSON line ends `}\n`; nothing else in the answer (head, chunk sizes, CRLFs) does.
      for (let i = 0; i < chunk.length; i++) {
        if (chunk[i] === NEWLINE && (i > 0 ? chunk[i - 1] : prev) === CLOSE_BRACE) {
          if (lines === 0) ttft.push(now - sentAt)
          else gaps.push(now - last)
          last = now
          lines++
        }
      }
      prev = chunk[chunk.length - 1]
      const text = tail + chunk.toString("latin1")
      if (!done) done = text.includes("\"done\":true")
      tail = text.slice(-16)
      // The done line, then the chunked body's last chunk: the answer is complete.
      if (done && tail.endsWith("\r\n0\r\n\r\n")) {
        streams++
        next()
      }
    })
    socket.on("error", (error) => {
      errors.push(error.message)
      resolve()
    })
    socket.on("close", resolve)
  })

await Promise.all(Array.from({ length: concurrency }, (_, i) => connection(i)))

const summary = (xs) => {
  if (xs.length === 0) return { n: 0, p50: NaN, p99: NaN, max: NaN }
  const s = Float64Array.from(xs).sort()
  const at = (q) => s[Math.min(s.length - 1, Math.floor(q * s.length))]
  return { n: s.length, p50: at(0.5), p99: at(0.99), max: s[s.length - 1] }
}
console.log(`LATENCY_JSON ${JSON.stringify({ streams, ttft: summary(ttft), gap: summary(gaps), errors: errors.slice(0, 5) })}`)
