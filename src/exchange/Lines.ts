/**
 * The reader of inference exchanges, shared by the usage and the telemetry taps: each exchange is
 * read once, by one ExchangeMeter (see `readingOf`), whichever taps are installed.
 *
 * The request body is scanned for its top-level `model` and `stream` without being buffered.
 * The response readers watch a body as Ollama sends it and find the usage figures, without
 * holding the body and without slowing the relay. They run synchronously inside the
 * proxy's data callback, so the rules are: scan for newlines with indexOf on the Buffers, parse
 * only the few lines that carry usage, and hold at most a bounded piece of one line.
 *
 * Native NDJSON and single JSON objects carry their figures in the last line (the `done` object,
 * or the whole body): only the last complete line is kept and parsed, once, at the end.
 * SSE streams (OpenAI, Anthropic, Responses) are scanned line by line for the few events that
 * carry `usage`.
 *
 * A line longer than METER_LINE_LIMIT is relayed untouched but not kept whole: its first and
 * last SALVAGE_WINDOW bytes are, and the figures are read from those with patterns that cannot
 * match inside a JSON string (a quote inside a string is escaped).
 */
import type { IncomingHttpHeaders } from "node:http"

export const METER_LINE_LIMIT = 1024 * 1024
const SALVAGE_WINDOW = 64 * 1024

/** The API families Ollama answers, each with its own place for the usage. */
export type ApiKind = "native" | "openai" | "anthropic" | "responses"

/** The GenAI operation of an inference endpoint (`gen_ai.operation.name`). */
export type OperationName = "chat" | "text_completion" | "embeddings"

/** What the proxy knows of an inference endpoint before reading a byte of it. */
export interface InferenceEndpoint {
  readonly kind: ApiKind
  readonly operation: OperationName
  /** Whether the endpoint streams when the request does not say (`"stream"` absent). */
  readonly streamsByDefault: boolean
}

const inference = (kind: ApiKind, operation: OperationName, streamsByDefault = false): InferenceEndpoint => ({
  kind,
  operation,
  streamsByDefault
})

/** The inference endpoints, the one list both the usage and the telemetry taps go by. */
export const INFERENCE_ENDPOINTS: ReadonlyMap<string, InferenceEndpoint> = new Map<string, InferenceEndpoint>([
  ["/api/chat", inference("native", "chat", true)],
  ["/api/generate", inference("native", "text_completion", true)],
  ["/api/embed", inference("native", "embeddings")],
  ["/api/embeddings", inference("native", "embeddings")],
  ["/v1/chat/completions", inference("openai", "chat")],
  ["/v1/completions", inference("openai", "text_completion")],
  ["/v1/embeddings", inference("openai", "embeddings")],
  ["/v1/messages", inference("anthropic", "chat")],
  ["/v1/responses", inference("responses", "chat")]
])

/** The API family of an inference request, or undefined for everything that is not metered. */
export const apiKindOf = (method: string | undefined, path: string): ApiKind | undefined =>
  method === "POST" ? INFERENCE_ENDPOINTS.get(path)?.kind : undefined

/** The figures of one exchange; null where the answer did not say. */
export interface Usage {
  model: string | null
  createdAt: string | null
  doneReason: string | null
  totalDuration: number | null
  loadDuration: number | null
  promptEvalCount: number | null
  promptEvalDuration: number | null
  evalCount: number | null
  evalDuration: number | null
}

const emptyUsage = (): Usage => ({
  model: null,
  createdAt: null,
  doneReason: null,
  totalDuration: null,
  loadDuration: null,
  promptEvalCount: null,
  promptEvalDuration: null,
  evalCount: null,
  evalDuration: null
})

// ---------------------------------------------------------------------------------------------
// Lines

const NEWLINE = 10

/** A line too long to keep: its first and last bytes, where the figures are. */
export interface LongLine {
  readonly head: Buffer
  readonly tail: Buffer
}
export type Line = Buffer | LongLine

