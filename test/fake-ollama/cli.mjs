// @ts-check
/**
 * The fake `ollama` command: `ollama serve` runs the fake server where OLLAMA_HOST says, logging
 * like the real one (slog text on stderr, gin request lines on stdout). Knobs come from
 * FAKE_OLLAMA_* variables (README.md). A few client commands (`--version`, `list`, `ps`, `pull`,
 * `rm`, `show`) talk to a running server over HTTP.
 */
import { appendFileSync, readFileSync } from "node:fs"
import os from "node:os"
import { DEFAULT_VRAM, defaultNumCtx, discoveryLines, parseBytes } from "./gpu.mjs"
import { parseOllamaHost } from "./host.mjs"
import { VERSION } from "./models.mjs"
import { startFakeOllama } from "./server.mjs"
import { goDuration, parseGoDuration, slogLine } from "./wire.mjs"

const USAGE = `Large language model runner

Usage:
  ollama [flags]
  ollama [command]

Available Commands:
  serve       Start ollama
  show        Show information for a model
  pull        Pull a model from a registry
  list        List models
  ps          List running models
  rm          Remove a model
  help        Help about any command

Flags:
  -h, --help      help for ollama
  -v, --version   Show version information

Use "ollama [command] --help" for more information about a command.
`

/** @typedef {Record<string, string | undefined>} Env */

const truthy = (/** @type {string | undefined} */ v) => v !== undefined && /^(1|true|yes|on)$/i.test(v.trim())

/** A number from the environment, or undefined when unset or not a number. */
function numberVar(/** @type {Env} */ env, /** @type {string} */ name) {
  const raw = env[`FAKE_OLLAMA_${name}`]
  if (raw === undefined || raw.trim() === "") return undefined
  const n = Number(raw)
  return Number.isFinite(n) ? n : undefined
}

/** A comma list from the environment: undefined when unset, [] when set empty. */
function listVar(/** @type {Env} */ env, /** @type {string} */ name) {
  const raw = env[`FAKE_OLLAMA_${name}`]
  if (raw === undefined) return undefined
  return raw
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "")
}

/**
 * Runs the command line; resolves with the exit code for client commands, never for `serve`
 * (it exits by itself on a signal or a fatal error).
 * @param {string[]} argv
 * @param {Env} env
 * @returns {Promise<number>}
 */
export async function main(argv = process.argv.slice(2), env = process.env) {
  const [command = "", ...args] = argv
  switch (command) {
    case "serve":
    case "start":
      return serve(env)
    case "-v":
    case "--version":
      return version(env)
    case "":
    case "-h":
    case "--help":
    case "help":
      process.stdout.write(USAGE)
      return 0
    case "list":
    case "ls":
      return client(env, "GET", "/api/tags", undefined, (body) => {
        const rows = /** @type {{ models: Array<{ name: string, digest: string, size: number }> }} */ (body).models
        return ["NAME\tID\tSIZE", ...rows.map((m) => `${m.name}\t${m.digest.slice(0, 12)}\t${m.size}`)].join("\n")
      })
    case "ps":
      return client(env, "GET", "/api/ps", undefined, (body) => {
        const rows = /** @type {{ models: Array<{ name: string, digest: string, size: number, expires_at: string }> }} */ (body).models
        return ["NAME\tID\tSIZE\tUNTIL", ...rows.map((m) => `${m.name}\t${m.digest.slice(0, 12)}\t${m.size}\t${m.expires_at}`)].join("\n")
      })
    case "pull":
      return client(
        env,
        "POST",
        "/api/pull",
        { model: args[0] ?? "", stream: false },
        (body) => String(/** @type {{ status: string }} */ (body).status)
      )
    case "rm":
      return client(env, "DELETE", "/api/delete", { model: args[0] ?? "" }, () => `deleted '${args[0]}'`)
    case "show":
      return client(env, "POST", "/api/show", { model: args[0] ?? "" }, (body) => JSON.stringify(body, null, 2))
    default:
      process.stderr.write(`Error: unknown command ${JSON.stringify(command)} for "ollama"\n`)
      return 1
  }
}

/**
 * The GPU memory this start finds: FAKE_OLLAMA_VRAM_FILE's content when that file exists (read at
 * every start, so a test can change it between restarts), else FAKE_OLLAMA_VRAM, else an L4's.
 */
