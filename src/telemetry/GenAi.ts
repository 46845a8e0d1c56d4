/**
 * What an exchange means in GenAI terms: which endpoint it is, the model and stream flag the
 * client asked for, and what Ollama reported at the end (model, finish reason, token counts).
 *
 * Everything here reads bytes as they pass and keeps only what it needs: the request body is
 * scanned for two top-level keys without being buffered, and of a response only the lines that
 * carry the usage figures (the last ones of a stream) or a bounded single object are kept.
 */

export type OperationName = "chat" | "text_completion" | "embeddings"

export interface Endpoint {
  /** Low-cardinality route, the `http.route` attribute and the `endpoint` metric label. */
  readonly route: string
  /** Set for inference endpoints. */
  readonly operation?: OperationName
  /** Whether the endpoint streams when the request does not say (`"stream"` absent). */
  readonly streamsByDefault: boolean
}

const endpoint = (route: string, operation?: OperationName, streamsByDefault = false): Endpoint =>
  operation === undefined ? { route, streamsByDefault } : { route, operation, streamsByDefault }

const INFERENCE: Record<string, Endpoint> = {
  "/api/chat": endpoint("/api/chat", "chat", true),
  "/api/generate": endpoint("/api/generate", "text_completion", true),
  "/api/embed": endpoint("/api/embed", "embeddings"),
  "/api/embeddings": endpoint("/api/embeddings", "embeddings"),
  "/v1/chat/completions": endpoint("/v1/chat/completions", "chat"),
  "/v1/completions": endpoint("/v1/completions", "text_completion"),
  "/v1/embeddings": endpoint("/v1/embeddings", "embeddings"),
  "/v1/messages": endpoint("/v1/messages", "chat"),
  "/v1/responses": endpoint("/v1/responses", "chat")
}

const ROUTES = new Map<string, Endpoint>(
  [
    "/",
    "/api/version",
    "/api/tags",
    "/api/ps",
    "/api/show",
    "/api/pull",
    "/api/push",
    "/api/create",
    "/api/copy",
    "/api/delete",
    "/v1/models"
  ].map((route) => [route, endpoint(route)])
)

const BLOBS = endpoint("/api/blobs/:digest")
const MODEL = endpoint("/v1/models/:model")
const OTHER = endpoint("other")

/** The endpoint of a request; inference only for POST, as Ollama answers other methods with 405. */
export const classify = (method: string | undefined, path: string): Endpoint => {
  const p = path.length > 1 && path.endsWith("/") ? path.slice(0, -1) : path
  if (method === "POST") {
    const inference = INFERENCE[p]
    if (inference !== undefined) return inference
  }
  const known = ROUTES.get(p)
  if (known !== undefined) return known
  if (p.startsWith("/api/blobs/")) return BLOBS
  if (p.startsWith("/v1/models/")) return MODEL
  return INFERENCE[p] !== undefined ? endpoint(p) : OTHER
}

// ---------------------------------------------------------------------------------------------
// The request body: top-level "model" and "stream", found without buffering the body.

const QUOTE = 0x22
const BACKSLASH = 0x5c
const MAX_KEY = 32
const MAX_MODEL = 256

/**
 * A streaming scanner for the top level of a JSON object. Strings are skipped with indexOf, so
 * a body of base64 images costs a few native searches, not a loop over its bytes.
 */
export class RequestScanner {
  model: string | undefined
  stream: boolean | undefined
  private depth = 0
  private inString = false
  /** Backslashes just before the chunk boundary, inside a string. */
  private escaped = false
  private expectingKey = false
  private key: string | undefined
  private capture: Array<number> | undefined
  private captureIsKey = false
  private literal = ""
  private done = false

  write(chunk: Uint8Array): void {
    if (this.done) return
    let i = 0
    const n = chunk.length
    while (i < n) {
      if (this.inString) {
        i = this.scanString(chunk, i)
        continue
      }
      const c = chunk[i]!
      if (this.literal !== "") {
        if (c >= 0x61 && c <= 0x7a) {
          this.literal += String.fromCharCode(c)
          i++
          continue
        }
        if (this.literal === "true" || this.literal === "false") this.stream = this.literal === "true"
        this.literal = ""
      } else if (this.depth === 1 && !this.expectingKey && this.key === "stream" && (c === 0x74 || c === 0x66)) {
        this.literal = String.fromCharCode(c) // the start of true or false
        i++
        continue
      }
      switch (c) {
        case QUOTE:
          this.inString = true
          if (this.depth === 1 && (this.expectingKey || this.key === "model")) {
            this.capture = []
            this.captureIsKey = this.expectingKey
          }
          break
        case 0x7b: // {
        case 0x5b: // [
          this.depth++
          if (this.depth === 1) this.expectingKey = c === 0x7b
          break
        case 0x7d: // }
        case 0x5d: // ]
          this.depth--
          if (this.depth <= 0) this.done = true
          break
        case 0x3a: // :
          if (this.depth === 1) this.expectingKey = false
          break
        case 0x2c: // ,
          if (this.depth === 1) {
            this.expectingKey = true
            this.key = undefined
          }
          break
      }
      i++
      if (this.done || (this.model !== undefined && this.stream !== undefined)) {
        this.done = true
        return
      }
    }
  }

