/**
 * UsageTap: the proxy tap that meters every inference exchange and hands its usage record to the
 * webhook, once, when the exchange ends. Everything here runs synchronously on the hot path;
 * other requests (model lists, pulls, uploads) get no observer at all.
 */
import { Effect, type Tracer } from "effect"
import { randomUUID } from "node:crypto"
import type { IncomingHttpHeaders } from "node:http"
import { AppConfig, type WorkerIdentity } from "../Config.js"
import type { ExchangeRewrite, ExchangeTap, Outcome as ExchangeOutcome } from "../http/Exchange.js"
import { pathOf, whoFrom } from "../http/Headers.js"
import { exchangeParentSpan } from "../telemetry/Tracing.js"
import { INCLUDE_USAGE_ENDPOINTS, includeUsage, MAX_REQUEST_BODY, usageEventFilter } from "./IncludeUsage.js"
import { apiKindOf, type ExchangeMeter, readingOf } from "./Meter.js"
import type { Outcome, UsageRecord } from "./Record.js"
import { UsageWebhook } from "./Webhook.js"

const millis = (ms: number) => Math.round(ms * 1000) / 1000

const outcomeOf = (outcome: Exclude<ExchangeOutcome, "unavailable" | "rejected">, meter: ExchangeMeter): Outcome => {
  // A 200 whose body ends in an error object failed mid-response, even though it ended cleanly.
  if (outcome === "completed" && meter.failed && meter.status !== null && meter.status < 300) return "upstream_error"
  return outcome
}

/**
 * The rewrite for the two OpenAI endpoints: add include_usage to a streamed request, then hide the
 * usage event again when the proxy was the one asking.
 */
const includeUsageRewrite = (path: string): ExchangeRewrite => {
  let injected = false
  return {
    maxRequestBody: MAX_REQUEST_BODY,
    request: (body) => {
      const request = includeUsage(body)
      injected = request.body !== undefined
      return request.body
    },
    response: (status, headers) => (injected ? usageEventFilter(path, status, headers) : undefined)
  }
}

/**
 * Where the record falls back to the model the request named: the OpenAI endpoints (for answers
 * that never said), and legacy /api/embeddings, which answers `{"embedding":[...]}` only. Native
 * answers otherwise name the model that answered, or none (a 404 for an unknown model).
 */
const REQUEST_MODEL_ENDPOINTS: ReadonlySet<string> = new Set([...INCLUDE_USAGE_ENDPOINTS, "/api/embeddings"])

export const makeUsageTap = (
  deliver: (record: UsageRecord, parent: Tracer.ExternalSpan | undefined) => void,
  worker: WorkerIdentity = {}
): ExchangeTap =>
(context) => {
  const path = pathOf(context.req.url)
  const kind = apiKindOf(context.req.method, path)
  if (kind === undefined) return undefined
  // The exchange's one reading: fed here unless another tap (telemetry) asked for it first.
  const meter = readingOf(context, kind)
  const feeds = meter.claim()
  const rewrite = INCLUDE_USAGE_ENDPOINTS.has(path) ? includeUsageRewrite(path) : undefined
  return {
    rewrite,
    ...(feeds
      ? {
        onRequestData: meter.requestData,
        onResponseStart: (status: number, headers: IncomingHttpHeaders) => meter.responseStart(status, headers),
        onData: meter.push
      }
      : {}),
    onEnd: (exchangeOutcome) => {
      // Ollama never got the request: nothing was used.
      if (exchangeOutcome === "unavailable" || exchangeOutcome === "rejected") return
      meter.end()
      if (meter.loadOnly) return
      const outcome = outcomeOf(exchangeOutcome, meter)
      const u = meter.usage
      deliver({
        id: randomUUID(),
        request_id: context.requestId,
        created_at: u.createdAt ?? new Date().toISOString(),
        endpoint: path,
        model: u.model ?? (REQUEST_MODEL_ENDPOINTS.has(path) ? meter.request.model ?? null : null) ?? meter.firstModel,
        api_key_name: context.keyName,
        ...whoFrom(context.req.headers),
        status: meter.status,
        outcome,
        stream: meter.stream ?? meter.request.stream ?? null,
        done_reason: u.doneReason,
        total_duration: u.totalDuration,
        load_duration: u.loadDuration,
        prompt_eval_count: u.promptEvalCount,
        prompt_eval_duration: u.promptEvalDuration,
        eval_count: u.evalCount,
        eval_duration: u.evalDuration,
        time_to_first_chunk_ms: meter.firstChunkAt === null ? null : millis(meter.firstChunkAt - context.startedAt),
        duration_ms: millis(performance.now() - context.startedAt),
        ...worker
      }, exchangeParentSpan(context.req))
    }
  }
}

export class UsageTap extends Effect.Service<UsageTap>()("app/UsageTap", {
  effect: Effect.gen(function*() {
    const webhook = yield* UsageWebhook
    const { worker } = yield* AppConfig
    // Without a webhook no record has anywhere to go: the proxy then meters nothing.
    const tap: ExchangeTap | undefined = webhook.enabled ? makeUsageTap(webhook.offer, worker) : undefined
    return { tap } as const
  }),
  dependencies: [UsageWebhook.Default]
}) {}
