// @ts-check
/**
 * A fake `ollama serve`: the HTTP API of Ollama 0.32.x (what it follows, and where in ollama/ollama
 * each fact comes from: README.md, "What it follows"),
 * byte for byte where bytes matter (content types, trailing newlines, error shapes, statuses),
 * with deterministic output and knobs to make it slow, split, busy, failing or crashing.
 * Types: server.d.mts. The `ollama serve` executable around it: cli.mjs and bin/ollama.
 */
import { createHash } from "node:crypto"
import dns from "node:dns/promises"
import { EventEmitter } from "node:events"
import http from "node:http"
import net from "node:net"
import { URLSearchParams } from "node:url"
import { DEFAULT_VRAM } from "./gpu.mjs"
import { allowedOrigins, checkHostHeader, CORS_ALLOW_HEADERS, isLoopbackAddress, joinHostPort, originAllowed } from "./host.mjs"
import {
  contextIds,
  DEFAULT_MODELS,
  DEFAULT_PULLABLE,
  durations,
  embeddingFor,
  modelLayers,
  parseModelName,
  parseModelRef,
  promptTokens,
  renderPrompt,
  resolveModel,
  tokenText,
  VERSION
} from "./models.mjs"
import { formValue, parseMultipart } from "./multipart.mjs"
import {
  anthropicEstimate,
  anthropicToNative,
  bindShape,
  DEFAULT_TOKENS,
  embedInputs,
  expectedFigures,
  FOREVER_NS,
  keepAliveOf,
  planGeneration,
  responsesToNative,
  v1ChatToNative,
  v1CompletionToNative
} from "./requests.mjs"
import {
  anthropicError,
  collect,
  ginJSON,
  JSON_UTF8,
  openaiAbort,
  openaiWriteError,
  Out,
  renderAnthropic,
  renderNative,
  renderOpenAI,
  renderResponses,
  SSE,
  StreamError,
  streamResponse,
  unixOf,
  waitForStream
} from "./respond.mjs"
import { needsReload, runnerOptions } from "./runner.mjs"
import * as shapes from "./shapes.mjs"
import { makeSlots } from "./slots.mjs"
import { float32Array, goJSON, nowNs, RawJSON, rfc3339Nano } from "./wire.mjs"
import { decodeZstd, isZstd } from "./zstd.mjs"

export { DEFAULT_VRAM } from "./gpu.mjs"
export { checkHostHeader, parseOllamaHost } from "./host.mjs"
export { embeddingFor, generatedText, parseModelName, promptTokens, TOKEN_TEXTS, tokenText, VERSION } from "./models.mjs"
export { expectedFigures } from "./requests.mjs"

export const BUSY_ERROR = "server busy, please try again.  maximum pending requests exceeded"
export const MIDSTREAM_ERROR = "an error was encountered while running the model: unexpected EOF"
export const PULL_MANIFEST_ERROR = "pull model manifest: file does not exist"
/** Where a `:cloud` model runs (server/cloud_proxy.go defaultCloudProxyBaseURL). */
export const CLOUD_URL = "https://ollama.com:443"

/**
 * @typedef {import("./models.mjs").Model} Model
 * @typedef {import("./models.mjs").ModelSpec} ModelSpec
 * @typedef {import("./requests.mjs").NativeRequest} NativeRequest
 * @typedef {import("./respond.mjs").Obj} Obj
 * @typedef {import("./respond.mjs").Outcome} Outcome
 * @typedef {import("./runner.mjs").RunnerOptions} RunnerOptions
 *
 * @typedef {object} Options
 * @property {string} host
 * @property {number} port
 * @property {Array<ModelSpec | string>} models
 * @property {Array<ModelSpec | string>} pullable
 * @property {number} tokens
 * @property {number} tokenDelayMs
 * @property {boolean} splitWrites
 * @property {number | undefined} errorAfterChunks
 * @property {number | undefined} crashAfterChunks
 * @property {boolean} busy
 * @property {number} pullFailTimes
 * @property {number} pullDelayMs
 * @property {number} loadDelayMs
 * @property {boolean | undefined} checkHost
 * @property {string | number} keepAlive
 * @property {number} vram GPU memory in bytes; 0: no GPU, models load into system memory
 * @property {number} defaultNumCtx the context a model is loaded with when the request sets none
 * @property {string[]} origins
 * @property {number} webSearchCalls web_search calls the model makes in a row when it has the tool
 * @property {string[]} remotes hosts a model's remote_host may name (OLLAMA_REMOTES)
 * @property {boolean} recordRequests
 * @property {number | undefined} numParallel requests generating at once (OLLAMA_NUM_PARALLEL); undefined: no limit
 * @property {number} maxQueue requests waiting for a slot at most (OLLAMA_MAX_QUEUE)
 * @property {Promise<unknown> | undefined} ready
 * @property {((level: "DEBUG" | "INFO" | "WARN" | "ERROR", msg: string, attrs?: Record<string, unknown>, source?: string) => void) | undefined} log
 * @property {((request: RecordedRequest) => void) | undefined} onRequest
 * @property {((request: RecordedRequest, latencyNs: number) => void) | undefined} onResponse
 * @property {(() => void) | undefined} onCrash
 *
 * @typedef {object} RecordedRequest
 * @property {number} id
 * @property {string} method
 * @property {string} path path with query, as received
 * @property {Record<string, string>} headers lower-case names; repeated headers joined with ", "
 * @property {string[]} rawHeaders as received: name, value, name, value, ...
 * @property {Buffer} body
 * @property {boolean} aborted the client went away before the response ended
 * @property {boolean} completed the response was sent to the end
 * @property {number | undefined} status
 * @property {string} remoteAddress
 * @property {Buffer | undefined} decompressed the body after Content-Encoding: zstd was undone
 * @property {Record<string, unknown> | undefined} decoded the request as Ollama's Go structs read it
 * @property {number} webSearches searches Ollama ran for it on the operator's ollama.com account
 * @property {string | undefined} cloud the remote host it went to, when a cloud model served it
 */

/** @type {Options} */
const DEFAULTS = {
  host: "127.0.0.1",
  port: 0,
  models: DEFAULT_MODELS,
  pullable: DEFAULT_PULLABLE,
  tokens: DEFAULT_TOKENS,
  tokenDelayMs: 0,
  splitWrites: false,
  errorAfterChunks: undefined,
  crashAfterChunks: undefined,
  busy: false,
  pullFailTimes: 0,
  pullDelayMs: 0,
  loadDelayMs: 0,
  checkHost: undefined,
  keepAlive: "5m",
  vram: DEFAULT_VRAM,
  defaultNumCtx: 4096,
  origins: [],
  webSearchCalls: 1,
  remotes: ["ollama.com"],
  recordRequests: true,
  numParallel: undefined,
  maxQueue: 512,
  ready: undefined,
  log: undefined,
  onRequest: undefined,
  onResponse: undefined,
  onCrash: undefined
}

/** Per-request state: the exchange, the options in force, and how it may end. */
class Ctx {
  /**
   * @param {http.IncomingMessage} req
   * @param {http.ServerResponse} res
   * @param {RecordedRequest} rec
   * @param {Options} o options as they were when the request came in
   */
  constructor(req, res, rec, o) {
    this.req = req
    this.res = res
    this.rec = rec
    this.o = o
    this.splitWrites = o.splitWrites
    this.closed = false
    this.serverKilled = false
    /** @type {Set<() => void>} */
    this.onClose = new Set()
    /** @type {Out} */
    this.out = new Out(this)
    /** The body the handlers read: the received one, or what zstd decompressed. */
    this.body = Buffer.alloc(0)
    /** @type {{ model: string, base: string } | undefined} set when cloudPassthroughMiddleware sends the body to ollama.com */
    this.passthrough = undefined
  }

  /** Waits, unless the connection goes first; true when still open. */
  sleep(/** @type {number} */ ms) {
    if (this.closed) return Promise.resolve(false)
    if (!(ms > 0)) return Promise.resolve(true)
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer)
        this.onClose.delete(done)
        resolve(!this.closed)
      }
      const timer = setTimeout(done, ms)
      this.onClose.add(done)
    })
  }

  /** Cuts the connection after what was written has left: a dying server, not a client abort. */
  async drop() {
    if (this.closed) return
    this.serverKilled = true
    await this.out.flush()
    this.res.socket?.destroy()
    this.res.destroy()
  }

  async crash() {
    await this.drop()
    this.o.onCrash?.()
  }
}

// ---------------------------------------------------------------------------------------------
// The server

