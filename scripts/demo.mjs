// `npm run demo`: builds the service and runs it on port 8080 (DEMO_PORT), with the fake Ollama
// unless a real `ollama` is installed, a fresh demo key, a small usage webhook that prints every
// usage record, and curl lines to try.
//
// Whatever stops the demo stops all of it: SIGINT (Ctrl-C), SIGTERM or SIGHUP, sent to npm, to this
// process or to the whole process group, and the end of npm itself. npm runs a script through
// `sh -c` and passes SIGINT and SIGTERM to that shell, which neither forwards them nor exits while
// its command runs: so package.json's script is `exec node scripts/demo.mjs` (the shell becomes this
// process), and this process also stops when its parent, npm, goes away (SIGHUP kills npm).
//
// The banner (key and curl lines) comes only once the proxy this demo started answers. Another
// process on the port once answered the readiness check: the banner looked ready, then the proxy
// failed with EADDRINUSE. So the demo holds the port itself from the start (a taken port is one
// line naming DEMO_PORT, before the build), hands it to the proxy, and polls /ping only after the
// proxy has logged that it listens there.
import { spawn, spawnSync } from "node:child_process"
import { randomBytes } from "node:crypto"
import { createServer } from "node:http"
import { fileURLToPath } from "node:url"
import { NODE_FLAGS } from "./node-flags.mjs"

const root = fileURLToPath(new URL("..", import.meta.url))
const portText = process.env.DEMO_PORT ?? "8080"
const port = /^\d+$/.test(portText.trim()) ? Number(portText) : NaN
const key = `demo-${randomBytes(12).toString("hex")}`
const realOllama = spawnSync("sh", ["-c", "command -v ollama"], { encoding: "utf8" }).stdout.trim()

let proxy
let stopping = 0
const stop = (why) => {
  if (stopping > 0) {
    // npm passes a signal on to this process, which may have had it already (sent to the whole
    // group): one signal arrives twice. A second one later means "now": the proxy exits at once
    // on its second signal, and takes Ollama with it.
    if (performance.now() - stopping > 500 && proxy?.exitCode === null) killGroup(proxy.pid, "SIGTERM")
    return
  }
  stopping = performance.now()
  if (proxy === undefined || proxy.exitCode !== null || proxy.signalCode !== null) process.exit(0)
  // The proxy stops Ollama itself; its own process group (it is detached) holds nothing else.
  killGroup(proxy.pid, "SIGTERM")
  console.log(`\ndemo: ${why}, stopping`)
}
const killGroup = (pid, signal) => {
  try {
    process.kill(-pid, signal)
  } catch {
    // already gone
  }
}
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) process.on(signal, () => stop(signal))
// A closed terminal (SIGHUP) or a dead npm leaves stdout broken: that must not stop the stopping.
process.stdout.on("error", () => {})
const parent = process.ppid
setInterval(() => {
  if (process.ppid !== parent) stop("npm is gone")
}, 250).unref()

/** One line on stderr and exit 1: the port cannot be the demo's. */
const portUnusable = (code) => {
  const why = code === "EADDRINUSE" ? "is taken by another process" : `cannot be listened on (${code})`
  console.error(
    `demo: port ${port} on 127.0.0.1 ${why}: set DEMO_PORT to a free port, e.g. DEMO_PORT=${port === 65535 ? 8081 : port + 1} npm run demo`
  )
  process.exit(1)
}
if (!(port >= 1 && port <= 65535)) {
  console.error(`demo: DEMO_PORT=${JSON.stringify(portText)} is not a port number (1-65535)`)
  process.exit(1)
}
// Held until the proxy is started, so that a taken port is said at once, not after the build.
const holder = createServer()
await new Promise((resolve) => {
  holder.once("error", (error) => portUnusable(error.code))
  holder.listen(port, "127.0.0.1", resolve)
})

// Built here, not by a `npm run build &&` in the npm script: that would put a shell between npm
// and this process.
await import("./build.mjs")

// The usage webhook: every record the proxy sends, printed as it arrives.
const receiver = createServer((req, res) => {
  let body = ""
  req.setEncoding("utf8").on("data", (chunk) => (body += chunk)).on("end", () => {
    res.writeHead(204).end()
    try {
      const parsed = JSON.parse(body)
      for (const record of Array.isArray(parsed) ? parsed : [parsed]) console.log(`usage record: ${JSON.stringify(record)}`)
    } catch {
      console.log(`usage webhook got something that is not JSON: ${body.slice(0, 200)}`)
    }
  })
})
await new Promise((resolve) => receiver.listen(0, "127.0.0.1", resolve))
receiver.unref()