const isLong = (line: Line): line is LongLine => !Buffer.isBuffer(line)

const isBlank = (bytes: Buffer, start = 0, end = bytes.length) => {
  for (let i = start; i < end; i++) {
    const b = bytes[i]
    if (b !== 32 && b !== 9 && b !== 13) return false
  }
  return true
}

/** The bytes of a line not ended yet; bounded: past the limit only its head and tail are kept. */
class PendingLine {
  /** A field, not a getter: it is read for every chunk. */
  empty = true
  private parts: Array<Buffer> = []
  private size = 0
  private head: Buffer | undefined
  private tail: Array<Buffer> = []
  private tailSize = 0

  add(bytes: Buffer) {
    if (bytes.length === 0) return
    this.empty = false
    if (this.head === undefined) {
      this.parts.push(bytes)
      this.size += bytes.length
      if (this.size > METER_LINE_LIMIT) {
        const all = Buffer.concat(this.parts, this.size)
        // Copies, so the megabyte just joined can be freed.
        this.head = Buffer.from(all.subarray(0, SALVAGE_WINDOW))
        this.tail = [Buffer.from(all.subarray(all.length - SALVAGE_WINDOW))]
        this.tailSize = SALVAGE_WINDOW
        this.parts = []
        this.size = 0
      }
      return
    }
    this.tail.push(bytes)
    this.tailSize += bytes.length
    while (this.tailSize - this.tail[0]!.length >= SALVAGE_WINDOW) this.tailSize -= this.tail.shift()!.length
  }

  /** The line so far (undefined when there is none), and a fresh start. */
  take(): Line | undefined {
    let line: Line | undefined
    if (this.head !== undefined) {
      const tail = Buffer.concat(this.tail, this.tailSize)
      line = { head: this.head, tail: tail.subarray(Math.max(0, tail.length - SALVAGE_WINDOW)) }
    } else if (this.size > 0) {
      line = this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts, this.size)
    }
    this.parts = []
    this.size = 0
    this.head = undefined
    this.tail = []
    this.tailSize = 0
    this.empty = true
    return line
  }
}

/**
 * Keeps the last `keep` pieces of the body that end in a newline, by reference, and splits them
 * into lines only at the end. Ollama writes and flushes one line (or event) at a time, so nearly
 * every chunk starts and ends at a line boundary: for such a chunk the whole cost is a byte
 * comparison and an array push. Only a chunk that cuts a line is searched for newlines.
 */
export class TailLines {
  /** The last `keep` pieces, oldest first from `next`. */
  private readonly ring: Array<Line | undefined>
  private next = 0
  private readonly pending = new PendingLine()

  constructor(private readonly keep: number) {
    this.ring = new Array<Line | undefined>(keep)
  }

  push(chunk: Buffer): void {
    const length = chunk.length
    if (length === 0) return
    if (chunk[length - 1] === NEWLINE && this.pending.empty) {
      // A chunk that starts with a non-blank byte is not blank: no need to look further.
      const b = chunk[0]
      if ((b === 32 || b === 9 || b === 13 || b === NEWLINE) && isBlank(chunk)) return
      this.ring[this.next] = chunk
      if (++this.next === this.keep) this.next = 0
      return
    }
    const first = chunk.indexOf(NEWLINE)
    if (first < 0) {
      this.pending.add(chunk)
      return
    }
    this.pending.add(chunk.subarray(0, first + 1))
    this.remember(this.pending.take()!)
    const last = chunk.lastIndexOf(NEWLINE)
    if (last > first) this.remember(chunk.subarray(first + 1, last + 1))
    this.pending.add(chunk.subarray(last + 1))
  }