/**
 * Starts a fake Ollama on `host:port` (default 127.0.0.1, a random port).
 * @param {Partial<Options>} [options]
 */
export async function startFakeOllama(options = {}) {
  /** @type {Options} */
  const opts = { ...DEFAULTS }
  /** @type {Map<string, Model>} */
  const disk = new Map()
  /** @type {Map<string, ModelSpec | string>} */
  const pullable = new Map()
  /**
   * @typedef {{ model: Model, expiresNs: bigint, keepAliveNs: bigint, contextLength: number, sizeVram: number, runner: RunnerOptions }} Runner
   * @type {Map<string, Runner>}
   */
  const loaded = new Map()
  /** @type {Map<string, number>} reloads per model (display name): a runner restarted because its options changed */
  const reloads = new Map()
  /** @type {Array<{ id: number, path: string, model: string, remoteModel: string, remoteHost: string }>} */
  const cloudRequests = []
  let webSearches = 0
  /** @type {Set<string>} blob digests stored, `sha256:<hex>` */
  const blobs = new Set()
  let pullFailuresLeft = 0
  const slots = makeSlots(() => opts.numParallel, () => opts.maxQueue)
  let nextId = 1
  /** @type {RecordedRequest[]} */
  const requests = []
  const events = new EventEmitter()
  events.setMaxListeners(0)

  const log = (
    /** @type {"DEBUG" | "INFO" | "WARN" | "ERROR"} */ level,
    /** @type {string} */ msg,
    /** @type {Record<string, unknown>} */ attrs = {},
    source = "server.go:0"
  ) => opts.log?.(level, msg, attrs, source)

  /** @param {Partial<Options>} partial */
  function set(partial) {
    for (const [key, value] of Object.entries(partial)) {
      if (key === "host" || key === "port") continue /** @type {Record<string, unknown>} */
      opts[key] = value === undefined
        ? /** @type {Record<string, unknown>} */ (DEFAULTS)[key]
        : value
    }
    if ("models" in partial) {
      disk.clear()
      const start = nowNs()
      opts.models.forEach((spec, i) => {
        const model = resolveModel(spec, start - BigInt(i) * 1_000_000_000n)
        disk.set(model.key, model)
      })
      loaded.clear()
      reloads.clear()
      cloudRequests.length = 0
      webSearches = 0
    }
    if ("pullable" in partial) {
      pullable.clear()
      for (const spec of opts.pullable) {
        const parsed = parseModelName(typeof spec === "string" ? spec : spec.name)
        if (parsed) pullable.set(parsed.key, spec)
      }
    }
    if ("pullFailTimes" in partial) pullFailuresLeft = Math.max(0, opts.pullFailTimes)
  }
  set({ ...DEFAULTS, ...options, models: options.models ?? DEFAULTS.models, pullable: options.pullable ?? DEFAULTS.pullable })
  opts.host = options.host ?? DEFAULTS.host
  opts.port = options.port ?? DEFAULTS.port

  const findModel = (/** @type {unknown} */ name) => {
    const parsed = typeof name === "string" ? parseModelName(name) : undefined
    return parsed ? disk.get(parsed.key) : undefined
  }

  const keepAliveDefault = () => {
    const k = keepAliveOf(opts.keepAlive)
    return "ns" in k && k.ns !== undefined ? k.ns : 300_000_000_000n
  }

  /**
   * The scheduler's part of a request: busy, the load (a reload when the runner options changed,
   * server/sched.go `needsReload`), the keep-alive.
   */
  async function schedule(
    /** @type {Ctx} */ ctx,
    /** @type {Model} */ model,
    /** @type {bigint | undefined} */ keepAlive,
    /** @type {Obj | undefined} */ reqOptions
  ) {
    if (ctx.o.busy) return { error: /** @type {[number, Obj]} */ ([503, { error: BUSY_ERROR }]) }
    // A slot of the runner, held until the answer is over (slots.mjs).
    const slot = await slots.acquire(ctx)
    if (slot === "busy") return { error: /** @type {[number, Obj]} */ ([503, { error: BUSY_ERROR }]) }
    if (slot === "closed") return { closed: true }
    const runner = runnerOptions(reqOptions, Math.min(model.contextLength, ctx.o.defaultNumCtx))
    const existing = loaded.get(model.key)
    if (existing && needsReload(existing.runner, runner)) {
      reloads.set(model.name, (reloads.get(model.name) ?? 0) + 1)
      loaded.delete(model.key)
      log("INFO", "reloading model: runner options changed", { model: model.name }, "sched.go:201")
    }
    const fresh = !loaded.has(model.key)
    if (!(await ctx.sleep(ctx.o.loadDelayMs))) return { closed: true }
    if (fresh) {
      log("INFO", "loading model", { model: model.name, "num_ctx": runner.num_ctx }, "server.go:404")
      log("INFO", `llama runner started in ${(ctx.o.loadDelayMs / 1000).toFixed(2)} seconds`, {}, "server.go:1288")
    }
    const duration = keepAlive ?? keepAliveDefault()
    const kept = loaded.get(model.key)
    loaded.set(model.key, {
      model,
      expiresNs: expiry(duration),
      keepAliveNs: duration,
      contextLength: kept?.contextLength ?? runner.num_ctx,
      // num_gpu 0 offloads no layer: the whole model runs from system memory.
      sizeVram: kept?.sizeVram ?? (runner.num_gpu === 0 ? 0 : vramFor(model)),
      runner: kept?.runner ?? runner
    })
    return {}
  }

  /** time.Now().Add(d): a forever keep-alive (MaxInt64 ns) ends some 292 years from now. */
  const expiry = (/** @type {bigint} */ duration) => nowNs() + (duration > FOREVER_NS ? FOREVER_NS : duration)

  /** What of a model being loaded goes to GPU memory: what the models already loaded left free; the rest stays in system memory. */
  function vramFor(/** @type {Model} */ model) {
    let used = 0
    for (const entry of loaded.values()) used += entry.sizeVram
    return Math.max(0, Math.min(model.size, opts.vram - used))
  }

  /** Sets the keep-alive clock when a request is done with the model, unloading at 0. */
  function release(/** @type {Model} */ model, /** @type {bigint | undefined} */ keepAlive) {
    const entry = loaded.get(model.key)
    if (!entry) return
    const duration = keepAlive ?? keepAliveDefault()
    if (duration === 0n) loaded.delete(model.key)
    else {
      entry.expiresNs = expiry(duration)
      entry.keepAliveNs = duration
    }
  }

  /**
   * The tokens of a generation, paced, with the failure knobs applied: `crashAfterChunks` and
   * `errorAfterChunks` count the content chunks already written.
   * @param {Ctx} ctx
   * @param {ReturnType<typeof planGeneration>} plan
   * @param {(i: number) => Obj} chunk
   * @param {() => Obj} final
   * @param {() => void} onDone
   * @returns {AsyncGenerator<Obj | StreamError>}
   */
  async function* tokens(ctx, plan, chunk, final, onDone) {
    for (let i = 0;; i++) {
      if (i > 0 && !(await ctx.sleep(ctx.o.tokenDelayMs))) return
      if (ctx.closed) return
      if (ctx.o.crashAfterChunks === i) {
        log("ERROR", "llama runner terminated", { error: "signal: killed" }, "server.go:1156")
        await ctx.crash()
        return
      }
      if (ctx.o.errorAfterChunks === i) {
        log("ERROR", "post predict", { error: MIDSTREAM_ERROR }, "server.go:1523")
        yield new StreamError(MIDSTREAM_ERROR)
        return
      }
      if (i === plan.evalCount) {
        onDone()
        yield final()
        return
      }
      yield chunk(i)
    }
  }

  /**
   * `_debug_render_only`: the prompt as the model's template renders it, the Modelfile's SYSTEM
   * included, instead of a generation (server/routes.go GenerateHandler / ChatHandler: an
   * api.GenerateResponse / api.ChatResponse with `_debug_info.rendered_template`, done false).
   * @param {"generate" | "chat"} kind
   * @param {NativeRequest} req
   * @param {string} name
   * @param {Model} model
   */
  const debugRender = (kind, req, name, model) => {
    const created_at = rfc3339Nano(nowNs())
    if (kind === "generate") {
      const system = typeof req.system === "string" && req.system !== "" ? req.system : model.system
      const messages = [...(system ? [{ role: "system", content: system }] : []), { role: "user", content: req.prompt }]
      return { model: name, created_at, response: "", done: false, _debug_info: { rendered_template: renderPrompt(messages, "") } }
    }
    const messages = Array.isArray(req.messages) ? req.messages : []
    return {
      model: name,
      created_at,
      message: { role: "", content: "" },
      done: false,
      _debug_info: { rendered_template: renderPrompt(messages, model.system) }
    }
  }

  const metricsOf = (/** @type {ReturnType<typeof planGeneration>} */ p) => ({
    total_duration: p.totalDuration || undefined,
    load_duration: p.loadDuration || undefined,
    prompt_eval_count: p.promptEvalCount || undefined,
    prompt_eval_duration: p.promptEvalDuration || undefined,
    eval_count: p.evalCount || undefined,
    eval_duration: p.evalDuration || undefined
  })

  /**
   * The native generate / chat handler (server.GenerateHandler, ChatHandler) up to the point
   * where it answers: the /v1 and /v1/messages layers render its outcome their own way.
   * @param {Ctx} ctx
   * @param {"generate" | "chat"} kind
   * @param {NativeRequest} req
   * @param {{ relaxThinking?: boolean }} [flags]
   * @returns {Promise<Outcome | undefined>}
   */
  async function inference(ctx, kind, req, flags = {}) {
    const keep = keepAliveOf(req.keep_alive)
    if ("error" in keep) return { json: [400, { error: keep.error }] }
    const name = typeof req.model === "string" ? req.model : ""
    const target = resolveRef(
      ctx,
      name,
      kind === "generate" ? [404, { error: `model '${name}' not found` }] : [400, { error: "model is required" }]
    )
    if ("json" in target) return target
    const { model, cloud } = target
    const empty = kind === "generate"
      ? typeof req.prompt !== "string" || req.prompt === ""
      : !Array.isArray(req.messages) || req.messages.length === 0
    const createdAt = () => rfc3339Nano(nowNs())
    /** @param {string} reason */
    const loadAnswer = (reason) =>
      kind === "generate"
        ? { model: name, created_at: createdAt(), response: "", done: true, done_reason: reason }
        : { model: name, created_at: createdAt(), message: { role: "assistant", content: "" }, done: true, done_reason: reason }

    if (empty && keep.ns === 0n && !cloud) {
      loaded.delete(model.key)
      log("DEBUG", "unloading model", { model: model.name }, "sched.go:297")
      return { json: [200, loadAnswer("unload")] }
    }
    const think = req.think === true || (typeof req.think === "string" && req.think !== "")
    if (cloud) return generation(ctx, kind, req, name, () => {})
    if (think && !model.capabilities.includes("thinking") && !flags.relaxThinking) {
      return { json: [400, { error: `${JSON.stringify(name)} does not support thinking` }] }
    }
    if (!model.capabilities.includes("completion")) {
      return { json: [400, { error: `${JSON.stringify(name)} does not support ${kind === "generate" ? "generate" : "chat"}` }] }
    }
    if (Array.isArray(req.tools) && req.tools.length > 0 && !model.capabilities.includes("tools")) {
      return { json: [400, { error: `${fullName(model.name)} does not support tools` }] }
    }
    const scheduled = await schedule(ctx, model, keep.ns, /** @type {Obj | undefined} */ (req.options))
    if (scheduled.closed) return undefined
    if (scheduled.error) return { json: scheduled.error }
    if (empty) {
      log("DEBUG", "model loaded", { model: model.name }, "routes.go:310")
      release(model, keep.ns)
      return { json: [200, loadAnswer("load")] }
    }
    if (req._debug_render_only === true) {
      release(model, keep.ns)
      return { json: [200, debugRender(kind, req, name, model)] }
    }
    log("DEBUG", `${kind} request`, { model: name, stream: req.stream !== false }, "routes.go:388")
    return generation(ctx, kind, req, name, () => release(model, keep.ns))
  }

  /**
   * The generation itself.
   * @param {Ctx} ctx
   * @param {"generate" | "chat"} kind
   * @param {NativeRequest} req
   * @param {string} name
   * @param {() => void} onDone
   * @returns {Outcome}
   */
  function generation(ctx, kind, req, name, onDone) {
    const createdAt = () => rfc3339Nano(nowNs())
    const plan = planGeneration(kind, req, ctx.o)
    const metrics = metricsOf(plan)
    const chunk = kind === "generate"
      ? (/** @type {number} */ i) => ({ model: name, created_at: createdAt(), response: tokenText(i), done: false })
      : (/** @type {number} */ i) => ({
        model: name,
        created_at: createdAt(),
        message: { role: "assistant", content: tokenText(i) },
        done: false
      })
    const final = kind === "generate"
      ? () => ({
        model: name,
        created_at: createdAt(),
        response: "",
        done: true,
        done_reason: plan.doneReason,
        context: contextIds(plan.promptEvalCount + plan.evalCount),
        ...metrics
      })
      : () => ({
        model: name,
        created_at: createdAt(),
        message: { role: "assistant", content: "" },
        done: true,
        done_reason: plan.doneReason,
        ...metrics
      })
    return { items: tokens(ctx, plan, chunk, final, onDone), stream: req.stream !== false }
  }

  /**
   * The model a request names, resolved as the handlers do (server/model_resolver.go
   * `parseAndValidateModelRef`, then GenerateHandler / ChatHandler): an explicit cloud source goes
   * to ollama.com whatever the disk holds; a model on disk with a remote_host goes to that host
   * (when OLLAMA_REMOTES allows it), unless the name says `:local`. Cloud requests are counted in
   * `cloudRequests`.
   * @param {Ctx} ctx
   * @param {string} name
   * @param {[number, Obj]} fallback the handler's answer to a name it cannot parse
   * @param {string} [notFound] its message for a model that is not there
   * @returns {{ model: Model, cloud: string | undefined } | { json: [number, Obj] }}
   */
  function resolveRef(ctx, name, fallback, notFound = `model '${name}' not found`) {
    if (ctx.passthrough) {
      const { model, base } = ctx.passthrough
      cloudRequests.push({ id: ctx.rec.id, path: ctx.rec.path, model, remoteModel: base, remoteHost: CLOUD_URL })
      ctx.rec.cloud = CLOUD_URL
      return { model: resolveModel(base, nowNs()), cloud: CLOUD_URL }
    }
    const ref = parseModelRef(name)
    if ("error" in ref && ref.error !== "model is required") return { json: [400, { error: ref.error }] }
    const base = "base" in ref ? ref.base : ""
    if (!parseModelName(base)) return { json: fallback }
    let model = findModel(base)
    let remote = model && model.remoteHost !== "" ? { host: model.remoteHost, model: model.remoteModel } : undefined
    if ("source" in ref && ref.source === "cloud") {
      model = resolveModel(base, nowNs())
      remote = { host: CLOUD_URL, model: base }
    } else if (!model || (remote && "source" in ref && ref.source === "local")) {
      return { json: [404, { error: notFound }] }
    }
    if (remote) {
      let hostname = ""
      try {
        hostname = new URL(remote.host).hostname
      } catch {
        return { json: [500, { error: `parse ${JSON.stringify(remote.host)}: invalid URI for request` }] }
      }
      if (!ctx.o.remotes.includes(hostname)) return { json: [400, { error: "this server cannot run this remote model" }] }
      cloudRequests.push({ id: ctx.rec.id, path: ctx.rec.path, model: name, remoteModel: remote.model, remoteHost: remote.host })
      ctx.rec.cloud = remote.host
    }
    return { model, cloud: remote?.host }
  }

  /** The /api/embed handler's answer, with the vectors still as numbers. */
  async function embed(/** @type {Ctx} */ ctx, /** @type {NativeRequest} */ req) {
    const keep = keepAliveOf(req.keep_alive)
    if ("error" in keep) return { json: /** @type {[number, Obj]} */ ([400, { error: keep.error }]) }
    const name = typeof req.model === "string" ? req.model : ""
    const inputs = embedInputs(req.input)
    if (inputs === undefined) return { json: /** @type {[number, Obj]} */ ([400, { error: "invalid input type" }]) }
    const target = resolveRef(ctx, name, [404, { error: `model '${name}' not found` }])
    if ("json" in target) return { json: target.json }
    const { model, cloud } = target
    if (!cloud) {
      const scheduled = await schedule(ctx, model, keep.ns, /** @type {Obj | undefined} */ (req.options))
      if (scheduled.closed) return undefined
      if (scheduled.error) return { json: scheduled.error }
      release(model, keep.ns)
    }
    if (inputs.length === 0) {
      return { json: /** @type {[number, Obj]} */ ([200, { model: name, embeddings: [] }]), vectors: [], promptEvalCount: 0 }
    }
    const dims = typeof req.dimensions === "number" ? req.dimensions : undefined
    const vectors = inputs.map((text) => embeddingFor(text, model.embeddingLength, dims))
    const promptEvalCount = inputs.reduce((n, text) => n + promptTokens(text), 0)
    const d = durations({ promptEvalCount, evalCount: 0, loadDelayMs: ctx.o.loadDelayMs })
    const body = {
      model: name,
      embeddings: new RawJSON(`[${vectors.map((v) => float32Array(v).text).join(",")}]`),
      total_duration: d.totalDuration,
      load_duration: d.loadDuration,
      prompt_eval_count: promptEvalCount
    }
    return { json: /** @type {[number, Obj]} */ ([200, body]), vectors, promptEvalCount }
  }

  const details = (/** @type {Model} */ m) => ({
    parent_model: "",
    format: "gguf",
    family: m.family,
    families: [m.family],
    parameter_size: m.parameterSize,
    quantization_level: m.quantization
  })

  const listModels = () =>
    [...disk.values()]
      .sort((a, b) => (a.modifiedNs === b.modifiedNs ? 0 : a.modifiedNs < b.modifiedNs ? 1 : -1))
      .map((m) => ({
        name: m.name,
        model: m.name,
        remote_model: m.remoteModel || undefined,
        remote_host: m.remoteHost || undefined,
        modified_at: rfc3339Nano(m.modifiedNs),
        size: m.size,
        digest: m.digest,
        details: details(m)
      }))

  const psModels = () => {
    const now = nowNs()
    for (const [key, entry] of loaded) if (entry.expiresNs <= now) loaded.delete(key)
    return [...loaded.values()]
      .sort((a, b) => (a.expiresNs === b.expiresNs ? 0 : a.expiresNs < b.expiresNs ? 1 : -1))
      .map(({ contextLength, expiresNs, model: m, sizeVram }) => ({
        name: m.name,
        model: m.name,
        size: m.size,
        digest: m.digest,
        details: details(m),
        expires_at: rfc3339Nano(expiresNs),
        size_vram: sizeVram,
        context_length: contextLength
      }))
  }

  const showModel = (/** @type {Model} */ m) => {
    const completion = m.capabilities.includes("completion")
    const template = completion
      ? "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
      : ""
    const blob = `/root/.ollama/models/blobs/sha256-${modelLayers(m)[0]?.digest.slice(7)}`
    let modelfile =
      `# Modelfile generated by "ollama show"\n# To build a new Modelfile based on this, replace FROM with:\n# FROM ${m.name}\n\nFROM ${blob}\n`
    if (completion) modelfile += `TEMPLATE """${template}"""\nPARAMETER stop <|eot_id|>\n`
    const params = Number.parseFloat(m.parameterSize) * (/B$/i.test(m.parameterSize) ? 1e9 : /M$/i.test(m.parameterSize) ? 1e6 : 1)
    /** @type {Obj} */
    const info = {}
    for (
      const [k, v] of /** @type {Array<[string, unknown]>} */ ([
        ["general.architecture", m.family],
        ["general.parameter_count", Math.round(params) || 0],
        [`${m.family}.context_length`, m.contextLength],
        [`${m.family}.embedding_length`, m.embeddingLength]
      ]).sort(([a], [b]) => (a < b ? -1 : 1))
    ) {
      info[k] = v
    }
    return {
      license: completion ? "LLAMA 3.2 COMMUNITY LICENSE AGREEMENT (fake)" : undefined,
      modelfile,
      parameters: completion ? `${"stop".padEnd(30)} "<|eot_id|>"` : undefined,
      template: completion ? template : undefined,
      system: m.system || undefined,
      details: details(m),
      remote_model: m.remoteModel || undefined,
      remote_host: m.remoteHost || undefined,
      model_info: info,
      capabilities: m.capabilities,
      modified_at: rfc3339Nano(m.modifiedNs)
    }
  }

  /**
   * Progress of a pull, in Ollama's order; adds the model to the disk at the end.
   * @param {Ctx} ctx
   * @param {string} name display name to store under
   * @param {Model | undefined} source
   * @param {boolean} failThisOne drop the connection after the first layer line
   * @returns {AsyncGenerator<Obj | StreamError>}
   */
  async function* pullProgress(ctx, name, source, failThisOne) {
    yield { status: "pulling manifest" }
    if (!source) {
      yield new StreamError(PULL_MANIFEST_ERROR)
      return
    }
    const present = disk.has(source.key)
    for (const layer of modelLayers(source)) {
      const steps = present
        ? [layer.total]
        : layer.total > 1_000_000
        ? [0, 0.25, 0.5, 0.75, 1].map((f) => Math.round(layer.total * f))
        : [0, layer.total]
      for (const completed of steps) {
        if (!(await ctx.sleep(ctx.o.pullDelayMs))) return
        yield {
          status: `pulling ${layer.digest.slice(7, 19)}`,
          digest: layer.digest,
          total: layer.total,
          completed: completed || undefined
        }
        if (failThisOne) {
          log("WARN", "dropping the pull connection (pullFailTimes)", { model: name }, "download.go:175")
          await ctx.drop()
          return
        }
      }
    }
    yield { status: "verifying sha256 digest" }
    yield { status: "writing manifest" }
    const stored = { ...source, name, modifiedNs: present ? (disk.get(source.key)?.modifiedNs ?? nowNs()) : nowNs() }
    disk.set(source.key, stored)
    yield { status: "success" }
  }

  // --- handlers ---

  /** @typedef {(ctx: Ctx, params: Record<string, string>) => Promise<void>} Handler */

  /**
   * gin's ShouldBindJSON for native endpoints, into the Go struct (shapes.mjs) the handler binds:
   * `missing request body` on EOF. What Ollama read is kept in the record as `decoded`.
   * @param {Ctx} ctx
   * @param {import("./gojson.mjs").Shape & { k: "struct" }} shape
   */
  const bind = async (ctx, shape) => {
    const decoded = bindShape(ctx.body, shape)
    if ("eof" in decoded) return void (await ginJSON(ctx, 400, { error: "missing request body" }))
    if ("error" in decoded) return void (await ginJSON(ctx, 400, { error: decoded.error }))
    ctx.rec.decoded = decoded.value
    return decoded.value
  }

  /**
   * gin's ShouldBindJSON inside the /v1 and /v1/messages middlewares: Go's own messages.
   * @param {Ctx} ctx
   * @param {import("./gojson.mjs").Shape & { k: "struct" }} shape
   * @param {(status: number, message: string) => Promise<void>} abort
   */
  const bindCompat = async (ctx, shape, abort) => {
    const decoded = bindShape(ctx.body, shape)
    if ("eof" in decoded) return void (await abort(400, "EOF"))
    if ("error" in decoded) return void (await abort(400, decoded.error))
    ctx.rec.decoded = decoded.value
    return decoded.value
  }

  /**
   * The searches Ollama runs for a request with its web search tool (middleware/anthropic.go
   * `WebSearchAnthropicWriter`, middleware/openai.go `WebSearchResponsesWriter`): one per
   * web_search call of the model, at most maxWebSearchLoops (3, middleware/web_search.go) per
   * request. The fake's model calls it `webSearchCalls` times in a row.
   */
  const countWebSearches = (/** @type {Ctx} */ ctx) => {
    const n = Math.max(0, Math.min(3, Math.floor(ctx.o.webSearchCalls)))
    ctx.rec.webSearches = n
    webSearches += n
  }

  /** @type {Record<string, Handler>} */
  const handlers = {
    async root(ctx) {
      await ctx.out.send(200, "Ollama is running", "text/plain; charset=utf-8")
    },

    async version(ctx) {
      await ginJSON(ctx, 200, { version: VERSION })
    },

    async tags(ctx) {
      await ginJSON(ctx, 200, { models: listModels() })
    },

    async ps(ctx) {
      await ginJSON(ctx, 200, { models: psModels() })
    },

    async show(ctx) {
      const body = await bind(ctx, shapes.ShowRequest)
      if (!body) return
      const name = String(body.model || body.name || "")
      if (name === "") return ginJSON(ctx, 400, { error: "model is required" })
      const model = findModel(name)
      if (!model) return ginJSON(ctx, 404, { error: `model '${name}' not found` })
      await ginJSON(ctx, 200, showModel(model))
    },

    async pull(ctx) {
      const body = await bind(ctx, shapes.PullRequest)
      if (!body) return
      const parsed = parseModelName(String(body.model || body.name || ""))
      if (!parsed) return ginJSON(ctx, 400, { error: "invalid model name" })
      const onDisk = disk.get(parsed.key)
      const spec = pullable.get(parsed.key)
      const source = onDisk ?? (spec ? resolveModel(spec, nowNs()) : undefined)
      const fail = source !== undefined && pullFailuresLeft > 0
      if (fail) pullFailuresLeft--
      log("INFO", "pulling model", { model: parsed.display }, "images.go:1035")
      if (fail && body.stream === false) return ctx.drop()
      const items = pullProgress(ctx, parsed.display, source, fail)
      if (body.stream === false) return waitForStream(ctx, items)
      await streamResponse(ctx, items)
    },

    async push(ctx) {
      const body = await bind(ctx, shapes.PushRequest)
      if (!body) return
      const name = String(body.model || body.name || "")
      if (name === "") return ginJSON(ctx, 400, { error: "model is required" })
      const model = findModel(name)
      const items = (async function*() {
        yield { status: "retrieving manifest" }
        if (!model) return void (yield new StreamError(`model '${name}' not found`))
        for (const layer of modelLayers(model)) {
          if (!(await ctx.sleep(ctx.o.pullDelayMs))) return
          yield { status: `pushing ${layer.digest.slice(7, 19)}`, digest: layer.digest, total: layer.total, completed: layer.total }
        }
        yield { status: "pushing manifest" }
        yield { status: "success" }
      })()
      if (body.stream === false) return waitForStream(ctx, items)
      await streamResponse(ctx, items)
    },

    async create(ctx) {
      const body = await bind(ctx, shapes.CreateRequest)
      if (!body) return
      const target = parseModelName(String(body.model || body.name || ""))
      if (!target) return ginJSON(ctx, 400, { error: "invalid model name" })
      const files = body.files && typeof body.files === "object" ? Object.values(/** @type {Obj} */ (body.files)).map(String) : []
      if (!body.from && files.length === 0) return ginJSON(ctx, 400, { error: "neither 'from' or 'files' was specified" })
      const from = String(body.from ?? "")
      const fromRef = from ? parseModelRef(from) : undefined
      // server/create.go CreateHandler: a `from` with a cloud source, or a remote_host, makes a
      // model that runs there (config.RemoteHost / RemoteModel), whatever the disk holds.
      const remoteHost = typeof body.remote_host === "string" && body.remote_host !== ""
        ? remoteURL(body.remote_host)
        : fromRef && "source" in fromRef && fromRef.source === "cloud"
        ? CLOUD_URL
        : ""
      if (remoteHost && fromRef && "base" in fromRef) {
        const remote = resolveModel({
          name: target.display,
          system: typeof body.system === "string" ? body.system : "",
          remoteHost,
          remoteModel: fromRef.base
        }, nowNs())
        const items = (async function*() {
          yield { status: "gathering model components" }
          yield { status: "writing manifest" }
          disk.set(remote.key, remote)
          yield { status: "success" }
        })()
        if (body.stream === false) return waitForStream(ctx, items)
        return streamResponse(ctx, items)
      }
      const base = body.from ? findModel(body.from) : undefined
      const items = (async function*() {
        if (body.from && !base) return void (yield new StreamError(`model '${String(body.from)}' not found`, 404))
        for (const digest of files) {
          if (!blobs.has(digest.replace("-", ":"))) return void (yield new StreamError(`file ${digest} not found`, 400))
        }
        yield { status: "gathering model components" }
        for (const layer of base ? modelLayers(base) : files.map((digest) => ({ digest }))) {
          if (!(await ctx.sleep(ctx.o.pullDelayMs))) return
          yield { status: `using existing layer ${layer.digest}` }
        }
        yield { status: "writing manifest" }
        const system = typeof body.system === "string" && body.system !== "" ? body.system : base?.system
        const model = resolveModel(base ? { ...base, name: target.display, system } : { name: target.display, system }, nowNs())
        disk.set(model.key, model)
        yield { status: "success" }
      })()
      if (body.stream === false) return waitForStream(ctx, items)
      await streamResponse(ctx, items)
    },

    async copy(ctx) {
      const body = await bind(ctx, shapes.CopyRequest)
      if (!body) return
      const source = String(body.source ?? "")
      const destination = String(body.destination ?? "")
      if (!parseModelName(source)) return ginJSON(ctx, 400, { error: `source ${JSON.stringify(source)} is invalid` })
      const dst = parseModelName(destination)
      if (!dst) return ginJSON(ctx, 400, { error: `destination ${JSON.stringify(destination)} is invalid` })
      const model = findModel(source)
      if (!model) return ginJSON(ctx, 404, { error: `model '${source}' not found` })
      disk.set(dst.key, { ...model, name: dst.display, key: dst.key, modifiedNs: nowNs() })
      await ctx.out.send(200)
    },

    async delete(ctx) {
      const body = await bind(ctx, shapes.DeleteRequest)
      if (!body) return
      const name = String(body.model || body.name || "")
      if (!parseModelName(name)) return ginJSON(ctx, 400, { error: `name ${JSON.stringify(name)} is invalid` })
      const model = findModel(name)
      if (!model) return ginJSON(ctx, 404, { error: `model '${name}' not found` })
      disk.delete(model.key)
      loaded.delete(model.key)
      await ctx.out.send(200)
    },

    async headBlob(ctx, { digest = "" }) {
      if (!/^sha256[:-][0-9a-fA-F]{64}$/.test(digest)) return ginJSON(ctx, 400, { error: "invalid digest format" })
      if (!blobs.has(digest.replace("-", ":"))) return ginJSON(ctx, 404, { error: `blob ${JSON.stringify(digest)} not found` })
      await ctx.out.send(200)
    },

    async createBlob(ctx, { digest = "" }) {
      if (!/^sha256[:-][0-9a-fA-F]{64}$/.test(digest)) return ginJSON(ctx, 400, { error: "invalid digest format" })
      if (blobs.has(digest.replace("-", ":"))) return ctx.out.send(200)
      const actual = `sha256:${createHash("sha256").update(ctx.rec.body).digest("hex")}`
      if (actual !== digest) {
        return ginJSON(ctx, 400, { error: `digest mismatch, expected ${JSON.stringify(digest)}, got ${JSON.stringify(actual)}` })
      }
      blobs.add(actual)
      await ctx.out.send(201)
    },

    async generate(ctx) {
      const body = await bind(ctx, shapes.GenerateRequest)
      if (!body) return
      const outcome = await inference(ctx, "generate", body)
      if (outcome) await renderNative(ctx, outcome, "generate")
    },

    async chat(ctx) {
      const body = await bind(ctx, shapes.ChatRequest)
      if (!body) return
      const outcome = await inference(ctx, "chat", body)
      if (outcome) await renderNative(ctx, outcome, "chat")
    },

    async embed(ctx) {
      const body = await bind(ctx, shapes.EmbedRequest)
      if (!body) return
      const outcome = await embed(ctx, body)
      if (outcome) await ginJSON(ctx, ...outcome.json)
    },

    async embeddings(ctx) {
      const body = await bind(ctx, shapes.EmbeddingRequest)
      if (!body) return
      const name = String(body.model ?? "")
      const target = resolveRef(
        ctx,
        name,
        [400, { error: "model is required" }],
        `model ${JSON.stringify(name)} not found, try pulling it first`
      )
      if ("json" in target) return ginJSON(ctx, ...target.json)
      const { model, cloud } = target
      const keep = keepAliveOf(body.keep_alive)
      if ("error" in keep) return ginJSON(ctx, 400, { error: keep.error })
      if (!cloud) {
        const scheduled = await schedule(ctx, model, keep.ns, /** @type {Obj | undefined} */ (body.options))
        if (scheduled.closed) return
        if (scheduled.error) return ginJSON(ctx, ...scheduled.error)
        release(model, keep.ns)
      }
      const prompt = typeof body.prompt === "string" ? body.prompt : ""
      const vector = prompt === "" ? [] : Array.from(embeddingFor(prompt, model.embeddingLength, undefined))
      await ginJSON(ctx, 200, { embedding: vector })
    },

    async v1Chat(ctx) {
      const abort = (/** @type {number} */ s, /** @type {string} */ m) => openaiAbort(ctx, s, m)
      const body = await bindCompat(ctx, shapes.ChatCompletionRequest, abort)
      if (!body) return
      if (!Array.isArray(body.messages) || body.messages.length === 0) return abort(400, "[] is too short - 'messages'")
      const req = v1ChatToNative(body)
      const outcome = await inference(ctx, "chat", req)
      const includeUsage = /** @type {Obj | undefined} */ (body.stream_options)?.include_usage === true
      if (outcome) await renderOpenAI(ctx, outcome, { kind: "chat", stream: req.stream, includeUsage })
    },

    async v1Completions(ctx) {
      const abort = (/** @type {number} */ s, /** @type {string} */ m) => openaiAbort(ctx, s, m)
      const body = await bindCompat(ctx, shapes.CompletionRequest, abort)
      if (!body) return
      const req = v1CompletionToNative(body)
      const outcome = await inference(ctx, "generate", req)
      const includeUsage = /** @type {Obj | undefined} */ (body.stream_options)?.include_usage === true
      if (outcome) await renderOpenAI(ctx, outcome, { kind: "completion", stream: req.stream, includeUsage })
    },

    async v1Embeddings(ctx) {
      const abort = (/** @type {number} */ s, /** @type {string} */ m) => openaiAbort(ctx, s, m)
      const body = await bindCompat(ctx, shapes.OpenAIEmbedRequest, abort)
      if (!body) return
      const format = typeof body.encoding_format === "string" ? body.encoding_format : ""
      if (format !== "" && !/^(float|base64)$/i.test(format)) {
        return abort(400, `Invalid value for 'encoding_format' = ${format}. Supported values: ['float', 'base64'].`)
      }
      const input = body.input === "" ? [""] : body.input
      if (input === undefined || input === null || (Array.isArray(input) && input.length === 0)) return abort(400, "invalid input")
      const outcome = await embed(ctx, { model: body.model, input, dimensions: body.dimensions })
      if (!outcome) return
      const [status, obj] = outcome.json
      if (status !== 200) return openaiWriteError(ctx, status, String(obj.error))
      const vectors = /** @type {Float32Array[]} */ (/** @type {{ vectors?: Float32Array[] }} */ (outcome).vectors ?? [])
      const promptEvalCount = /** @type {{ promptEvalCount?: number }} */ (outcome).promptEvalCount ?? 0
      const data = vectors.map((v, index) => ({
        object: "embedding",
        embedding: /^base64$/i.test(format) ? Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString("base64") : float32Array(v),
        index
      }))
      const list = { object: "list", data, model: body.model, usage: { prompt_tokens: promptEvalCount, total_tokens: promptEvalCount } }
      await ctx.out.send(200, `${goJSON(list)}\n`, "application/json")
    },

    async v1Models(ctx) {
      const data = listModels().map((m) => ({
        id: m.name,
        object: "model",
        created: unixOf(m.modified_at),
        owned_by: parseModelName(m.name)?.namespace ?? "library"
      }))
      // Go marshals the empty list of models as null here (a nil slice).
      await ctx.out.send(200, `${goJSON({ object: "list", data: data.length > 0 ? data : null })}\n`, "application/json")
    },

    async v1Model(ctx, { model: name = "" }) {
      const model = findModel(name)
      if (!model) return openaiWriteError(ctx, 404, `model '${name}' not found`)
      const body = {
        id: name,
        object: "model",
        created: unixOf(rfc3339Nano(model.modifiedNs)),
        owned_by: parseModelName(name)?.namespace ?? "library"
      }
      await ctx.out.send(200, `${goJSON(body)}\n`, "application/json")
    },

    async v1Messages(ctx) {
      const abort = (/** @type {number} */ s, /** @type {string} */ m) => ginJSON(ctx, s, anthropicError(s, m))
      const body = await bindCompat(ctx, shapes.MessagesRequest, abort)
      if (!body) return
      if (!body.model) return abort(400, "model is required")
      if (!(typeof body.max_tokens === "number" && body.max_tokens > 0)) return abort(400, "max_tokens is required and must be positive")
      if (!Array.isArray(body.messages) || body.messages.length === 0) return abort(400, "messages is required")
      const stream = body.stream === true
      if (stream) {
        ctx.out.header("Content-Type", SSE)
        ctx.out.header("Cache-Control", "no-cache")
        ctx.out.header("Connection", "keep-alive")
      }
      const outcome = await inference(ctx, "chat", anthropicToNative(body), { relaxThinking: true })
      const tools = /** @type {Array<{ type?: string }>} */ (body.tools ?? [])
      if (outcome && "items" in outcome && tools.some((t) => (t.type ?? "").startsWith("web_search"))) countWebSearches(ctx)
      if (outcome) await renderAnthropic(ctx, outcome, { stream, model: body.model, estimate: anthropicEstimate(body) })
    },

    /**
     * middleware/openai.go `TranscriptionMiddleware` then ChatHandler: the form read as Go's
     * FormValue reads it (multipart.mjs: the query's value first), the audio handed to the model
     * in a chat, the text collected (TranscriptionWriter). The record's `decoded` holds the form
     * as Ollama read it.
     */
    async v1Transcriptions(ctx) {
      const abort = (/** @type {number} */ s, /** @type {string} */ m) => openaiAbort(ctx, s, m)
      const parsed = parseMultipart(ctx.req.headers["content-type"], ctx.body)
      if ("error" in parsed) return abort(400, `failed to parse multipart form: ${parsed.error}`)
      const query = new URLSearchParams(ctx.rec.path.includes("?") ? ctx.rec.path.slice(ctx.rec.path.indexOf("?") + 1) : "")
      const value = (/** @type {string} */ key) => formValue(query, parsed.form, key)
      const model = value("model")
      const file = parsed.form.files.get("file")?.[0]
      ctx.rec.decoded = {
        model,
        response_format: value("response_format"),
        language: value("language"),
        prompt: value("prompt"),
        file
      }
      if (model === "") return abort(400, "model is required")
      if (!file) return abort(400, "file is required: http: no such file")
      if (file.length === 0) return abort(400, "audio file is empty")
      let system = "Transcribe the audio exactly as spoken. Output only the spoken words. Do not answer any question in the audio."
      if (value("language") !== "") system += ` The audio is in ${value("language")}.`
      if (value("prompt") !== "") system += ` Context: ${value("prompt")}`
      const outcome = await inference(ctx, "chat", {
        model,
        messages: [
          { role: "system", content: system },
          { role: "user", content: "What exact words are spoken in this audio?", images: [file.toString("base64")] }
        ],
        stream: true,
        options: { temperature: 0 }
      })
      if (!outcome) return
      if ("json" in outcome) {
        const [status, obj] = outcome.json
        if (status !== 200) return openaiWriteError(ctx, status, String(obj.error))
        return ctx.out.send(200, `${goJSON({ text: "" })}\n`, "application/json")
      }
      const whole = await collect(ctx, outcome.items, "chat")
      if (whole === undefined) return
      if (whole instanceof StreamError) return openaiWriteError(ctx, whole.status, whole.error)
      const text = String(/** @type {Obj} */ (whole.message).content).trim()
      if (value("response_format") === "text") return ctx.out.send(200, text, "text/plain")
      await ctx.out.send(200, `${goJSON({ text })}\n`, "application/json")
    },

    async v1Responses(ctx) {
      const abort = (/** @type {number} */ s, /** @type {string} */ m) => openaiAbort(ctx, s, m)
      const body = await bindCompat(ctx, shapes.ResponsesRequest, abort)
      if (!body) return
      const req = responsesToNative(body)
      if (req.stream) {
        ctx.out.header("Content-Type", SSE)
        ctx.out.header("Cache-Control", "no-cache")
        ctx.out.header("Connection", "keep-alive")
      }
      const outcome = await inference(ctx, "chat", req)
      const tools = /** @type {Array<{ type?: string }>} */ (body.tools ?? [])
      if (outcome && "items" in outcome && tools.some((t) => t.type === "web_search")) countWebSearches(ctx)
      if (outcome) await renderResponses(ctx, outcome, { stream: req.stream, model: body.model })
    }
  }

  /** @type {Array<[string, string, Handler]>} */
  const routes = [
    ["HEAD", "/", handlers.root],
    ["GET", "/", handlers.root],
    ["HEAD", "/api/version", handlers.version],
    ["GET", "/api/version", handlers.version],
    ["POST", "/api/pull", handlers.pull],
    ["POST", "/api/push", handlers.push],
    ["HEAD", "/api/tags", handlers.tags],
    ["GET", "/api/tags", handlers.tags],
    ["POST", "/api/show", handlers.show],
    ["DELETE", "/api/delete", handlers.delete],
    ["POST", "/api/create", handlers.create],
    ["POST", "/api/blobs/:digest", handlers.createBlob],
    ["HEAD", "/api/blobs/:digest", handlers.headBlob],
    ["POST", "/api/copy", handlers.copy],
    ["GET", "/api/ps", handlers.ps],
    ["POST", "/api/generate", handlers.generate],
    ["POST", "/api/chat", handlers.chat],
    ["POST", "/api/embed", handlers.embed],
    ["POST", "/api/embeddings", handlers.embeddings],
    ["POST", "/v1/chat/completions", handlers.v1Chat],
    ["POST", "/v1/completions", handlers.v1Completions],
    ["POST", "/v1/embeddings", handlers.v1Embeddings],
    ["GET", "/v1/models", handlers.v1Models],
    ["GET", "/v1/models/:model", handlers.v1Model],
    ["POST", "/v1/responses", handlers.v1Responses],
    ["POST", "/v1/audio/transcriptions", handlers.v1Transcriptions],
    ["POST", "/v1/messages", handlers.v1Messages]
  ].map(([method, pattern, handler]) => [String(method), String(pattern), /** @type {Handler} */ (handler)])

  /** @returns {Record<string, string> | undefined} */
  function matchPath(/** @type {string} */ pattern, /** @type {string} */ path) {
    const want = pattern.split("/")
    const got = path.split("/")
    if (want.length !== got.length) return undefined
    /** @type {Record<string, string>} */
    const params = {}
    for (let i = 0; i < want.length; i++) {
      const w = want[i] ?? ""
      const g = got[i] ?? ""
      if (w.startsWith(":")) {
        if (g === "") return undefined
        params[w.slice(1)] = g
      } else if (w !== g) return undefined
    }
    return params
  }

  /**
   * The path Go's net/http hands gin (`URL.Path`): an absolute-form target's path, percent-escapes
   * decoded (`%2F` too: gin's UseRawPath is off); undefined for a target Go refuses with 400.
   */
  function goPath(/** @type {string} */ target) {
    let t = target
    const absolute = /^[a-z][a-z0-9+.-]*:\/\/[^/?]*/i.exec(t)
    if (absolute) t = t.slice(absolute[0].length)
    const q = t.indexOf("?")
    const raw = q < 0 ? t : t.slice(0, q)
    if (absolute && raw === "") return "/"
    if (!raw.startsWith("/")) return undefined
    /** @type {number[]} */
    const bytes = []
    for (let i = 0; i < raw.length; i++) {
      if (raw[i] !== "%") {
        bytes.push(raw.charCodeAt(i) & 0xff)
        continue
      }
      const pair = raw.slice(i + 1, i + 3)
      if (!/^[0-9a-fA-F]{2}$/.test(pair)) return undefined
      bytes.push(parseInt(pair, 16))
      i += 2
    }
    return Buffer.from(bytes).toString("utf8")
  }

  /** gin's router: a handler, a trailing-slash redirect, 405 or 404. */
  function route(/** @type {string} */ method, /** @type {string} */ path) {
    for (const [m, pattern, handler] of routes) {
      const params = m === method ? matchPath(pattern, path) : undefined
      if (params) return { handler, params }
    }
    if (path.length > 1 && path.endsWith("/") && routes.some(([m, p]) => m === method && matchPath(p, path.slice(0, -1)))) {
      return { redirect: path.slice(0, -1) }
    }
    if (routes.some(([, pattern]) => matchPath(pattern, path))) return { status: 405 }
    return { status: 404 }
  }

  const corsAllowHeaders = CORS_ALLOW_HEADERS.map((h) => h.toLowerCase().replace(/(^|-)([a-z])/g, (_, dash, c) => dash + c.toUpperCase()))
    .join(",")

  /** gin-contrib/cors, then allowedHostsMiddleware: true when the request may go on. */
  async function middleware(/** @type {Ctx} */ ctx, /** @type {boolean} */ checkHost) {
    const { req, out } = ctx
    const origin = req.headers.origin
    const host = req.headers.host ?? ""
    if (origin && origin !== `http://${host}` && origin !== `https://${host}`) {
      const patterns = allowedOrigins(opts.origins)
      if (!originAllowed(origin, patterns)) {
        await out.send(403)
        return false
      }
      const allowOrigin = patterns.includes("*") ? "*" : origin
      if (req.method === "OPTIONS") {
        out.header("Access-Control-Allow-Methods", "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS")
        out.header("Access-Control-Allow-Headers", corsAllowHeaders)
        out.header("Access-Control-Max-Age", "43200")
        out.header("Vary", ["Origin", "Access-Control-Request-Method", "Access-Control-Request-Headers"])
        out.header("Access-Control-Allow-Origin", allowOrigin)
        await out.send(204)
        return false
      }
      out.header("Vary", "Origin")
      out.header("Access-Control-Allow-Origin", allowOrigin)
    }
    if (checkHost) {
      const verdict = checkHostHeader(req.headers.host, req.method ?? "GET")
      if (verdict !== "next") {
        await out.send(verdict === "no-content" ? 204 : 403)
        return false
      }
    }
    return true
  }

  let boundAddress = ""

  /** @param {http.IncomingMessage} req @param {http.ServerResponse} res */
  async function handle(req, res) {
    const started = process.hrtime.bigint()
    /** @type {Record<string, string>} */
    const headers = {}
    for (let i = 0; i < req.rawHeaders.length; i += 2) {
      const name = String(req.rawHeaders[i]).toLowerCase()
      const value = String(req.rawHeaders[i + 1])
      headers[name] = name in headers ? `${headers[name]}, ${value}` : value
    }
    /** @type {RecordedRequest} */
    const rec = {
      id: nextId++,
      method: req.method ?? "GET",
      path: req.url ?? "/",
      headers,
      rawHeaders: [...req.rawHeaders],
      body: Buffer.alloc(0),
      aborted: false,
      completed: false,
      status: undefined,
      remoteAddress: req.socket.remoteAddress ?? "",
      decompressed: undefined,
      decoded: undefined,
      webSearches: 0,
      cloud: undefined
    }
    const ctx = new Ctx(req, res, rec, { ...opts })
    let recorded = false
    const record = () => {
      if (recorded) return
      recorded = true
      if (opts.recordRequests) requests.push(rec)
      opts.onRequest?.(rec)
      events.emit("request", rec)
    }
    res.on("finish", () => {
      rec.completed = true
      rec.status = res.statusCode
    })
    res.on("close", () => {
      ctx.closed = true
      for (const fn of [...ctx.onClose]) fn()
      if (!res.writableFinished && !ctx.serverKilled) {
        rec.aborted = true
        record()
        events.emit("abort", rec)
      }
      opts.onResponse?.(rec, Number(process.hrtime.bigint() - started))
    })

    if (opts.ready) await opts.ready
    /** @type {Buffer[]} */
    const chunks = []
    try {
      for await (const chunk of req) chunks.push(/** @type {Buffer} */ (chunk))
    } catch {
      rec.body = Buffer.concat(chunks)
      return record()
    }
    rec.body = Buffer.concat(chunks)
    ctx.body = rec.body
    record()
    if (ctx.closed) return

    const path = goPath(rec.path)
    if (path === undefined) {
      res.setHeader("Connection", "close")
      return ctx.out.send(400, "400 Bad Request", "text/plain; charset=utf-8")
    }
    const found = route(rec.method, path)
    if ("redirect" in found) {
      const query = rec.path.includes("?") ? rec.path.slice(rec.path.indexOf("?")) : ""
      const location = `${found.redirect}${query}`
      res.setHeader("Location", location)
      const status = rec.method === "GET" ? 301 : 307
      if (rec.method === "GET") {
        return ctx.out.send(
          status,
          `<a href="${location.replace(/&/g, "&amp;").replace(/"/g, "&#34;")}">Moved Permanently</a>.\n\n`,
          "text/html; charset=utf-8"
        )
      }
      if (rec.method === "HEAD") res.setHeader("Content-Type", "text/html; charset=utf-8")
      return ctx.out.send(status)
    }
    const checkHost = opts.checkHost ?? isLoopbackAddress(boundAddress)
    if (!(await middleware(ctx, checkHost))) return
    if ("status" in found) {
      return ctx.out.send(found.status, found.status === 405 ? "405 method not allowed" : "404 page not found", "text/plain")
    }
    if (ZSTD_ROUTES.has(path) && isZstd(rec.rawHeaders)) {
      const unpacked = decodeZstd(rec.body)
      if ("error" in unpacked) return ginJSON(ctx, 400, { error: unpacked.error })
      rec.decompressed = ctx.body = unpacked.body
    }
    if (ZSTD_ROUTES.has(path)) ctx.passthrough = cloudPassthrough(path, ctx.body)
    await found.handler(ctx, found.params)
  }

  const server = http.createServer({ requestTimeout: 0 }, (req, res) => {
    handle(req, res).catch((err) => {
      log("ERROR", "handler failed", { error: err instanceof Error ? err.stack ?? err.message : String(err) }, "routes.go:0")
      if (!res.headersSent) {
        res.statusCode = 500
        res.setHeader("Content-Type", JSON_UTF8)
        res.end(goJSON({ error: String(err instanceof Error ? err.message : err) }))
      } else res.destroy()
    })
  })

  // Go's http.Server has no idle timeout; Node's default would also add `Keep-Alive: timeout=5`.
  server.keepAliveTimeout = 0
  await listen(server, opts.host, opts.port)
  const address = /** @type {net.AddressInfo} */ (server.address())
  boundAddress = address.address
  const wildcard = address.address === "::" || address.address === "0.0.0.0"
  const connectHost = wildcard ? "127.0.0.1" : address.address
  const url = `http://${joinHostPort(connectHost, address.port)}`
  let closing = /** @type {Promise<void> | undefined} */ (undefined)

  /**
   * @param {"request" | "abort"} event
   * @param {(r: RecordedRequest) => boolean} predicate
   * @param {number} timeoutMs
   * @returns {Promise<RecordedRequest>}
   */
  function waitForEvent(event, predicate, timeoutMs) {
    const existing = requests.find((r) => (event === "abort" ? r.aborted : true) && predicate(r))
    if (existing) return Promise.resolve(existing)
    return new Promise((resolve, reject) => {
      const listener = (/** @type {RecordedRequest} */ r) => {
        if (!predicate(r)) return
        cleanup()
        resolve(r)
      }
      const timer = setTimeout(() => {
        cleanup()
        const seen = requests.map((r) => `${r.method} ${r.path}${r.aborted ? " (aborted)" : ""}`).join(", ") || "none"
        reject(new Error(`fake-ollama: no ${event === "abort" ? "aborted " : ""}request matched within ${timeoutMs} ms; seen: ${seen}`))
      }, timeoutMs)
      const cleanup = () => {
        clearTimeout(timer)
        events.off(event, listener)
      }
      events.on(event, listener)
    })
  }

  return {
    url,
    port: address.port,
    host: address.address,
    requests,
    options: /** @type {Readonly<Options>} */ (opts),
    set,
    waitFor: (/** @type {(r: RecordedRequest) => boolean} */ predicate = () => true, timeoutMs = 5000) =>
      waitForEvent("request", predicate, timeoutMs),
    waitForAbort: (/** @type {(r: RecordedRequest) => boolean} */ predicate = () => true, timeoutMs = 5000) =>
      waitForEvent("abort", predicate, timeoutMs),
    /** Names of the models on disk, as /api/tags lists them. */
    models: () => listModels().map((m) => m.name),
    /** Names of the models loaded, as /api/ps lists them. */
    loaded: () => psModels().map((m) => m.name),
    /** Runner restarts per model (display name) because a request changed its runner options. */
    reloads,
    /** Requests served by a cloud model, in order. */
    cloudRequests,
    /** Searches Ollama ran on the operator's account, over all requests. */
    get webSearches() {
      return webSearches
    },
    /** A loaded model's runner: its keep-alive, expiry, memory and options; undefined when not loaded. */
    runner(/** @type {string} */ name) {
      psModels()
      const key = parseModelName(name)?.key
      const entry = key ? loaded.get(key) : undefined
      if (!entry) return undefined
      const { numCtxAuto: _a, numBatchAuto: _b, ...options } = entry.runner
      return {
        name: entry.model.name,
        keepAliveNs: entry.keepAliveNs,
        forever: entry.keepAliveNs >= FOREVER_NS,
        expiresNs: entry.expiresNs,
        sizeVram: entry.sizeVram,
        contextLength: entry.contextLength,
        options
      }
    },
    /** The runner's slots now: the limit, running, waiting, busy time (slots.mjs). */
    slots: () => slots.stats(),
    /** Starts the slots' counts again from now. */
    resetSlots: () => slots.reset(),
    /** The figures this server will report for a request body, with its current knobs. */
    expected: (/** @type {string} */ path, /** @type {unknown} */ body) =>
      expectedFigures(path, body, { tokens: opts.tokens, loadDelayMs: opts.loadDelayMs }),
    close() {
      closing ??= new Promise((resolve) => {
        server.close(() => resolve())
        server.closeAllConnections()
      })
      return closing
    }
  }
}

