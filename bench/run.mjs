// Load benchmark: the proxy under test against a hand-written node:http + undici baseline, nginx and the
// fake upstream itself. See bench/README.md. Run with `npm run bench` (builds first) or `node bench/run.mjs`.
//
//   node bench/run.mjs [--quick] [--rounds N] [--duration S] [--warmup S] [--initial-warmup S]
//                      [--stat best|median] [--only name,name] [--no-nginx] [--pin target|split|off]
//                      [--retries N] [--strict] [--same-process] [--against path/to/other/dist/main.js]
//
// Env: BENCH_DURATION, BENCH_ROUNDS, BENCH_WARMUP, BENCH_INITIAL_WARMUP, BENCH_PIN, BENCH_RETRIES (same as
// the flags), BENCH_MAX_FOREIGN (cores other processes may use during a measurement before a retry),
// BENCH_PROXY_CMD (replaces `node dist/main.js`; placeholders {PORT} {UPSTREAM_PORT} {KEY}).

// ---------------------------------------------------------------------------------------------------
// Variants of the proxy under test. Each one is started as its own `node dist/main.js` process with the
// base env (PORT, HOST, OLLAMA_MANAGED=false, OLLAMA_HOST, AUTHORIZATION_APIKEY, AUTHORIZATION_LOG_LEVEL)
// plus `env`. Add entries here, e.g. { name: "proxy, metering off", env: { SOME_SWITCH: "false" } }.
// `{OTLP_SINK}` in a value is replaced by the URL of bench/otlp-sink.mjs, started when a variant uses it.
// `vs` names another variant: the two are measured back to back in every round, and the median of the
// per-round ratios (variant / other) is checked against `goals`.
// `{WEBHOOK_URL}` in a value is the bench's own usage webhook (bench/webhook.mjs, started when used).
// ---------------------------------------------------------------------------------------------------
const VARIANTS = [
  // No webhook URL: no usage tap at all (metering off).
  { name: "proxy", env: {} },
  // Exporting every span (a server span per request, a GenAI span per generation) costs at
  // most 10% of the stream relay.
  { name: "proxy + tracing", env: { OTEL_EXPORTER_OTLP_ENDPOINT: "{OTLP_SINK}" }, vs: "proxy", goals: { stream: 0.9 } },
  // Metering every inference response and posting its record, for information only: its former goal
  // (>= 0.95 of the stream relay) is dropped. Its stream is 1000 lines in ~6 ms, a record per
  // response; at any real token rate one POST per response is lost in the noise. What
  // matters for the webhook is throughput to a distant one: npm run bench:webhook-throughput.
  { name: "proxy + usage webhook", env: { USER_MODEL_METRICS_WEBHOOK_URL: "{WEBHOOK_URL}" }, vs: "proxy" },
  // The durable outbox costs at most 10% of the stream relay against the memory queue: a
  // write(2) per record (`{SPOOL_DIR}`: a fresh directory), or an XADD per record to Redis.
  {
    name: "proxy + outbox in spool",
    env: { USER_MODEL_METRICS_WEBHOOK_URL: "{WEBHOOK_URL}", USAGE_SPOOL_DIR: "{SPOOL_DIR}" },
    vs: "proxy + usage webhook",
    goals: { stream: 0.9 }
  },
  {
    name: "proxy + outbox in Redis",
    env: { USER_MODEL_METRICS_WEBHOOK_URL: "{WEBHOOK_URL}", REDIS_URL: "{REDIS_URL}" },
    vs: "proxy + usage webhook",
    goals: { stream: 0.9 }
  },
  // Every limit on the key (never reached), counters in the process: at most 5% on both.
  { name: "proxy + limits", env: { AUTHORIZATION_DEFAULT_LIMITS: "{LIMITS}" }, vs: "proxy", goals: { tags: 0.95, stream: 0.95 } },
  // The same with the counters in Redis (`{REDIS_URL}`: a redis-server the bench starts): two round
  // trips per request, for information (`info`: no verdict against the baseline either;
  // bench/limits-latency.mjs gives the latency they add).
  { name: "proxy + limits in Redis", env: { AUTHORIZATION_DEFAULT_LIMITS: "{LIMITS}", REDIS_URL: "{REDIS_URL}" }, vs: "proxy", info: true },
  // dispatch to Ollama's slots with no contention (more slots than the bench's
  // connections, so no request waits): at least 0.95 of dispatch off on both. What it does under
  // contention: bench/fairness.mjs.
  { name: "proxy + dispatch", env: { QUEUE_SLOTS: "64" }, vs: "proxy", goals: { tags: 0.95, stream: 0.95 } }
]

// The goals, as a fraction of the baseline's throughput.
const GOALS = { tags: 0.8, stream: 0.9 }