  /** The complete lines kept, in order, then the line the body ended without a newline. */
  end(): Array<Line> {
    const lines: Array<Line> = []
    for (let i = 0; i < this.keep; i++) {
      const piece = this.ring[(this.next + i) % this.keep]
      if (piece === undefined) continue
      if (isLong(piece)) {
        lines.push(piece)
        continue
      }
      let start = 0
      let nl: number
      while ((nl = piece.indexOf(NEWLINE, start)) >= 0) {
        if (!isBlank(piece, start, nl)) lines.push(piece.subarray(start, nl))
        start = nl + 1
      }
      if (start < piece.length && !isBlank(piece, start)) lines.push(piece.subarray(start))
    }
    const rest = this.pending.take()
    if (rest !== undefined && !(Buffer.isBuffer(rest) && isBlank(rest))) lines.push(rest)
    return lines
  }

  private remember(piece: Line) {
    // A piece of blank lines must not push out the line before it.
    if (Buffer.isBuffer(piece) && isBlank(piece)) return
    this.ring[this.next] = piece
    if (++this.next === this.keep) this.next = 0
  }
}

/** Hands every line of the body to `onLine`, split across chunks or not. */
export class LineReader {
  private readonly pending = new PendingLine()

  constructor(private readonly onLine: (line: Line) => void) {}

  push(chunk: Buffer): void {
    let nl = chunk.indexOf(NEWLINE)
    if (nl < 0) {
      this.pending.add(chunk)
      return
    }
    if (this.pending.empty) {
      this.onLine(chunk.subarray(0, nl))
    } else {
      this.pending.add(chunk.subarray(0, nl))
      this.onLine(this.pending.take()!)
    }
    let start = nl + 1
    while ((nl = chunk.indexOf(NEWLINE, start)) >= 0) {
      this.onLine(chunk.subarray(start, nl))
      start = nl + 1
    }
    this.pending.add(chunk.subarray(start))
  }

  end(): void {
    const line = this.pending.take()
    if (line !== undefined) this.onLine(line)
  }
}

// ---------------------------------------------------------------------------------------------
// Parsing the few lines that matter

type Json = Record<string, unknown>

const isObject = (value: unknown): value is Json => typeof value === "object" && value !== null && !Array.isArray(value)

const parseObject = (text: string): Json | undefined => {
  try {
    const value: unknown = JSON.parse(text)
    return isObject(value) ? value : undefined
  } catch {
    return undefined
  }
}

const NUMBER_FIELDS = [
  "total_duration",
  "load_duration",
  "prompt_eval_count",
  "prompt_eval_duration",
  "eval_count",
  "eval_duration"
] as const

const lastMatch = (text: string, pattern: RegExp): RegExpExecArray | undefined => {
  let found: RegExpExecArray | undefined
  for (const match of text.matchAll(pattern)) found = match
  return found
}

/** A JSON string literal's bytes (read as latin1) back to the string. */
const jsonString = (latin1: string): string | undefined => {
  try {
    const value: unknown = JSON.parse(`"${Buffer.from(latin1, "latin1").toString("utf8")}"`)
    return typeof value === "string" ? value : undefined
  } catch {
    return undefined
  }
}

const stringField = (name: string, head: string, tail: string): string | undefined => {
  const pattern = new RegExp(`"${name}":"((?:[^"\\\\]|\\\\.){0,512})"`, "g")
  const match = lastMatch(tail, pattern) ?? pattern.exec(head) ?? undefined
  return match === undefined ? undefined : jsonString(match[1]!)
}

/** The object that starts at `start` (a `{`), when it is complete in `text`. */
const balancedObject = (text: string, start: number): Json | undefined => {
  let depth = 0
  let inString = false
  for (let i = start; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (inString) {
      if (c === 92) i++
      else if (c === 34) inString = false
    } else if (c === 34) inString = true
    else if (c === 123) depth++
    else if (c === 125 && --depth === 0) return parseObject(Buffer.from(text.slice(start, i + 1), "latin1").toString("utf8"))
  }
  return undefined
}

/**
 * What can be read from a line too long to keep: Ollama writes its figures last (after the
 * embeddings, `context` or a long answer), OpenAI and Anthropic their `usage` object last, and
 * the model and `done` come first.
 */
