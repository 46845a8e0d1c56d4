// @ts-check
/**
 * Writing answers as Ollama does: gin's JSON and NDJSON streams, and the OpenAI, Anthropic and
 * Responses layers that turn native answers into their own shapes (middleware/*.go). Bodies go
 * out whole or line by line, optionally cut into odd pieces (`splitWrites`).
 */
import { randomBytes, randomInt } from "node:crypto"
import { goJSON } from "./wire.mjs"

export const JSON_UTF8 = "application/json; charset=utf-8"
export const NDJSON = "application/x-ndjson"
export const SSE = "text/event-stream"

/**
 * The part of a request's state that writing needs.
 * @typedef {object} Exchange
 * @property {import("node:http").IncomingMessage} req
 * @property {import("node:http").ServerResponse} res
 * @property {boolean} closed the connection is gone
 * @property {boolean} splitWrites
 * @property {Out} out
 */

const tick = () => new Promise((resolve) => setImmediate(resolve))

/**
 * The response side of one request: headers go out with the first byte (as in Go), streamed
 * pieces are written one by one, and with `splitWrites` cut at odd offsets and partly merged.
 */
export class Out {
  /** @param {Exchange} ctx */
  constructor(ctx) {
    this.ctx = ctx
    this.res = ctx.res
    /** @type {Buffer | undefined} */
    this.held = undefined
    this.lines = 0
  }

  get started() {
    return this.res.headersSent
  }

  header(/** @type {string} */ name, /** @type {string | string[]} */ value) {
    if (!this.started) this.res.setHeader(name, value)
  }

  /** A whole body with its length: gin's c.JSON / c.String / c.Status. */
  async send(
    /** @type {number} */ status,
    /** @type {string | Buffer} */ body = "",
    /** @type {string | undefined} */ contentType = undefined
  ) {
    if (this.ctx.closed || this.started) return
    const buf = Buffer.from(body)
    this.res.statusCode = status
    if (contentType) this.res.setHeader("Content-Type", contentType)
    if (status !== 204 && status !== 304) this.res.setHeader("Content-Length", buf.length)
    if (this.ctx.splitWrites && buf.length > 1 && this.ctx.req.method !== "HEAD") {
      await this.pieces(buf)
      if (!this.ctx.closed) this.res.end()
      return
    }
    if (!this.ctx.closed) this.res.end(this.ctx.req.method === "HEAD" ? undefined : buf)
  }

  /** One streamed line or event, flushed on its own. */
  async write(/** @type {string} */ text) {
    if (this.ctx.closed) return
    const buf = Buffer.from(text)
    if (!this.ctx.splitWrites) return void (await this.raw(buf))
    this.lines++
    if (this.held === undefined && this.lines % 3 === 2) {
      this.held = buf
      return
    }
    const data = this.held ? Buffer.concat([this.held, buf]) : buf
    this.held = undefined
    await this.pieces(data)
  }

  async end() {
    if (this.ctx.closed) return
    if (this.held) await this.pieces(this.held)
    this.held = undefined
    if (!this.ctx.closed) this.res.end()
  }

  /** Writes what is held back, then waits until the socket has handed every byte to the kernel. */
  async flush() {
    if (this.held && !this.ctx.closed) await this.raw(this.held)
    this.held = undefined
    await tick()
    const socket = this.res.socket
    if (socket && !socket.destroyed && socket.writableLength > 0) {
      await new Promise((resolve) => {
        socket.once("drain", resolve)
        socket.once("close", resolve)
      })
    }
  }

  async pieces(/** @type {Buffer} */ buf) {
    const cuts = [1, Math.floor(buf.length * 0.37) | 1, Math.floor(buf.length * 0.71) | 1]
    let from = 0
    for (const cut of [...new Set(cuts)].sort((a, b) => a - b)) {
      if (cut <= from || cut >= buf.length) continue
      await this.raw(buf.subarray(from, cut))
      await tick()
      from = cut
    }
    await this.raw(buf.subarray(from))
  }