function vramOf(/** @type {Env} */ env) {
  const file = env.FAKE_OLLAMA_VRAM_FILE
  if (file) {
    try {
      const fromFile = parseBytes(readFileSync(file, "utf8"))
      if (fromFile !== undefined) return fromFile
    } catch {
      // no file: the variable decides
    }
  }
  return parseBytes(env.FAKE_OLLAMA_VRAM) ?? DEFAULT_VRAM
}

/** Where a client reaches the server: a wildcard bind is reached on 127.0.0.1. */
function clientBase(/** @type {Env} */ env) {
  const host = parseOllamaHost(env.OLLAMA_HOST)
  const name = host.host === "" || host.host === "0.0.0.0" || host.host === "::" ? "127.0.0.1" : host.host
  return `${host.scheme}://${name.includes(":") ? `[${name}]` : name}:${host.port}`
}

async function version(/** @type {Env} */ env) {
  try {
    const res = await fetch(`${clientBase(env)}/api/version`, { signal: AbortSignal.timeout(2000) })
    const body = /** @type {{ version: string }} */ (await res.json())
    process.stdout.write(`ollama version is ${body.version}\n`)
  } catch {
    process.stdout.write(`Warning: could not connect to a running Ollama instance\nWarning: client version is ${VERSION}\n`)
  }
  return 0
}

/**
 * @param {Env} env
 * @param {string} method
 * @param {string} path
 * @param {unknown} body
 * @param {(answer: unknown) => string} format
 */
async function client(env, method, path, body, format) {
  /** @type {Response} */
  let res
  try {
    res = await fetch(`${clientBase(env)}${path}`, {
      method,
      ...(body === undefined ? {} : { body: JSON.stringify(body), headers: { "content-type": "application/json" } })
    })
  } catch {
    process.stderr.write("Error: could not connect to ollama server, run 'ollama serve' to start it\n")
    return 1
  }
  const text = await res.text()
  /** @type {unknown} */
  let answer = {}
  try {
    answer = text === "" ? {} : JSON.parse(text)
  } catch {
    answer = { error: text }
  }
  if (!res.ok) {
    process.stderr.write(`Error: ${/** @type {{ error?: string }} */ (answer).error ?? res.statusText}\n`)
    return 1
  }
  process.stdout.write(`${format(answer)}\n`)
  return 0
}

/** Go's net.OpError text for a failed listen. */
function listenError(/** @type {NodeJS.ErrnoException} */ err, /** @type {string} */ address, /** @type {string} */ host) {
  switch (err.code) {
    case "EADDRINUSE":
      return `listen tcp ${address}: bind: address already in use`
    case "EADDRNOTAVAIL":
      return `listen tcp ${address}: bind: cannot assign requested address`
    case "EACCES":
      return `listen tcp ${address}: bind: permission denied`
    case "ENOTFOUND":
    case "EAI_AGAIN":
      return `listen tcp: lookup ${host}: no such host`
    default:
      return `listen tcp ${address}: ${err.message}`
  }
}

/** gin's default logger line. */
function ginLine(/** @type {import("./server.mjs").RecordedRequest} */ rec, /** @type {number} */ latencyNs) {
  const d = new Date()
  const p2 = (/** @type {number} */ n) => String(n).padStart(2, "0")
  const stamp = `${d.getFullYear()}/${p2(d.getMonth() + 1)}/${p2(d.getDate())} - ${p2(d.getHours())}:${p2(d.getMinutes())}:${
    p2(d.getSeconds())
  }`
  const forwarded = rec.headers["x-forwarded-for"]?.split(",")[0]?.trim() || rec.headers["x-real-ip"]?.trim()
  const ip = (forwarded || rec.remoteAddress).replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/, "$1")
  const latency = latencyNs > 60e9 ? Math.floor(latencyNs / 1e9) * 1e9 : latencyNs
  const status = rec.status ?? 200
  return `[GIN] ${stamp} | ${String(status).padStart(3)} | ${goDuration(latency).padStart(13)} | ${ip.padStart(15)} | ${
    rec.method.padEnd(7)
  }  ${JSON.stringify(rec.path)}\n`
}