export const salvage = ({ head, tail }: LongLine): Json => {
  const h = head.toString("latin1")
  const t = tail.toString("latin1")
  const out: Json = {}
  for (const name of NUMBER_FIELDS) {
    const match = lastMatch(t, new RegExp(`"${name}":(\\d+)`, "g"))
    if (match !== undefined) out[name] = Number(match[1])
  }
  if (h.includes(`"done":true`) || t.includes(`"done":true`)) out.done = true
  for (const name of ["model", "created_at", "done_reason", "stop_reason", "status"]) {
    const value = stringField(name, h, t)
    if (value !== undefined) out[name] = value
  }
  const finish = stringField("finish_reason", h, t)
  if (finish !== undefined) out.choices = [{ finish_reason: finish }]
  const usageAt = t.lastIndexOf(`"usage":{`)
  if (usageAt >= 0) {
    const usage = balancedObject(t, usageAt + 8)
    if (usage !== undefined) out.usage = usage
  }
  return out
}

const parseLine = (line: Line): Json | undefined => (isLong(line) ? salvage(line) : parseObject(line.toString("utf8")))

const count = (value: unknown): number | null => typeof value === "number" && Number.isSafeInteger(value) && value >= 0 ? value : null
const text = (value: unknown): string | null => (typeof value === "string" ? value : null)

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
      if (this.capture !== undefined) { for (let j = i; j < end; j++) this.captureByte(chunk[j]!) }
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
// One exchange

const DATA = Buffer.from("data:")
const USAGE = Buffer.from(`"usage":{`)
const FINISH = Buffer.from(`"finish_reason":"`)
const ERROR_NATIVE = Buffer.from(`{"error":`)
const ERROR_TYPED = Buffer.from(`{"type":"error"`)
const DONE = Buffer.from("[DONE]")
const MESSAGE_STOP = Buffer.from(`{"type":"message_stop"`)
const SSE_PIECES_KEPT = 6
const MODEL = /"model":"((?:[^"\\]|\\.){1,512})"/
const FINISH_REASON = /"finish_reason":"([^"\\]{1,64})"/

const startsWith = (bytes: Buffer, prefix: Buffer, at = 0) =>
  bytes.length - at >= prefix.length && bytes.compare(prefix, 0, prefix.length, at, at + prefix.length) === 0

/** The payload of an SSE `data:` line, or undefined for any other line. */
const ssePayload = (line: Line): Line | undefined => {
  const bytes = isLong(line) ? line.head : line
  if (!startsWith(bytes, DATA)) return undefined
  const skip = bytes[5] === 32 ? 6 : 5
  return isLong(line) ? { head: line.head.subarray(skip), tail: line.tail } : line.subarray(skip)
}

/**
 * The one reading of an inference exchange: the request's model and stream flag, and the
 * response's figures. The first tap that asks for it (`readingOf`) creates it and feeds it the
 * request body, the response head, every chunk and the end; every tap reads the same result.
 */
export class ExchangeMeter {
  readonly usage: Usage = emptyUsage()
  /** The top-level `model` and `stream` of the request body. */
  readonly request = new RequestScanner()
  status: number | null = null
  /** Whether the answer streams (NDJSON or SSE); null until the response head says. */
  stream: boolean | null = null
  /** performance.now() of the first body chunk. */
  firstChunkAt: number | null = null
  /** Ollama reported an error in a 2xx body (a mid-stream failure), or a stream stopped short. */
  failed = false
  /** The message of an error object in the body (`{"error":...}`, an SSE error event). */
  error: string | null = null
  /** Usage figures were found (a done object, a `usage`...). */
  measured = false
  /** The model named in the first chunk: for answers cut off before their figures. */
  firstModel: string | null = null
  private sse = false
  private sawLastEvent = false
  /** The last lines of the body: all that native and OpenAI answers need. */
  private tail: TailLines | undefined
  /** Anthropic streams put input tokens in their first event: every line is looked at. */
  private lines: LineReader | undefined
  /** OpenAI streams: the last line with `usage` (with include_usage every /v1/completions
   *  chunk carries a zero usage: only the last one counts). */
  private usageLine: Line | undefined
  private claimed = false
  private ended = false

