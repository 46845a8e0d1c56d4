/**
 * One client request and its response as they pass the proxy: what the request is (its route,
 * classified once), who sent it, and the one reading of its bytes. The parts that watch traffic
 * (telemetry, usage records, limits) are consumers of an exchange: they read it, they never read
 * the bytes themselves, and none of them knows of another.
 */
import { Context, Tracer } from "effect"
import type { IncomingHttpHeaders, IncomingMessage, OutgoingHttpHeaders, ServerResponse } from "node:http"
import type { KeyLimits } from "../limits/Table.js"
import type { Caller } from "./Caller.js"
import { asksForUsage, type Route } from "./Classify.js"
import { type Refusal, writeRefusal } from "./Errors.js"
import { type Outcome, Reading } from "./Reading.js"
import type { UsageReaderFactory } from "./UsageReader.js"

export type UpstreamHeaders = Record<string, string | Array<string>>

/**
 * What a consumer does with one exchange. Both run synchronously on the request path: keep them
 * cheap, and do the heavy work (spans, records) once, in `end`.
 */
export interface ExchangeWatch {
  /** The request is about to go to Ollama; a watch may add headers (`traceparent`). */
  readonly upstream?: (exchange: Exchange, headers: UpstreamHeaders) => void
  /**
   * The exchange is over and its reading final. A watch that finishes later (the usage record
   * waits for the charge) returns a promise: its failure is counted and logged like a throw.
   */
  readonly end: (exchange: Exchange) => void | Promise<void>
}

/** What one consumer makes of an exchange that others read (see Consumers.ts). */
export type Provision =
  /** `Exchange.span`: the span the exchange is traced under (telemetry). */
  | "span"
  /** `Exchange.limits`: the key's charge for the exchange and its totals (limits). */
  | "charge"

export interface ExchangeConsumer {
  /** Names the consumer in the log line and metric when it fails. */
  readonly name: string
  /** What it writes on the exchange for others to read. */
  readonly provides?: ReadonlyArray<Provision>
  /** What it reads that another consumer must provide: the service does not start without it. */
  readonly needs?: ReadonlyArray<Provision>
  /** What it reads when a consumer provides it: it then sees the exchange after that consumer. */
  readonly after?: ReadonlyArray<Provision>
  /** Called when an exchange arrives: what watches it, or undefined when this one does not care. */
  readonly open: (exchange: Exchange) => ExchangeWatch | undefined
}

/** The consumers in force; the order they see each exchange in is derived from what they declare (Consumers.ts). */
export class ExchangeConsumers extends Context.Tag("app/ExchangeConsumers")<ExchangeConsumers, ReadonlyArray<ExchangeConsumer>>() {}

// Where the limits of keys (src/limits/) meet the exchange: what they did with one exchange, and
// the admission the boundary calls for a key with limits. Defined here and provided by the
// limits, as the consumers are: the request path knows the shape of an admission, not the
// counters behind it.

/** The key's token totals for the UTC day and month, after an exchange was charged. */
export interface PeriodTotals {
  readonly day: string
  readonly tokens_day: number
  readonly month: string
  readonly tokens_month: number
}

/** What the limits did with one exchange (on `Exchange.limits`). */
export interface ExchangeLimits {
  /** The request went on to Ollama (or was meant to): its tokens are charged at the end. */
  admitted: boolean
  /** The slot it holds in the key's requests in flight; "" for none. */
  slot: string
  /** The name of the limit that refused it. */
  refused: string | undefined
  /** The key's totals after the charge; set when it is known. */
  totals: PeriodTotals | undefined
  /** With a shared store: settles when the charge is done (never rejects). */
  charged: Promise<void> | undefined
}

/** Holds a request of a key with limits until they let it in: then `forward`, else it is refused. */
export type Admit = (exchange: Exchange, limits: KeyLimits, forward: (exchange: Exchange) => void) => void

/**
 * What the limits give the boundary: the admission of keys with limits, and the answer to a
 * key's own usage (GET /v1/usage). Required in the layer's type, with no default: a service built
 * without it would let keys that have limits through unlimited (App.ts provides the limits'; a
 * test provides its own explicitly).
 */
