// A minimal, very fast fake Ollama for the load benchmark (not a test double: see test/fake-ollama).
// Usage: node bench/upstream.mjs PORT   (prints "listening PORT" when ready; PORT 0 = any free port)
//   GET  /                     -> 200 "Ollama is running"
//   GET  /api/version          -> 200 {"version":"0.12.0"}
//   GET  /api/tags             -> 200 small JSON model list (~300 bytes)
//   POST /api/generate|chat    -> 200 application/x-ndjson, LINES lines, one res.write each, last done:true
//   POST /v1/chat/completions  -> stream:true: SSE of LINES chunk events (+ usage chunk if asked) + [DONE]
// Env: BENCH_STREAM_LINES (default 1000); BENCH_TOKEN_INTERVAL_MS paces the NDJSON streams as a
// model would: the head and the first line after one interval, then a line every interval (the
// done line included), on a fixed schedule from the request, so a late timer does not shift the rest.
import http from "node:http"

const port = Number(process.argv[2] ?? 0)
const LINES = Number(process.env.BENCH_STREAM_LINES ?? 1000)
const INTERVAL = Number(process.env.BENCH_TOKEN_INTERVAL_MS ?? 0)
const YIELD_EVERY = 50
const MODEL = "llama3.1:8b-instruct-q4_K_M"
const CREATED = "2025-01-15T10:21:33.123456789Z"
const WORDS = [
  "The",
  " quick",
  " brown",
  " fox",
  " jumps",
  " over",
  " the",
  " lazy",
  " dog",
  ".",
  " It",
  " was",
  " a",
  " sunny",
  " afternoon",
  ","
]

const ROOT = Buffer.from("Ollama is running")
const VERSION = Buffer.from(JSON.stringify({ version: "0.12.0" }))
const TAGS = Buffer.from(JSON.stringify({
  models: [{
    name: MODEL,
    model: MODEL,
    modified_at: "2025-01-10T08:00:00.000000000Z",
    size: 1321098329,
    digest: "baf6a787fdffd633537aa2eb51cfd54cb93ff08e28040095462bb63daf552878",
    details: { parent_model: "", format: "gguf", family: "llama", families: ["llama"], parameter_size: "1.2B", quantization_level: "Q8_0" }
  }]
}))
const NOT_FOUND = Buffer.from("404 page not found")

const usage = {
  total_duration: 4883583458,
  load_duration: 1334875,
  prompt_eval_count: 26,
  prompt_eval_duration: 342546000,
  eval_count: LINES,
  eval_duration: 4535599000
}

const ndjson = (kind) => {
  const lines = []
  for (let i = 0; i < LINES; i++) {
    const token = WORDS[i % WORDS.length]
    const chunk = kind === "chat"
      ? { model: MODEL, created_at: CREATED, message: { role: "assistant", content: token }, done: false }
      : { model: MODEL, created_at: CREATED, response: token, done: false }
    lines.push(Buffer.from(JSON.stringify(chunk) + "\n")) // ~115-130 bytes
  }
  const last = kind === "chat"
    ? { model: MODEL, created_at: CREATED, message: { role: "assistant", content: "" }, done_reason: "stop", done: true, ...usage }
    : { model: MODEL, created_at: CREATED, response: "", done: true, done_reason: "stop", context: [128006, 882, 128007], ...usage }
  lines.push(Buffer.from(JSON.stringify(last) + "\n"))
  return lines
}
const GENERATE = ndjson("generate")
const CHAT = ndjson("chat")

const sseChunk = (delta, finish) =>
  Buffer.from(
    "data: " + JSON.stringify({
      id: "chatcmpl-123",
      object: "chat.completion.chunk",
      created: 1736936493,
      model: MODEL,
      system_fingerprint: "fp_ollama",
      choices: [{ index: 0, delta, finish_reason: finish }]
    }) + "\n\n"
  )
const SSE = []
for (let i = 0; i < LINES - 1; i++) SSE.push(sseChunk({ role: "assistant", content: WORDS[i % WORDS.length] }, null))
SSE.push(sseChunk({ role: "assistant", content: "" }, "stop"))
const SSE_USAGE = Buffer.from(
  "data: " + JSON.stringify({
    id: "chatcmpl-123",
    object: "chat.completion.chunk",
    created: 1736936493,
    model: MODEL,
    system_fingerprint: "fp_ollama",
    choices: [],
    usage: { prompt_tokens: 26, completion_tokens: LINES, total_tokens: 26 + LINES }
  }) + "\n\n"
)
const SSE_DONE = Buffer.from("data: [DONE]\n\n")
const COMPLETION = Buffer.from(JSON.stringify({
  id: "chatcmpl-123",
  object: "chat.completion",
  created: 1736936493,
  model: MODEL,
  system_fingerprint: "fp_ollama",
  choices: [{ index: 0, message: { role: "assistant", content: WORDS.join("") }, finish_reason: "stop" }],
  usage: { prompt_tokens: 26, completion_tokens: WORDS.length, total_tokens: 26 + WORDS.length }
}))

