// Latency benchmark: what a chat user feels through the proxy. A paced fake Ollama (a token every
// 20 ms, 100 tokens) streams to 1, 64 and 256 concurrent clients, straight (direct), through the
// proxy and through nginx; the client times the first token and every gap between tokens. Then a
// fresh proxy carries 1,000 concurrent streams and its peak RSS is read. See "Latency" in
// bench/README.md.
//
//   npm run bench:latency -- [--seconds S] [--rounds N] [--no-nginx] [--node current|PATH]
//
// --seconds (BENCH_DURATION): per measurement, default 10; --rounds (BENCH_ROUNDS): default 2, the
// figures are medians of rounds; --node: the Node that runs the proxy, default the image's
// (scripts/node-runtime.mjs; `current` = the one running this script).

// ---------------------------------------------------------------------------------------------------
// The proxy's environment here: what a production deployment turns on. Add a variable to this table
// and every proxy of the benchmark runs with it. `{WEBHOOK_URL}` is bench/webhook.mjs, `{OTLP_SINK}`
// bench/otlp-sink.mjs, both started by this script.
// ---------------------------------------------------------------------------------------------------
const PROXY_ENV = {
  // Usage metering on: every stream read for its usage, a record POSTed per stream.
  USER_MODEL_METRICS_WEBHOOK_URL: "{WEBHOOK_URL}",
  // Tracing on: a server span and a GenAI span per stream, all exported over OTLP.
  OTEL_EXPORTER_OTLP_ENDPOINT: "{OTLP_SINK}",
  // Limits on: all five on the key (never reached), counted in the process, checked per stream.
  AUTHORIZATION_DEFAULT_LIMITS: "{LIMITS}"
}

const LEVELS = [1, 64, 256]
const TOKEN_INTERVAL_MS = 20
const TOKENS = 100
// The 1,000 streams of the memory run get a token every 100 ms: 10,000 tokens a second in all, what
// the 256-stream level carries too. At 20 ms (50,000 a second) the upstream, the proxy and the
// client saturate the 2 cores (measured: p50 time to first token 230 ms), and the backlog that
// builds up, not the streams, then sets the proxy's RSS.
const RSS_TOKEN_INTERVAL_MS = 100
// The goals: at 64 streams the proxy adds at most 2 ms to the p99 time to first token and 1 ms to
// the p99 gap between tokens; at 256 it adds no more than nginx does; 1,000 streams fit in 150 MB.
const GOALS = { at: 64, ttftP99AddedMs: 2, gapP99AddedMs: 1, nginxAt: 256, rssStreams: 1000, rssMB: 150 }

import { spawnSync } from "node:child_process"
import { randomBytes } from "node:crypto"
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import os from "node:os"
import path from "node:path"
import { fileURLToPath } from "node:url"
import { NODE_FLAGS } from "../scripts/node-flags.mjs"
import { ensureNode } from "../scripts/node-runtime.mjs"
import { freePort, httpGet, LIMITS_NEVER_REACHED, listening, median, nginxConf, proxyEnv, startChild, waitFor } from "./lib.mjs"

const BENCH = path.dirname(fileURLToPath(import.meta.url))
const ROOT = path.dirname(BENCH)
const KEY = "bench-" + randomBytes(12).toString("hex")

const options = {
  seconds: Number(process.env.BENCH_DURATION ?? 10),
  rounds: Number(process.env.BENCH_ROUNDS ?? 2),
  nginx: true,
  node: "image"
}
for (let i = 2; i < process.argv.length; i++) {
  const [flag, inline] = process.argv[i].split(/=(.*)/s, 2)
  const value = () => inline ?? process.argv[++i]
  if (flag === "--seconds") options.seconds = Number(value())
  else if (flag === "--rounds") options.rounds = Number(value())
  else if (flag === "--no-nginx") options.nginx = false
  else if (flag === "--node") options.node = value()
  else {
    console.error(`latency: unknown option ${process.argv[i]}`)
    process.exit(2)
  }
}
if (!existsSync(path.join(ROOT, "dist", "main.js"))) {
  console.error("latency: dist/main.js is missing: run `npm run build` first (npm run bench:latency does)")
  process.exit(1)
}

// ---------------------------------------------------------------------------------------------------
// Temporary files, removed on exit (child processes: bench/lib.mjs stops them)
// ---------------------------------------------------------------------------------------------------
const tmpDirs = []
process.on("exit", () => {
  for (const dir of tmpDirs) rmSync(dir, { recursive: true, force: true })
})

const fail = (message) => {
  console.error(`latency: ${message}`)
  process.exit(1)
}