export interface Admission {
  readonly admit: Admit
  /** Answers GET /v1/usage for the exchange's caller, whose key (if the proxy has keys) is valid. */
  readonly ownUsage: (exchange: Exchange) => void
}

export class ExchangeAdmission extends Context.Tag("app/ExchangeAdmission")<ExchangeAdmission, Admission>() {}

/**
 * Which local model names Ollama runs on ollama.com (listed with a `remote_host`): cloud models to
 * the key rules whatever they are called. Provided from src/ollama/RemoteModels.ts by the Server.
 */
export class RemoteModelList extends Context.Tag("app/RemoteModelList")<RemoteModelList, {
  readonly isRemote: (normalizedName: string) => boolean
  /** A read of the list under way after a change (a create, a copy): checks wait for it. */
  readonly pending: () => Promise<void> | undefined
  /** A request that may have changed the list has finished. */
  readonly changed: () => void
}>() {}

/** A consumer's watch of one exchange, and whose it is. */
export interface OpenWatch {
  readonly consumer: ExchangeConsumer
  readonly watch: ExchangeWatch
}

/** What to do with a consumer's failure: it must reach neither the relay nor the other consumers. */
export type ConsumerFailed = (exchange: Exchange, consumer: ExchangeConsumer, stage: "start" | "end", cause: unknown) => void

/** Lets every consumer open its watch of a new exchange. */
export const openWatches = (exchange: Exchange, consumers: ReadonlyArray<ExchangeConsumer>, failed: ConsumerFailed): void => {
  const watches: Array<OpenWatch> = []
  for (const consumer of consumers) {
    try {
      const watch = consumer.open(exchange)
      if (watch !== undefined) watches.push({ consumer, watch })
    } catch (cause) {
      failed(exchange, consumer, "start", cause)
    }
  }
  exchange[OPENED] = watches
}

/** Ends every watch of a finished exchange, each on its own. */
export const endWatches = (exchange: Exchange, failed: ConsumerFailed): void => {
  for (const { consumer, watch } of exchange.watches) {
    try {
      const later = watch.end(exchange)
      if (later !== undefined) later.then(undefined, (cause: unknown) => failed(exchange, consumer, "end", cause))
    } catch (cause) {
      failed(exchange, consumer, "end", cause)
    }
  }
}

/**
 * A change to the bytes of one exchange (asking Ollama for usage the client did not ask for, and
 * hiding it again). Exchanges without one take the plain pass-through path.
 */
export interface ExchangeRewrite {
  /** Called at the response head; a filter for the body, or undefined to relay it unchanged. */
  readonly response?: (status: number, headers: IncomingHttpHeaders) => ChunkFilter | undefined
  /**
   * For small answers changed as a whole (a list of models): called at the response head; the
   * function that makes the body to send, or undefined to relay it unchanged.
   */
  readonly replaceBody?: (status: number, headers: IncomingHttpHeaders) => ((body: Buffer) => Buffer) | undefined
}

/** The rewrites' whole-body changes for this answer, one after the other; undefined when none applies. */
export const replacementOf = (
  rewrites: ReadonlyArray<ExchangeRewrite>,
  status: number,
  headers: IncomingHttpHeaders
): ((body: Buffer) => Buffer) | undefined => {
  const steps = rewrites.flatMap((r) => r.replaceBody?.(status, headers) ?? [])
  return steps.length === 0 ? undefined : steps.length === 1 ? steps[0] : (body) => steps.reduce((b, step) => step(b), body)
}

/** The rewrites' filters for this answer, chained: what one lets through is the next one's input. */
export const filterOf = (
  rewrites: ReadonlyArray<ExchangeRewrite>,
  status: number,
  headers: IncomingHttpHeaders
): ChunkFilter | undefined => {
  const filters = rewrites.flatMap((r) => r.response?.(status, headers) ?? [])
  if (filters.length <= 1) return filters[0]
  return {
    push: (chunk) => filters.reduce((bytes, f) => (bytes.length === 0 ? bytes : f.push(bytes)), chunk),
    end: () => {
      let held = Buffer.alloc(0)
      for (const f of filters) held = Buffer.concat([held.length === 0 ? held : f.push(held), f.end()])
      return held
    }
  }
}

