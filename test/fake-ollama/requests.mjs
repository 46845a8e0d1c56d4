// @ts-check
/**
 * The request side: decoding bodies with the semantics and messages of Go's encoding/json as gin
 * binds them, converting /v1 and /v1/messages bodies to native ones as Ollama's middlewares do,
 * and the deterministic figures a generation reports.
 */
import { decodeStruct, parseNodes } from "./gojson.mjs"
import { durations, generatedText, promptTokens } from "./models.mjs"
import { parseGoDuration } from "./wire.mjs"

export const DEFAULT_TOKENS = 5
/** keep_alive "forever": math.MaxInt64 nanoseconds. */
export const FOREVER_NS = 9223372036854775807n

/**
 * @typedef {{ role: string, content: string, images?: unknown[] }} ChatMessage
 * @typedef {{ model?: unknown, prompt?: unknown, system?: unknown, messages?: unknown, stream?: unknown, keep_alive?: unknown, options?: unknown, tools?: unknown, think?: unknown, input?: unknown, dimensions?: unknown, [k: string]: unknown }} NativeRequest
 */

/** The prompt text that prompt_eval_count is computed from, for a native request. */
function promptText(/** @type {"generate" | "chat"} */ kind, /** @type {NativeRequest} */ req) {
  if (kind === "generate") return [req.system, req.prompt].filter((s) => typeof s === "string" && s !== "").join("\n")
  const messages = Array.isArray(req.messages) ? req.messages : []
  return messages.map((m) => (m && typeof m.content === "string" ? m.content : "")).join("\n")
}

function numPredict(/** @type {NativeRequest} */ req) {
  const options = /** @type {Record<string, unknown> | undefined} */ (req.options)
  const n = options?.num_predict
  return typeof n === "number" && n > 0 ? Math.floor(n) : undefined
}

/** What a generation answers: counts, reason, durations. */
export function planGeneration(
  /** @type {"generate" | "chat"} */ kind,
  /** @type {NativeRequest} */ req,
  /** @type {{ tokens: number, loadDelayMs: number }} */ o
) {
  const promptEvalCount = promptTokens(promptText(kind, req))
  const limit = numPredict(req)
  const evalCount = limit !== undefined && limit < o.tokens ? limit : Math.max(0, Math.floor(o.tokens))
  const doneReason = evalCount < o.tokens ? "length" : "stop"
  return { promptEvalCount, evalCount, doneReason, ...durations({ promptEvalCount, evalCount, loadDelayMs: o.loadDelayMs }) }
}

/**
 * The figures an endpoint will report for a request body, with the given knobs (defaults as
 * the fake's). Works for native, /v1 and /v1/messages paths.
 * @param {string} path
 * @param {unknown} body
 * @param {{ tokens?: number, loadDelayMs?: number }} [options]
 */
export function expectedFigures(path, body, options = {}) {
  const o = { tokens: options.tokens ?? DEFAULT_TOKENS, loadDelayMs: options.loadDelayMs ?? 0 }
  const b = /** @type {Record<string, unknown>} */ (body ?? {})
  const route = path.split("?")[0]
  if (route === "/api/embed" || route === "/v1/embeddings" || route === "/api/embeddings") {
    /** @type {unknown[]} */
    const inputs = route === "/api/embeddings"
      ? [b.prompt]
      : route === "/v1/embeddings" && b.input === ""
      ? [""]
      : embedInputs(b.input) ?? []
    const promptEvalCount = inputs.reduce((/** @type {number} */ n, s) => n + promptTokens(String(s)), 0)
    return {
      promptEvalCount,
      evalCount: 0,
      doneReason: "",
      content: "",
      ...durations({ promptEvalCount, evalCount: 0, loadDelayMs: o.loadDelayMs })
    }
  }
  /** @type {[ "generate" | "chat", NativeRequest ]} */
  const [kind, req] = route === "/api/generate"
    ? ["generate", b]
    : route === "/v1/completions"
    ? ["generate", v1CompletionToNative(b)]
    : route === "/v1/chat/completions"
    ? ["chat", v1ChatToNative(b)]
    : route === "/v1/messages"
    ? ["chat", anthropicToNative(b)]
    : route === "/v1/responses"
    ? ["chat", responsesToNative(b)]
    : ["chat", b]
  const plan = planGeneration(kind, req, o)
  return {
    ...plan,
    content: generatedText(plan.evalCount),
    usage: { prompt_tokens: plan.promptEvalCount, completion_tokens: plan.evalCount, total_tokens: plan.promptEvalCount + plan.evalCount },
    ...(route === "/v1/messages" ? { anthropicInputEstimate: anthropicEstimate(b) } : {})
  }
}