const JSON_TYPE = "application/json; charset=utf-8"
const fixed = (res, status, type, body) => {
  res.writeHead(status, { "Content-Type": type, "Content-Length": body.length })
  res.end(body)
}

// Writes the lines, yielding to the event loop every YIELD_EVERY lines (or waiting for 'drain' when
// the socket pushes back), and stops if the client goes away.
const stream = (res, type, lines, tail) => {
  res.writeHead(200, { "Content-Type": type })
  let i = 0
  let closed = false
  res.on("close", () => {
    closed = true
  })
  const all = tail.length ? lines.concat(tail) : lines
  const step = () => {
    if (closed) return
    let ok = true
    const stop = Math.min(all.length, i + YIELD_EVERY)
    while (i < stop) ok = res.write(all[i++])
    if (i >= all.length) return void res.end()
    if (ok) setImmediate(step)
    else res.once("drain", step)
  }
  step()
}

// One line per interval, each due at start + (i + 1) x interval.
const paced = (res, type, lines) => {
  const start = performance.now()
  let i = 0
  let closed = false
  let timer
  res.on("close", () => {
    closed = true
    clearTimeout(timer)
  })
  const step = () => {
    if (closed) return
    if (i === 0) res.writeHead(200, { "Content-Type": type })
    res.write(lines[i++])
    if (i >= lines.length) return void res.end()
    timer = setTimeout(step, Math.max(0, start + (i + 1) * INTERVAL - performance.now()))
  }
  timer = setTimeout(step, INTERVAL)
}

const readBody = (req, then) => {
  const chunks = []
  req.on("data", (c) => chunks.push(c))
  req.on("end", () => then(Buffer.concat(chunks)))
  req.on("error", () => {})
}

const server = http.createServer((req, res) => {
  const url = req.url
  const path = url.indexOf("?") === -1 ? url : url.slice(0, url.indexOf("?"))
  if (req.method === "GET" || req.method === "HEAD") {
    if (path === "/") return fixed(res, 200, "text/plain; charset=utf-8", ROOT)
    if (path === "/api/tags") return fixed(res, 200, JSON_TYPE, TAGS)
    if (path === "/api/version") return fixed(res, 200, JSON_TYPE, VERSION)
    return fixed(res, 404, "text/plain", NOT_FOUND)
  }
  if (req.method !== "POST") return fixed(res, 405, "text/plain", Buffer.from("405 method not allowed"))
  if (path === "/api/generate") {
    return readBody(
      req,
      () => INTERVAL > 0 ? paced(res, "application/x-ndjson", GENERATE) : stream(res, "application/x-ndjson", GENERATE, [])
    )
  }
  if (path === "/api/chat") {
    return readBody(req, () => INTERVAL > 0 ? paced(res, "application/x-ndjson", CHAT) : stream(res, "application/x-ndjson", CHAT, []))
  }
  if (path === "/v1/chat/completions") {
    return readBody(req, (body) => {
      let parsed = {}
      try {
        parsed = JSON.parse(body.toString("utf8") || "{}")
      } catch {
        return fixed(res, 400, JSON_TYPE, Buffer.from("{\"error\":{\"message\":\"invalid JSON\"}}"))
      }
      if (parsed.stream !== true) return fixed(res, 200, JSON_TYPE, COMPLETION)
      const tail = parsed.stream_options?.include_usage === true ? [SSE_USAGE, SSE_DONE] : [SSE_DONE]
      stream(res, "text/event-stream", SSE, tail)
    })
  }
  readBody(req, () => fixed(res, 404, "text/plain", NOT_FOUND))
})
// Ollama (Go net/http) keeps idle connections open: do not make pooled proxy connections churn.
server.keepAliveTimeout = 120_000
server.headersTimeout = 125_000
server.requestTimeout = 0
server.listen(port, "127.0.0.1", () => {
  console.log(`listening ${server.address().port}`)
})
const stop = () => server.close(() => process.exit(0)) && setTimeout(() => process.exit(0), 500).unref()
process.on("SIGTERM", stop)
process.on("SIGINT", stop)
