// `npm run demo`: the built service on port 8080 (DEMO_PORT), with the fake Ollama unless a real
// `ollama` is installed, a fresh demo key, and curl lines to try. Ctrl-C stops everything.
import { spawn, spawnSync } from "node:child_process"
import { randomBytes } from "node:crypto"
import { createServer } from "node:net"
import { fileURLToPath } from "node:url"
import { NODE_FLAGS } from "./node-flags.mjs"

const root = fileURLToPath(new URL("..", import.meta.url))
const port = Number(process.env.DEMO_PORT ?? 8080)
const key = `demo-${randomBytes(12).toString("hex")}`
const realOllama = spawnSync("sh", ["-c", "command -v ollama"], { encoding: "utf8" }).stdout.trim()

const freePort = () =>
  new Promise((resolve) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
  })

const ollamaHost = realOllama ? "127.0.0.1:11434" : `127.0.0.1:${await freePort()}`
let proxyExited = false
const stop = () => {
  if (!proxyExited) proxy.kill("SIGTERM")
}
process.on("SIGINT", stop)
process.on("SIGTERM", stop)

const proxy = spawn(process.execPath, [...NODE_FLAGS, `${root}dist/main.js`], {
  env: {
    ...process.env,
    PORT: String(port),
    HOST: "127.0.0.1",
    OLLAMA_HOST: ollamaHost,
    // The proxy starts and supervises Ollama itself: the real one, or the fake executable.
    OLLAMA_BIN: realOllama || `${root}test/fake-ollama/bin/ollama`,
    // With the fake, preload a model as a worker would; a real Ollama downloads only when asked.
    ...(realOllama ? {} : { PRELOAD_MODEL: "llama3.2", FAKE_OLLAMA_TOKEN_DELAY_MS: "60", FAKE_OLLAMA_TOKENS: "12" }),
    AUTHORIZATION_APIKEY_DEMO: key
  },
  stdio: ["ignore", "inherit", "inherit"],
  // Its own process group: Ctrl-C reaches it once, through stop(), not twice.
  detached: true
})
proxy.on("exit", (code) => {
  proxyExited = true
  process.exitCode = code ?? 0
})

const base = `http://127.0.0.1:${port}`
for (let i = 0; i < 600; i++) {
  const status = await fetch(`${base}/ping`).then((r) => r.status, () => 0)
  if (status === 200) break
  await new Promise((r) => setTimeout(r, 50))
}

console.log(`
ollama-authentication-proxy demo on ${base} (Ollama: ${realOllama ? realOllama : "the bundled fake"})
API key: ${key}

  curl -N ${base}/api/chat -H 'Authorization: Bearer ${key}' \\
    -d '{"model":"llama3.2","messages":[{"role":"user","content":"Hello!"}]}'

  curl ${base}/v1/chat/completions -H 'Authorization: Bearer ${key}' \\
    -d '{"model":"llama3.2","messages":[{"role":"user","content":"Hello!"}]}'

  curl -i ${base}/api/tags              # no key: 401
  curl -i ${base}/ping                  # RunPod's health check, no key needed

Ctrl-C to stop.
`)