const freePort = () =>
  new Promise((resolve) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
  })

const ollamaHost = realOllama ? "127.0.0.1:11434" : `127.0.0.1:${await freePort()}`
if (stopping > 0) process.exit(0)
await new Promise((resolve) => holder.close(resolve))
proxy = spawn(process.execPath, [...NODE_FLAGS, `${root}dist/main.js`], {
  env: {
    ...process.env,
    PORT: String(port),
    HOST: "127.0.0.1",
    OLLAMA_HOST: ollamaHost,
    // The proxy starts and supervises Ollama itself: the real one, or the fake executable.
    OLLAMA_BIN: realOllama || `${root}test/fake-ollama/bin/ollama`,
    // With the fake, preload a model as a worker would; a real Ollama downloads only when asked.
    ...(realOllama ? {} : { PRELOAD_MODEL: "llama3.2", FAKE_OLLAMA_TOKEN_DELAY_MS: "60", FAKE_OLLAMA_TOKENS: "12" }),
    AUTHORIZATION_APIKEY_DEMO: key,
    USER_MODEL_METRICS_WEBHOOK_URL: `http://127.0.0.1:${receiver.address().port}/usage`
  },
  // Read here, to see the proxy's own "listening" line (and a listen error) go by; passed on as
  // they come, never paused: a stalled pipe would block the proxy's logging.
  stdio: ["ignore", "pipe", "pipe"],
  // Its own process group: a Ctrl-C reaches it once, through stop(), not twice (a second signal
  // makes it exit at once, without letting streams finish).
  detached: true
})
let listening = false
let partial = ""
proxy.stdout.on("data", (chunk) => {
  process.stdout.write(chunk)
  if (listening) return
  const lines = (partial + chunk.toString("utf8")).split("\n")
  partial = lines.pop()
  // logfmt by default, JSON with AUTHORIZATION_LOG_JSON=true
  listening = lines.some((line) => /\bmsg=listening\b|"msg":"listening"/.test(line))
})
let takenMeanwhile = false
proxy.stderr.on("data", (chunk) => {
  // Taken between our release and the proxy's bind: the proxy's line becomes ours, naming DEMO_PORT.
  if (/cannot listen on .*EADDRINUSE/.test(chunk.toString("utf8"))) takenMeanwhile = true
  else process.stderr.write(chunk)
})
proxy.on("exit", (code, signal) => {
  if (takenMeanwhile) portUnusable("EADDRINUSE")
  process.exit(stopping > 0 ? 0 : code ?? (signal ? 1 : 0))
})

const base = `http://127.0.0.1:${port}`
const startedAt = performance.now()
let told = false
for (let status = 0; status !== 200 && stopping === 0;) {
  await new Promise((r) => setTimeout(r, 50))
  // Until the proxy says it listens, whatever answers on the port is not it.
  if (listening) status = await fetch(`${base}/ping`).then((r) => r.status, () => 0)
  if (!told && performance.now() - startedAt > 30_000) {
    told = true
    console.log(`demo: the proxy is not ready yet (GET ${base}/ping: ${status || "no answer"}); its log above says why`)
  }
}
if (stopping > 0) await new Promise(() => {}) // the proxy's exit ends this process

console.log(`
ollama-authentication-proxy demo on ${base} (Ollama: ${realOllama ? realOllama : "the bundled fake"})
API key: ${key}

  curl -N ${base}/api/chat -H 'Authorization: Bearer ${key}' \\
    -d '{"model":"llama3.2","messages":[{"role":"user","content":"Hello!"}]}'

  curl ${base}/v1/chat/completions -H 'Authorization: Bearer ${key}' \\
    -d '{"model":"llama3.2","messages":[{"role":"user","content":"Hello!"}]}'

  curl -i ${base}/api/tags              # no key: 401
  curl -i ${base}/ping                  # RunPod's health check, no key needed

Each request's usage record, as the webhook receives it, is printed below as "usage record: {...}".
Ctrl-C to stop.
`)