import { spawn, spawnSync } from "node:child_process"
import { randomBytes } from "node:crypto"
import { accessSync, chmodSync, constants, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import http from "node:http"
import os from "node:os"
import path from "node:path"
import { fileURLToPath } from "node:url"
import { NODE_FLAGS } from "../scripts/node-flags.mjs"
import { allowedCpus, CLK_TCK, freePort, LIMITS_NEVER_REACHED, median, nginxConf, proxyEnv, statTicks } from "./lib.mjs"

const BENCH = path.dirname(fileURLToPath(import.meta.url))
const ROOT = path.dirname(BENCH)
const KEY = "bench-" + randomBytes(12).toString("hex")
const GENERATE_BODY = JSON.stringify({ model: "llama3.1:8b-instruct-q4_K_M", prompt: "Why is the sky blue?", stream: true })

const SCENARIOS = [
  { id: "tags", label: "GET /api/tags", threads: 2, connections: 32, path: "/api/tags", post: false },
  { id: "stream", label: "POST /api/generate, 1000-line NDJSON", threads: 1, connections: 8, path: "/api/generate", post: true }
]

// ---------------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------------
const parseArgs = (argv) => {
  const opts = {
    quick: false,
    rounds: undefined,
    duration: undefined,
    warmup: undefined,
    initialWarmup: undefined,
    stat: "best",
    only: undefined,
    nginx: true,
    pin: undefined,
    retries: undefined,
    strict: false,
    fresh: true,
    against: undefined
  }
  for (let i = 0; i < argv.length; i++) {
    const [flag, value] = argv[i].split(/=(.*)/s, 2)
    const take = () => value ?? argv[++i]
    switch (flag) {
      case "--quick":
        opts.quick = true
        break
      case "--rounds":
        opts.rounds = Number(take())
        break
      case "--duration":
        opts.duration = Number(take())
        break
      case "--warmup":
        opts.warmup = Number(take())
        break
      case "--initial-warmup":
        opts.initialWarmup = Number(take())
        break
      case "--stat":
        opts.stat = take()
        break
      case "--against":
        opts.against = take()
        break
      case "--only":
        opts.only = take().split(",").map((s) => s.trim()).filter(Boolean)
        break
      case "--no-nginx":
        opts.nginx = false
        break
      case "--no-pin":
        opts.pin = "off"
        break
      case "--pin":
        opts.pin = take()
        break
      case "--strict":
        opts.strict = true
        break
      case "--same-process":
        opts.fresh = false
        break
      case "--retries":
        opts.retries = Number(take())
        break
      case "-h":
      case "--help":
        console.log(
          readFileSync(fileURLToPath(import.meta.url), "utf8").split("\n").slice(0, 10).map((l) => l.replace(/^\/\/ ?/, "")).join("\n")
        )
        process.exit(0)
      default:
        throw new Fatal(`unknown option ${argv[i]} (see --help)`)
    }
  }
  const env = (name) => (process.env[name] ? Number(process.env[name]) : undefined)
  opts.rounds ??= env("BENCH_ROUNDS") ?? (opts.quick ? 1 : 2)
  opts.duration ??= env("BENCH_DURATION") ?? (opts.quick ? 1 : 3)
  opts.warmup ??= env("BENCH_WARMUP") ?? 1
  opts.initialWarmup ??= env("BENCH_INITIAL_WARMUP") ?? (opts.quick ? 2 : 4)
  opts.retries ??= env("BENCH_RETRIES") ?? (opts.quick ? 0 : 2)
  opts.maxForeign = env("BENCH_MAX_FOREIGN") ?? 0.2
  for (const k of ["rounds", "duration", "warmup", "initialWarmup", "retries"]) {
    const min = k === "rounds" || k === "duration" ? 1 : 0 // warm-ups and retries may be 0
    if (!Number.isInteger(opts[k]) || opts[k] < min) {
      throw new Fatal(
        `--${k.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase())} must be a whole number >= ${min} (wrk takes whole seconds), got ${opts[k]}`
      )
    }
  }
  opts.pin ??= process.env.BENCH_PIN === "0" ? "off" : process.env.BENCH_PIN || "target"
  if (!["target", "split", "off"].includes(opts.pin)) throw new Fatal(`--pin must be target, split or off, got ${opts.pin}`)
  if (opts.stat !== "best" && opts.stat !== "median") throw new Fatal(`--stat must be best or median, got ${opts.stat}`)
  return opts
}

class Fatal extends Error {}

// ---------------------------------------------------------------------------------------------------
// Child processes: every one is tracked, and killed on exit, error, Ctrl-C or SIGTERM.
// ---------------------------------------------------------------------------------------------------
const children = new Set()

// A watchdog process that outlives us if we are SIGKILLed: it reads the pids (and temp dirs) we create on
// its stdin and, when that pipe closes without a final "done" (our death), kills and removes them all.
const REAPER = `let pids = new Set(), dirs = [], done = false, buf = ""
process.stdin.setEncoding("utf8").on("data", (d) => {
  buf += d; const lines = buf.split("\\n"); buf = lines.pop()
  for (const l of lines) { if (l === "done") done = true; else if (l.startsWith("dir:")) dirs.push(l.slice(4)); else if (l) pids.add(Number(l)) }
}).on("end", () => {
  if (!done) for (const p of pids) { try { process.kill(p, "SIGKILL") } catch {} }
  if (!done) setTimeout(() => { for (const d of dirs) require("fs").rmSync(d, { recursive: true, force: true }); process.exit(0) }, 200)
  else process.exit(0)
})`
const reaper = spawn(process.execPath, ["-e", REAPER], { stdio: ["pipe", "ignore", "ignore"] })
reaper.stdin.on("error", () => {})
const watch = (...pids) => {
  for (const pid of pids) if (pid) reaper.stdin.write(`${pid}\n`)
}

const tail = (limit) => {
  let text = ""
  return {
    push: (chunk) => {
      text = (text + chunk).slice(-limit)
    },
    get: () => text
  }
}

const startChild = (name, cmd, args, { env = process.env, cwd = ROOT } = {}) => {
  const proc = spawn(cmd, args, { cwd, env, stdio: ["ignore", "pipe", "pipe"] })
  const child = {
    name,
    cmd: [cmd, ...args].join(" "),
    proc,
    pid: proc.pid,
    stdout: tail(8192),
    stderr: tail(8192),
    exited: null,
    extraPids: []
  }
  child.exitedPromise = new Promise((resolve) => {
    proc.on("exit", (code, signal) => {
      child.exited = { code, signal }
      children.delete(child)
      resolve(child.exited)
    })
    proc.on("error", (err) => {
      child.exited = { code: null, signal: null, error: err }
      children.delete(child)
      resolve(child.exited)
    })
  })
  proc.stdout.setEncoding("utf8").on("data", (d) => child.stdout.push(d))
  proc.stderr.setEncoding("utf8").on("data", (d) => child.stderr.push(d))
  children.add(child)
  watch(proc.pid)
  return child
}

const alive = (pid) => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}
const killPid = (pid, signal) => {
  try {
    process.kill(pid, signal)
  } catch {
    // best effort
  }
}

const stopChild = async (child, graceMs = 2000) => {
  const extra = child.extraPids
  if (!child.exited) {
    killPid(child.pid, "SIGTERM")
    const timer = setTimeout(() => killPid(child.pid, "SIGKILL"), graceMs)
    await child.exitedPromise
    clearTimeout(timer)
  }
  for (const pid of extra) if (alive(pid)) killPid(pid, "SIGKILL") // e.g. nginx workers of a dead master
}

const stopAll = () => Promise.all([...children].map((c) => stopChild(c)))
const killAllNow = () => {
  for (const c of children) {
    killPid(c.pid, "SIGKILL")
    for (const p of c.extraPids) killPid(p, "SIGKILL")
  }
}

const tmpDirs = []
const removeTmpDirs = () => {
  for (const dir of tmpDirs.splice(0)) rmSync(dir, { recursive: true, force: true })
}
let stopping // set once: the first of end of run, error or signal wins
const shutdown = (code) => (stopping ??= stopAll().finally(() => {
  removeTmpDirs()
  reaper.stdin.end("done\n", () => process.exit(code))
  setTimeout(() => process.exit(code), 1000).unref()
}))

process.on("exit", () => {
  killAllNow()
  removeTmpDirs()
})
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.on(signal, () => {
    if (!stopping) console.error(`\n${signal}: stopping ${children.size} child process(es)`)
    shutdown(128 + (os.constants.signals[signal] ?? 1))
    setTimeout(() => {
      killAllNow()
      process.exit(130)
    }, 3000).unref()
  })
}

const describeExit = (child) => {
  const e = child.exited
  if (!e) return "still running"
  if (e.error) return `failed to start: ${e.error.message}`
  return e.signal ? `killed by ${e.signal}` : `exited with code ${e.code}`
}

const stderrTail = (child, lines = 15) => {
  const text = (child.stderr.get() || child.stdout.get()).trimEnd()
  return text ? text.split("\n").slice(-lines).map((l) => "    | " + l).join("\n") : "    | (no output)"
}