  private scanString(chunk: Uint8Array, start: number): number {
    let i = start
    if (this.escaped) {
      // the character after a backslash that ended the previous chunk
      this.escaped = false
      this.captureByte(chunk[i]!)
      i++
    }
    for (;;) {
      const q = chunk.indexOf(QUOTE, i)
      const end = q < 0 ? chunk.length : q
      let backslashes = 0
      for (let j = end - 1; j >= i && chunk[j] === BACKSLASH; j--) backslashes++
      if (this.capture !== undefined) for (let j = i; j < end; j++) this.captureByte(chunk[j]!)
      if (q < 0) {
        this.escaped = backslashes % 2 === 1
        return chunk.length
      }
      if (backslashes % 2 === 1) {
        this.captureByte(QUOTE)
        i = q + 1
        continue
      }
      this.inString = false
      this.endCapture()
      return q + 1
    }
  }

  private captureByte(b: number) {
    if (this.capture !== undefined && this.capture.length < (this.captureIsKey ? MAX_KEY : MAX_MODEL)) this.capture.push(b)
  }

  private endCapture() {
    if (this.capture === undefined) return
    const raw = Buffer.from(this.capture).toString("utf8")
    this.capture = undefined
    let text = raw
    try {
      // the bytes still hold JSON escapes
      if (raw.includes("\\")) text = JSON.parse(`"${raw}"`)
    } catch {
      // a cut escape at the length cap: keep the raw text
    }
    if (this.captureIsKey) this.key = text
    else if (this.key === "model") this.model = text
  }
}

// ---------------------------------------------------------------------------------------------
// The response: the usage figures Ollama reports at the end.

export interface ResponseUsage {
  model?: string
  finishReasons?: Array<string>
  inputTokens?: number
  outputTokens?: number
  /** An `{"error": ...}` object, mid-stream or as the whole body. */
  error?: string
}

/** Ollama's longest line (an /api/generate `context`, an embedding) the Go client accepts. */
const MAX_LINE = 8_000_000
/** A single JSON body up to this size is parsed whole; past it only its head and tail are read. */
const MAX_BODY = 1 << 20
const EDGE = 4096
/** Streams: the first data line (Anthropic's message_start) and the last few carry the usage. */
const LAST_LINES = 4

type Format = "ndjson" | "sse" | "json"

export const formatOf = (contentType: string | undefined): Format | undefined => {
  if (contentType === undefined) return undefined
  if (contentType.startsWith("application/x-ndjson")) return "ndjson"
  if (contentType.startsWith("text/event-stream")) return "sse"
  if (contentType.startsWith("application/json")) return "json"
  return undefined
}

const num = (v: unknown): number | undefined => (typeof v === "number" && Number.isFinite(v) ? v : undefined)
const str = (v: unknown): string | undefined => (typeof v === "string" && v !== "" ? v : undefined)
const obj = (v: unknown): Record<string, unknown> | undefined =>
  typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined

/** Folds one parsed object (a whole body or one stream event) into the usage; later ones win. */
export const absorb = (usage: ResponseUsage, value: unknown): void => {
  const o = obj(value)
  if (o === undefined) return
  const error = o.error
  if (error !== undefined) {
    usage.error = str(error) ?? str(obj(error)?.message) ?? "error"
    return
  }
  const message = obj(o.message)
  const response = obj(o.response)
  const model = str(o.model) ?? str(message?.model) ?? str(response?.model)
  if (model !== undefined) usage.model = model

  // Ollama's native shape: counts on the final object (omitted when zero).
  if (o.done === true) {
    usage.inputTokens = num(o.prompt_eval_count) ?? 0
    usage.outputTokens = num(o.eval_count) ?? 0
    const reason = str(o.done_reason)
    if (reason !== undefined) usage.finishReasons = [reason]
  } else if (Array.isArray(o.embeddings)) {
    usage.inputTokens = num(o.prompt_eval_count) ?? 0
  }

  // OpenAI (prompt/completion tokens), Anthropic and Responses (input/output tokens).
  const u = obj(o.usage) ?? obj(message?.usage) ?? obj(response?.usage)
  if (u !== undefined) {
    const input = num(u.prompt_tokens) ?? num(u.input_tokens)
    const output = num(u.completion_tokens) ?? num(u.output_tokens)
    if (input !== undefined && (input > 0 || usage.inputTokens === undefined)) usage.inputTokens = input
    if (output !== undefined && (output > 0 || usage.outputTokens === undefined)) usage.outputTokens = output
  }
  if (Array.isArray(o.choices)) {
    const reasons = o.choices.map((c) => str(obj(c)?.finish_reason)).filter((r): r is string => r !== undefined)
    if (reasons.length > 0) usage.finishReasons = reasons
  }
  const stop = str(o.stop_reason) ?? str(obj(o.delta)?.stop_reason) ?? (response !== undefined ? str(response.status) : undefined)
  if (stop !== undefined) usage.finishReasons = [stop]
}

