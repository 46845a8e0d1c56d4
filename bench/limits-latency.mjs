// What limits add to the latency of one request, one request at a time (no load): the proxy with
// limits off, with limits and the counters in the process, and with the counters in Redis (one
// round trip before the request goes to Ollama; the charge at the end is off the response's path).
// Run with `npm run build && node bench/limits-latency.mjs [requests]` (needs redis-server).
import { spawn } from "node:child_process"
import http from "node:http"
import path from "node:path"
import { fileURLToPath } from "node:url"
import { NODE_FLAGS } from "../scripts/node-flags.mjs"
import { freePort, LIMITS_NEVER_REACHED } from "./lib.mjs"

const BENCH = path.dirname(fileURLToPath(import.meta.url))
const ROOT = path.dirname(BENCH)
const N = Number(process.argv[2] ?? 3000)
const KEY = "latency-bench-key"
const children = []

const start = (cmd, args, env, ready) =>
  new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] })
    children.push(child)
    let out = ""
    const onData = (chunk) => {
      out += chunk
      const m = ready.exec(out)
      if (m) resolve({ child, match: m })
    }
    child.stdout.on("data", onData)
    child.stderr.on("data", onData)
    child.once("exit", (code) => reject(new Error(`${cmd} exited (${code}): ${out}`)))
  })

const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
const get = (port, pathName) =>
  new Promise((resolve, reject) => {
    const started = process.hrtime.bigint()
    http.get({ port, path: pathName, agent, headers: { authorization: `Bearer ${KEY}` } }, (res) => {
      res.resume()
      res.on(
        "end",
        () => (res.statusCode === 200 ? resolve(Number(process.hrtime.bigint() - started) / 1000) : reject(new Error(`${res.statusCode}`)))
      )
    }).on("error", reject)
  })
const post = (port, pathName, body) =>
  new Promise((resolve, reject) => {
    const started = process.hrtime.bigint()
    const req = http.request({
      port,
      path: pathName,
      method: "POST",
      agent,
      headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" }
    }, (res) => {
      res.resume()
      res.on(
        "end",
        () => (res.statusCode === 200 ? resolve(Number(process.hrtime.bigint() - started) / 1000) : reject(new Error(`${res.statusCode}`)))
      )
    })
    req.on("error", reject)
    req.end(body)
  })

const quantile = (xs, q) => {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.floor(q * s.length))]
}

try {
  const upstream = await start(process.execPath, [path.join(BENCH, "upstream.mjs"), "0"], { BENCH_STREAM_LINES: "20" }, /listening (\d+)/)
  const upstreamPort = Number(upstream.match[1])
  const redisPort = await freePort()
  await start(
    "redis-server",
    ["--port", String(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    {},
    /Ready to accept/
  )
  const variants = [
    { name: "limits off", env: {} },
    { name: "limits, in process", env: { AUTHORIZATION_DEFAULT_LIMITS: LIMITS_NEVER_REACHED } },
    { name: "limits, in Redis", env: { AUTHORIZATION_DEFAULT_LIMITS: LIMITS_NEVER_REACHED, REDIS_URL: `redis://127.0.0.1:${redisPort}` } }
  ]
  for (const v of variants) {
    v.port = await freePort()
    const child = spawn(process.execPath, [...NODE_FLAGS, path.join(ROOT, "dist", "main.js")], {
      stdio: "inherit",
      env: {
        ...process.env,
        ...v.env,
        PORT: String(v.port),
        HOST: "127.0.0.1",
        OLLAMA_MANAGED: "false",
        OLLAMA_HOST: `127.0.0.1:${upstreamPort}`,
        AUTHORIZATION_APIKEY: KEY,
        AUTHORIZATION_LOG_LEVEL: "warn"
      }
    })
    children.push(child)
    const deadline = Date.now() + 15_000
    while (await get(v.port, "/api/tags").then(() => false, () => true)) {
      if (Date.now() > deadline) throw new Error(`${v.name} never answered`)
      await new Promise((r) => setTimeout(r, 100))
    }
  }
  const scenarios = [
    { name: "GET /api/tags", run: (port) => get(port, "/api/tags") },
    {
      name: "POST /api/generate, 20 lines",
      run: (port) => post(port, "/api/generate", JSON.stringify({ model: "llama3.1:8b-instruct-q4_K_M", prompt: "Hi", stream: true }))
    }
  ]
  console.log(`${N} requests per variant and scenario, one at a time, interleaved in batches of 100 (microseconds)`)
  for (const scenario of scenarios) {
    const times = new Map(variants.map((v) => [v, []]))
    for (const v of variants) for (let i = 0; i < 300; i++) await scenario.run(v.port) // warm-up
    for (let done = 0; done < N; done += 100) {
      for (const v of variants) for (let i = 0; i < 100; i++) times.get(v).push(await scenario.run(v.port))
    }
    const off = times.get(variants[0])
    console.log(`\n${scenario.name}`)
    for (const v of variants) {
      const t = times.get(v)
      const p50 = quantile(t, 0.5)
      const p99 = quantile(t, 0.99)
      const added = v === variants[0]
        ? ""
        : `   added: p50 ${(p50 - quantile(off, 0.5)).toFixed(0)}  p99 ${(p99 - quantile(off, 0.99)).toFixed(0)}`
      console.log(`  ${v.name.padEnd(20)} p50 ${p50.toFixed(0).padStart(5)}  p99 ${p99.toFixed(0).padStart(5)}${added}`)
    }
  }
} finally {
  agent.destroy()
  for (const child of children) child.kill("SIGKILL")
}