// ---------------------------------------------------------------------------------------------------
// Small HTTP helpers (no keep-alive: probes must not hold connections during measurements)
// ---------------------------------------------------------------------------------------------------
const request = ({ port, method = "GET", path: p = "/", headers = {}, body, timeoutMs = 5000 }) =>
  new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port, method, path: p, headers, agent: false, timeout: timeoutMs }, (res) => {
      const chunks = []
      res.on("data", (c) => chunks.push(c))
      res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }))
      res.on("error", reject)
    })
    req.on("timeout", () => req.destroy(new Error(`timeout after ${timeoutMs} ms`)))
    req.on("error", reject)
    req.end(body)
  })

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

const waitForLine = async (child, regex, timeoutMs) => {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    const m = child.stdout.get().match(regex)
    if (m) return m
    if (child.exited) break
    await sleep(25)
  }
  throw new Fatal(
    `${child.name} (${child.cmd}) did not print ${regex} within ${timeoutMs / 1000} s (${describeExit(child)}); output tail:\n${
      stderrTail(child)
    }`
  )
}

const waitForHttp = async (child, port, { path: p = "/", headers = {}, status = 200, timeoutMs = 15000 }) => {
  const deadline = Date.now() + timeoutMs
  let last = "no answer"
  while (Date.now() < deadline) {
    if (child.exited) break
    try {
      const res = await request({ port, path: p, headers, timeoutMs: 1000 })
      if (res.status === status) return
      last = `HTTP ${res.status}`
    } catch (err) {
      last = err.code ?? err.message
    }
    await sleep(100)
  }
  throw new Fatal(
    `${child.name} (${child.cmd}) never answered ${status} on GET http://127.0.0.1:${port}${p} ` +
      `(waited up to ${timeoutMs / 1000} s; last: ${last}; process ${describeExit(child)}); stderr tail:\n${stderrTail(child)}`
  )
}

const onPath = (exe) => {
  for (const dir of (process.env.PATH ?? "").split(path.delimiter)) {
    if (!dir) continue
    const full = path.join(dir, exe)
    try {
      accessSync(full, constants.X_OK)
      return full
    } catch {
      // best effort
    }
  }
  return undefined
}

// ---------------------------------------------------------------------------------------------------
// Targets
// ---------------------------------------------------------------------------------------------------
const startUpstream = async () => {
  const child = startChild("upstream", process.execPath, [path.join(BENCH, "upstream.mjs"), "0"])
  const [, port] = await waitForLine(child, /listening (\d+)/, 10000)
  return { name: "limit (direct)", kind: "limit", port: Number(port), child, auth: false, note: "fake Ollama itself, no proxy" }
}

const startBaseline = async (upstreamPort) => {
  const child = startChild("baseline", process.execPath, [path.join(BENCH, "baseline-proxy.mjs"), "0", String(upstreamPort), KEY])
  const [, port] = await waitForLine(child, /listening (\d+)/, 10000)
  return { name: "baseline", kind: "baseline", port: Number(port), child, note: "node:http + undici, bench/baseline-proxy.mjs" }
}

const startNginx = async (upstreamPort) => {
  const nginx = onPath("nginx") ?? ["/usr/sbin/nginx", "/usr/local/sbin/nginx"].find((p) => existsSync(p))
  if (!nginx) return { skipped: "nginx not found on PATH (apt-get install -y nginx-light)" }
  const dir = mkdtempSync(path.join(os.tmpdir(), "bench-nginx-"))
  tmpDirs.push(dir)
  reaper.stdin.write(`dir:${dir}\n`)
  chmodSync(dir, 0o755) // workers may run as an unprivileged user when started as root
  const port = await freePort()
  const conf = nginxConf({ dir, port, upstreamPort })
  writeFileSync(path.join(dir, "nginx.conf"), conf)
  const child = startChild("nginx", nginx, ["-p", dir + "/", "-c", path.join(dir, "nginx.conf"), "-e", path.join(dir, "error.log")])
  try {
    await waitForHttp(child, port, { path: "/", timeoutMs: 10000 })
  } catch (err) {
    const log = existsSync(path.join(dir, "error.log"))
      ? readFileSync(path.join(dir, "error.log"), "utf8").trim().split("\n").slice(-5).join("\n")
      : ""
    await stopChild(child)
    return { skipped: `nginx failed to start: ${err.message}${log ? "\n" + log : ""}` }
  }
  child.extraPids = childPids(child.pid)
  watch(...child.extraPids)
  return { name: "nginx", kind: "nginx", port, child, note: "proxy_buffering off, keepalive upstream; does NOT check the key" }
}

const childPids = (pid) => {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number)
  } catch {
    return []
  }
}

const proxyCommand = (port, upstreamPort) => {
  const custom = process.env.BENCH_PROXY_CMD
  if (custom) {
    const parts = custom.trim().split(/\s+/).map((s) =>
      s.replaceAll("{PORT}", String(port)).replaceAll("{UPSTREAM_PORT}", String(upstreamPort)).replaceAll("{KEY}", KEY)
    )
    return { cmd: parts[0] === "node" ? process.execPath : parts[0], args: parts.slice(1) }
  }
  return { cmd: process.execPath, args: [...NODE_FLAGS, path.join(ROOT, "dist", "main.js")] }
}

// The usage webhook the variants post records to, started on first use.
let webhook
const startWebhook = async () => {
  if (webhook) return webhook
  const child = startChild("webhook", process.execPath, [path.join(BENCH, "webhook.mjs"), "0"])
  const [, port] = await waitForLine(child, /listening (\d+)/, 10000)
  webhook = { child, port: Number(port), url: `http://127.0.0.1:${port}/` }
  return webhook
}
const webhookStats = async () => {
  if (!webhook) return undefined
  const res = await request({ port: webhook.port, path: "/stats" }).catch(() => undefined)
  return res?.status === 200 ? JSON.parse(res.body.toString()) : undefined
}