/** Turns the response body into what the client receives, chunk by chunk. */
export interface ChunkFilter {
  /** The bytes to relay now for this chunk; empty to relay nothing yet. */
  push(chunk: Buffer): Buffer
  /** The bytes still held back when the body ends. */
  end(): Buffer
}

const TRACEPARENT = /^[\da-f]{2}-([\da-f]{32})-([\da-f]{16})-([\da-f]{2})$/

/** The client's own `traceparent`, when it is well-formed. */
const incomingTraceParent = (req: IncomingMessage): Tracer.ExternalSpan | undefined => {
  const header = req.headers.traceparent
  const match = typeof header === "string" ? TRACEPARENT.exec(header.trim()) : null
  if (match === null || /^0+$/.test(match[1]!) || /^0+$/.test(match[2]!)) return undefined
  return Tracer.externalSpan({ traceId: match[1]!, spanId: match[2]!, sampled: (parseInt(match[3]!, 16) & 1) === 1 })
}

const NO_WATCHES: ReadonlyArray<OpenWatch> = []

/**
 * The fields of an exchange written as it runs, each by one part of the service. The part that
 * owns a field takes its writer once, when its module loads (`writerOf`); every other part reads
 * the field on the Exchange, where it is read-only. So no field has two writers whose order
 * matters, and a part that reads a field declares, as a consumer, that it comes after the writer.
 */
export interface Written {
  /** Telemetry (src/telemetry/Telemetry.ts): the span the exchange is traced under. */
  span: Tracer.ExternalSpan | undefined
  /** Limits (src/limits/Limits.ts): what the key's limits did with the exchange. */
  limits: ExchangeLimits | undefined
  /** Limits: the key's rate-limit headers, for the answer from Ollama. */
  limitHeaders: OutgoingHttpHeaders | undefined
  /** The schedule (src/schedule/Scheduler.ts): how long the request waited for a slot. */
  queueWaitMs: number | null
  /** The boundary (Boundary.ts): the body is read whole and checked before it goes on. */
  checked: boolean
}

/** Where an exchange keeps its written fields: reachable only through this module's writers. */
const WRITTEN = Symbol("written")
/** Where it keeps its consumers' watches: written by openWatches only. */
const OPENED = Symbol("opened")

const writers = new Map<keyof Written, string>()

/**
 * The writer of one field, for the part that owns it: taken once per process, at module load. A
 * second part asking for the same field fails at start, naming both.
 */
export const writerOf = <K extends keyof Written>(field: K, owner: string): (exchange: Exchange, value: Written[K]) => void => {
  const taken = writers.get(field)
  if (taken !== undefined) throw new Error(`Exchange.${field} is written by ${taken} only; ${owner} cannot write it too`)
  writers.set(field, owner)
  return (exchange, value) => {
    exchange[WRITTEN][field] = value
  }
}

export class Exchange {
  readonly reading: Reading;
  /** The consumers watching this exchange; set by openWatches once they are open. */
  [OPENED]: ReadonlyArray<OpenWatch> = NO_WATCHES
  /** The changes the proxy makes to this exchange's answer, applied in the order they were added. */
  readonly rewrites: Array<ExchangeRewrite> = []
  /** Why the proxy refused the request, when it did (for the access line and the span); set by refuse. */
  private refusedFor: string | undefined = undefined
  /** The fields written as the exchange runs, each by its one writer (`writerOf`). */
  readonly [WRITTEN]: Written = { span: undefined, limits: undefined, limitHeaders: undefined, queueWaitMs: null, checked: false }
  private over = false

