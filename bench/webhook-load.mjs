// Sends the usage webhook the traffic the proxy would send it, without a proxy: a ~700-byte record
// POSTed RATE times a second over 4 kept-alive connections, through raw TCP (so this process itself
// costs little). Used by bench/webhook-cost.mjs to load the bench's webhook receiver while the proxy
// runs with its webhook off.
// Usage: node bench/webhook-load.mjs URL RATE   (prints "sending" once connected; stops on SIGTERM)
import net from "node:net"

const url = new URL(process.argv[2])
const rate = Number(process.argv[3])
if (!(rate > 0)) throw new Error(`RATE must be a positive number, got ${process.argv[3]}`)

const body = JSON.stringify({
  id: "0195f1d2-7c1e-7aa0-9e8a-1234567890ab",
  request_id: "0195f1d2-7c1e-7aa0-9e8a-0987654321ba",
  created_at: "2025-01-15T10:21:33.123456789Z",
  endpoint: "/api/generate",
  model: "llama3.1:8b-instruct-q4_K_M",
  api_key_name: "default",
  user_id: null,
  user_name: null,
  user_email: null,
  user_role: null,
  chat_id: null,
  status: 200,
  outcome: "completed",
  stream: true,
  done_reason: "stop",
  total_duration: 4883583458,
  load_duration: 1334875,
  prompt_eval_count: 26,
  prompt_eval_duration: 342546000,
  eval_count: 1000,
  eval_duration: 4535599000,
  time_to_first_chunk_ms: 0.412,
  duration_ms: 9.137
})
const request = Buffer.from(
  `POST ${url.pathname} HTTP/1.1\r\nhost: ${url.host}\r\ncontent-type: application/json\r\n` +
    `user-agent: bench-webhook-load\r\nidempotency-key: 0195f1d2-7c1e-7aa0-9e8a-1234567890ab\r\n` +
    `content-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`
)

const idle = []
let connected = 0
for (let i = 0; i < 4; i++) {
  const socket = net.connect(Number(url.port), url.hostname)
  socket.setNoDelay(true)
  socket.on("connect", () => {
    idle.push(socket)
    if (++connected === 4) console.log("sending")
  })
  // The bench receiver answers each POST with one short head: any data frees the connection.
  socket.on("data", () => idle.push(socket))
  socket.on("error", (error) => {
    console.error(`webhook-load: ${error.message}`)
    process.exit(1)
  })
}

const started = performance.now()
let sent = 0
setInterval(() => {
  const due = Math.floor(((performance.now() - started) * rate) / 1000)
  while (sent < due && idle.length > 0) {
    idle.pop().write(request)
    sent++
  }
}, 1)
process.on("SIGTERM", () => process.exit(0))