// The Redis the limits variants share, started on first use (Debian's redis-server, no persistence).
let redis
const startRedis = async () => {
  if (redis) return redis
  if (!onPath("redis-server")) throw new Fatal("a variant needs redis-server: apt-get install -y redis-server")
  const port = await freePort()
  const child = startChild("redis", "redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
  await waitForLine(child, /Ready to accept connections/, 10000)
  redis = { child, port, url: `redis://127.0.0.1:${port}` }
  return redis
}

const startOtlpSink = async () => {
  const child = startChild("otlp-sink", process.execPath, [path.join(BENCH, "otlp-sink.mjs"), "0"])
  const [, port] = await waitForLine(child, /listening (\d+)/, 10000)
  return { child, port: Number(port), url: `http://127.0.0.1:${port}` }
}

const otlpSinkStats = async (sink) => {
  const res = await request({ port: sink.port, path: "/stats" }).catch(() => undefined)
  return res?.status === 200 ? JSON.parse(res.body.toString()) : undefined
}

const startVariant = async (variant, upstreamPort, sink) => {
  const port = await freePort()
  const { cmd, args } = variant.script === undefined
    ? proxyCommand(port, upstreamPort)
    : { cmd: process.execPath, args: [...NODE_FLAGS, variant.script] }
  const env = Object.fromEntries(Object.entries(variant.env).map(([k, v]) => [k, sink ? v.replaceAll("{OTLP_SINK}", sink.url) : v]))
  for (const [k, v] of Object.entries(env)) {
    if (v.includes("{WEBHOOK_URL}")) env[k] = v.replaceAll("{WEBHOOK_URL}", (await startWebhook()).url)
    if (v.includes("{REDIS_URL}")) env[k] = v.replaceAll("{REDIS_URL}", (await startRedis()).url)
    if (v.includes("{SPOOL_DIR}")) env[k] = v.replaceAll("{SPOOL_DIR}", mkdtempSync(path.join(os.tmpdir(), "bench-spool-")))
    env[k] = env[k].replaceAll("{LIMITS}", LIMITS_NEVER_REACHED)
  }
  const child = startChild(variant.name, cmd, args, { env: proxyEnv({ port, upstreamPort, key: KEY }, env) })
  await waitForHttp(child, port, { path: "/ping", status: 200, timeoutMs: 15000 })
  const extra = Object.entries(variant.env).map(([k, v]) => `${k}=${v}`).join(" ")
  return {
    name: variant.name,
    kind: "proxy",
    variant,
    port,
    child,
    note: (process.env.BENCH_PROXY_CMD ? `BENCH_PROXY_CMD ` : "dist/main.js ") + (extra || "(default env)")
  }
}

// A proxy process keeps its JIT and heap state for life, and that state moves its stream figure:
// two identical proxies measured back to back over 6 rounds stayed 10-20% apart. So each round
// after the first runs on new proxy processes (same variants, same JIT warm-up), and a paired
// verdict, a median over rounds, is a median over processes too. --same-process turns this off.
const restartVariant = async (target, upstreamPort, sink, opts, targets) => {
  target.pastPeakKiB = Math.max(target.pastPeakKiB ?? 0, ...targetPids(target).map(peakRss).filter(Boolean).map((m) => m.hwmKiB))
  await stopChild(target.child)
  const fresh = await startVariant(target.variant, upstreamPort, sink)
  target.port = fresh.port
  target.child = fresh.child
  for (const scenario of SCENARIOS) await runWrk(target, scenario, opts.initialWarmup, targets)
}

// Checks what each target really answers before load is put on it: a target that answers 401 or 502
// fast must not look fast.
const preflight = async (target) => {
  const auth = { authorization: `Bearer ${KEY}` }
  const problems = []
  const tags = await request({ port: target.port, path: "/api/tags", headers: auth }).catch((e) => ({
    status: e.code ?? e.message,
    body: Buffer.alloc(0)
  }))
  if (tags.status !== 200 || !tags.body.toString().includes("\"models\"")) problems.push(`GET /api/tags -> ${tags.status}`)
  const gen = await request({
    port: target.port,
    method: "POST",
    path: "/api/generate",
    headers: { ...auth, "content-type": "application/json" },
    body: GENERATE_BODY
  })
    .catch((e) => ({ status: e.code ?? e.message, body: Buffer.alloc(0), headers: {} }))
  const lines = gen.body.toString().split("\n").filter(Boolean)
  let lastDone = false
  try {
    lastDone = JSON.parse(lines.at(-1) ?? "{}").done === true
  } catch {
    // best effort
  }
  if (gen.status !== 200 || !lastDone) problems.push(`POST /api/generate -> ${gen.status}, ${lines.length} lines, last done:${lastDone}`)
  const noKey = await request({ port: target.port, path: "/api/tags" }).catch((e) => ({ status: e.code ?? e.message }))
  target.auth ??= noKey.status === 401 || noKey.status === 403
  target.preflight = {
    tagsStatus: tags.status,
    tagsBytes: tags.body.length,
    generateStatus: gen.status,
    generateLines: lines.length,
    generateContentType: gen.headers?.["content-type"],
    noKeyStatus: noKey.status
  }
  console.log(
    `  ${
      pad(target.name, 22)
    } port ${target.port}  tags ${tags.status} (${tags.body.length} B)  generate ${gen.status} (${lines.length} lines, ${
      gen.headers?.["content-type"]
    })  no key -> ${noKey.status}`
  )
  if (problems.length) {
    throw new Fatal(
      `${target.name} does not proxy correctly: ${problems.join("; ")}` + (target.child ? `\n${stderrTail(target.child)}` : "")
    )
  }
}

// ---------------------------------------------------------------------------------------------------
// CPU placement. With three busy processes (wrk, upstream, proxy) on two cores, where the scheduler puts
// them decides the figure: unpinned, the same baseline measured 490-940 streams/s from one run to the
// next (the proxy and the upstream sharing a core turn big reads into many small ones). So, by default
// (--pin target), while a target is measured all its threads are pinned to the last allowed CPU, and
// everything else floats: each figure is "what this target does with at most one core" (spread on a
// quiet machine then: +-5%). --pin split also confines wrk, the upstream and idle targets to the other
// CPUs (steady too, but on 2 cores wrk and the upstream then share one core, which can cap fast targets).
// --pin off / --no-pin / BENCH_PIN=0: no pinning.
// ---------------------------------------------------------------------------------------------------
let pinning // { mode, taskset, cpu, rest, all } when active
const setupPinning = (opts) => {
  if (opts.pin === "off") return "CPU pinning off (--pin off)"
  if (process.platform !== "linux") return "CPU pinning off (Linux only)"
  let cpus = []
  try {
    cpus = allowedCpus()
  } catch {
    // best effort
  }
  if (cpus.length < 2) return "CPU pinning off (fewer than 2 CPUs)"
  const taskset = onPath("taskset")
  if (!taskset) return "CPU pinning off (taskset not found; apt-get install -y util-linux)"
  const rest = cpus.slice(0, -1)
  pinning = { mode: opts.pin, taskset, cpu: String(cpus.at(-1)), rest: rest.join(","), all: cpus.join(",") }
  return opts.pin === "split"
    ? `each measured target pinned to CPU ${pinning.cpu}; wrk, the upstream and the idle targets on CPU${
      rest.length > 1 ? "s" : ""
    } ${pinning.rest} (--pin split)`
    : `each measured target pinned to CPU ${pinning.cpu}; wrk, the upstream and the idle targets free on CPUs ${pinning.all} (--pin target)`
}
const targetPids = (t) => [t.child.pid, ...childPids(t.child.pid)]
const place = (measured, targets) => {
  if (!pinning) return
  for (const t of targets) {
    for (const pid of targetPids(t)) {
      const cpus = t === measured ? pinning.cpu : pinning.mode === "split" ? pinning.rest : pinning.all
      const r = spawnSync(pinning.taskset, ["-a", "-p", "-c", cpus, String(pid)], { stdio: "ignore" })
      if (r.status !== 0 && t === measured) console.warn(`  warning: could not pin ${t.name} (pid ${pid}) with taskset`)
    }
  }
  // The usage webhook stands for a service on another machine: its work (a POST per streamed
  // response) must not land on the measured target's CPU.
  if (webhook && !webhook.placed) {
    webhook.placed = true
    spawnSync(pinning.taskset, ["-a", "-p", "-c", pinning.rest, String(webhook.child.pid)], { stdio: "ignore" })
  }
  // Redis too stands for a service elsewhere.
  if (redis && !redis.placed) {
    redis.placed = true
    spawnSync(pinning.taskset, ["-a", "-p", "-c", pinning.rest, String(redis.child.pid)], { stdio: "ignore" })
  }
}

// ---------------------------------------------------------------------------------------------------
// wrk
// ---------------------------------------------------------------------------------------------------
const runWrk = async (target, scenario, seconds, targets) => {
  place(target, targets)
  const args = [`-t${scenario.threads}`, `-c${scenario.connections}`, `-d${seconds}s`, "--timeout", "5s", "-s", path.join(BENCH, "wrk.lua")]
  if (!scenario.post) args.push("-H", `Authorization: Bearer ${KEY}`)
  args.push(`http://127.0.0.1:${target.port}${scenario.path}`)
  const [cmd, cmdArgs] = pinning?.mode === "split" ? [pinning.taskset, ["-c", pinning.rest, "wrk", ...args]] : ["wrk", args]
  const ticksBefore = targetTicks(target)
  const startedAt = process.hrtime.bigint()
  const child = startChild("wrk", cmd, cmdArgs, {
    env: { ...process.env, BENCH_KEY: KEY, BENCH_BODY: GENERATE_BODY, BENCH_POST: scenario.post ? "1" : "" }
  })
  const killer = setTimeout(() => killPid(child.pid, "SIGKILL"), (seconds + 20) * 1000)
  const exit = await child.exitedPromise
  clearTimeout(killer)
  const ticksAfter = targetTicks(target)
  const cpuSeconds = ticksBefore === undefined || ticksAfter === undefined ? undefined : (ticksAfter - ticksBefore) / CLK_TCK
  const wallSeconds = Number(process.hrtime.bigint() - startedAt) / 1e9
  const out = child.stdout.get()
  const line = out.split("\n").find((l) => l.startsWith("BENCH_JSON "))
  if (!line) throw new Fatal(`wrk against ${target.name} ${scenario.path} failed (${describeExit(child)}):\n${out}\n${child.stderr.get()}`)
  const s = JSON.parse(line.slice("BENCH_JSON ".length))
  const socketErrors = s.connect + s.read + s.write + s.timeout
  return {
    rps: s.requests / (s.duration_us / 1e6),
    requests: s.requests,
    bytesPerResponse: s.requests ? s.bytes / s.requests : 0,
    non2xx: s.status,
    socketErrors,
    errors: { connect: s.connect, read: s.read, write: s.write, timeout: s.timeout, status: s.status },
    latencyMs: { p50: s.p50_us / 1000, p99: s.p99_us / 1000, mean: s.mean_us / 1000 },
    // CPU time (user + system, all threads; nginx: master + worker) of the target's own process(es)
    // while wrk ran, per completed response; and how many cores that was on average.
    cpuUsPerResponse: cpuSeconds !== undefined && s.requests ? cpuSeconds * 1e6 / s.requests : undefined,
    cpuCores: cpuSeconds !== undefined ? cpuSeconds / wallSeconds : undefined,
    exit
  }
}

// ---------------------------------------------------------------------------------------------------
// Other people's load. The machine may be shared (tests running next to the bench): during every
// measurement, the CPU time the kernel counted on all CPUs minus the CPU time of this process tree is
// what others used. Above BENCH_MAX_FOREIGN cores (default 0.2) the measurement is retried after a
// short pause (up to --retries times, and at most half as many retries as measurements in the whole
// run, so a busy machine costs at most +50% time) and the least disturbed attempt is kept. Linux only.
// ---------------------------------------------------------------------------------------------------
// CPU ticks of a process (all its threads) and of its children it has reaped.
const procTicks = (pid) => {
  const t = statTicks(pid)
  return t ? t.own + t.reaped : 0
}
// CPU ticks of a target's own process(es), children it reaped excluded; undefined when unknown.
const targetTicks = (target) => {
  if (process.platform !== "linux") return undefined
  const [main, ...others] = targetPids(target).map(statTicks)
  return main && others.reduce((a, t) => a + (t?.own ?? 0), main.own)
}
const busyTicks = () => {
  const f = readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).slice(1).map(Number)
  return f[0] + f[1] + f[2] + f[5] + f[6] + f[7] // user nice system irq softirq steal
}
const ourTicks = () => {
  let ticks = procTicks("self") // includes wrk and taskset runs once they are reaped (cutime/cstime)
  for (const c of children) for (const pid of [c.pid, ...childPids(c.pid)]) ticks += procTicks(pid)
  return ticks
}
const cpuSnapshot = () => {
  if (process.platform !== "linux") return undefined
  try {
    return { at: process.hrtime.bigint(), busy: busyTicks(), ours: ourTicks() }
  } catch {
    return undefined
  }
}
const foreignCores = (before) => {
  const after = cpuSnapshot()
  if (!before || !after) return undefined
  const seconds = Number(after.at - before.at) / 1e9
  return Math.max(0, (after.busy - before.busy - (after.ours - before.ours)) / CLK_TCK / seconds)
}

