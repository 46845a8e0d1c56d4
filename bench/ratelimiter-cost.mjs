// What deciding a request's limits costs in CPU, per request: @effect/experimental's RateLimiter
// (its memory store) against the proxy's own counters (src/limits/Store.ts, embedded). This is the
// measurement behind the choice written at the top of src/limits/Store.ts; `npm run bench` gives
// what the proxy as a whole spends per small request (GET /api/tags: ~40 us), the figure to hold
// these against.
//
//   npm run bench:ratelimiter   (or node bench/ratelimiter-cost.mjs [calls])
//
// Each way is timed over the same number of calls, interleaved in rounds, by process.cpuUsage();
// the keys are spread over 1,000 names, as many keys' counters are.
import * as RateLimiter from "@effect/experimental/RateLimiter"
import { Effect, Runtime } from "effect"
import { build } from "esbuild"
import { mkdtempSync, rmSync } from "node:fs"
import os from "node:os"
import path from "node:path"
import { fileURLToPath, pathToFileURL } from "node:url"
import { median } from "./lib.mjs"

const ROOT = path.dirname(path.dirname(fileURLToPath(import.meta.url)))
const CALLS = Number(process.argv[2] ?? 200_000)
const ROUNDS = 5
const KEYS = 1000
const HUGE = 1e12

// The proxy's store is TypeScript: bundled here, on the fly, as the service's build would.
const dir = mkdtempSync(path.join(os.tmpdir(), "ratelimiter-cost-"))
process.on("exit", () => rmSync(dir, { recursive: true, force: true }))
await build({
  absWorkingDir: ROOT,
  stdin: { contents: `export * from "./src/limits/Store.ts"\nexport * from "./src/limits/Table.ts"`, resolveDir: ROOT, loader: "ts" },
  outfile: path.join(dir, "store.mjs"),
  bundle: true,
  platform: "node",
  format: "esm",
  logLevel: "warning"
})
const { embeddedStore, LIMITS, planner } = await import(pathToFileURL(path.join(dir, "store.mjs")).href)

const limiter = Effect.runSync(RateLimiter.make.pipe(Effect.provide(RateLimiter.layerStoreMemory)))
const runCallback = Runtime.runCallback(Runtime.defaultRuntime)
const consume = (key, limit, tokens) => limiter.consume({ algorithm: "fixed-window", window: "1 minute", limit, key, tokens })
/** What a request with three limits asks of it: requests per minute, tokens per minute, tokens per day. */
const threeLimits = (i) =>
  Effect.all([consume(`rpm:${i % KEYS}`, HUGE, 1), consume(`tpm:${i % KEYS}`, HUGE, 0), consume(`day:${i % KEYS}`, HUGE, 0)])

const store = embeddedStore(LIMITS)
const allFive = planner(LIMITS)({
  requests_per_minute: HUGE,
  tokens_per_minute: HUGE,
  concurrent_requests: HUGE,
  tokens_per_day: HUGE,
  tokens_per_month: HUGE
})

/** Each way: a name, and a run of `n` calls that resolves when they are all done. */
const WAYS = [
  ["RateLimiter, one limit, Effect.runSync", async (n) => {
    for (let i = 0; i < n; i++) Effect.runSync(consume(`rpm:${i % KEYS}`, HUGE, 1))
  }],
  ["RateLimiter, one limit, as a fiber (runCallback)", (n) =>
    new Promise((resolve) => {
      let left = n
      for (let i = 0; i < n; i++) runCallback(consume(`rpm:${i % KEYS}`, HUGE, 1), { onExit: () => --left === 0 && resolve() })
    })],
  ["RateLimiter, three limits, Effect.runSync", async (n) => {
    for (let i = 0; i < n; i++) Effect.runSync(threeLimits(i))
  }],
  ["proxy's store, five limits: admit + charge", async (n) => {
    const now = Date.now()
    for (let i = 0; i < n; i++) {
      const name = `k${i % KEYS}`
      store.admit({ name, plan: allFive, tokens: true, slot: "held", now })
      store.charge({ name, plan: allFive, tokens: 10, model: "llama3.2", slot: "held", now })
    }
  }]
]

const timings = new Map(WAYS.map(([name]) => [name, []]))
for (const [, run] of WAYS) await run(10_000) // JIT warm-up
for (let round = 0; round < ROUNDS; round++) {
  for (const [name, run] of WAYS) {
    const before = process.cpuUsage()
    await run(CALLS)
    const used = process.cpuUsage(before)
    timings.get(name).push((used.user + used.system) / CALLS)
  }
}

console.log(`CPU per request, median of ${ROUNDS} rounds of ${CALLS.toLocaleString("en")} calls (node ${process.version}):`)
for (const [name, runs] of timings) console.log(`  ${name.padEnd(50)} ${median(runs).toFixed(3).padStart(8)} us`)