  async raw(/** @type {Buffer} */ buf) {
    if (this.ctx.closed || buf.length === 0) return
    if (!this.res.write(buf)) {
      await new Promise((resolve) => {
        this.res.once("drain", resolve)
        this.res.once("close", resolve)
      })
    }
  }
}

/** An error item of a progress or generation stream (gin.H{"error": ..., "status": ...}). */
export class StreamError {
  constructor(/** @type {string} */ error, /** @type {number} */ status = 500) {
    this.error = error
    this.status = status
  }
}

/**
 * @typedef {Record<string, unknown>} Obj
 * @typedef {{ json: [number, Obj] } | { items: AsyncGenerator<Obj | StreamError>, stream: boolean }} Outcome
 */

/** gin's c.JSON: `application/json; charset=utf-8` unless set before, no trailing newline. */
export function ginJSON(/** @type {Exchange} */ ctx, /** @type {number} */ status, /** @type {unknown} */ obj, contentType = JSON_UTF8) {
  return ctx.out.send(status, goJSON(obj), contentType)
}

/** server.streamResponse: NDJSON lines; an error before any byte becomes a plain JSON answer. */
export async function streamResponse(/** @type {Exchange} */ ctx, /** @type {AsyncGenerator<Obj | StreamError>} */ items) {
  ctx.out.header("Content-Type", NDJSON)
  for await (const item of items) {
    if (ctx.closed) return
    if (item instanceof StreamError) {
      if (!ctx.out.started) return ginJSON(ctx, item.status, { error: item.error }, "application/json")
      await ctx.out.write(`${goJSON({ error: item.error })}\n`)
      return ctx.out.end()
    }
    await ctx.out.write(`${goJSON(item)}\n`)
  }
  await ctx.out.end()
}

/**
 * server.waitForStream (non-streamed pull, push, create): the last progress object, or the error.
 * Ends with a newline, as Ollama's non-streamed pull, push and create answers do.
 */
export async function waitForStream(/** @type {Exchange} */ ctx, /** @type {AsyncGenerator<Obj | StreamError>} */ items) {
  /** @type {Obj} */
  let latest = { status: "" }
  for await (const item of items) {
    if (ctx.closed) return
    if (item instanceof StreamError) return ctx.out.send(item.status, `${goJSON({ error: item.error })}\n`, "application/json")
    latest = item
  }
  await ctx.out.send(200, `${goJSON(latest)}\n`, "application/json")
}

/** The whole answer of a non-streamed generate/chat, or the error that stopped it. */
export async function collect(
  /** @type {Exchange} */ ctx,
  /** @type {AsyncGenerator<Obj | StreamError>} */ items,
  /** @type {"generate" | "chat"} */ kind
) {
  /** @type {Obj | undefined} */
  let last
  let content = ""
  for await (const item of items) {
    if (item instanceof StreamError) return item
    last = item
    content += kind === "chat" ? /** @type {{ content: string }} */ (item.message).content : String(item.response)
  }
  if (ctx.closed || !last) return undefined
  return kind === "chat" ? { ...last, message: { .../** @type {Obj} */ (last.message), content } } : { ...last, response: content }
}

export async function renderNative(/** @type {Exchange} */ ctx, /** @type {Outcome} */ outcome, /** @type {"generate" | "chat"} */ kind) {
  if ("json" in outcome) return ginJSON(ctx, ...outcome.json)
  if (outcome.stream) return streamResponse(ctx, outcome.items)
  const whole = await collect(ctx, outcome.items, kind)
  if (whole instanceof StreamError) return ginJSON(ctx, whole.status, { error: whole.error })
  if (whole) await ginJSON(ctx, 200, whole)
}

// --- OpenAI compatibility (middleware/openai.go) ---

function openaiError(/** @type {number} */ status, /** @type {string} */ message) {
  const type = status === 400 ? "invalid_request_error" : status === 404 ? "not_found_error" : "api_error"
  return { error: { message, type, param: null, code: null } }
}

/** A middleware's own refusal: gin's AbortWithStatusJSON, so charset and no newline. */
export function openaiAbort(/** @type {Exchange} */ ctx, /** @type {number} */ status, /** @type {string} */ message) {
  return ginJSON(ctx, status, openaiError(status, message))
}

