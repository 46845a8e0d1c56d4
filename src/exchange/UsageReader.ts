/**
 * Reads the usage figures out of an inference answer as it streams to the client, without holding
 * the body and without slowing the relay: it runs synchronously inside the relay's data callback.
 *
 * Native NDJSON and single JSON objects carry their figures in the last line (the `done` object,
 * or the whole body): only the last complete line is kept, and parsed once, at the end. SSE streams
 * (OpenAI, Anthropic, Responses) are scanned line by line for the few events that carry `usage`.
 * What each family's objects mean is ApiUsage.ts's business.
 *
 * A stream that ends without its final figures (the client hung up, a proxy in front cut it,
 * Ollama died) still delivered tokens. Each chunk Ollama streams carries one token (an NDJSON line,
 * an OpenAI `data:` event, an Anthropic or Responses `*_delta` event), so the reader counts them as
 * they pass, and such an answer is billed for the chunks the client received: as an estimate
 * (`estimated`), never as Ollama's count, with input tokens only where Ollama gave them early.
 */
import {
  emptyUsage,
  type Figures,
  readAnthropic,
  readNative,
  readOpenAi,
  readResponses,
  readTranscription,
  type Usage
} from "./ApiUsage.js"
import type { UsageFormat } from "./Classify.js"
import { type Json, jsonString, parseLine } from "./Json.js"
import { isLong, type Line, LineCounter, LineReader, TailLines } from "./Lines.js"

const DATA = Buffer.from("data:")
const USAGE = Buffer.from(`"usage":{`)
const FINISH = Buffer.from(`"finish_reason":"`)
const ERROR_NATIVE = Buffer.from(`{"error":`)
const ERROR_TYPED = Buffer.from(`{"type":"error"`)
const DONE = Buffer.from("[DONE]")
const MESSAGE_STOP = Buffer.from(`{"type":"message_stop"`)
const EVENT = Buffer.from("event:")
const DELTA = Buffer.from("delta")
const MESSAGE_DELTA = Buffer.from("message_delta")
const DATA_START = 0x64 // "d" of "data:"
const SSE_PIECES_KEPT = 6
const MODEL = /"model":"((?:[^"\\]|\\.){1,512})"/
const FINISH_REASON = /"finish_reason":"([^"\\]{1,64})"/

const startsWith = (bytes: Buffer, prefix: Buffer, at = 0) =>
  bytes.length - at >= prefix.length && bytes.compare(prefix, 0, prefix.length, at, at + prefix.length) === 0

const endsWith = (bytes: Buffer, suffix: Buffer) => {
  const end = bytes[bytes.length - 1] === 13 ? bytes.length - 1 : bytes.length
  return end >= suffix.length && bytes.compare(suffix, 0, suffix.length, end - suffix.length, end) === 0
}

/** The payload of an SSE `data:` line, or undefined for any other line. */
const ssePayload = (line: Line): Line | undefined => {
  const bytes = isLong(line) ? line.head : line
  if (!startsWith(bytes, DATA)) return undefined
  const skip = bytes[5] === 32 ? 6 : 5
  return isLong(line) ? { head: line.head.subarray(skip), tail: line.tail } : line.subarray(skip)
}

type Reader = (figures: Figures, value: Json) => void

const READERS: Record<Exclude<UsageFormat, "none">, Reader> = {
  native: readNative,
  openai: readOpenAi,
  anthropic: readAnthropic,
  responses: readResponses,
  transcription: readTranscription
}

/** How the figures of an answer were had. */
export type CountedBy =
  /** Ollama's own final figures. */
  | "ollama"
  /** The output is the chunks the client received, each one token; the input is Ollama's if it gave it early. */
  | "received_chunks"
  /** Ollama reports no count for this endpoint (/api/embeddings): the input is the proxy's estimate from the request. */
  | "request_estimate"
  /** Ollama reports no count for this endpoint (/v1/audio/transcriptions): the output is the proxy's estimate from the text. */
  | "response_estimate"

/** Makes the reader of one answer in a given format; tests replace it to break a reading on purpose. */
export type UsageReaderFactory = (format: Exclude<UsageFormat, "none">) => UsageReader

export const makeUsageReader: UsageReaderFactory = (format) => new UsageReader(format)

export class UsageReader implements Figures {
  readonly usage: Usage = emptyUsage()
  measured = false
  failed = false
  error: string | null = null
  /** The model named in the first chunk: for answers cut off before their figures. */
  firstModel: string | null = null
  /** The figures are an estimate (see the header); `countedBy` says how they were had. */
  estimated = false
  countedBy: CountedBy | null = null
  private readonly read: Reader
  private status = 0
  private sse = false
  private sawFirst = false
  private sawLastEvent = false
  /** The last lines of the body: all that native and OpenAI answers need. */
  private tail: TailLines | undefined
  /** Anthropic and Responses streams: every line is looked at (their deltas are counted). */
  private lines: LineReader | undefined
  /** NDJSON lines or OpenAI `data:` lines, for an answer cut short. */
  private counter: LineCounter | undefined
  /** Anthropic and Responses delta events, for an answer cut short. */
  private deltas = 0
  /** An OpenAI event with a finish reason: it carries no token. */
  private sawFinish = false
  /**
   * OpenAI streams: the last line with `usage` (with include_usage every /v1/completions chunk
   * carries a zero usage: only the last one counts).
   */
  private usageLine: Line | undefined

