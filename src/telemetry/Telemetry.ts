/**
 * The telemetry tap: for every proxied exchange, the server and GenAI spans (when tracing is
 * on), the request and GenAI metrics, and the access log line. It runs inside the proxy's
 * callbacks, so it only counts while bytes flow; parsing and the span, metric and log work happen
 * once, at the end. The bytes of an inference exchange are read by its shared ExchangeMeter,
 * which this tap feeds when it is the first to ask for it (the usage tap then only reads it).
 */
import { Effect, LogLevel } from "effect"
import type { ExchangeTap, Outcome } from "../http/Exchange.js"
import { pathOf, whoFrom } from "../http/Headers.js"
import { readingOf } from "../usage/Meter.js"
import { classify, type ResponseUsage, responseUsage } from "./GenAi.js"
import { makeLineLogger } from "./Logging.js"
import {
  activeRequests,
  modelLabel,
  operationDuration,
  operationLabels,
  requestDuration,
  requestDurationLabels,
  requestLabels,
  requests,
  timeToFirstChunk,
  tokenUsage,
  tokenUsageLabels
} from "./Metrics.js"
import { incomingTraceParent, rememberExchangeTrace, Tracing } from "./Tracing.js"

const PROVIDER = "ollama"
const NO_LABELS: ReadonlyArray<never> = []

/** Low-cardinality class of a failed exchange, or undefined when it succeeded. */
const errorTypeOf = (outcome: Outcome, status: number, usage: ResponseUsage | undefined): string | undefined => {
  switch (outcome) {
    case "completed":
      if (status >= 400) return String(status)
      return usage?.error !== undefined ? "ollama_error" : undefined
    case "rejected":
      return String(status)
    default:
      return outcome
  }
}

export const makeTelemetryTap: Effect.Effect<ExchangeTap, never, Tracing> = Effect.gen(function*() {
  const exchanges = (yield* Tracing).exchanges
  const log = yield* makeLineLogger
  const accessLog = log.enabled(LogLevel.Info)

  return (context) => {
    const { keyName, req, requestId, res, startedAt } = context
    const method = req.method ?? "GET"
    const path = pathOf(req.url)
    const endpoint = classify(method, path)
    const operation = endpoint.operation
    activeRequests.unsafeModify(1, NO_LABELS)
    const who = whoFrom(req.headers)

    const trace = exchanges?.start({
      req,
      startedAt,
      route: endpoint.route,
      knownRoute: endpoint.route !== "other",
      requestId,
      keyName,
      userId: who.user_id ?? undefined,
      userName: who.user_name ?? undefined
    })
    if (trace !== undefined) rememberExchangeTrace(req, trace)

    const meter = endpoint.kind === undefined ? undefined : readingOf(context, endpoint.kind)
    const feeds = meter?.claim() === true
    let bytesIn = 0
    let bytesOut = 0
    let status = 0
    let upstreamAt: number | undefined
    let firstChunkAt: number | undefined

    return {
      onUpstreamRequest: (headers) => {
        upstreamAt = performance.now()
        trace?.upstream(headers, operation)
      },
      onRequestData: (chunk) => {
        bytesIn += chunk.length
        if (feeds) meter!.requestData(chunk)
      },
      onResponseStart: (s, headers) => {
        status = s
        if (feeds) meter!.responseStart(s, headers)
      },
      onData: (chunk) => {
        firstChunkAt ??= performance.now()
        bytesOut += chunk.length
        if (feeds) meter!.push(chunk)
      },
      onEnd: (outcome, error) => {
        const end = performance.now()
        activeRequests.unsafeModify(-1, NO_LABELS)
        if (status === 0) {
          // An answer the proxy wrote itself (401, 502, 503), or none at all.
          status = res.headersSent ? res.statusCode : outcome === "client_aborted" ? 499 : res.statusCode
          bytesOut += res.headersSent ? Number(res.getHeader("content-length") ?? 0) : 0
        }
        let usage: ResponseUsage | undefined
        if (meter !== undefined && operation !== undefined && outcome !== "rejected" && outcome !== "unavailable") {
          try {
            meter.end()
            usage = responseUsage(meter, operation)
          } catch {
            usage = undefined
          }
        }
        const errorType = errorTypeOf(outcome, status, usage)
        const statusText = String(status)
        const seconds = (end - startedAt) / 1000
        requests.unsafeUpdate(1, requestLabels(endpoint.route, method, statusText, outcome, keyName ?? ""))
        requestDuration.unsafeUpdate(seconds, requestDurationLabels(method, endpoint.route, statusText))

        const requestModel = meter?.request.model
        const sinceUpstream = upstreamAt ?? startedAt
        const ttfc = firstChunkAt === undefined ? undefined : (firstChunkAt - sinceUpstream) / 1000
        if (operation !== undefined && outcome !== "rejected") {
          const model = modelLabel(requestModel ?? usage?.model)
          operationDuration.unsafeUpdate((end - sinceUpstream) / 1000, operationLabels(operation, PROVIDER, model, errorType ?? ""))
          if (ttfc !== undefined && errorType === undefined) {
            timeToFirstChunk.unsafeUpdate(ttfc, operationLabels(operation, PROVIDER, model, ""))
          }
          if (usage?.inputTokens !== undefined) {
            tokenUsage.unsafeUpdate(usage.inputTokens, tokenUsageLabels(operation, PROVIDER, model, "input", keyName ?? ""))
          }
          if (usage?.outputTokens !== undefined && operation !== "embeddings") {
            tokenUsage.unsafeUpdate(usage.outputTokens, tokenUsageLabels(operation, PROVIDER, model, "output", keyName ?? ""))
          }
        }

        trace?.end({
          status,
          outcome,
          error,
          bytesIn,
          bytesOut,
          requestModel,
          requestStream: operation === undefined
            ? undefined
            : meter?.request.stream ?? (upstreamAt === undefined ? undefined : endpoint.streamsByDefault),
          usage,
          timeToFirstChunk: ttfc,
          errorType
        })

        if (accessLog) {
          log.log(LogLevel.Info, "access", {
            request_id: requestId,
            trace_id: trace?.traceId ?? incomingTraceParent(req)?.traceId,
            span_id: trace?.spanId,
            method,
            path,
            status,
            duration_ms: Math.round(seconds * 10_000) / 10,
            bytes_in: bytesIn,
            bytes_out: bytesOut,
            api_key_name: keyName,
            user_id: who.user_id,
            model: requestModel ?? usage?.model,
            outcome,
            input_tokens: usage?.inputTokens,
            output_tokens: operation === "embeddings" ? undefined : usage?.outputTokens,
            error: outcome === "upstream_error" || outcome === "unavailable" ? error?.message : undefined
          })
        }
      }
    }
  }
})
