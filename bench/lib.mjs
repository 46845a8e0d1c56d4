// Helpers shared by the bench scripts (run.mjs, latency.mjs, webhook-throughput.mjs, coldstart.mjs, ...).
import { spawn, spawnSync } from "node:child_process"
import { readFileSync } from "node:fs"
import http from "node:http"
import net from "node:net"

/** Limits that a benchmark never reaches: each is checked and counted on every request. */
export const LIMITS_NEVER_REACHED =
  "requests_per_minute=1000000000,tokens_per_minute=1000000000000,concurrent_requests=100000,tokens_per_day=1000000000000,tokens_per_month=1000000000000"

// ---------------------------------------------------------------------------------------------------
// Child processes of a bench script: their output kept to be read, every one killed when the script
// exits (at its end, on an error, or on SIGINT, SIGTERM or SIGHUP).
// ---------------------------------------------------------------------------------------------------
const children = new Set()
let reaping = false
const reap = () => {
  if (reaping) return
  reaping = true
  process.on("exit", () => {
    for (const child of children) child.kill("SIGKILL")
  })
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) process.on(signal, () => process.exit(130))
}

/**
 * Starts `cmd` with `env` added to this process's environment (or, `whole`, with `env` alone):
 * `child.output()` is its stdout (the last `keep` characters; Infinity for all of it, for a proxy
 * whose every log line is counted), `child.errors()` the end of its stderr.
 */
export const startChild = (cmd, args, env = {}, { keep = 65_536, whole = false } = {}) => {
  reap()
  const child = spawn(cmd, args, { env: whole ? env : { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] })
  children.add(child)
  child.on("exit", () => children.delete(child))
  let out = ""
  let err = ""
  child.stdout.setEncoding("utf8").on("data", (d) => (out = keep === Infinity ? out + d : (out + d).slice(-keep)))
  child.stderr.setEncoding("utf8").on("data", (d) => (err = (err + d).slice(-4000)))
  child.output = () => out
  child.errors = () => err
  return child
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** Polls `probe` every 50 ms until it gives something truthy, which is returned; throws after `timeoutMs`. */
export const waitFor = async (what, probe, timeoutMs = 15_000) => {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const found = await probe()
    if (found) return found
    if (Date.now() > deadline) throw new Error(`${typeof what === "function" ? what() : what}: not ready after ${timeoutMs / 1000} s`)
    await sleep(50)
  }
}

/** The port a bench server (upstream.mjs, webhook.mjs, ...) prints as `listening PORT` once it listens. */
export const listening = (child) =>
  waitFor(
    () => `${child.spawnargs.join(" ")} (${child.errors()})`,
    () => Number(child.output().match(/listening (\d+)/)?.[1]) || undefined
  )

/** GET on loopback, a fresh connection each: `{ status, body }`, status 0 when nothing answers. */
export const httpGet = (port, urlPath, headers = {}) =>
  new Promise((resolve) => {
    http.get({ host: "127.0.0.1", port, path: urlPath, headers, agent: false }, (res) => {
      let body = ""
      res.on("data", (d) => (body += d))
      res.on("end", () => resolve({ status: res.statusCode, body }))
    }).on("error", () => resolve({ status: 0, body: "" }))
  })

/**
 * The whole environment of a proxy under test: this process's, minus anything from the caller's
 * shell that would change what is measured (keys, preloads, webhook, OpenTelemetry, limits), plus
 * the bench's base (Ollama elsewhere at `upstreamPort`, one key, warnings only) and `extra`.
 */
export const proxyEnv = ({ port, upstreamPort, key }, extra = {}) => {
  const env = {}
  for (const [k, v] of Object.entries(process.env)) {
    if (
      /^(AUTHORIZATION_|PRELOAD_MODEL|USER_MODEL_METRICS_|USAGE_|WEBHOOK_|OTEL_|OLLAMA_|LIMITS_|QUEUE_)|^(PORT|PORT_HEALTH|HOST|REDIS_URL)$/
        .test(
          k
        )
    ) {
      continue
    }
    env[k] = v
  }
  return {
    ...env,
    PORT: String(port),
    HOST: "127.0.0.1",
    OLLAMA_MANAGED: "false",
    OLLAMA_HOST: `127.0.0.1:${upstreamPort}`,
    AUTHORIZATION_APIKEY: key,
    AUTHORIZATION_LOG_LEVEL: "warn",
    // No dispatch to Ollama's slots in the base: the bench upstream runs any number of requests at
    // once, and the figures stay those of the relay; the `proxy + dispatch` variant measures it.
    QUEUE_SLOTS: "0",
    ...extra
  }
}

/** A loopback port that was free a moment ago. */
export const freePort = () =>
  new Promise((resolve, reject) => {
    const server = net.createServer()
    server.unref()
    server.on("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })

export const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2
}

/** Clock ticks per second, the unit of /proc CPU times. */
export const CLK_TCK = (() => {
  try {
    return Number(spawnSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).stdout.trim()) || 100
  } catch {
    return 100
  }
})()

/**
 * CPU ticks of a process from /proc/PID/stat: `own` (all its threads, user + system) and `reaped`
 * (its children that it has waited for); undefined when the process is gone or not on Linux.
 */
export const statTicks = (pid) => {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ") // f[11..14] = utime stime cutime cstime
    return { own: Number(f[11]) + Number(f[12]), reaped: Number(f[13]) + Number(f[14]) }
  } catch {
    return undefined
  }
}

/** The CPUs this process may use (a container or cgroup may allow fewer than os.cpus() reports). */
export const allowedCpus = () => {
  const list = readFileSync("/proc/self/status", "utf8").match(/^Cpus_allowed_list:\s*(\S+)/m)?.[1] ?? ""
  return list.split(",").filter(Boolean).flatMap((r) => {
    const [a, b = a] = r.split("-").map(Number)
    return Array.from({ length: b - a + 1 }, (_, i) => a + i)
  })
}

/**
 * The nginx every bench compares with: 1 worker, `proxy_buffering off` (streams pass as they
 * come), HTTP/1.1 keep-alive to the upstream. It checks no API key. `dir` holds its pid, logs and
 * temp files.
 */
export const nginxConf = ({ dir, port, upstreamPort }) => `
daemon off;
master_process on;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  keepalive_timeout 65s;
  keepalive_requests 1000000;
  upstream ollama {
    server 127.0.0.1:${upstreamPort};
    keepalive 64;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
  }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://ollama;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host 127.0.0.1:${upstreamPort};
      proxy_buffering off;
      proxy_request_buffering off;
    }
  }
}
`