// ---------------------------------------------------------------------------------------------------
// Targets
// ---------------------------------------------------------------------------------------------------
const proxyNode = options.node === "current" ? process.execPath : options.node === "image" ? await ensureNode() : options.node
const proxyNodeVersion = spawnSync(proxyNode, ["--version"], { encoding: "utf8" }).stdout.trim()

const upstream = startChild(process.execPath, [path.join(BENCH, "upstream.mjs"), "0"], {
  BENCH_STREAM_LINES: String(TOKENS),
  BENCH_TOKEN_INTERVAL_MS: String(TOKEN_INTERVAL_MS)
})
const upstreamPort = await listening(upstream)
const webhook = startChild(process.execPath, [path.join(BENCH, "webhook.mjs"), "0"])
const webhookPort = await listening(webhook)
const sink = startChild(process.execPath, [path.join(BENCH, "otlp-sink.mjs"), "0"])
const sinkPort = await listening(sink)

/** PROXY_ENV with its placeholders filled in. */
const productionEnv = () => {
  const env = {}
  for (const [k, v] of Object.entries(PROXY_ENV)) {
    env[k] = v.replaceAll("{WEBHOOK_URL}", `http://127.0.0.1:${webhookPort}/usage`)
      .replaceAll("{OTLP_SINK}", `http://127.0.0.1:${sinkPort}`)
      .replaceAll("{LIMITS}", LIMITS_NEVER_REACHED)
  }
  return env
}
const startProxy = async (ollamaPort = upstreamPort) => {
  const port = await freePort()
  const child = startChild(
    proxyNode,
    [...NODE_FLAGS, path.join(ROOT, "dist", "main.js")],
    proxyEnv({ port, upstreamPort: ollamaPort, key: KEY }, productionEnv()),
    { whole: true }
  )
  await waitFor("the proxy", async () => (await httpGet(port, "/ping")).status === 200)
  return { name: "proxy", port, key: KEY, child }
}

const startNginx = async () => {
  const nginx = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"].find((p) => existsSync(p))
  if (!nginx) return undefined
  const dir = mkdtempSync(path.join(os.tmpdir(), "bench-nginx-"))
  tmpDirs.push(dir)
  const port = await freePort()
  writeFileSync(path.join(dir, "nginx.conf"), nginxConf({ dir, port, upstreamPort }))
  const child = startChild(nginx, ["-p", `${dir}/`, "-c", path.join(dir, "nginx.conf"), "-e", path.join(dir, "error.log")])
  await waitFor("nginx", async () => (await httpGet(port, "/")).status === 200)
  return { name: "nginx", port, child }
}

// The hand-written node:http + undici proxy of bench/run.mjs, on the proxy's Node: what any Node
// proxy adds on this machine, so the proxy's own share can be told from Node's.
const startBareNode = async (ollamaPort = upstreamPort) => {
  const port = await freePort()
  const child = startChild(proxyNode, [path.join(BENCH, "baseline-proxy.mjs"), String(port), String(ollamaPort), KEY])
  await listening(child)
  return { name: "node", port, key: KEY, child }
}

const direct = { name: "direct", port: upstreamPort }
const proxy = await startProxy()
const nginx = options.nginx ? await startNginx() : undefined
if (options.nginx && !nginx) console.log("nginx not found (apt-get install -y nginx-light): measured without it")
const bareNode = await startBareNode()
const targets = [direct, proxy, bareNode, ...(nginx ? [nginx] : [])]

// ---------------------------------------------------------------------------------------------------
// Measuring
// ---------------------------------------------------------------------------------------------------
/** One client run against `target` with `streams` concurrent streams. */
const measure = (target, streams, seconds, intervalMs = TOKEN_INTERVAL_MS) =>
  new Promise((resolve) => {
    const client = startChild(process.execPath, [
      path.join(BENCH, "latency-client.mjs"),
      String(target.port),
      String(streams),
      String(seconds),
      target.key ?? ""
    ], { BENCH_STREAM_MS: String(intervalMs * (TOKENS + 1)) })
    const killer = setTimeout(() => client.kill("SIGKILL"), (seconds + 30) * 1000)
    client.on("exit", () => {
      clearTimeout(killer)
      const line = client.output().split("\n").find((l) => l.startsWith("LATENCY_JSON "))
      if (!line) fail(`client against ${target.name} failed: ${client.errors()}`)
      const result = JSON.parse(line.slice("LATENCY_JSON ".length))
      if (result.errors.length > 0 || result.streams === 0) fail(`${target.name}: ${JSON.stringify(result)}`)
      resolve(result)
    })
  })