/**
 * The routes behind server/cloud_proxy.go `cloudPassthroughMiddleware`, which undoes a zstd
 * Content-Encoding (zstd.mjs); everywhere else Ollama takes the body's bytes as they are.
 */
const ZSTD_ROUTES = new Set(["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages"])

/**
 * server/cloud_proxy.go `cloudPassthroughMiddleware` on the /v1 routes: before any struct is
 * bound, `extractModelField` reads the body into a `map[string]json.RawMessage` and takes
 * `payload["model"]`: the EXACT key (the last one), unlike the struct decoding after it. A cloud
 * model there sends the raw body to ollama.com, whatever `Model` or `MODEL` say later, unless
 * `hasWebSearchTool` keeps it on the local path. Undefined: the middleware lets it through.
 * @param {string} path
 * @param {Buffer} body
 */
function cloudPassthrough(path, body) {
  /** @type {unknown} */
  let payload
  try {
    payload = JSON.parse(body.toString("utf8"))
  } catch {
    return undefined
  }
  if (!payload || typeof payload !== "object" || Array.isArray(payload)) return undefined
  const raw = /** @type {Record<string, unknown>} */ (payload).model
  const model = typeof raw === "string" ? raw.trim() : ""
  const ref = model === "" ? undefined : parseModelRef(model)
  if (!ref || !("base" in ref) || ref.source !== "cloud" || !parseModelName(ref.base)) return undefined
  // hasWebSearchTool decodes `tools` into a struct: folded keys, as everywhere else.
  const tools = bindShape(body, WEB_SEARCH_TOOLS)
  const types = "value" in tools ? /** @type {Array<{ type?: string }>} */ (tools.value.tools ?? []).map((t) => t.type ?? "") : []
  if (path === "/v1/responses" && types.includes("web_search")) return undefined
  if (path === "/v1/messages" && types.some((t) => t.trim().startsWith("web_search"))) return undefined
  return { model, base: ref.base }
}

