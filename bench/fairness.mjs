// Fair shares of Ollama's slots under contention: the fake Ollama with 2 parallel slots
// and a FIFO line, requests of about 1 s of tokens (0.9 s of generation); one key keeps 16 streams
// waiting while another asks once a second. Printed: each key's time to first token (p50, p95) and the slots' busy share,
// with dispatch on (QUEUE_SLOTS=2: the proxy queues per key) and off (QUEUE_SLOTS=0: Ollama's one
// line), in paired rounds; then two saturating keys of weights 3 and 1 and the share of tokens each
// got. Goals (dispatch on): the light key's p95 at most 1.5 s, the slots busy at least 90%, the
// weighted tokens 3:1 within 10%.
//
//   npm run build && node bench/fairness.mjs [--seconds S] [--rounds N] [--request-ms MS]
import { randomBytes } from "node:crypto"
import { mkdtempSync, writeFileSync } from "node:fs"
import http from "node:http"
import os from "node:os"
import path from "node:path"
import { fileURLToPath } from "node:url"
import { NODE_FLAGS } from "../scripts/node-flags.mjs"
import { startFakeOllama } from "../test/fake-ollama/server.mjs"
import { freePort, httpGet, proxyEnv, sleep, startChild, waitFor } from "./lib.mjs"

const ROOT = path.dirname(path.dirname(fileURLToPath(import.meta.url)))
const arg = (name, fallback) => {
  const i = process.argv.indexOf(`--${name}`)
  return i < 0 ? fallback : Number(process.argv[i + 1])
}
const SECONDS = arg("seconds", 20)
const ROUNDS = arg("rounds", 2)
const REQUEST_MS = arg("request-ms", 1000)
const TOKENS = 20
const SLOTS = 2
const HEAVY_STREAMS = 16

const KEYS = Object.fromEntries(["heavy", "light", "a3", "b1"].map((name) => [name, `sk-${name}-${randomBytes(8).toString("hex")}`]))
const dir = mkdtempSync(path.join(os.tmpdir(), "fairness-"))
const keyFile = path.join(dir, "keys.yaml")
writeFileSync(
  keyFile,
  `keys:\n${
    Object.entries(KEYS).map(([name, key]) => `  - { name: ${name}, key: ${key}${name === "a3" ? ", weight: 3" : ""} }`).join("\n")
  }\n`
)

// Generations of ~0.9 of the light key's period: it asks a little under its share of the slots. At
// exactly its share (or over it, as a loaded machine makes a "1 s" request last longer), its waits
// are those of a queue at full load and grow with the run, however the slots are shared.
const fake = await startFakeOllama({ numParallel: SLOTS, tokens: TOKENS, tokenDelayMs: (0.9 * REQUEST_MS) / TOKENS, recordRequests: false })
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 })
const body = JSON.stringify({ model: "llama3.2", messages: [{ role: "user", content: "Why is the sky blue?" }], stream: true })

const startProxy = async (slots) => {
  const port = await freePort()
  const upstreamPort = Number(new URL(fake.url).port)
  // The keys are the file's alone.
  const { AUTHORIZATION_APIKEY: _, ...env } = proxyEnv({ port, upstreamPort, key: "" }, {
    AUTHORIZATION_KEYS_FILE: keyFile,
    QUEUE_SLOTS: String(slots),
    QUEUE_MAX_WAIT: "110s"
  })
  const child = startChild(process.execPath, [...NODE_FLAGS, path.join(ROOT, "dist/main.js")], env, { whole: true })
  await waitFor(() => `the proxy (${child.errors()})`, async () => (await httpGet(port, "/ping")).status === 200)
  return { port, stop: () => new Promise((resolve) => child.once("exit", resolve).kill("SIGTERM")) }
}

/**
 * One streamed chat: the time to its first token, its tokens; rejects on anything but a whole 200
 * answer. `onTokens` is told of the tokens of each chunk as it arrives.
 */
const chat = (port, key, onTokens = (_n) => {}) =>
  new Promise((resolve, reject) => {
    const sent = performance.now()
    const req = http.request(
      { host: "127.0.0.1", port, path: "/api/chat", method: "POST", agent, headers: { authorization: `Bearer ${key}` } },
      (res) => {
        let first = -1
        let text = ""
        res.setEncoding("utf8")
        res.on("data", (d) => {
          if (first < 0) first = performance.now() - sent
          text += d
          onTokens(d.split("\"done\":false").length - 1)
        })
        res.on("end", () => {
          const done = text.trim().split("\n").map((l) => JSON.parse(l)).at(-1)
          if (res.statusCode !== 200 || done?.done !== true) return reject(new Error(`status ${res.statusCode}: ${text.slice(0, 200)}`))
          resolve({ firstTokenMs: first, tokens: done.eval_count })
        })
      }
    )
    req.on("error", reject)
    req.end(body)
  })

