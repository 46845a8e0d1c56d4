// Webhook throughput: how many usage records a second reach a webhook 50 ms away, with batches of
// 100 records per POST and with one record per POST (the default). See "Webhook throughput" in
// bench/README.md.
//
//   npm run bench:webhook-throughput -- [--seconds S] [--rate R] [--node current|PATH]
//
// For each batch size, a fresh proxy (on the image's Node by default) meters short non-streamed
// chat completions that wrk sends at RATE a second (--rate, default 3000: above the goal, so
// that the goal is not met by a load too light to test it) for S seconds (default 10), and posts a
// record for each to bench/webhook.mjs, which answers every POST 50 ms late. Then the proxy gets
// SIGTERM and flushes its queue. Printed: records/s delivered while the load ran, what was
// delivered in all, and what the proxy logged as not delivered (queue full, shutdown deadline).
const WEBHOOK_DELAY_MS = 50
const BATCH_SIZES = [100, 1]
// The goal: at batch size 100, at least 2,000 records a second delivered, none lost.
const GOAL = { batchSize: 100, recordsPerSecond: 2000 }

import { spawnSync } from "node:child_process"
import { existsSync } from "node:fs"
import path from "node:path"
import { fileURLToPath } from "node:url"
import { NODE_FLAGS } from "../scripts/node-flags.mjs"
import { ensureNode } from "../scripts/node-runtime.mjs"
import { freePort, httpGet, listening, proxyEnv, startChild, waitFor } from "./lib.mjs"

const BENCH = path.dirname(fileURLToPath(import.meta.url))
const MAIN = path.join(BENCH, "..", "dist", "main.js")
const KEY = `bench-${Math.random().toString(16).slice(2)}`
const BODY = JSON.stringify({ model: "llama3.1:8b-instruct-q4_K_M", messages: [{ role: "user", content: "Hi" }] })

const options = { seconds: Number(process.env.BENCH_DURATION ?? 10), rate: 3000, node: "image" }
const CONNECTIONS = 16
for (let i = 2; i < process.argv.length; i++) {
  const [flag, inline] = process.argv[i].split(/=(.*)/s, 2)
  const value = () => inline ?? process.argv[++i]
  if (flag === "--seconds") options.seconds = Number(value())
  else if (flag === "--node") options.node = value()
  else if (flag === "--rate") options.rate = Number(value())
  else {
    console.error(`webhook-throughput: unknown option ${process.argv[i]}`)
    process.exit(2)
  }
}
const fail = (message) => {
  console.error(`webhook-throughput: ${message}`)
  process.exit(1)
}
if (spawnSync("sh", ["-c", "command -v wrk"]).status !== 0) fail("wrk not found (apt-get install -y wrk)")
if (!existsSync(MAIN)) fail(`${MAIN} not found: run npm run build first (npm run bench:webhook-throughput does)`)
const node = options.node === "current" ? process.execPath : options.node === "image" ? await ensureNode() : options.node

const upstream = startChild(process.execPath, [path.join(BENCH, "upstream.mjs"), "0"])
const upstreamPort = await listening(upstream)