  constructor(readonly kind: ApiKind) {}

  /** true the first time only: the tap that gets true feeds the meter, the others just read it. */
  claim(): boolean {
    if (this.claimed) return false
    return (this.claimed = true)
  }

  /** Every request body chunk, as sent to Ollama; bound, like `push`. */
  readonly requestData = (chunk: Buffer): void => this.request.write(chunk)

  responseStart(status: number, headers: IncomingHttpHeaders): void {
    this.status = status
    const type = headers["content-type"] ?? ""
    this.sse = type.startsWith("text/event-stream")
    this.stream = this.sse || type.startsWith("application/x-ndjson")
    if (!this.sse) this.tail = new TailLines(1)
    else if (this.kind === "anthropic") this.lines = new LineReader((line) => this.sseLine(line))
    // The usage event, the finish event before it and [DONE] after it, with room for split events.
    else this.tail = new TailLines(SSE_PIECES_KEPT)
  }

  /** Every body chunk; a bound field, so the proxy's tap can hand it over without a wrapper. */
  readonly push = (chunk: Buffer): void => {
    if (this.firstChunkAt === null) this.first(chunk)
    if (this.tail !== undefined) this.tail.push(chunk)
    else this.lines?.push(chunk)
  }

  private first(chunk: Buffer) {
    this.firstChunkAt = performance.now()
    const match = MODEL.exec(chunk.toString("utf8", 0, Math.min(chunk.length, 4096)))
    if (match !== null) this.firstModel = jsonString(match[1]!) ?? null
  }

  /** The body ended (or was cut off): read what is left. Only the first call does anything. */
  end(): void {
    if (this.ended) return
    this.ended = true
    if (this.tail !== undefined) {
      const lines = this.tail.end()
      if (this.sse) {
        for (const line of lines) this.sseLine(line)
      } else {
        const last = lines.at(-1)
        const value = last === undefined ? undefined : parseLine(last)
        if (value !== undefined) this.apply(value)
      }
    } else {
      this.lines?.end()
    }
    const value = this.usageLine === undefined ? undefined : parseLine(this.usageLine)
    if (value !== undefined) this.apply(value)
    // Once an SSE answer has started, Ollama reports a failure by stopping the stream short of
    // its last event ([DONE], message_stop, response.completed).
    const ended = this.kind === "responses" ? this.measured : this.sawLastEvent
    if (this.sse && !ended && this.status !== null && this.status < 300) this.failed = true
  }

  /** A load or unload request (`done_reason` load/unload): not an inference, no record. */
  get loadOnly(): boolean {
    return this.kind === "native" && (this.usage.doneReason === "load" || this.usage.doneReason === "unload")
  }

  private sseLine(line: Line): void {
    const payload = ssePayload(line)
    if (payload === undefined) return
    const bytes = isLong(payload) ? payload.head : payload
    if (startsWith(bytes, DONE) || startsWith(bytes, MESSAGE_STOP)) {
      this.sawLastEvent = true
      return
    }
    if (startsWith(bytes, ERROR_NATIVE) || startsWith(bytes, ERROR_TYPED)) {
      const value = parseLine(payload)
      if (value !== undefined) this.apply(value)
      return
    }
    if (isLong(payload) ? payload.tail.indexOf(USAGE) >= 0 : bytes.indexOf(USAGE) >= 0) {
      if (this.kind === "openai") this.usageLine = payload
      else {
        const value = parseLine(payload)
        if (value !== undefined) this.apply(value)
      }
    }
    if (this.kind === "openai" && !isLong(payload) && bytes.indexOf(FINISH) >= 0) {
      const match = FINISH_REASON.exec(bytes.toString("latin1"))
      if (match !== null) this.usage.doneReason = match[1]!
    }
  }