const parse = (text: string): unknown => {
  try {
    return JSON.parse(text)
  } catch {
    return undefined
  }
}

/** Regex fallback for a body too large to parse: the figures sit at its end, the model near its start. */
const absorbEdges = (usage: ResponseUsage, head: string, tail: string) => {
  const last = (re: RegExp, text: string) => {
    let found: string | undefined
    for (const m of text.matchAll(re)) found = m[1]
    return found
  }
  const model = last(/"model":"([^"\\]{1,256})"/g, head) ?? last(/"model":"([^"\\]{1,256})"/g, tail)
  if (model !== undefined) usage.model = model
  const input = last(/"(?:prompt_eval_count|prompt_tokens|input_tokens)":(\d+)/g, tail)
  const output = last(/"(?:eval_count|completion_tokens|output_tokens)":(\d+)/g, tail)
  if (input !== undefined) usage.inputTokens = Number(input)
  if (output !== undefined) usage.outputTokens = Number(output)
}

/** Reads a response body as it passes; `finish()` gives the usage it found. */
export class ResponseReader {
  private readonly format: Format
  /** Bytes after the last newline (a line still arriving). */
  private partial: Array<Buffer> = []
  private partialLength = 0
  private first: Buffer | undefined
  private readonly last: Array<Buffer> = []
  /** JSON bodies: all chunks while small, then only the head and a rolling tail. */
  private body: Array<Buffer> = []
  private bodyLength = 0
  private head: Buffer | undefined
  private tail: Buffer = Buffer.alloc(0)

  constructor(format: Format) {
    this.format = format
  }

  write(chunk: Buffer): void {
    if (this.format === "json") return this.writeJson(chunk)
    let start = 0
    let nl = chunk.indexOf(10)
    while (nl >= 0) {
      // Only lines that can matter are assembled; the middle of a stream just moves the cursor.
      this.line(chunk, start, nl)
      start = nl + 1
      nl = chunk.indexOf(10, start)
    }
    if (start < chunk.length) {
      if (this.partialLength + chunk.length - start <= MAX_LINE) this.partial.push(chunk.subarray(start))
      this.partialLength += chunk.length - start
    }
  }

  private line(chunk: Buffer, start: number, end: number) {
    let line: Buffer
    if (this.partial.length === 0) {
      if (end === start) return
      line = chunk.subarray(start, end)
    } else {
      const tooLong = this.partialLength + end - start > MAX_LINE
      line = tooLong ? Buffer.alloc(0) : Buffer.concat([...this.partial, chunk.subarray(start, end)])
      this.partial = []
      this.partialLength = 0
      if (tooLong) return
    }
    if (this.format === "sse") {
      // `data: ` lines only; events, ids, comments and the closing [DONE] carry no figures
      if (line.length < 6 || line[0] !== 0x64 || line[1] !== 0x61 || line[2] !== 0x74 || line[3] !== 0x61 || line[4] !== 0x3a) return
      if (this.first === undefined) {
        this.first = line
        return
      }
    }
    this.last.push(line)
    if (this.last.length > LAST_LINES) this.last.shift()
  }

  private writeJson(chunk: Buffer) {
    this.bodyLength += chunk.length
    if (this.head === undefined) {
      if (this.bodyLength <= MAX_BODY) {
        this.body.push(chunk)
        return
      }
      const all = Buffer.concat([...this.body, chunk])
      this.body = []
      this.head = all.subarray(0, EDGE)
      this.tail = Buffer.from(all.subarray(all.length - EDGE))
      return
    }
    this.tail = chunk.length >= EDGE ? Buffer.from(chunk.subarray(chunk.length - EDGE)) : Buffer.concat([this.tail, chunk]).subarray(-EDGE)
  }

  finish(): ResponseUsage {
    const usage: ResponseUsage = {}
    if (this.format === "json") {
      if (this.head === undefined) absorb(usage, parse(Buffer.concat(this.body).toString("utf8")))
      else absorbEdges(usage, this.head.toString("utf8"), this.tail.toString("utf8"))
      return usage
    }
    // A stream whose last line has no newline still counts.
    const rest = this.partial
    const restLength = this.partialLength
    this.partial = []
    this.partialLength = 0
    if (rest.length > 0 && restLength <= MAX_LINE) this.line(Buffer.concat(rest), 0, restLength)
    const lines = this.first === undefined ? this.last : [this.first, ...this.last]
    for (const line of lines) {
      const text = line.toString("utf8")
      const json = this.format === "sse" ? text.slice(5).trim() : text
      if (json === "[DONE]") continue
      absorb(usage, parse(json))
    }
    return usage
  }
}
