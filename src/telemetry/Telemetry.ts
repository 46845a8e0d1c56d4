/**
 * The telemetry consumer of exchanges: for every proxied exchange, the server and GenAI spans
 * (when tracing is on), the request and GenAI metrics, and the access log line. It reads the
 * exchange's classification and its one reading; the span, metric and log work happens once, at
 * the end.
 */
import { Effect, LogLevel, Tracer as EffectTracer } from "effect"
import { type Exchange, type ExchangeConsumer, type ExchangeWatch, writerOf } from "../exchange/Exchange.js"
import { type Outcome, refusedByProxy } from "../exchange/Reading.js"
import { type ResponseUsage, responseUsage } from "./GenAi.js"
import { makeLineLogger } from "./Logging.js"
import {
  activeRequests,
  modelLabel,
  NO_LABELS,
  operationDuration,
  operationLabels,
  requestDuration,
  requestDurationLabels,
  requestLabels,
  requests,
  timeToFirstChunk,
  tokenUsage,
  tokenUsageLabels,
  webSearches,
  webSearchLabels
} from "./Metrics.js"
import { type ExchangeTrace, Tracing } from "./Tracing.js"

/** Telemetry is the one writer of the span an exchange is traced under. */
const writeSpan = writerOf("span", "telemetry")

const PROVIDER = "ollama"

/** Low-cardinality class of a failed exchange, or undefined when it succeeded. */
const errorTypeOf = (outcome: Outcome, status: number, usage: ResponseUsage | undefined): string | undefined => {
  switch (outcome) {
    case "completed":
      if (status >= 400) return String(status)
      return usage?.error !== undefined ? "ollama_error" : undefined
    case "rejected":
    case "forbidden":
    case "rate_limited":
      return String(status)
    default:
      return outcome
  }
}

export const makeTelemetryConsumer: Effect.Effect<ExchangeConsumer, never, Tracing> = Effect.gen(function*() {
  const exchanges = (yield* Tracing).exchanges
  const log = yield* makeLineLogger
  const accessLog = log.enabled(LogLevel.Info)

  const end = (exchange: Exchange, trace: ExchangeTrace | undefined) => {
    const { caller, path, reading, requestId, res, route, startedAt } = exchange
    const { outcome } = reading
    const method = exchange.req.method ?? "GET"
    const operation = route.genAi
    activeRequests.unsafeModify(-1, NO_LABELS)
    const status = exchange.clientStatus
    // An answer the proxy wrote itself (401, 502, 503) counts its body too.
    const bytesOut = reading.bytesOut + (reading.status === null && res.headersSent ? Number(res.getHeader("content-length") ?? 0) : 0)
    // None where Ollama gave no answer (refused by the proxy, Ollama unreachable): no status to read.
    const usage = operation !== undefined ? responseUsage(reading, operation) : undefined
    const errorType = errorTypeOf(outcome, status, usage)
    const statusText = String(status)
    const seconds = (reading.endedAt - startedAt) / 1000
    const keyName = caller.keyName ?? ""
    requests.unsafeUpdate(1, requestLabels(route.route, method, statusText, outcome, keyName))
    requestDuration.unsafeUpdate(seconds, requestDurationLabels(method, route.route, statusText))

    const searches = reading.webSearches
    if (searches !== null && searches > 0) webSearches.unsafeUpdate(searches, webSearchLabels(keyName))

    const requestModel = reading.requestModel
    const sinceUpstream = reading.upstreamAt ?? startedAt
    const ttfc = reading.firstChunkAt === null ? undefined : (reading.firstChunkAt - sinceUpstream) / 1000
    if (operation !== undefined && !refusedByProxy(outcome)) {
      const model = modelLabel(requestModel ?? usage?.model)
      operationDuration.unsafeUpdate((reading.endedAt - sinceUpstream) / 1000, operationLabels(operation, PROVIDER, model, errorType ?? ""))
      if (ttfc !== undefined && errorType === undefined) {
        timeToFirstChunk.unsafeUpdate(ttfc, operationLabels(operation, PROVIDER, model, ""))
      }
      if (usage?.inputTokens !== undefined) {
        tokenUsage.unsafeUpdate(usage.inputTokens, tokenUsageLabels(operation, PROVIDER, model, "input", keyName))
      }
      if (usage?.outputTokens !== undefined && operation !== "embeddings") {
        tokenUsage.unsafeUpdate(usage.outputTokens, tokenUsageLabels(operation, PROVIDER, model, "output", keyName))
      }
    }

    trace?.end({
      status,
      outcome,
      error: reading.error,
      bytesIn: reading.bytesIn,
      bytesOut,
      requestModel,
      requestStream: operation === undefined
        ? undefined
        : reading.requestStream ?? (reading.upstreamAt === null ? undefined : route.streamsByDefault),
      usage,
      timeToFirstChunk: ttfc,
      errorType,
      refusal: exchange.refusal,
      rateLimit: exchange.limits?.refused,
      queueWaitMs: exchange.queueWaitMs
    })

    if (accessLog) {
      const parent = exchange.parentSpan()
      log.log(LogLevel.Info, "access", {
        request_id: requestId,
        trace_id: parent?.traceId,
        span_id: trace?.spanId,
        method,
        path,
        status,
        duration_ms: Math.round(seconds * 10_000) / 10,
        bytes_in: reading.bytesIn,
        bytes_out: bytesOut,
        api_key_name: caller.keyName,
        scope: route.scope,
        refusal: exchange.refusal,
        rate_limit: exchange.limits?.refused,
        user_id: caller.user_id,
        model: requestModel ?? usage?.model,
        outcome,
        input_tokens: usage?.inputTokens,
        output_tokens: operation === "embeddings" ? undefined : usage?.outputTokens,
        usage_estimated: usage?.estimated,
        web_searches: searches ?? undefined,
        policy_rewrote: reading.requestFields?.rewritten?.length ? reading.requestFields.rewritten.join(",") : undefined,
        error: outcome === "upstream_error" || outcome === "unavailable" ? reading.error?.message : undefined
      })
    }
  }

  /** Exchanges without a trace share one watch. */
  const untraced: ExchangeWatch = { end: (exchange) => end(exchange, undefined) }

  return {
    name: "telemetry",
    provides: ["span"],
    open: (exchange) => {
      activeRequests.unsafeModify(1, NO_LABELS)
      if (exchanges === undefined) return untraced
      const { route } = exchange
      const trace = exchanges.start(exchange)
      writeSpan(exchange, EffectTracer.externalSpan({ traceId: trace.traceId, spanId: trace.spanId, sampled: trace.sampled }))
      return {
        upstream: (_exchange, headers) => trace.upstream(headers, route.genAi),
        end: (exchange) => end(exchange, trace)
      }
    }
  }
})
