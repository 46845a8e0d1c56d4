/**
 * The one reading of an exchange, made as its bytes pass and shared by every consumer: the
 * request's model and `stream` flag from its body (bounded memory), the response's status, first
 * chunk time, sizes, usage figures and outcome.
 *
 * The relay feeds it synchronously from its callbacks. A failure inside the reading (a bug in a
 * reader, a body no reader expected) must neither break the relay nor vanish: it is caught here,
 * the reading stops, and `meteringError` says what went wrong, so the boundary logs and counts it
 * and every record made from this reading says it is incomplete.
 */
import { Schema } from "effect"
import type { IncomingHttpHeaders } from "node:http"
import type { Route } from "./Classify.js"
import { RequestScanner } from "./RequestScan.js"
import type { UsageReader, UsageReaderFactory } from "./UsageReader.js"

export const Outcome = Schema.Literal(
  /** The whole response reached the client. */
  "completed",
  /** The client went away first; the upstream request was aborted. */
  "client_aborted",
  /** Ollama failed or vanished mid-response; the client's connection was cut. */
  "upstream_error",
  /** Ollama could not be reached; the client got a 503. */
  "unavailable",
  /** The proxy refused the request (no or invalid API key, a 401, a bad target, a 400); Ollama never saw it. */
  "rejected",
  /** The key may not do this (a scope, a model): a 403; Ollama never saw it. */
  "forbidden",
  /** The key's limits refused it (a 429), or could not be checked and refuse then (a 503); Ollama never saw it. */
  "rate_limited"
)
export type Outcome = typeof Outcome.Type

/** The proxy answered for Ollama (a key, a scope, a model, a limit, a bad target): Ollama never saw the request. */
export const refusedByProxy = (outcome: Outcome): outcome is "rejected" | "forbidden" | "rate_limited" =>
  outcome === "rejected" || outcome === "forbidden" || outcome === "rate_limited"

/** The request as the proxy's policy read it whole (src/policy/BodyCheck.ts), as Ollama reads it. */
export interface RequestFields {
  readonly model: string | undefined
  readonly stream: boolean | undefined
  /** The proxy asked a stream for its usage event, which the client did not ask for. */
  readonly usageInjected?: boolean
  /** The request declares a web search tool (permitted: the key has the web scope). */
  readonly webSearch?: boolean
  /** The fields the policy rewrote or dropped. */
  readonly rewritten?: ReadonlyArray<string>
  /** /api/embeddings: the prompt's tokens as the proxy estimates them (Ollama reports none). */
  readonly promptTokensEstimate?: number | undefined
}

const describe = (cause: unknown) => (cause instanceof Error ? cause.message : String(cause))

/**
 * The web searches Ollama ran for one answer, counted from the blocks that report them: Anthropic's
 * `server_tool_use` (middleware/anthropic.go writes one per search), the Responses API's
 * `web_search_call` items (middleware/openai.go), or in its streams their `.completed` events.
 * A model's text cannot fake one: a quote inside a JSON string is escaped.
 */
class SearchCounter {
  count = 0
  private carry: Buffer = Buffer.alloc(0)
  constructor(private readonly pattern: Buffer) {}

  push(chunk: Buffer): void {
    const bytes = this.carry.length === 0 ? chunk : Buffer.concat([this.carry, chunk])
    for (let at = bytes.indexOf(this.pattern); at >= 0; at = bytes.indexOf(this.pattern, at + this.pattern.length)) this.count++
    this.carry = Buffer.from(bytes.subarray(Math.max(0, bytes.length - this.pattern.length + 1)))
  }
}

const SEARCH_PATTERNS = {
  anthropic: Buffer.from(`"type":"server_tool_use"`),
  responses: Buffer.from(`"type":"web_search_call"`),
  responsesStream: Buffer.from(`"type":"response.web_search_call.completed"`)
}