let retryBudget = 0
const measure = async (target, scenario, opts, targets) => {
  let kept
  for (let attempt = 0;; attempt++) {
    const before = cpuSnapshot()
    const r = await runWrk(target, scenario, opts.duration, targets)
    r.foreignCores = foreignCores(before)
    r.attempts = attempt + 1
    if (!kept || (r.foreignCores ?? 0) < (kept.foreignCores ?? 0)) kept = { ...r, attempts: attempt + 1 }
    if (r.foreignCores === undefined || r.foreignCores <= opts.maxForeign) break
    if (attempt >= opts.retries || retryBudget <= 0) break
    retryBudget--
    console.log(
      `    ${target.name} ${scenario.id}: other processes used ${r.foreignCores.toFixed(2)} cores meanwhile (${fmt(r.rps)} /s): retrying`
    )
    await sleep(2000)
  }
  kept.disturbed = kept.foreignCores !== undefined && kept.foreignCores > opts.maxForeign
  return kept
}

// ---------------------------------------------------------------------------------------------------
// Order of the measurements in a round. A variant compared with another (`vs`) is judged on the ratio of
// the two measured back to back in the same round (paired), so they must be neighbours: each variant
// with the variants measured against it forms a group, the variant in the middle and up to one of
// them on each side (the others as close as possible). Groups and lone targets are rotated every
// round, and every other round a group is reversed, so neither side of a pair always goes first.
// ---------------------------------------------------------------------------------------------------
const measurementGroups = (targets) => {
  const byName = new Map(targets.map((t) => [t.name, t]))
  const root = (t) => {
    const seen = new Set([t])
    for (let next; (next = byName.get(t.variant?.vs)) && !seen.has(next);) seen.add(t = next)
    return t
  }
  const groups = []
  for (const t of targets) {
    const hub = root(t)
    let group = groups.find((g) => g.hub === hub)
    if (!group) groups.push(group = { hub, others: [] })
    if (t !== hub) group.others.push(t)
  }
  return groups.map(({ hub, others }) => [...others.filter((_, i) => i % 2 === 0).reverse(), hub, ...others.filter((_, i) => i % 2 === 1)])
}
const roundOrder = (groups, round) =>
  groups.map((_, i) => groups[(i + round) % groups.length]).flatMap((g) => (round % 2 ? [...g].reverse() : g))