  readonly requestId: string
  readonly req: IncomingMessage
  /** Read-only for consumers: the status of answers the proxy writes itself (401, 502, 503) is here. */
  readonly res: ServerResponse
  /** performance.now() when the request arrived. */
  readonly startedAt: number
  /** The path Ollama routes the request by (Target.ts): the one path every consumer reports. */
  readonly path: string
  /** The request target sent to Ollama: that path, encoded, and the query. */
  readonly target: string
  readonly route: Route
  readonly caller: Caller
  private readonly onFinish: (exchange: Exchange) => void

  /** What is set once, as the request arrives; everything below it is written as the exchange runs. */
  constructor(arrived: {
    readonly requestId: string
    readonly req: IncomingMessage
    readonly res: ServerResponse
    readonly startedAt: number
    readonly path: string
    readonly target: string
    readonly route: Route
    readonly caller: Caller
    readonly readers: UsageReaderFactory
    readonly onFinish: (exchange: Exchange) => void
  }) {
    this.requestId = arrived.requestId
    this.req = arrived.req
    this.res = arrived.res
    this.startedAt = arrived.startedAt
    this.path = arrived.path
    this.target = arrived.target
    this.route = arrived.route
    this.caller = arrived.caller
    this.onFinish = arrived.onFinish
    // The whole body is scanned where a rule checks its model, or include_usage reads its stream flag.
    this.reading = new Reading(arrived.route, arrived.readers, arrived.caller.key !== null || asksForUsage(arrived.route))
  }

  get watches(): ReadonlyArray<OpenWatch> {
    return this[OPENED]
  }

  /**
   * The span this exchange is traced under (telemetry's). Work the exchange causes after it ends
   * (the usage POST) continues it.
   */
  get span(): Tracer.ExternalSpan | undefined {
    return this[WRITTEN].span
  }

  /** What the key's limits did with this exchange; undefined for a key without limits. */
  get limits(): ExchangeLimits | undefined {
    return this[WRITTEN].limits
  }

  /** The key's rate-limit headers for the answer from Ollama. */
  get limitHeaders(): OutgoingHttpHeaders | undefined {
    return this[WRITTEN].limitHeaders
  }

  /** How long it waited for a slot of Ollama's; null when it did not ask for one. */
  get queueWaitMs(): number | null {
    return this[WRITTEN].queueWaitMs
  }

  /**
   * The body is read whole and checked before it goes on (src/policy/BodyCheck.ts): decoded and
   * read as Ollama reads it, the key's model and the request policy applied, usage asked for.
   */
  get checked(): boolean {
    return this[WRITTEN].checked
  }

  get refusal(): string | undefined {
    return this.refusedFor
  }

  /** The request is about to go to Ollama with these headers. */
  upstream(headers: UpstreamHeaders): void {
    this.reading.upstreamAt = performance.now()
    for (const { watch } of this[OPENED]) watch.upstream?.(this, headers)
  }

  /** Whether the exchange is over (its outcome is set). */
  get finished(): boolean {
    return this.over
  }

  /** The proxy answers for Ollama, which never sees the request, and the exchange is over. */
  refuse(refusal: Refusal, outcome: "rejected" | "forbidden" | "rate_limited"): void {
    this.refusedFor = refusal.message
    writeRefusal(this.res, this.route.family, refusal, this.requestId)
    this.finish(outcome)
  }

  /** The exchange is over; only the first call counts. */
  finish(outcome: Outcome, error?: Error): void {
    if (this.over) return
    this.over = true
    this.reading.finish(outcome, error)
    this.onFinish(this)
  }

  /**
   * The span work caused by this exchange should continue: the proxy's own when the exchange is
   * traced, else the client's `traceparent` (so a usage POST still carries the client's trace id).
   */
  parentSpan(): Tracer.ExternalSpan | undefined {
    return this.span ?? incomingTraceParent(this.req)
  }

  /** The status the client got: Ollama's, the one the proxy wrote, or 499 when the client left first. */
  get clientStatus(): number {
    if (this.reading.status !== null && this.reading.status >= 200) return this.reading.status
    if (this.res.headersSent) return this.res.statusCode
    return this.reading.outcome === "client_aborted" ? 499 : this.res.statusCode
  }
}