const ms = (x) => (Number.isFinite(x) ? x.toFixed(2) : "-").padStart(7)
const row = (label, r) =>
  `${label.padEnd(8)} ttft p50 ${ms(r.ttft.p50)} p99 ${ms(r.ttft.p99)} max ${ms(r.ttft.max)}   gap p50 ${ms(r.gap.p50)} p99 ${
    ms(r.gap.p99)
  } max ${ms(r.gap.max)}   (${r.streams} streams)`

console.log(
  `latency: ${TOKENS} tokens every ${TOKEN_INTERVAL_MS} ms per stream; ${options.rounds} round(s) x ${options.seconds} s per level and target; ` +
    `proxy on node ${proxyNodeVersion} with ${Object.keys(PROXY_ENV).join(", ")}; load average ${
      os.loadavg().map((l) => l.toFixed(2)).join(" ")
    }`
)
// A short warm-up of each target: JIT, connections to the upstream.
for (const target of targets) await measure(target, 16, 3)

const results = {}
for (const level of LEVELS) {
  results[level] = Object.fromEntries(targets.map((t) => [t.name, []]))
  for (let round = 0; round < options.rounds; round++) {
    // Rotated every round, so drift on the machine hits every target alike.
    const order = targets.map((_, i) => targets[(i + round) % targets.length])
    for (const target of order) {
      const r = await measure(target, level, options.seconds)
      results[level][target.name].push(r)
      console.log(`  ${String(level).padStart(3)} streams, round ${round + 1}: ${row(target.name, r)}`)
    }
  }
}

/** Median over rounds of each figure. */
const medianOf = (runs) => {
  const pick = (f) => median(runs.map(f))
  return {
    streams: Math.round(pick((r) => r.streams)),
    ttft: { p50: pick((r) => r.ttft.p50), p99: pick((r) => r.ttft.p99), max: pick((r) => r.ttft.max) },
    gap: { p50: pick((r) => r.gap.p50), p99: pick((r) => r.gap.p99), max: pick((r) => r.gap.max) }
  }
}
/** What a target adds to direct: median over rounds of (target - direct), each round paired. */
const added = (level, name) => {
  const mine = results[level][name], base = results[level].direct
  const diff = (f) => median(mine.map((r, i) => f(r) - f(base[i])))
  return {
    ttftP50: diff((r) => r.ttft.p50),
    ttftP99: diff((r) => r.ttft.p99),
    gapP50: diff((r) => r.gap.p50),
    gapP99: diff((r) => r.gap.p99)
  }
}

const summary = {}
console.log(`\nmedians of ${options.rounds} round(s), ms:`)
for (const level of LEVELS) {
  summary[level] = { figures: {}, added: {} }
  console.log(`${level} stream(s):`)
  for (const target of targets) {
    const m = medianOf(results[level][target.name])
    summary[level].figures[target.name] = m
    console.log(`  ${row(target.name, m)}`)
  }
  for (const target of targets.filter((t) => t !== direct)) {
    const a = added(level, target.name)
    summary[level].added[target.name] = a
    const sign = (x) => `${x >= 0 ? "+" : ""}${x.toFixed(2)}`
    console.log(
      `  added by ${target.name.padEnd(5)}: ttft p50 ${sign(a.ttftP50)} p99 ${sign(a.ttftP99)}   gap p50 ${sign(a.gapP50)} p99 ${
        sign(a.gapP99)
      }`
    )
  }
}

// ---------------------------------------------------------------------------------------------------
// Peak RSS of a fresh proxy carrying 1,000 concurrent streams
// ---------------------------------------------------------------------------------------------------
const memory = (pid) => {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8")
    const kib = (name) => Number(status.match(new RegExp(`^${name}:\\s+(\\d+) kB`, "m"))?.[1])
    return { rssKiB: kib("VmRSS"), hwmKiB: kib("VmHWM") }
  } catch {
    return undefined
  }
}
proxy.child.kill("SIGTERM")
bareNode.child.kill("SIGTERM")
const slowUpstream = startChild(process.execPath, [path.join(BENCH, "upstream.mjs"), "0"], {
  BENCH_STREAM_LINES: String(TOKENS),
  BENCH_TOKEN_INTERVAL_MS: String(RSS_TOKEN_INTERVAL_MS)
})
const fresh = await startProxy(await listening(slowUpstream))
const idle = memory(fresh.child.pid)
// Two stream lengths: every connection starts (they are spread over one length) and runs a full one.
const rssSeconds = Math.ceil((2 * RSS_TOKEN_INTERVAL_MS * (TOKENS + 1)) / 1000)
const rssRun = await measure(fresh, GOALS.rssStreams, rssSeconds, RSS_TOKEN_INTERVAL_MS)
const loaded = memory(fresh.child.pid)
console.log(
  `\n${GOALS.rssStreams} concurrent streams (a token every ${RSS_TOKEN_INTERVAL_MS} ms) through a fresh proxy (${rssSeconds} s): peak RSS ${
    loaded ? (loaded.hwmKiB / 1024).toFixed(0) : "?"
  } MB (idle after start ${idle ? (idle.rssKiB / 1024).toFixed(0) : "?"} MB)\n  ${row("proxy", rssRun)}`
)