/** BaseWriter.writeError: the handler's error re-encoded, `application/json` and a newline. */
export function openaiWriteError(/** @type {Exchange} */ ctx, /** @type {number} */ status, /** @type {string} */ message) {
  return ctx.out.send(status, `${goJSON(openaiError(status, message))}\n`, "application/json")
}

function usageOf(/** @type {Obj} */ r) {
  const p = Number(r.prompt_eval_count ?? 0)
  const e = Number(r.eval_count ?? 0)
  return { prompt_tokens: p, completion_tokens: e, total_tokens: p + e }
}

export function unixOf(/** @type {unknown} */ createdAt) {
  return Math.floor(Date.parse(String(createdAt)) / 1000)
}

/**
 * ChatWriter / CompleteWriter: native chat or generate answers turned into OpenAI objects.
 * @param {Exchange} ctx
 * @param {Outcome} outcome
 * @param {{ kind: "chat" | "completion", stream: boolean, includeUsage: boolean }} how
 */
export async function renderOpenAI(ctx, outcome, how) {
  const id = how.kind === "chat" ? `chatcmpl-${randomInt(999)}` : `cmpl-${randomInt(999)}`
  const created = Math.floor(Date.now() / 1000)
  const object = how.kind === "chat" ? "chat.completion.chunk" : "text_completion"
  let first = true

  /** @param {Obj} r */
  const chunkOf = (r) => {
    const text = how.kind === "chat" ? /** @type {{ content: string }} */ (r.message).content : String(r.response ?? "")
    const finish = r.done_reason ? String(r.done_reason) : null
    if (how.kind === "completion") {
      const usage = how.includeUsage ? { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 } : undefined
      return {
        id,
        object,
        created,
        choices: [{ text, index: 0, finish_reason: finish }],
        model: r.model,
        system_fingerprint: "fp_ollama",
        usage
      }
    }
    const delta = first ? { role: "assistant", content: r.done ? undefined : text } : r.done ? {} : { content: text }
    first = false
    return { id, object, created, model: r.model, system_fingerprint: "fp_ollama", choices: [{ index: 0, delta, finish_reason: finish }] }
  }

  /** @param {Obj} r */
  const writeStreamed = async (r) => {
    ctx.out.header("Content-Type", SSE)
    const chunk = chunkOf(r)
    await ctx.out.write(`data: ${goJSON(chunk)}\n\n`)
    if (!r.done) return
    if (how.includeUsage) {
      await ctx.out.write(`data: ${goJSON({ ...chunk, choices: [], usage: usageOf(r) })}\n\n`)
    }
    await ctx.out.write("data: [DONE]\n\n")
  }

  /** @param {Obj} r */
  const whole = (r) => {
    const finish = r.done_reason ? String(r.done_reason) : null
    if (how.kind === "completion") {
      return {
        id,
        object: "text_completion",
        created: unixOf(r.created_at),
        model: r.model,
        system_fingerprint: "fp_ollama",
        choices: [{ text: String(r.response ?? ""), index: 0, finish_reason: finish }],
        usage: usageOf(r)
      }
    }
    const message = /** @type {{ role: string, content: string }} */ (r.message)
    return {
      id,
      object: "chat.completion",
      created: unixOf(r.created_at),
      model: r.model,
      system_fingerprint: "fp_ollama",
      choices: [{ index: 0, message: { role: message.role, content: message.content }, finish_reason: finish }],
      usage: usageOf(r),
      // openai.ToChatCompletion passes a _debug_render_only answer's rendered prompt on.
      _debug_info: r._debug_info
    }
  }

  if ("json" in outcome) {
    const [status, obj] = outcome.json
    if (status !== 200) return openaiWriteError(ctx, status, String(obj.error))
    if (how.stream) {
      await writeStreamed(obj)
      return ctx.out.end()
    }
    return ctx.out.send(200, `${goJSON(whole(obj))}\n`, "application/json")
  }
  if (!how.stream) {
    const r = await collect(ctx, outcome.items, how.kind === "chat" ? "chat" : "generate")
    if (r instanceof StreamError) return openaiWriteError(ctx, r.status, r.error)
    if (r) await ctx.out.send(200, `${goJSON(whole(r))}\n`, "application/json")
    return
  }
  for await (const item of outcome.items) {
    if (ctx.closed) return
    if (item instanceof StreamError) {
      if (!ctx.out.started) return openaiWriteError(ctx, item.status, item.error)
      // Once streaming, Ollama's writer swallows the error line: the stream just stops, no [DONE].
      return ctx.out.end()
    }
    await writeStreamed(item)
  }
  await ctx.out.end()
}

