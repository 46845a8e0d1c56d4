// `npm run demo`: builds the service and runs it on port 8080 (DEMO_PORT), with the fake Ollama
// unless a real `ollama` is installed, a fresh demo key, a small usage webhook that prints every
// usage record, and curl lines to try.
//
// Whatever stops the demo stops all of it: SIGINT (Ctrl-C), SIGTERM or SIGHUP, sent to npm, to this
// process or to the whole process group, and the end of npm itself. npm runs a script through
// `sh -c` and passes SIGINT and SIGTERM to that shell, which neither forwards them nor exits while
// its command runs: so package.json's script is `exec node scripts/demo.mjs` (the shell becomes this
// process), and this process also stops when its parent, npm, goes away (SIGHUP kills npm).
import { spawn, spawnSync } from "node:child_process"
import { randomBytes } from "node:crypto"
import { createServer } from "node:http"
import { fileURLToPath } from "node:url"
import { NODE_FLAGS } from "./node-flags.mjs"

const root = fileURLToPath(new URL("..", import.meta.url))
const port = Number(process.env.DEMO_PORT ?? 8080)
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
  stdio: ["ignore", "inherit", "inherit"],
  // Its own process group: a Ctrl-C reaches it once, through stop(), not twice (a second signal
  // makes it exit at once, without letting streams finish).
  detached: true
})
proxy.on("exit", (code, signal) => {
  process.exit(stopping > 0 ? 0 : code ?? (signal ? 1 : 0))
})

const base = `http://127.0.0.1:${port}`
for (let i = 0; i < 600 && stopping === 0; i++) {
  const status = await fetch(`${base}/ping`).then((r) => r.status, () => 0)
  if (status === 200) break
  await new Promise((r) => setTimeout(r, 50))
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