/** envconfig.LoadTimeout as `%v` prints it: a Go duration or whole seconds, 5m by default, 0 or less for ever. */
function loadTimeout(/** @type {string | undefined} */ raw) {
  let ns = 300e9
  if (raw) {
    try {
      ns = parseGoDuration(raw)
    } catch {
      if (/^[-+]?\d+$/.test(raw)) ns = Number(raw) * 1e9
    }
  }
  return ns <= 0 ? "2562047h47m16.854775807s" : goDuration(ns)
}

/** The `env` attribute of the "server config" line, Go's map formatting. */
function configMap(/** @type {Env} */ env, /** @type {string} */ url) {
  const values = {
    OLLAMA_CONTEXT_LENGTH: env.OLLAMA_CONTEXT_LENGTH ?? "4096",
    OLLAMA_DEBUG: truthy(env.OLLAMA_DEBUG) ? "DEBUG" : "INFO",
    OLLAMA_HOST: url,
    OLLAMA_KEEP_ALIVE: env.OLLAMA_KEEP_ALIVE ?? "5m0s",
    OLLAMA_LOAD_TIMEOUT: loadTimeout(env.OLLAMA_LOAD_TIMEOUT),
    OLLAMA_MAX_LOADED_MODELS: env.OLLAMA_MAX_LOADED_MODELS ?? "0",
    OLLAMA_MAX_QUEUE: env.OLLAMA_MAX_QUEUE ?? "512",
    OLLAMA_MODELS: env.OLLAMA_MODELS ?? `${os.homedir()}/.ollama/models`,
    OLLAMA_NUM_PARALLEL: env.OLLAMA_NUM_PARALLEL ?? "1",
    OLLAMA_ORIGINS: `[${(env.OLLAMA_ORIGINS ?? "").split(",").filter(Boolean).join(" ")}]`
  }
  return `map[${
    Object.entries(values)
      .map(([k, v]) => `${k}:${v}`)
      .join(" ")
  }]`
}

/**
 * `ollama serve`.
 * @param {Env} env
 * @returns {Promise<number>}
 */