const run = async (batchSize) => {
  // A receiver of its own per run, so its counts are this run's.
  const receiver = startChild(process.execPath, [path.join(BENCH, "webhook.mjs"), "0"], {
    BENCH_WEBHOOK_DELAY_MS: String(WEBHOOK_DELAY_MS)
  })
  const receiverPort = await listening(receiver)
  const stats = async () => JSON.parse((await httpGet(receiverPort, "/stats")).body)
  const port = await freePort()
  // All of its output: every "not delivered" line is counted.
  const proxy = startChild(
    node,
    [...NODE_FLAGS, MAIN],
    proxyEnv({ port, upstreamPort, key: KEY }, {
      AUTHORIZATION_LOG_JSON: "true",
      USER_MODEL_METRICS_WEBHOOK_URL: `http://127.0.0.1:${receiverPort}/usage`,
      USER_MODEL_METRICS_WEBHOOK_BATCH_SIZE: String(batchSize),
      // The defaults for the rest: WEBHOOK_CONCURRENCY 4, WEBHOOK_QUEUE_SIZE 10000, a 1 s batch wait.
      SHUTDOWN_TIMEOUT: "10s"
    }),
    { keep: Infinity, whole: true }
  )
  await waitFor(() => `the proxy (${proxy.errors()})`, async () => (await httpGet(port, "/ping")).status === 200)
  const before = await stats()
  const wrk = await new Promise((resolve) => {
    const child = startChild("wrk", [
      "-t1",
      `-c${CONNECTIONS}`,
      `-d${options.seconds}s`,
      "--timeout",
      "5s",
      "-s",
      path.join(BENCH, "wrk.lua"),
      `http://127.0.0.1:${port}/v1/chat/completions`
    ], { BENCH_POST: "1", BENCH_KEY: KEY, BENCH_BODY: BODY, BENCH_RATE: String(options.rate), BENCH_CONNECTIONS: String(CONNECTIONS) })
    child.on("exit", () => resolve(child.output()))
  })
  const during = await stats()
  const line = wrk.split("\n").find((l) => l.startsWith("BENCH_JSON "))
  if (!line) fail(`wrk failed: ${wrk}`)
  const w = JSON.parse(line.slice("BENCH_JSON ".length))
  const seconds = w.duration_us / 1e6
  // Shutdown: the proxy flushes what is queued (within SHUTDOWN_TIMEOUT) and exits.
  const flushStarted = performance.now()
  proxy.kill("SIGTERM")
  // "close", not "exit": the last of its output may still be on its way after the process is gone.
  await new Promise((resolve) => proxy.stdout.closed ? resolve() : proxy.once("close", resolve))
  const flushSeconds = (performance.now() - flushStarted) / 1000
  const after = await stats()
  receiver.kill("SIGTERM")
  const lost = proxy.output().split("\n").filter((l) => l.includes("\"usage record not delivered\""))
  const reasons = {}
  for (const l of lost) {
    let reason = "a line cut short"
    try {
      reason = JSON.parse(l).reason.replace(/\(\d+ records\)/, "(...)")
    } catch {
      // counted as cut
    }
    reasons[reason] = (reasons[reason] ?? 0) + 1
  }
  const result = {
    batchSize,
    responses: w.requests,
    errors: w.status + w.connect + w.read + w.write + w.timeout,
    responsesPerSecond: w.requests / seconds,
    deliveredDuringLoad: during.records - before.records,
    deliveredPerSecond: (during.records - before.records) / seconds,
    deliveredInAll: after.records - before.records,
    posts: after.posts - before.posts,
    flushSeconds,
    notDelivered: lost.length,
    reasons
  }
  console.log(
    `batch size ${String(batchSize).padStart(3)}: ${Math.round(result.responsesPerSecond)} responses/s for ${seconds.toFixed(1)} s; ` +
      `${Math.round(result.deliveredPerSecond)} records/s delivered meanwhile; after the shutdown flush (${flushSeconds.toFixed(1)} s) ` +
      `${result.deliveredInAll} of ${result.responses} delivered in ${result.posts} POSTs, ${result.notDelivered} logged as not delivered` +
      (lost.length ? ` (${Object.entries(reasons).map(([r, n]) => `${n} ${r}`).join(", ")})` : "")
  )
  return result
}

console.log(
  `webhook throughput: a webhook ${WEBHOOK_DELAY_MS} ms away, WEBHOOK_CONCURRENCY 4; wrk -c${CONNECTIONS} sends ${options.rate} ` +
    `non-streamed POST /v1/chat/completions a second (a record each) for ${options.seconds} s; proxy on ${
      node === process.execPath ? process.version : node
    }`
)
const results = []
for (const batchSize of BATCH_SIZES) results.push(await run(batchSize))
const goal = results.find((r) => r.batchSize === GOAL.batchSize)
const pass = goal.deliveredPerSecond >= GOAL.recordsPerSecond && goal.notDelivered === 0 && goal.deliveredInAll >= goal.responses
console.log(
  `goal: batch size ${GOAL.batchSize} delivers >= ${GOAL.recordsPerSecond} records/s with none lost: ${pass ? "PASS" : "FAIL"} ` +
    `(${Math.round(goal.deliveredPerSecond)} records/s, ${goal.notDelivered} lost)`
)
process.exit(0)