  constructor(readonly format: Exclude<UsageFormat, "none">) {
    this.read = READERS[format]
  }

  start(status: number, contentType: string): void {
    this.status = status
    this.sse = contentType.startsWith("text/event-stream")
    if (!this.sse) {
      this.tail = new TailLines(1)
      if (contentType.startsWith("application/x-ndjson")) this.counter = new LineCounter()
    } else if (this.format === "anthropic" || this.format === "responses") {
      this.lines = new LineReader((line) => this.sseLine(line))
    } else {
      // The usage event, the finish event before it and [DONE] after it, with room for split events.
      this.tail = new TailLines(SSE_PIECES_KEPT)
      this.counter = new LineCounter(DATA_START)
    }
  }

  push(chunk: Buffer): void {
    if (!this.sawFirst) this.first(chunk)
    this.counter?.push(chunk)
    if (this.tail !== undefined) this.tail.push(chunk)
    else this.lines?.push(chunk)
  }

  private first(chunk: Buffer) {
    this.sawFirst = true
    const match = MODEL.exec(chunk.toString("utf8", 0, Math.min(chunk.length, 4096)))
    if (match !== null) this.firstModel = jsonString(match[1]!) ?? null
  }

  /** The body ended (or was cut off): read what is left. */
  end(): void {
    if (this.tail !== undefined) {
      const lines = this.tail.end()
      if (this.sse) {
        for (const line of lines) this.sseLine(line)
      } else {
        const last = lines.at(-1)
        const value = last === undefined ? undefined : parseLine(last)
        if (value !== undefined) this.read(this, value)
      }
    } else {
      this.lines?.end()
    }
    const value = this.usageLine === undefined ? undefined : parseLine(this.usageLine)
    if (value !== undefined) this.read(this, value)
    // Once an SSE answer has started, Ollama reports a failure by stopping the stream short of
    // its last event ([DONE], message_stop, response.completed).
    const ended = this.format === "responses" ? this.measured : this.sawLastEvent
    if (this.sse && !ended && this.status >= 200 && this.status < 300) this.failed = true
    if (this.measured) this.countedBy = "ollama"
    else if (this.format === "transcription") {
      if (this.usage.evalCount !== null) {
        this.estimated = true
        this.countedBy = "response_estimate"
      }
    } else this.estimate()
  }

  /** The figures of a stream that ended without Ollama's: the token chunks it delivered. */
  private estimate() {
    const chunks = this.counter === undefined
      ? this.deltas
      // Lines that carry no token: an error, OpenAI's finish event and [DONE].
      : this.counter.count - (this.failed && this.error !== null ? 1 : 0) - (this.sawFinish ? 1 : 0) - (this.sawLastEvent ? 1 : 0)
    if (chunks <= 0 || this.status < 200 || this.status >= 300) return
    this.estimated = true
    this.countedBy = "received_chunks"
    this.usage.evalCount = chunks
  }

  /**
   * An answer that carries no input count of its own (/api/embeddings answers `{"embedding":[...]}`
   * only: server/routes.go `EmbeddingsHandler`): the request's tokens, as the proxy estimated them.
   */
  estimatePrompt(tokens: number): void {
    if (this.usage.promptEvalCount !== null) return
    this.usage.promptEvalCount = tokens
    this.estimated = true
    this.countedBy = "request_estimate"
  }

  /** A load or unload request (`done_reason` load/unload): not an inference. */
  get loadOnly(): boolean {
    return this.format === "native" && (this.usage.doneReason === "load" || this.usage.doneReason === "unload")
  }

  private sseLine(line: Line): void {
    const payload = ssePayload(line)
    if (payload === undefined) {
      // `event: content_block_delta`, `event: response.output_text.delta`: one token each.
      const bytes = isLong(line) ? line.head : line
      if (startsWith(bytes, EVENT) && endsWith(bytes, DELTA) && bytes.indexOf(MESSAGE_DELTA) < 0) this.deltas++
      return
    }
    const bytes = isLong(payload) ? payload.head : payload
    if (startsWith(bytes, DONE) || startsWith(bytes, MESSAGE_STOP)) {
      this.sawLastEvent = true
      return
    }
    if (startsWith(bytes, ERROR_NATIVE) || startsWith(bytes, ERROR_TYPED)) {
      const value = parseLine(payload)
      if (value !== undefined) this.read(this, value)
      return
    }
    if (isLong(payload) ? payload.tail.indexOf(USAGE) >= 0 : bytes.indexOf(USAGE) >= 0) {
      if (this.format === "openai") this.usageLine = payload
      else {
        const value = parseLine(payload)
        if (value !== undefined) this.read(this, value)
      }
    }
    if (this.format === "openai" && !isLong(payload) && bytes.indexOf(FINISH) >= 0) {
      const match = FINISH_REASON.exec(bytes.toString("latin1"))
      if (match !== null) {
        this.usage.doneReason = match[1]!
        this.sawFinish = true
      }
    }
  }
}