// ---------------------------------------------------------------------------------------------------
// Report helpers
// ---------------------------------------------------------------------------------------------------
const pad = (s, n) => String(s).padEnd(n)
const lpad = (s, n) => String(s).padStart(n)
const fmt = (n) => (n === undefined || Number.isNaN(n) ? "-" : Math.round(n).toLocaleString("en-US"))

const peakRss = (pid) => {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8")
    const kib = (name) => Number(status.match(new RegExp(`^${name}:\\s+(\\d+) kB`, "m"))?.[1])
    return { hwmKiB: kib("VmHWM"), rssKiB: kib("VmRSS") }
  } catch {
    return undefined
  }
}

// ---------------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------------
const main = async () => {
  const opts = parseArgs(process.argv.slice(2))
  if (!onPath("wrk")) {
    throw new Fatal("wrk is not installed or not on PATH: the load generator is required (apt-get install -y wrk, or brew install wrk)")
  }
  if (!process.env.BENCH_PROXY_CMD && !existsSync(path.join(ROOT, "dist", "main.js"))) {
    throw new Fatal(
      `${path.join(ROOT, "dist", "main.js")} not found: build first (\`npm run build\`; \`npm run bench\` does it), or set BENCH_PROXY_CMD`
    )
  }
  let variants = VARIANTS.filter((v) => !opts.only || opts.only.includes(v.name))
  if (opts.against !== undefined) {
    // Another build (an earlier commit's dist/main.js) as the reference of a paired A/B: `proxy`
    // is measured back to back with it every round, and a change that is meant to cost nothing
    // (a restructuring) should keep 0.97 of it.
    const script = path.resolve(opts.against)
    if (!existsSync(script)) throw new Fatal(`--against: ${script} not found`)
    variants = [
      { name: "other build", env: {}, script },
      ...variants.map((v) => v.name === "proxy" ? { ...v, vs: "other build", goals: { tags: 0.97, stream: 0.97 } } : v)
    ]
  }
  const unknown = (opts.only ?? []).filter((n) => n !== "nginx" && !VARIANTS.some((v) => v.name === n))
  if (unknown.length) {
    throw new Fatal(`--only: no variant named ${unknown.join(", ")} (variants: ${VARIANTS.map((v) => v.name).join(", ")}, nginx)`)
  }

  const loadAtStart = os.loadavg()
  console.log(`bench: ${os.cpus().length} CPUs, load average ${loadAtStart.map((l) => l.toFixed(2)).join(" ")}, node ${process.version}`)
  if (loadAtStart[0] > 0.5) console.log(`  warning: the machine is already busy (load ${loadAtStart[0].toFixed(2)}): expect noisy figures`)
  console.log("starting targets...")
  const upstream = await startUpstream()
  const targets = [upstream]
  targets.push(await startBaseline(upstream.port))
  let nginxNote
  if (opts.nginx && (!opts.only || opts.only.includes("nginx"))) {
    const ng = await startNginx(upstream.port)
    if (ng.skipped) {
      nginxNote = ng.skipped
      console.log(`  nginx skipped: ${ng.skipped}`)
    } else targets.push(ng)
  } else nginxNote = "nginx not run (--no-nginx / --only)"
  const sink = variants.some((v) => Object.values(v.env).some((x) => x.includes("{OTLP_SINK}"))) ? await startOtlpSink() : undefined
  for (const v of variants) targets.push(await startVariant(v, upstream.port, sink))
  const baseline = targets.find((t) => t.kind === "baseline")

  const pinNote = setupPinning(opts)
  console.log(`placement: ${pinNote}`)
  console.log("preflight (one request each, with and without the key):")
  for (const t of targets) await preflight(t)

  const measurements = SCENARIOS.length * targets.length * opts.rounds
  retryBudget = Math.ceil(measurements / 2)
  const restarts = opts.fresh ? variants.length * (opts.rounds - 1) : 0
  const estimate = measurements * (opts.duration + opts.warmup) + SCENARIOS.length * (targets.length + restarts) * opts.initialWarmup +
    restarts
  console.log(
    `measuring: ${targets.length} targets x ${SCENARIOS.length} scenarios x ${opts.rounds} round(s), ` +
      `${opts.warmup} s warm-up + ${opts.duration} s each, after a ${opts.initialWarmup} s JIT warm-up of each: about ${
        Math.ceil(estimate / 60 * 10) / 10
      } min`
  )
  console.log(
    opts.fresh && opts.rounds > 1
      ? "  every round after the first starts the proxy variants afresh (--same-process: keep them)"
      : "  the proxy variants run in one process each for the whole run"
  )

  // Node needs several seconds of load before its stream path is optimised (measured: the baseline's
  // stream figure climbs ~40% over its first 6-8 s), so every target gets a longer warm-up once.
  if (opts.initialWarmup > 0) {
    for (const target of targets) for (const scenario of SCENARIOS) await runWrk(target, scenario, opts.initialWarmup, targets)
  }

  const results = new Map(targets.map((t) => [t, Object.fromEntries(SCENARIOS.map((s) => [s.id, []]))]))
  const groups = measurementGroups(targets)
  let seq = 0
  for (let round = 0; round < opts.rounds; round++) {
    if (round > 0 && opts.fresh) {
      for (const target of targets) {
        if (target.kind === "proxy" && target.variant) await restartVariant(target, upstream.port, sink, opts, targets)
      }
    }
    for (const scenario of SCENARIOS) {
      // Interleave targets, rotating the order each round, so drift and noise hit all of them alike;
      // a variant and the one it is compared with stay neighbours (see measurementGroups).
      for (const target of roundOrder(groups, round)) {
        if (opts.warmup > 0) await runWrk(target, scenario, opts.warmup, targets)
        const r = await measure(target, scenario, opts, targets)
        r.seq = seq++
        results.get(target)[scenario.id].push(r)
        const errs = r.non2xx || r.socketErrors ? `  !! ${r.non2xx} non-2xx, socket errors ${JSON.stringify(r.errors)}` : ""
        const others = r.foreignCores === undefined ? "" : `  others ${r.foreignCores.toFixed(2)} cores${r.disturbed ? " (busy)" : ""}`
        const cpu = r.cpuUsPerResponse === undefined ? "" : `  cpu ${fmt(r.cpuUsPerResponse)} us/resp`
        console.log(
          `  round ${round + 1}/${opts.rounds}  ${pad(scenario.id, 6)}  ${pad(target.name, 22)} ${lpad(fmt(r.rps), 8)} /s  ` +
            `p50 ${r.latencyMs.p50.toFixed(2)} ms  p99 ${r.latencyMs.p99.toFixed(2)} ms  ${
              fmt(r.bytesPerResponse)
            } B/resp${cpu}${others}${errs}`
        )
      }
    }
  }

  // Peak memory, read before the processes are stopped.
  for (const t of targets) {
    const pids = [t.child.pid, ...childPids(t.child.pid)]
    const mems = pids.map(peakRss).filter(Boolean)
    t.memory = mems.length
      ? {
        peakKiB: Math.max(t.pastPeakKiB ?? 0, ...mems.map((m) => m.hwmKiB)),
        currentKiB: mems.reduce((a, m) => a + m.rssKiB, 0),
        processes: mems.length
      }
      : undefined
  }

  // Summaries
  const limit = targets.find((t) => t.kind === "limit")
  const summary = (t, id) => {
    const runs = results.get(t)[id]
    const rps = runs.map((r) => r.rps)
    const value = opts.stat === "best" ? Math.max(...rps) : median(rps)
    const non2xx = runs.reduce((a, r) => a + r.non2xx, 0)
    const socketErrors = runs.reduce((a, r) => a + r.socketErrors, 0)
    const bytes = median(runs.map((r) => r.bytesPerResponse))
    const refBytes = median(results.get(limit)[id].map((r) => r.bytesPerResponse))
    const short = t !== limit && bytes < 0.8 * refBytes
    const problems = []
    if (non2xx) problems.push(`${non2xx} non-2xx`)
    if (socketErrors) problems.push(`${socketErrors} socket errors`)
    if (short) problems.push(`short responses (${fmt(bytes)} B vs ${fmt(refBytes)} B direct)`)
    const cpu = runs.map((r) => r.cpuUsPerResponse)
    return {
      rps: value,
      best: Math.max(...rps),
      median: median(rps),
      rounds: rps,
      bytesPerResponse: bytes,
      non2xx,
      socketErrors,
      problems,
      valid: problems.length === 0,
      cpuUsPerResponse: cpu.includes(undefined) ? undefined : median(cpu),
      cpuUsPerResponseRounds: cpu,
      cpuCoresRounds: runs.map((r) => r.cpuCores),
      latencyMs: runs.map((r) => r.latencyMs),
      otherProcessesCores: runs.map((r) => r.foreignCores),
      attempts: runs.map((r) => r.attempts),
      disturbedRounds: runs.filter((r) => r.disturbed).length,
      reportedDisturbed: runs.find((r) => r.rps === value)?.disturbed ?? runs.some((r) => r.disturbed)
    }
  }
  const rows = targets.map((t) => {
    const s = Object.fromEntries(SCENARIOS.map((sc) => [sc.id, summary(t, sc.id)]))
    const ratio = Object.fromEntries(SCENARIOS.map((sc) => [sc.id, s[sc.id].rps / summary(baseline, sc.id).rps]))
    const verdict = t.kind !== "proxy" || t.variant?.info ?
      undefined :
      Object.fromEntries(SCENARIOS.map((sc) => [sc.id, s[sc.id].valid && ratio[sc.id] >= GOALS[sc.id] ? "PASS" : "FAIL"]))
    return { target: t, s, ratio, verdict }
  })

  // Table
  const cols = [["target", 22], ["auth", 5], ["tags req/s", 11], ["vs base", 10], ["cpu us", 7], ["stream resp/s", 14], ["vs base", 10], [
    "cpu us",
    7
  ], ["peak RSS", 9]]
  const line = (cells) => cells.map((c, i) => (i < 2 ? pad(c, cols[i][1]) : lpad(c, cols[i][1]))).join("  ")
  const ratioCell = (row, id) => {
    const r = row.ratio[id]
    const mark = row.verdict ? ` ${row.verdict[id]}` : ""
    return (row.target.kind === "baseline" ? "1.00" : r.toFixed(2)) + mark
  }
  console.log(
    `\nresults (${opts.stat} of ${opts.rounds} round(s) x ${opts.duration} s; tags: -t2 -c32, stream: -t1 -c8; goals vs baseline: tags >= ${GOALS.tags}, stream >= ${GOALS.stream})`
  )
  console.log(line(cols.map((c) => c[0])))
  console.log(line(cols.map((c) => "-".repeat(c[1]))))
  for (const row of rows) {
    const t = row.target
    const flag = (id) => (row.s[id].valid ? "" : " !") + (row.s[id].reportedDisturbed ? "*" : "")
    console.log(line([
      t.name,
      t.kind === "limit" ? "-" : t.auth ? "yes" : "NO",
      fmt(row.s.tags.rps) + flag("tags"),
      ratioCell(row, "tags"),
      fmt(row.s.tags.cpuUsPerResponse),
      fmt(row.s.stream.rps) + flag("stream"),
      ratioCell(row, "stream"),
      fmt(row.s.stream.cpuUsPerResponse),
      t.memory ? `${(t.memory.peakKiB / 1024).toFixed(0)} MB` : "n/a"
    ]))
  }
  console.log("")
  for (const row of rows) {
    const probs = SCENARIOS.flatMap((sc) => row.s[sc.id].problems.map((p) => `${sc.id}: ${p}`))
    if (probs.length) console.log(`  ! ${row.target.name}: ${probs.join("; ")} (figures marked ! are not valid)`)
  }
  console.log("  limit (direct) = wrk straight to the fake upstream: the ceiling no proxy can beat on this machine.")
  if (targets.some((t) => t.kind === "nginx")) {
    console.log("  nginx does not check the API key (auth NO): it does less work than the others.")
  }
  if (nginxNote) console.log(`  ${nginxNote.split("\n")[0]}`)
  console.log("  cpu us = CPU time of the target's process(es) per completed response, median of rounds (limit: the upstream's).")
  console.log("  peak RSS = VmHWM of the process (nginx: largest of master and worker) over the whole run.")
  console.log(`  ${pinNote}.`)
  const disturbed = rows.reduce((a, row) => a + SCENARIOS.reduce((b, sc) => b + row.s[sc.id].disturbedRounds, 0), 0)
  if (disturbed) {
    console.log(
      `  * ${disturbed} measurement(s) ran while other processes used > ${opts.maxForeign} cores (retries exhausted); * marks a reported figure that is one of them.`
    )
  }
  console.log("  Figures are noisy on a shared 2-core machine: compare ratios measured in the same run, not runs.")

  // Variants measured against another variant (e.g. usage webhook on vs off). On this machine a single
  // figure moves +-7% from round to round, so the ratio of two bests cannot decide a 5% goal. The
  // verdict is the median of the per-round ratios of the two measured back to back (paired); the ratio
  // of the bests and the paired ratio of CPU time per response are printed next to it.
  const versus = []
  for (const row of rows) {
    const variant = row.target.variant
    const other = variant?.vs && rows.find((r) => r.target.name === variant.vs)
    if (!other) continue
    const entry = {
      variant: variant.name,
      vs: variant.vs,
      goals: variant.goals ?? {},
      verdict: {},
      pairedMedian: {},
      pairedRange: {},
      bestRatio: {},
      cpuRatio: {},
      pairs: {}
    }
    for (const sc of SCENARIOS) {
      const mine = results.get(row.target)[sc.id], theirs = results.get(other.target)[sc.id]
      const pairs = mine.map((a, i) => {
        const b = theirs[i]
        const cpuRatio = a.cpuUsPerResponse && b.cpuUsPerResponse ? b.cpuUsPerResponse / a.cpuUsPerResponse : undefined
        return {
          round: i + 1,
          ratio: a.rps / b.rps,
          cpuRatio,
          rps: a.rps,
          vsRps: b.rps,
          cpuUsPerResponse: a.cpuUsPerResponse,
          vsCpuUsPerResponse: b.cpuUsPerResponse,
          first: a.seq < b.seq ? variant.name : variant.vs,
          adjacent: Math.abs(a.seq - b.seq) === 1,
          disturbed: Boolean(a.disturbed || b.disturbed),
          errors: Boolean(a.non2xx || a.socketErrors || b.non2xx || b.socketErrors)
        }
      })
      const ratios = pairs.map((p) => p.ratio), cpus = pairs.map((p) => p.cpuRatio)
      entry.pairs[sc.id] = pairs
      entry.pairedMedian[sc.id] = median(ratios)
      entry.pairedRange[sc.id] = [Math.min(...ratios), Math.max(...ratios)]
      entry.bestRatio[sc.id] = row.s[sc.id].best / other.s[sc.id].best
      entry.cpuRatio[sc.id] = cpus.includes(undefined) ? undefined : median(cpus)
      const goal = entry.goals[sc.id]
      if (goal !== undefined) {
        entry.verdict[sc.id] = row.s[sc.id].valid && other.s[sc.id].valid && entry.pairedMedian[sc.id] >= goal
          ? "PASS"
          : "FAIL"
      }
    }
    versus.push(entry)
    // Scenarios with a goal first: the verdict leads the line.
    const ordered = [...SCENARIOS].sort((a, b) => (entry.goals[a.id] === undefined) - (entry.goals[b.id] === undefined))
    const cells = ordered.map(({ id }) => {
      const pairs = entry.pairs[id], [lo, hi] = entry.pairedRange[id]
      const invalid = row.s[id].valid && other.s[id].valid ? "" : "!"
      const disturbed = pairs.filter((p) => p.disturbed).length
      const apart = pairs.filter((p) => !p.adjacent).length
      const details = [
        ...(entry.verdict[id] ? [`goal >= ${entry.goals[id]}`] : []),
        pairs.length === 1 ? "1 paired round" : `median of ${pairs.length} paired rounds, range ${lo.toFixed(2)}-${hi.toFixed(2)}`,
        `best/best ${entry.bestRatio[id].toFixed(2)}`,
        ...(entry.cpuRatio[id] !== undefined ? [`cpu per response ${entry.cpuRatio[id].toFixed(2)}`] : []),
        ...(disturbed ? [`${disturbed} pair(s) disturbed *`] : []),
        ...(apart ? [`${apart} pair(s) not back to back`] : [])
      ]
      return `${pad(id, 6)} ${entry.pairedMedian[id].toFixed(2)}${invalid}${entry.verdict[id] ? " " + entry.verdict[id] : ""} (${
        details.join("; ")
      })`
    })
    console.log(`\n${variant.name} vs ${variant.vs}:\n${cells.map((c) => "  " + c).join("\n")}`)
  }
  if (versus.length) {
    console.log("  paired: the figure (and the verdict) is the median over rounds of variant / other, the two measured back to back;")
    console.log("  cpu per response: median of other's CPU per response / variant's (1.00 = same cost, lower = the variant costs more);")
    console.log("  ! = a figure not valid (see under the table), * = measured while other processes were busy.")
  }
  if (sink) {
    const stats = await otlpSinkStats(sink)
    const parts = Object.entries(stats ?? {}).map(([p, st]) => `${p} ${st.requests} requests, ${fmt(st.bytes)} B`)
    console.log(`  otlp sink received: ${parts.length ? parts.join("; ") : "nothing"}`)
    if (stats) versus.otlpSink = stats
  }
  const usage = await webhookStats()
  if (usage) {
    console.log(
      `  usage webhook received ${fmt(usage.records)} records (${
        Object.entries(usage.outcomes).map(([k, v]) => `${k} ${fmt(v)}`).join(", ")
      }; ` +
        `${fmt(usage.withCounts)} with token counts${usage.invalid ? `; ${usage.invalid} not JSON` : ""})`
    )
  }

  const failed = rows.some((r) => r.verdict && Object.values(r.verdict).includes("FAIL")) ||
    versus.some((v) => Object.values(v.verdict).includes("FAIL"))
  const json = {
    date: new Date().toISOString(),
    machine: {
      cpus: os.cpus().length,
      cpuModel: os.cpus()[0]?.model,
      node: process.version,
      loadavgAtStart: loadAtStart,
      loadavgAtEnd: os.loadavg()
    },
    settings: {
      rounds: opts.rounds,
      freshProcessPerRound: opts.fresh,
      durationSeconds: opts.duration,
      warmupSeconds: opts.warmup,
      initialWarmupSeconds: opts.initialWarmup,
      retries: opts.retries,
      maxForeignCores: opts.maxForeign,
      cpuPlacement: pinNote,
      stat: opts.stat,
      goals: GOALS,
      proxyCommand: process.env.BENCH_PROXY_CMD ?? "node dist/main.js",
      streamLines: Number(process.env.BENCH_STREAM_LINES ?? 1000),
      scenarios: SCENARIOS.map(({ id, label, threads, connections, path: p }) => ({ id, label, threads, connections, path: p }))
    },
    skipped: nginxNote,
    versus,
    otlpSink: versus.otlpSink,
    targets: rows.map((row) => ({
      name: row.target.name,
      kind: row.target.kind,
      note: row.target.note,
      checksApiKey: row.target.kind === "limit" ? null : row.target.auth,
      env: row.target.kind === "proxy" ? row.target.variant?.env : undefined,
      tags: { ...row.s.tags, ratioToBaseline: row.ratio.tags, verdict: row.verdict?.tags },
      stream: { ...row.s.stream, ratioToBaseline: row.ratio.stream, verdict: row.verdict?.stream },
      ratioToLimit: { tags: row.s.tags.rps / summary(limit, "tags").rps, stream: row.s.stream.rps / summary(limit, "stream").rps },
      memory: row.target.memory,
      preflight: row.target.preflight
    })),
    usageWebhook: usage,
    pass: !failed
  }
  mkdirSync(path.join(BENCH, "results"), { recursive: true })
  const out = path.join(BENCH, "results", "latest.json")
  writeFileSync(out, JSON.stringify(json, null, 2) + "\n")
  console.log(`\nwrote ${path.relative(ROOT, out)}`)
  return opts.strict && failed ? 1 : 0
}

let code = 1
try {
  code = await main()
} catch (err) {
  if (!stopping) console.error(`\nbench failed: ${err instanceof Fatal ? err.message : err?.stack ?? err}`)
}
await shutdown(code)