async function serve(env) {
  const debug = truthy(env.OLLAMA_DEBUG)
  /** @type {import("./server.mjs").LogLevel[]} */
  const levels = debug ? ["DEBUG", "INFO", "WARN", "ERROR"] : ["INFO", "WARN", "ERROR"]
  const log = (
    /** @type {import("./server.mjs").LogLevel} */ level,
    /** @type {string} */ msg,
    /** @type {Record<string, unknown>} */ attrs = {},
    source = "routes.go:0"
  ) => {
    if (levels.includes(level)) process.stderr.write(`${slogLine(level, source, msg, attrs)}\n`)
  }

  // Handlers first: a signal that comes before them would kill the process with Node's default.
  /** @type {Awaited<ReturnType<typeof startFakeOllama>> | undefined} */
  let fake
  const stop = () => void (fake ? fake.close() : Promise.resolve()).then(() => process.exit(0))
  process.on("SIGINT", stop)
  if (truthy(env.FAKE_OLLAMA_IGNORE_SIGTERM)) {
    process.on("SIGTERM", () => log("WARN", "ignoring SIGTERM (FAKE_OLLAMA_IGNORE_SIGTERM)", {}, "routes.go:1610"))
  } else process.on("SIGTERM", stop)

  // A trace of every start, for tests that must tell whether `ollama serve` was started at all.
  if (env.FAKE_OLLAMA_STARTS_FILE) appendFileSync(env.FAKE_OLLAMA_STARTS_FILE, `${process.pid}\n`)

  const where = parseOllamaHost(env.OLLAMA_HOST)
  if (where.invalidPort !== undefined) {
    log("WARN", "invalid port, using default", { port: where.invalidPort, default: where.port }, "config.go:63")
  }

  const recordFile = env.FAKE_OLLAMA_RECORD_FILE || env.FAKE_OLLAMA_STATE_FILE
  const vram = vramOf(env)
  const startupDelayMs = numberVar(env, "STARTUP_DELAY_MS") ?? 0
  /** @type {() => void} */
  let markReady = () => {}
  const ready = new Promise((resolve) => (markReady = () => resolve(undefined)))

  try {
    fake = await startFakeOllama({
      host: where.host,
      port: Number(where.port),
      models: listVar(env, "MODELS"),
      pullable: listVar(env, "PULLABLE"),
      tokens: numberVar(env, "TOKENS"),
      tokenDelayMs: numberVar(env, "TOKEN_DELAY_MS"),
      splitWrites: truthy(env.FAKE_OLLAMA_SPLIT_WRITES),
      errorAfterChunks: numberVar(env, "ERROR_AFTER_CHUNKS"),
      crashAfterChunks: numberVar(env, "CRASH_AFTER_CHUNKS"),
      busy: truthy(env.FAKE_OLLAMA_BUSY),
      pullFailTimes: numberVar(env, "PULL_FAIL_TIMES"),
      pullDelayMs: numberVar(env, "PULL_DELAY_MS"),
      loadDelayMs: numberVar(env, "LOAD_DELAY_MS"),
      keepAlive: env.OLLAMA_KEEP_ALIVE || undefined,
      // Unset, no limit (Ollama's default is 1): tests that run the executable directly stay as they were.
      numParallel: env.OLLAMA_NUM_PARALLEL ? Math.max(1, Number(env.OLLAMA_NUM_PARALLEL) || 1) : undefined,
      maxQueue: env.OLLAMA_MAX_QUEUE ? Number(env.OLLAMA_MAX_QUEUE) || 512 : undefined,
      vram,
      defaultNumCtx: Number(env.OLLAMA_CONTEXT_LENGTH) || defaultNumCtx(vram),
      origins: (env.OLLAMA_ORIGINS ?? "").split(",").filter(Boolean),
      webSearchCalls: numberVar(env, "WEB_SEARCH_CALLS"),
      // envconfig.Remotes: OLLAMA_REMOTES, a comma list, ollama.com when unset.
      remotes: env.OLLAMA_REMOTES ? env.OLLAMA_REMOTES.split(",").map((s) => s.trim()).filter(Boolean) : undefined,
      recordRequests: false,
      ready,
      log,
      onRequest: recordFile
        ? (rec) => {
          const text = rec.body.length <= 65536 ? new TextDecoder("utf-8", { fatal: false }).decode(rec.body) : null
          const line = {
            time: new Date().toISOString(),
            id: rec.id,
            method: rec.method,
            path: rec.path,
            headers: rec.headers,
            body: text,
            bodyBytes: rec.body.length
          }
          appendFileSync(recordFile, `${JSON.stringify(line)}\n`)
        }
        : undefined,
      onResponse: (rec, latencyNs) => process.stdout.write(ginLine(rec, latencyNs)),
      onCrash: () => process.exit(1)
    })
  } catch (err) {
    const e = /** @type {NodeJS.ErrnoException} */ (err)
    process.stderr.write(`Error: ${listenError(e, where.address, where.host)}\n`)
    process.exit(1)
  }

  if (!fake) return 1
  const shown = fake.host.includes(":") ? `[${fake.host}]:${fake.port}` : `${fake.host}:${fake.port}`
  log("INFO", "server config", { env: configMap(env, where.url) }, "routes.go:1544")
  log("INFO", "total blobs: 0", {}, "images.go:518")
  log("INFO", "total unused blobs removed: 0", {}, "images.go:525")
  log("INFO", `Listening on ${shown} (version ${VERSION})`, {}, "routes.go:1597")
  log("DEBUG", "updating default concurrency", { OLLAMA_MAX_LOADED_MODELS: 3, gpu_count: vram > 0 ? 1 : 0 }, "sched.go:121")
  log("INFO", "discovering available GPUs...", {}, "runner.go:80")

  const exitAfterMs = numberVar(env, "EXIT_AFTER_MS")
  if (exitAfterMs !== undefined) {
    setTimeout(() => {
      log("ERROR", "fake-ollama exiting (FAKE_OLLAMA_EXIT_AFTER_MS)", { after: `${exitAfterMs}ms` }, "routes.go:1620")
      process.exit(1)
    }, exitAfterMs)
  }

  if (startupDelayMs > 0) await new Promise((resolve) => setTimeout(resolve, startupDelayMs))
  for (const [msg, attrs, source] of discoveryLines(vram)) log("INFO", msg, attrs, source)
  markReady()
  return new Promise(() => {})
}