const WEB_SEARCH_TOOLS = shapes.T.struct("struct", { tools: shapes.T.slice(shapes.T.struct("struct", { type: shapes.T.string })) })

/** server/create.go `remoteURL`: a scheme, a host and a port filled in; bare `ollama.com` is https. */
function remoteURL(/** @type {string} */ raw) {
  if (raw.startsWith("/")) return `http://localhost:11434${raw.replace(/\/+$/, "")}`
  let s = raw.includes("://") ? raw : `http://${raw}`
  if (s === "http://ollama.com") s = CLOUD_URL
  try {
    const u = new URL(s)
    const port = u.port || (/^[a-z]+:\/\/[^/]*:(\d+)/i.exec(s)?.[1] ?? "11434")
    const path = u.pathname === "/" ? "" : u.pathname
    return `${u.protocol}//${u.hostname}:${port}${path}`
  } catch {
    return s
  }
}

/** The name Ollama prints in capability errors: `registry.ollama.ai/library/x:latest`. */
function fullName(/** @type {string} */ name) {
  const p = parseModelName(name)
  return p ? `${p.host}/${p.namespace}/${p.model}:${p.tag}` : name
}

/**
 * Binds like Go's net.Listen: a wildcard host listens on every interface (IPv6 and IPv4 when the
 * system allows it), a name is resolved and the first address taken, IPv4 first.
 * @param {http.Server} server
 * @param {string} host
 * @param {number} port
 */
async function listen(server, host, port) {
  const bind = (/** @type {string | undefined} */ address) =>
    new Promise((resolve, reject) => {
      const onError = (/** @type {Error} */ err) => {
        server.off("listening", onListening)
        reject(err)
      }
      const onListening = () => {
        server.off("error", onError)
        resolve(undefined)
      }
      server.once("error", onError)
      server.once("listening", onListening)
      server.listen({ port, host: address, exclusive: true })
    })
  if (host === "" || host === "0.0.0.0" || host === "::") {
    try {
      return await bind("::")
    } catch (err) {
      if (/** @type {NodeJS.ErrnoException} */ (err).code === "EADDRINUSE") throw err
      return bind("0.0.0.0")
    }
  }
  if (net.isIP(host)) return bind(host)
  const addresses = await dns.lookup(host, { all: true })
  const chosen = addresses.find((a) => a.family === 4) ?? addresses[0]
  return bind(chosen?.address ?? host)
}
