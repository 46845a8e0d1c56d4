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
  promptTokens,
  resolveModel,
  tokenText,
  VERSION
} from "./models.mjs"
import {
  anthropicEstimate,
  anthropicToNative,
  decodeBody,
  DEFAULT_TOKENS,
  embedInputs,
  expectedFigures,
  fieldTypeError,
  keepAliveOf,
  planGeneration,
  responsesToNative,
  v1ChatToNative,
  v1CompletionToNative
} from "./requests.mjs"
import {
  anthropicError,
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
import { makeSlots } from "./slots.mjs"
import { float32Array, goJSON, nowNs, RawJSON, rfc3339Nano } from "./wire.mjs"

export { DEFAULT_VRAM } from "./gpu.mjs"
export { checkHostHeader, parseOllamaHost } from "./host.mjs"
export { embeddingFor, generatedText, parseModelName, promptTokens, TOKEN_TEXTS, tokenText, VERSION } from "./models.mjs"
export { expectedFigures } from "./requests.mjs"

export const BUSY_ERROR = "server busy, please try again.  maximum pending requests exceeded"
export const MIDSTREAM_ERROR = "an error was encountered while running the model: unexpected EOF"
export const PULL_MANIFEST_ERROR = "pull model manifest: file does not exist"

/**
 * @typedef {import("./models.mjs").Model} Model
 * @typedef {import("./models.mjs").ModelSpec} ModelSpec
 * @typedef {import("./requests.mjs").NativeRequest} NativeRequest
 * @typedef {import("./respond.mjs").Obj} Obj
 * @typedef {import("./respond.mjs").Outcome} Outcome
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
  /** @type {Map<string, { model: Model, expiresNs: bigint, contextLength: number, sizeVram: number }>} */
  const loaded = new Map()
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

  /** The scheduler's part of a request: busy, the load, the keep-alive. */
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
    const fresh = !loaded.has(model.key)
    if (!(await ctx.sleep(ctx.o.loadDelayMs))) return { closed: true }
    if (fresh) {
      log("INFO", "loading model", { model: model.name, "num_ctx": model.contextLength }, "server.go:404")
      log("INFO", `llama runner started in ${(ctx.o.loadDelayMs / 1000).toFixed(2)} seconds`, {}, "server.go:1288")
    }
    const numCtx = typeof reqOptions?.num_ctx === "number" ? reqOptions.num_ctx : Math.min(model.contextLength, ctx.o.defaultNumCtx)
    const duration = keepAlive ?? keepAliveDefault()
    loaded.set(model.key, {
      model,
      expiresNs: nowNs() + duration,
      contextLength: numCtx,
      sizeVram: loaded.get(model.key)?.sizeVram ?? vramFor(model)
    })
    return {}
  }

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
    else entry.expiresNs = nowNs() + duration
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
    if (!parseModelName(name)) {
      return kind === "generate" ? { json: [404, { error: `model '${name}' not found` }] } : { json: [400, { error: "model is required" }] }
    }
    const model = findModel(name)
    if (!model) return { json: [404, { error: `model '${name}' not found` }] }
    const empty = kind === "generate"
      ? typeof req.prompt !== "string" || req.prompt === ""
      : !Array.isArray(req.messages) || req.messages.length === 0
    const createdAt = () => rfc3339Nano(nowNs())
    /** @param {string} reason */
    const loadAnswer = (reason) =>
      kind === "generate"
        ? { model: name, created_at: createdAt(), response: "", done: true, done_reason: reason }
        : { model: name, created_at: createdAt(), message: { role: "assistant", content: "" }, done: true, done_reason: reason }

    if (empty && keep.ns === 0n) {
      loaded.delete(model.key)
      log("DEBUG", "unloading model", { model: model.name }, "sched.go:297")
      return { json: [200, loadAnswer("unload")] }
    }
    const think = req.think === true || (typeof req.think === "string" && req.think !== "")
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
    log("DEBUG", `${kind} request`, { model: name, stream: req.stream !== false }, "routes.go:388")

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
    return { items: tokens(ctx, plan, chunk, final, () => release(model, keep.ns)), stream: req.stream !== false }
  }

  /** The /api/embed handler's answer, with the vectors still as numbers. */
  async function embed(/** @type {Ctx} */ ctx, /** @type {NativeRequest} */ req) {
    const keep = keepAliveOf(req.keep_alive)
    if ("error" in keep) return { json: /** @type {[number, Obj]} */ ([400, { error: keep.error }]) }
    const name = typeof req.model === "string" ? req.model : ""
    const inputs = embedInputs(req.input)
    if (inputs === undefined) return { json: /** @type {[number, Obj]} */ ([400, { error: "invalid input type" }]) }
    const model = findModel(name)
    if (!model) return { json: /** @type {[number, Obj]} */ ([404, { error: `model '${name}' not found` }]) }
    const scheduled = await schedule(ctx, model, keep.ns, /** @type {Obj | undefined} */ (req.options))
    if (scheduled.closed) return undefined
    if (scheduled.error) return { json: scheduled.error }
    release(model, keep.ns)
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
      details: details(m),
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

  /** gin's ShouldBindJSON for native endpoints: `missing request body` on EOF. */
  const bind = async (
    /** @type {Ctx} */ ctx,
    /** @type {string} */ goType,
    /** @type {Record<string, "string" | "bool" | "array" | "object" | "number">} */ fields = {}
  ) => {
    const decoded = decodeBody(ctx.rec.body, `api.${goType}`)
    if ("eof" in decoded) return void (await ginJSON(ctx, 400, { error: "missing request body" }))
    if ("error" in decoded) return void (await ginJSON(ctx, 400, { error: decoded.error }))
    const typeError = fieldTypeError(decoded.value, goType, fields)
    if (typeError) return void (await ginJSON(ctx, 400, { error: typeError }))
    return decoded.value
  }

  /** gin's ShouldBindJSON inside the /v1 and /v1/messages middlewares: Go's own messages. */
  const bindCompat = async (
    /** @type {Ctx} */ ctx,
    /** @type {string} */ goType,
    /** @type {(status: number, message: string) => Promise<void>} */ abort,
    /** @type {Record<string, "string" | "bool" | "array" | "object" | "number">} */ fields = {}
  ) => {
    const decoded = decodeBody(ctx.rec.body, goType)
    if ("eof" in decoded) return void (await abort(400, "EOF"))
    if ("error" in decoded) return void (await abort(400, decoded.error))
    const typeError = fieldTypeError(decoded.value, goType.split(".").pop() ?? goType, fields)
    if (typeError) return void (await abort(400, typeError))
    return decoded.value
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
      const body = await bind(ctx, "ShowRequest", { model: "string", name: "string" })
      if (!body) return
      const name = String(body.model || body.name || "")
      if (name === "") return ginJSON(ctx, 400, { error: "model is required" })
      const model = findModel(name)
      if (!model) return ginJSON(ctx, 404, { error: `model '${name}' not found` })
      await ginJSON(ctx, 200, showModel(model))
    },

    async pull(ctx) {
      const body = await bind(ctx, "PullRequest", { model: "string", name: "string", stream: "bool" })
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
      const body = await bind(ctx, "PushRequest", { model: "string", name: "string", stream: "bool" })
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
      const body = await bind(ctx, "CreateRequest", { model: "string", name: "string", from: "string", stream: "bool", files: "object" })
      if (!body) return
      const target = parseModelName(String(body.model || body.name || ""))
      if (!target) return ginJSON(ctx, 400, { error: "invalid model name" })
      const files = body.files && typeof body.files === "object" ? Object.values(/** @type {Obj} */ (body.files)).map(String) : []
      if (!body.from && files.length === 0) return ginJSON(ctx, 400, { error: "neither 'from' or 'files' was specified" })
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
        const model = resolveModel(base ? { ...base, name: target.display } : { name: target.display }, nowNs())
        disk.set(model.key, model)
        yield { status: "success" }
      })()
      if (body.stream === false) return waitForStream(ctx, items)
      await streamResponse(ctx, items)
    },

    async copy(ctx) {
      const body = await bind(ctx, "CopyRequest", { source: "string", destination: "string" })
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
      const body = await bind(ctx, "DeleteRequest", { model: "string", name: "string" })
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
      const body = await bind(ctx, "GenerateRequest", {
        model: "string",
        prompt: "string",
        system: "string",
        stream: "bool",
        options: "object"
      })
      if (!body) return
      const outcome = await inference(ctx, "generate", body)
      if (outcome) await renderNative(ctx, outcome, "generate")
    },

    async chat(ctx) {
      const body = await bind(ctx, "ChatRequest", { model: "string", messages: "array", stream: "bool", options: "object", tools: "array" })
      if (!body) return
      const outcome = await inference(ctx, "chat", body)
      if (outcome) await renderNative(ctx, outcome, "chat")
    },

    async embed(ctx) {
      const body = await bind(ctx, "EmbedRequest", { model: "string", options: "object" })
      if (!body) return
      const outcome = await embed(ctx, body)
      if (outcome) await ginJSON(ctx, ...outcome.json)
    },

    async embeddings(ctx) {
      const body = await bind(ctx, "EmbeddingRequest", { model: "string", prompt: "string", options: "object" })
      if (!body) return
      const name = String(body.model ?? "")
      if (!parseModelName(name)) return ginJSON(ctx, 400, { error: "model is required" })
      const model = findModel(name)
      if (!model) return ginJSON(ctx, 404, { error: `model ${JSON.stringify(name)} not found, try pulling it first` })
      const keep = keepAliveOf(body.keep_alive)
      if ("error" in keep) return ginJSON(ctx, 400, { error: keep.error })
      const scheduled = await schedule(ctx, model, keep.ns, /** @type {Obj | undefined} */ (body.options))
      if (scheduled.closed) return
      if (scheduled.error) return ginJSON(ctx, ...scheduled.error)
      release(model, keep.ns)
      const prompt = typeof body.prompt === "string" ? body.prompt : ""
      const vector = prompt === "" ? [] : Array.from(embeddingFor(prompt, model.embeddingLength, undefined))
      await ginJSON(ctx, 200, { embedding: vector })
    },

    async v1Chat(ctx) {
      const abort = (/** @type {number} */ s, /** @type {string} */ m) => openaiAbort(ctx, s, m)
      const body = await bindCompat(ctx, "openai.ChatCompletionRequest", abort, {
        model: "string",
        messages: "array",
        stream: "bool",
        stream_options: "object"
      })
      if (!body) return
      if (!Array.isArray(body.messages) || body.messages.length === 0) return abort(400, "[] is too short - 'messages'")
      const req = v1ChatToNative(body)
      const outcome = await inference(ctx, "chat", req)
      const includeUsage = /** @type {Obj | undefined} */ (body.stream_options)?.include_usage === true
      if (outcome) await renderOpenAI(ctx, outcome, { kind: "chat", stream: req.stream, includeUsage })
    },

    async v1Completions(ctx) {
      const abort = (/** @type {number} */ s, /** @type {string} */ m) => openaiAbort(ctx, s, m)
      const body = await bindCompat(ctx, "openai.CompletionRequest", abort, {
        model: "string",
        prompt: "string",
        stream: "bool",
        stream_options: "object"
      })
      if (!body) return
      const req = v1CompletionToNative(body)
      const outcome = await inference(ctx, "generate", req)
      const includeUsage = /** @type {Obj | undefined} */ (body.stream_options)?.include_usage === true
      if (outcome) await renderOpenAI(ctx, outcome, { kind: "completion", stream: req.stream, includeUsage })
    },

    async v1Embeddings(ctx) {
      const abort = (/** @type {number} */ s, /** @type {string} */ m) => openaiAbort(ctx, s, m)
      const body = await bindCompat(ctx, "openai.EmbedRequest", abort, { model: "string", encoding_format: "string" })
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
      const body = await bindCompat(ctx, "anthropic.MessagesRequest", abort, {
        model: "string",
        messages: "array",
        stream: "bool",
        max_tokens: "number"
      })
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
      if (outcome) await renderAnthropic(ctx, outcome, { stream, model: body.model, estimate: anthropicEstimate(body) })
    },

    async v1Responses(ctx) {
      const abort = (/** @type {number} */ s, /** @type {string} */ m) => openaiAbort(ctx, s, m)
      const body = await bindCompat(ctx, "openai.ResponsesRequest", abort, { model: "string", stream: "bool" })
      if (!body) return
      const req = responsesToNative(body)
      if (req.stream) {
        ctx.out.header("Content-Type", SSE)
        ctx.out.header("Cache-Control", "no-cache")
        ctx.out.header("Connection", "keep-alive")
      }
      const outcome = await inference(ctx, "chat", req)
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
      remoteAddress: req.socket.remoteAddress ?? ""
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