  private apply(value: Json): void {
    switch (this.kind) {
      case "native":
        return this.applyNative(value)
      case "openai":
        return this.applyOpenAi(value)
      case "anthropic":
        return this.applyAnthropic(value)
      case "responses":
        return this.applyResponses(value)
    }
  }

  private fail(value: Json): void {
    this.failed = true
    const error = value.error
    this.error = text(error) ?? (isObject(error) ? text(error.message) : null) ?? text(value.message) ?? "error"
  }

  private applyNative(value: Json): void {
    const figures = NUMBER_FIELDS.some((name) => name in value)
    if (value.done !== true && !figures) {
      if ("error" in value) this.fail(value)
      return
    }
    this.measured = true
    const u = this.usage
    u.model = text(value.model) ?? u.model
    u.createdAt = text(value.created_at)
    u.doneReason = text(value.done_reason)
    // Ollama leaves a figure out when it is zero.
    u.totalDuration = count(value.total_duration) ?? 0
    u.loadDuration = count(value.load_duration) ?? 0
    u.promptEvalCount = count(value.prompt_eval_count) ?? 0
    u.promptEvalDuration = count(value.prompt_eval_duration) ?? 0
    u.evalCount = count(value.eval_count) ?? 0
    u.evalDuration = count(value.eval_duration) ?? 0
  }

  private applyOpenAi(value: Json): void {
    if (value.error !== undefined && value.error !== null) {
      this.fail(value)
      return
    }
    const u = this.usage
    u.model = text(value.model) ?? u.model
    const choices = value.choices
    if (Array.isArray(choices) && isObject(choices[0])) u.doneReason = text(choices[0].finish_reason) ?? u.doneReason
    if (isObject(value.usage)) {
      this.measured = true
      u.promptEvalCount = count(value.usage.prompt_tokens) ?? 0
      u.evalCount = count(value.usage.completion_tokens) ?? 0
    }
  }

  private applyAnthropic(value: Json): void {
    const u = this.usage
    switch (value.type) {
      case "error":
        this.fail(value)
        return
      case "message_start":
        if (isObject(value.message)) this.applyAnthropic(value.message)
        return
      case "message_delta":
        if (isObject(value.delta)) u.doneReason = text(value.delta.stop_reason) ?? u.doneReason
        break
      default:
        u.model = text(value.model) ?? u.model
        u.doneReason = text(value.stop_reason) ?? u.doneReason
    }
    if (isObject(value.usage)) {
      this.measured = true
      // message_start carries the input tokens, message_delta the output so far.
      u.promptEvalCount = count(value.usage.input_tokens) ?? u.promptEvalCount ?? 0
      u.evalCount = count(value.usage.output_tokens) ?? u.evalCount ?? 0
    }
  }

  private applyResponses(value: Json): void {
    if (value.type === "error") {
      this.fail(value)
      return
    }
    const response = typeof value.type === "string" && isObject(value.response) ? value.response : value
    const u = this.usage
    u.model = text(response.model) ?? u.model
    u.doneReason = text(response.status) ?? u.doneReason
    if (response.status === "failed") this.failed = true
    if (isObject(response.usage)) {
      this.measured = true
      u.promptEvalCount = count(response.usage.input_tokens) ?? 0
      u.evalCount = count(response.usage.output_tokens) ?? 0
    }
  }
}

/** The reading rides on the exchange's context, the one object every tap of the exchange gets. */
const READING = Symbol("app/ExchangeReading")
interface WithReading {
  [READING]?: ExchangeMeter
}

/**
 * The reading of this exchange, created by the first tap that asks. That tap's `claim()` is
 * true: it feeds the meter; the others only read it, after calling `end()` (which runs once).
 */
export const readingOf = (context: object, kind: ApiKind): ExchangeMeter => ((context as WithReading)[READING] ??= new ExchangeMeter(kind))