// The same streams through a fresh bare Node proxy: the memory any Node proxy needs for them here.
fresh.child.kill("SIGTERM")
const freshNode = await startBareNode(await listening(slowUpstream))
const nodeIdle = memory(freshNode.child.pid)
const nodeRun = await measure(freshNode, GOALS.rssStreams, rssSeconds, RSS_TOKEN_INTERVAL_MS)
const nodeLoaded = memory(freshNode.child.pid)
console.log(
  `  the bare Node proxy, the same streams: peak RSS ${nodeLoaded ? (nodeLoaded.hwmKiB / 1024).toFixed(0) : "?"} MB (idle after start ${
    nodeIdle ? (nodeIdle.rssKiB / 1024).toFixed(0) : "?"
  } MB)\n  ${row("node", nodeRun)}`
)

const webhookStats = JSON.parse((await httpGet(webhookPort, "/stats")).body)
const sinkStats = JSON.parse((await httpGet(sinkPort, "/stats")).body)
console.log(
  `  metering and tracing were on: the webhook received ${webhookStats.records} records (${webhookStats.withCounts} with token counts); ` +
    `the OTLP sink ${Object.entries(sinkStats).map(([p, s]) => `${p} ${s.requests} exports`).join(", ") || "nothing"}`
)

// ---------------------------------------------------------------------------------------------------
// Verdicts
// ---------------------------------------------------------------------------------------------------
const at = summary[GOALS.at].added.proxy
const verdicts = [
  [`added p99 time to first token at ${GOALS.at} streams <= ${GOALS.ttftP99AddedMs} ms`, at.ttftP99, at.ttftP99 <= GOALS.ttftP99AddedMs],
  [`added p99 gap between tokens at ${GOALS.at} streams <= ${GOALS.gapP99AddedMs} ms`, at.gapP99, at.gapP99 <= GOALS.gapP99AddedMs]
]
const ng = summary[GOALS.nginxAt].added.nginx
if (ng) {
  const px = summary[GOALS.nginxAt].added.proxy
  verdicts.push(
    [
      `added p99 time to first token at ${GOALS.nginxAt} streams <= nginx's (${ng.ttftP99.toFixed(2)} ms)`,
      px.ttftP99,
      px.ttftP99 <= Math.max(ng.ttftP99, 0)
    ],
    [`added p99 gap at ${GOALS.nginxAt} streams <= nginx's (${ng.gapP99.toFixed(2)} ms)`, px.gapP99, px.gapP99 <= Math.max(ng.gapP99, 0)]
  )
}
const peakMB = loaded ? loaded.hwmKiB / 1024 : NaN
verdicts.push([`peak RSS at ${GOALS.rssStreams} streams <= ${GOALS.rssMB} MB`, peakMB, peakMB <= GOALS.rssMB])
console.log("\ngoals:")
for (const [what, value, pass] of verdicts) console.log(`  ${pass ? "PASS" : "FAIL"}  ${what}: ${value.toFixed(2)}`)

mkdirSync(path.join(BENCH, "results"), { recursive: true })
const out = path.join(BENCH, "results", "latency.json")
writeFileSync(
  out,
  JSON.stringify(
    {
      date: new Date().toISOString(),
      machine: { cpus: os.cpus().length, node: process.version, proxyNode: proxyNodeVersion, loadavg: os.loadavg() },
      settings: { ...options, tokens: TOKENS, tokenIntervalMs: TOKEN_INTERVAL_MS, levels: LEVELS, proxyEnv: PROXY_ENV },
      rounds: results,
      summary,
      rss: {
        streams: GOALS.rssStreams,
        idleKiB: idle?.rssKiB,
        peakKiB: loaded?.hwmKiB,
        run: rssRun,
        bareNode: { idleKiB: nodeIdle?.rssKiB, peakKiB: nodeLoaded?.hwmKiB, run: nodeRun }
      },
      webhook: webhookStats,
      otlpSink: sinkStats,
      goals: verdicts.map(([what, value, pass]) => ({ what, value, pass }))
    },
    null,
    2
  ) + "\n"
)
console.log(`\nwrote ${path.relative(ROOT, out)}`)
process.exit(0)