// --- Anthropic compatibility (middleware/anthropic.go) ---

export function anthropicError(/** @type {number} */ status, /** @type {string} */ message) {
  /** @type {Record<number, string>} */
  const types = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error"
  }
  return { type: "error", error: { type: types[status] ?? "api_error", message }, request_id: `req_${randomBytes(12).toString("hex")}` }
}

function stopReason(/** @type {unknown} */ reason) {
  if (reason === "stop") return "end_turn"
  if (reason === "length") return "max_tokens"
  return reason ? "stop_sequence" : undefined
}

/** @param {Exchange} ctx @param {Outcome} outcome @param {{ stream: boolean, model: unknown, estimate: number }} how */
export async function renderAnthropic(ctx, outcome, how) {
  const id = `msg_${randomBytes(12).toString("hex")}`
  const writeError = (/** @type {number} */ status, /** @type {string} */ message) =>
    ctx.out.send(status, `${goJSON(anthropicError(status, message))}\n`, "application/json")
  const event = (/** @type {string} */ name, /** @type {Obj} */ data) => ctx.out.write(`event: ${name}\ndata: ${goJSON(data)}\n\n`)

  /** @param {Obj} r */
  const messageOf = (r) => {
    const text = /** @type {{ content: string }} */ (r.message).content
    return {
      id,
      type: "message",
      role: "assistant",
      model: how.model,
      content: text ? [{ type: "text", text }] : [],
      stop_reason: stopReason(r.done_reason),
      usage: { input_tokens: Number(r.prompt_eval_count ?? 0), output_tokens: Number(r.eval_count ?? 0) }
    }
  }

  if ("json" in outcome) {
    const [status, obj] = outcome.json
    if (status !== 200) return writeError(status, String(obj.error))
    return ctx.out.send(200, `${goJSON(messageOf(obj))}\n`, "application/json")
  }
  if (!how.stream) {
    const r = await collect(ctx, outcome.items, "chat")
    if (r instanceof StreamError) return writeError(r.status, r.error)
    if (r) await ctx.out.send(200, `${goJSON(messageOf(r))}\n`, "application/json")
    return
  }
  let started = false
  let textStarted = false
  for await (const item of outcome.items) {
    if (ctx.closed) return
    if (item instanceof StreamError) {
      if (!ctx.out.started) return writeError(item.status, item.error)
      return ctx.out.end()
    }
    ctx.out.header("Content-Type", SSE)
    if (!started) {
      started = true
      const input = Number(item.prompt_eval_count ?? 0) || how.estimate
      await event("message_start", {
        type: "message_start",
        message: { id, type: "message", role: "assistant", model: how.model, content: [], usage: { input_tokens: input, output_tokens: 0 } }
      })
    }
    const text = /** @type {{ content: string }} */ (item.message).content
    if (text !== "") {
      if (!textStarted) {
        textStarted = true
        await event("content_block_start", { type: "content_block_start", index: 0, content_block: { type: "text", text: "" } })
      }
      await event("content_block_delta", { type: "content_block_delta", index: 0, delta: { type: "text_delta", text } })
    }
    if (item.done) {
      if (textStarted) await event("content_block_stop", { type: "content_block_stop", index: 0 })
      await event("message_delta", {
        type: "message_delta",
        delta: { stop_reason: stopReason(item.done_reason) },
        usage: { input_tokens: Number(item.prompt_eval_count ?? 0), output_tokens: Number(item.eval_count ?? 0) }
      })
      await event("message_stop", { type: "message_stop" })
    }
  }
  await ctx.out.end()
}