// ---------------------------------------------------------------------------------------------
// Request bodies: Go's json.Decoder semantics and messages

/**
 * Decode a request body the way gin's ShouldBindJSON does: the first JSON value, trailing bytes
 * ignored; empty body = EOF.
 * @param {Buffer} body
 * @param {string} goType e.g. `api.ChatRequest`, for type error messages
 * @returns {{ value: Record<string, unknown>, text: string } | { eof: true } | { error: string }}
 */
export function decodeBody(body, goType) {
  const text = body.toString("utf8")
  if (text.trim() === "") return { eof: true }
  /** @type {unknown} */
  let value
  try {
    value = JSON.parse(text)
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e)
    const after = /non-whitespace character after JSON at position (\d+)/.exec(message)
    if (after) return decodeBody(Buffer.from(text.slice(0, Number(after[1]))), goType)
    return { error: goSyntaxError(text, message) }
  }
  if (value === null) return { value: {}, text }
  if (typeof value !== "object" || Array.isArray(value)) {
    return { error: `json: cannot unmarshal ${goKind(value)} into Go value of type ${goType}` }
  }
  return { value: /** @type {Record<string, unknown>} */ (value), text }
}

/**
 * A body bound into a Go struct (shapes.mjs) as gin binds it: Go's syntax errors first
 * (decodeBody), then gojson.mjs's decoding: case-folded keys, the last one winning, merges.
 * @param {Buffer} body
 * @param {import("./gojson.mjs").Shape & { k: "struct" }} shape
 * @returns {{ value: Record<string, unknown> } | { eof: true } | { error: string }}
 */
export function bindShape(body, shape) {
  const decoded = decodeBody(body, shape.name)
  if (!("value" in decoded)) return decoded
  return decodeStruct(shape, parseNodes(decoded.text))
}

function goKind(/** @type {unknown} */ v) {
  if (Array.isArray(v)) return "array"
  if (v === null) return "null"
  return typeof v === "boolean" ? "bool" : typeof v
}

function goSyntaxError(/** @type {string} */ text, /** @type {string} */ message) {
  const pos = Number(/position (\d+)/.exec(message)?.[1] ?? NaN)
  if (/end of JSON input/.test(message) || (Number.isFinite(pos) && text.slice(pos).trim() === "")) return "unexpected EOF"
  const at = Number.isFinite(pos) ? pos : text.search(/\S/)
  const ch = text[at] ?? ""
  const shown = ch === "'" ? "\\''" : ch === "\n" ? "\\n" : ch
  const where = /after property value/.test(message)
    ? "after object key:value pair"
    : /after property name/.test(message)
    ? "after object key"
    : /property name or '\}'|Expected double-quoted property name/.test(message)
    ? "looking for beginning of object key string"
    : /after array element/.test(message)
    ? "after array element"
    : /control character/.test(message)
    ? "in string literal"
    : "looking for beginning of value"
  return `invalid character '${shown}' ${where}`
}

/**
 * api.Duration: number = seconds, string = Go duration, negative = forever.
 * @returns {{ ns: bigint | undefined } | { error: string }}
 */
export function keepAliveOf(/** @type {unknown} */ value) {
  if (value === undefined || value === null) return { ns: undefined }
  if (typeof value === "number") return { ns: value < 0 ? FOREVER_NS : BigInt(Math.trunc(value * 1e9)) }
  if (typeof value === "string") {
    try {
      const ns = parseGoDuration(value)
      return { ns: ns < 0 ? FOREVER_NS : BigInt(ns) }
    } catch (e) {
      return { error: e instanceof Error ? e.message : String(e) }
    }
  }
  const goType = typeof value === "boolean" ? "bool" : Array.isArray(value) ? "[]interface {}" : "map[string]interface {}"
  return { error: `Unsupported type: '${goType}'` }
}