const percentile = (values, p) => {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? NaN
}

/** Heavy keeps 16 streams going; light asks once a second (open loop); measured after a warm-up. */
const lightAndHeavy = async (port) => {
  let stop = false
  const heavy = []
  const light = []
  const heavyLoop = async () => {
    while (!stop) {
      const answer = await chat(port, KEYS.heavy)
      if (measuring) heavy.push(answer.firstTokenMs)
    }
  }
  let measuring = false
  const loops = Array.from({ length: HEAVY_STREAMS }, heavyLoop)
  await sleep(3 * REQUEST_MS)
  fake.resetSlots()
  measuring = true
  const from = performance.now()
  const asks = []
  for (let t = 0; t < SECONDS * 1000; t += REQUEST_MS) {
    asks.push(chat(port, KEYS.light).then((a) => light.push(a.firstTokenMs)))
    await sleep(Math.max(0, from + t + REQUEST_MS - performance.now()))
  }
  const busy = fake.slots().busyMs / (SLOTS * (performance.now() - from))
  stop = true
  await Promise.all([...loops, ...asks])
  return { heavy, light, busy }
}

/**
 * Two saturating keys, weights 3 and 1, 8 streams each: the tokens each received in the window,
 * counted as they arrive (whole requests would count in steps of 20 tokens).
 */
const weighted = async (port) => {
  let stop = false
  let measuring = false
  const tokens = { a3: 0, b1: 0 }
  const loop = async (name) => {
    while (!stop) {
      await chat(port, KEYS[name], (n) => {
        if (measuring && !stop) tokens[name] += n
      })
    }
  }
  const loops = [...Array.from({ length: 8 }, () => loop("a3")), ...Array.from({ length: 8 }, () => loop("b1"))]
  await sleep(3 * REQUEST_MS)
  measuring = true
  await sleep(SECONDS * 1000)
  stop = true
  await Promise.all(loops)
  return tokens
}

const ms = (v) => `${(v / 1000).toFixed(2)} s`
const rows = []
const results = { on: [], off: [], weights: [] }
for (let round = 1; round <= ROUNDS; round++) {
  // Paired: on and off back to back, the order swapped every round.
  for (const mode of round % 2 === 1 ? ["on", "off"] : ["off", "on"]) {
    const proxy = await startProxy(mode === "on" ? SLOTS : 0)
    const r = await lightAndHeavy(proxy.port)
    await proxy.stop()
    results[mode].push(r)
    rows.push({
      round,
      dispatch: mode,
      "light p50": ms(percentile(r.light, 50)),
      "light p95": ms(percentile(r.light, 95)),
      "heavy p50": ms(percentile(r.heavy, 50)),
      "heavy p95": ms(percentile(r.heavy, 95)),
      "slots busy": `${(r.busy * 100).toFixed(1)}%`,
      requests: r.light.length + r.heavy.length
    })
  }
}
console.log(
  `\n2 slots, ~${REQUEST_MS} ms requests (${TOKENS} tokens), ${HEAVY_STREAMS} heavy streams, light once per ${REQUEST_MS} ms, ${SECONDS} s windows`
)
console.table(rows)

const proxy = await startProxy(SLOTS)
for (let round = 1; round <= ROUNDS; round++) results.weights.push(await weighted(proxy.port))
await proxy.stop()
const ratios = results.weights.map((t) => t.a3 / t.b1)
console.log("\nweights 3:1, both saturating (8 streams each), dispatch on")
console.table(results.weights.map((t, i) => ({ round: i + 1, "a3 tokens": t.a3, "b1 tokens": t.b1, ratio: ratios[i].toFixed(2) })))

const worstP95 = Math.max(...results.on.map((r) => percentile(r.light, 95)))
const leastBusy = Math.min(...results.on.map((r) => r.busy))
const verdicts = [
  [
    `light key p95 time to first token <= ${ms(1.5 * REQUEST_MS)} (dispatch on, worst round: ${ms(worstP95)})`,
    worstP95 <= 1.5 * REQUEST_MS
  ],
  [`slots busy >= 90% (dispatch on, least: ${(leastBusy * 100).toFixed(1)}%)`, leastBusy >= 0.9],
  [
    `weights 3:1 give 3:1 of the tokens within 10% (ratios ${ratios.map((r) => r.toFixed(2)).join(", ")})`,
    ratios.every((r) => Math.abs(r / 3 - 1) <= 0.1)
  ]
]
console.log("")
for (const [what, ok] of verdicts) console.log(`${ok ? "ok  " : "MISS"} ${what}`)
await fake.close()
agent.destroy()
process.exit(verdicts.every(([, ok]) => ok) ? 0 : 1)