// --- OpenAI Responses API (middleware ResponsesWriter), the common subset ---

/** @param {Exchange} ctx @param {Outcome} outcome @param {{ stream: boolean, model: unknown }} how */
export async function renderResponses(ctx, outcome, how) {
  const responseId = `resp_${randomInt(999999)}`
  const itemId = `msg_${randomInt(999999)}`
  const createdAt = Math.floor(Date.now() / 1000)
  /** @param {string} status @param {string} text @param {Obj | undefined} r */
  const responseOf = (status, text, r) => {
    const done = status !== "in_progress"
    const usage = r
      ? {
        input_tokens: Number(r.prompt_eval_count ?? 0),
        output_tokens: Number(r.eval_count ?? 0),
        total_tokens: Number(r.prompt_eval_count ?? 0) + Number(r.eval_count ?? 0)
      }
      : null
    return {
      id: responseId,
      object: "response",
      created_at: createdAt,
      completed_at: done ? Math.floor(Date.now() / 1000) : null,
      status,
      incomplete_details: status === "incomplete" ? { reason: "max_output_tokens" } : null,
      model: how.model,
      output: done
        ? [{
          id: itemId,
          type: "message",
          status: "completed",
          role: "assistant",
          content: [{ type: "output_text", text, annotations: [] }]
        }]
        : [],
      usage
    }
  }
  const statusOf = (/** @type {Obj} */ r) => (r.done_reason === "length" ? "incomplete" : "completed")

  if ("json" in outcome) {
    const [status, obj] = outcome.json
    if (status !== 200) return openaiWriteError(ctx, status, String(obj.error))
    return ctx.out.send(200, `${goJSON(responseOf("completed", "", obj))}\n`, "application/json")
  }
  if (!how.stream) {
    const r = await collect(ctx, outcome.items, "chat")
    if (r instanceof StreamError) return openaiWriteError(ctx, r.status, r.error)
    if (r) {
      const text = /** @type {{ content: string }} */ (/** @type {Obj} */ (r).message).content
      await ctx.out.send(200, `${goJSON(responseOf(statusOf(r), text, r))}\n`, "application/json")
    }
    return
  }
  let seq = 0
  let text = ""
  const event = (/** @type {string} */ type, /** @type {Obj} */ data) =>
    ctx.out.write(`event: ${type}\ndata: ${goJSON({ type, sequence_number: seq++, ...data })}\n\n`)
  for await (const item of outcome.items) {
    if (ctx.closed) return
    if (item instanceof StreamError) {
      if (!ctx.out.started) return openaiWriteError(ctx, item.status, item.error)
      return ctx.out.end()
    }
    if (seq === 0) {
      const initial = responseOf("in_progress", "", undefined)
      await event("response.created", { response: initial })
      await event("response.in_progress", { response: initial })
      await event("response.output_item.added", {
        output_index: 0,
        item: { id: itemId, type: "message", status: "in_progress", role: "assistant", content: [] }
      })
      await event("response.content_part.added", {
        item_id: itemId,
        output_index: 0,
        content_index: 0,
        part: { type: "output_text", text: "", annotations: [] }
      })
    }
    const delta = /** @type {{ content: string }} */ (item.message).content
    if (delta !== "") {
      text += delta
      await event("response.output_text.delta", { item_id: itemId, output_index: 0, content_index: 0, delta })
    }
    if (item.done) {
      const part = { type: "output_text", text, annotations: [] }
      await event("response.output_text.done", { item_id: itemId, output_index: 0, content_index: 0, text })
      await event("response.content_part.done", { item_id: itemId, output_index: 0, content_index: 0, part })
      await event("response.output_item.done", {
        output_index: 0,
        item: { id: itemId, type: "message", status: "completed", role: "assistant", content: [part] }
      })
      const status = statusOf(item)
      await event(status === "completed" ? "response.completed" : "response.incomplete", { response: responseOf(status, text, item) })
    }
  }
  await ctx.out.end()
}