/** Inputs of /api/embed: undefined when the type is wrong. */
export function embedInputs(/** @type {unknown} */ input) {
  if (input === undefined || input === null) return []
  if (typeof input === "string") return input === "" ? [] : [input]
  if (Array.isArray(input) && input.every((s) => typeof s === "string")) return /** @type {string[]} */ (input)
  return undefined
}

// ---------------------------------------------------------------------------------------------
// Request conversions of the compatibility layers (openai/openai.go, anthropic/anthropic.go)

/** @param {Record<string, unknown>} r */
export function v1ChatToNative(r) {
  /** @type {ChatMessage[]} */
  const messages = []
  for (const m of Array.isArray(r.messages) ? r.messages : []) {
    const role = typeof m?.role === "string" ? m.role : ""
    if (typeof m?.content === "string") messages.push({ role, content: m.content })
    else if (Array.isArray(m?.content)) {
      for (const part of m.content) {
        if (part?.type === "text") messages.push({ role, content: String(part.text ?? "") })
        else if (part?.type === "image_url") messages.push({ role, content: "", images: [part.image_url] })
      }
    } else messages.push({ role, content: "" })
  }
  const options = /** @type {Record<string, unknown>} */ ({})
  if (typeof r.max_tokens === "number") options.num_predict = r.max_tokens
  options.temperature = typeof r.temperature === "number" ? r.temperature : 1
  options.top_p = typeof r.top_p === "number" ? r.top_p : 1
  return { model: r.model, messages, stream: r.stream === true, options, tools: r.tools, _debug_render_only: r._debug_render_only }
}

/** @param {Record<string, unknown>} r */
export function v1CompletionToNative(r) {
  const options = /** @type {Record<string, unknown>} */ ({})
  if (typeof r.max_tokens === "number") options.num_predict = r.max_tokens
  return {
    model: r.model,
    prompt: typeof r.prompt === "string" ? r.prompt : "",
    stream: r.stream === true,
    options,
    _debug_render_only: r._debug_render_only
  }
}

/** Text of Anthropic content: a string, or the text blocks of a block list. */
function anthropicText(/** @type {unknown} */ content) {
  if (typeof content === "string") return content
  if (!Array.isArray(content)) return ""
  return content.map((b) => (b?.type === "text" && typeof b.text === "string" ? b.text : "")).join("")
}

/** @param {Record<string, unknown>} r */
export function anthropicToNative(r) {
  /** @type {ChatMessage[]} */
  const messages = []
  const system = anthropicText(r.system)
  if (system !== "") messages.push({ role: "system", content: system })
  for (const m of Array.isArray(r.messages) ? r.messages : []) {
    const text = anthropicText(m?.content)
    if (text !== "") messages.push({ role: String(m?.role ?? "").toLowerCase(), content: text })
  }
  return { model: r.model, messages, stream: r.stream === true, options: { num_predict: r.max_tokens } }
}

/** anthropic.EstimateInputTokens: characters / 4, at least 1. */
export function anthropicEstimate(/** @type {Record<string, unknown>} */ r) {
  let total = anthropicText(r.system).length
  const messages = Array.isArray(r.messages) ? r.messages : []
  for (const m of messages) total += String(m?.role ?? "").length + anthropicText(m?.content).length
  const tokens = Math.floor(total / 4)
  return tokens === 0 && (messages.length > 0 || r.system !== undefined) ? 1 : tokens
}

/** @param {Record<string, unknown>} r */
export function responsesToNative(r) {
  /** @type {ChatMessage[]} */
  const messages = []
  if (typeof r.instructions === "string" && r.instructions !== "") messages.push({ role: "system", content: r.instructions })
  if (typeof r.input === "string") messages.push({ role: "user", content: r.input })
  else if (Array.isArray(r.input)) {
    for (const item of r.input) {
      if (!item || (item.type !== undefined && item.type !== "message")) continue
      const content = typeof item.content === "string"
        ? item.content
        : Array.isArray(item.content)
        ? item.content.map((/** @type {any} */ p) => (typeof p?.text === "string" ? p.text : "")).join("")
        : ""
      messages.push({ role: String(item.role ?? "user"), content })
    }
  }
  const options = /** @type {Record<string, unknown>} */ ({})
  if (typeof r.max_output_tokens === "number") options.num_predict = r.max_output_tokens
  return { model: r.model, messages, stream: r.stream === true, options }
}