export class Reading {
  /** The request body's top-level `model` and `stream`; undefined where the body is not JSON. */
  readonly request: RequestScanner | undefined
  /** The usage figures of an inference answer; undefined for other requests. */
  readonly answer: UsageReader | undefined
  /** Set when the body was read whole and checked; then it, not the scanner, says what the request asks. */
  requestFields: RequestFields | undefined = undefined
  bytesIn = 0
  /** performance.now() when the request went to Ollama; null when it never did. */
  upstreamAt: number | null = null
  /** Ollama's status; null when no answer came from Ollama (the proxy answered, or nobody did). */
  status: number | null = null
  /** Whether the answer streams (NDJSON or SSE); null until the response head says. */
  stream: boolean | null = null
  /** performance.now() of the first body chunk from Ollama. */
  firstChunkAt: number | null = null
  /** Body bytes Ollama sent. */
  bytesOut = 0
  endedAt = 0
  outcome: Outcome = "completed"
  error: Error | undefined = undefined
  /** What broke the reading, when something did; the figures are then incomplete. */
  meteringError: string | null = null
  /** Counts the web searches of an answer to a request that declared a web search tool. */
  private searches: SearchCounter | undefined
  private feeding = true

  /** `checked`: a rule will check the model, so the whole body is scanned (see RequestScan.ts). */
  constructor(route: Route, readers: UsageReaderFactory, checked = false) {
    this.request = route.jsonBody ? new RequestScanner(checked) : undefined
    this.answer = route.inference && route.usage !== "none" ? readers(route.usage) : undefined
  }

  requestData(chunk: Buffer): void {
    this.bytesIn += chunk.length
    if (this.request === undefined || !this.feeding) return
    try {
      this.request.write(chunk)
    } catch (cause) {
      this.broke("request body", cause)
    }
  }

  /** A body read whole, counted; what it asks is read once, by the policy (requestFields). */
  requestBytes(length: number): void {
    this.bytesIn += length
  }

  responseStart(status: number, headers: IncomingHttpHeaders): void {
    this.status = status
    const type = headers["content-type"] ?? ""
    this.stream = type.startsWith("text/event-stream") || type.startsWith("application/x-ndjson")
    if (this.requestFields?.webSearch === true && status < 300) {
      const format = this.answer?.format
      this.searches = new SearchCounter(
        format === "anthropic" ? SEARCH_PATTERNS.anthropic : this.stream ? SEARCH_PATTERNS.responsesStream : SEARCH_PATTERNS.responses
      )
    }
    if (this.answer === undefined || !this.feeding) return
    try {
      this.answer.start(status, type)
    } catch (cause) {
      this.broke("response head", cause)
    }
  }

  responseData(chunk: Buffer): void {
    if (this.firstChunkAt === null) this.firstChunkAt = performance.now()
    this.bytesOut += chunk.length
    this.searches?.push(chunk)
    if (this.answer === undefined || !this.feeding) return
    try {
      this.answer.push(chunk)
    } catch (cause) {
      this.broke("response body", cause)
    }
  }

  finish(outcome: Outcome, error: Error | undefined): void {
    this.endedAt = performance.now()
    this.outcome = outcome
    this.error = error
    // Ollama never answered: there is nothing to read.
    if (this.answer === undefined || !this.feeding || this.status === null) return
    try {
      this.answer.end()
      const estimate = this.requestFields?.promptTokensEstimate
      if (estimate !== undefined && this.status < 300) this.answer.estimatePrompt(estimate)
    } catch (cause) {
      this.broke("response end", cause)
    }
  }

  /** The request's model, as the client named it. */
  get requestModel(): string | undefined {
    return this.requestFields !== undefined ? this.requestFields.model : this.request?.model
  }

  /** The request's `stream` flag, as the client set it. */
  get requestStream(): boolean | undefined {
    return this.requestFields !== undefined ? this.requestFields.stream : this.request?.stream
  }

  /** The web searches Ollama ran on the operator's account; null when the request declared none. */
  get webSearches(): number | null {
    return this.requestFields?.webSearch === true ? this.searches?.count ?? 0 : null
  }

  /** A load or unload request (`done_reason` load/unload): not an inference, nothing to bill. */
  get loadOnly(): boolean {
    return this.answer?.loadOnly === true
  }

  /** Ollama reported an error inside a 2xx answer (an error line mid-stream, a stream stopped short). */
  get failedInBody(): boolean {
    return this.answer?.failed === true && this.status !== null && this.status < 300
  }

  private broke(stage: string, cause: unknown) {
    this.feeding = false
    this.meteringError = `${stage}: ${describe(cause)}`
  }
}
