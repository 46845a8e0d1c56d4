/**
 * Usage records: the consumer of exchanges that turns every finished inference exchange into one
 * record for the webhook. It reads the exchange's one reading; it never sees the bytes.
 */
import { Effect, type Tracer } from "effect"
import { randomUUID } from "node:crypto"
import { WorkerConfig, type WorkerIdentity } from "../config/Shared.js"
import { asksForUsage } from "../exchange/Classify.js"
import type { Exchange, ExchangeConsumer, ExchangeWatch } from "../exchange/Exchange.js"
import { refusedByProxy } from "../exchange/Reading.js"
import type { UsageRecord } from "./Record.js"
import { UsageWebhook } from "./Webhook.js"

const millis = (ms: number) => Math.round(ms * 1000) / 1000

/**
 * Endpoints where the record falls back to the model the request named: the OpenAI ones (for
 * answers that never said), and legacy /api/embeddings, which answers `{"embedding":[...]}` only.
 * Native answers otherwise name the model that answered, or none (a 404 for an unknown model).
 */
const requestModelCounts = (exchange: Exchange) => asksForUsage(exchange.route) || exchange.route.uncounted

/**
 * The record of a finished exchange; undefined when Ollama never got it.
 * `worker` names the RunPod worker that served it, where there is one.
 */
export const recordOf = (exchange: Exchange, worker: WorkerIdentity = {}): UsageRecord | undefined => {
  const { caller, reading } = exchange
  // Ollama never got the request: nothing was used.
  const outcome = reading.outcome
  // A load or unload (`done_reason` load, unload) is recorded too, with no tokens: it changed what
  // every tenant of the worker gets, and it counted against requests_per_minute.
  if (outcome === "unavailable" || refusedByProxy(outcome)) {
    return undefined
  }
  const answer = reading.answer
  const u = answer?.usage
  return {
    id: randomUUID(),
    request_id: exchange.requestId,
    created_at: u?.createdAt ?? new Date().toISOString(),
    endpoint: exchange.path,
    model: u?.model ?? (requestModelCounts(exchange) ? reading.requestModel ?? null : null) ?? answer?.firstModel ?? null,
    api_key_name: caller.keyName,
    key_metadata: caller.key?.metadata ?? null,
    key_period_totals: exchange.limits?.totals ?? null,
    user_id: caller.user_id,
    user_name: caller.user_name,
    user_email: caller.user_email,
    user_role: caller.user_role,
    chat_id: caller.chat_id,
    status: reading.status,
    // A 200 whose body ends in an error object failed mid-response, even though it ended cleanly.
    outcome: outcome === "completed" && reading.failedInBody ? "upstream_error" : outcome,
    stream: reading.stream ?? reading.requestStream ?? null,
    done_reason: u?.doneReason ?? null,
    total_duration: u?.totalDuration ?? null,
    load_duration: u?.loadDuration ?? null,
    prompt_eval_count: u?.promptEvalCount ?? null,
    prompt_eval_duration: u?.promptEvalDuration ?? null,
    eval_count: u?.evalCount ?? null,
    eval_duration: u?.evalDuration ?? null,
    usage_estimated: answer?.estimated === true,
    usage_counted_by: answer?.countedBy ?? null,
    web_searches: reading.webSearches,
    metering_error: reading.meteringError,
    time_to_first_chunk_ms: reading.firstChunkAt === null ? null : millis(reading.firstChunkAt - exchange.startedAt),
    duration_ms: millis(reading.endedAt - exchange.startedAt),
    queue_wait_ms: exchange.queueWaitMs,
    ...worker
  }
}

export const makeUsageRecords = (
  deliver: (record: UsageRecord, parent: Tracer.ExternalSpan | undefined) => void,
  worker: WorkerIdentity = {}
): ExchangeConsumer => {
  const send = (exchange: Exchange) => {
    const record = recordOf(exchange, worker)
    if (record !== undefined) deliver(record, exchange.parentSpan())
  }
  const watch: ExchangeWatch = {
    // With shared limits the key's totals come after a round trip to Redis: the record waits for
    // them, and a failure to make or hand it over then is the boundary's to count and log.
    end: (exchange) => {
      const charged = exchange.limits?.charged
      if (charged === undefined) return send(exchange)
      return charged.then(() => send(exchange))
    }
  }
  // The record carries the key's totals after the charge, and continues the exchange's trace.
  return { name: "usage", after: ["charge", "span"], open: (exchange) => (exchange.route.inference ? watch : undefined) }
}

export class UsageRecords extends Effect.Service<UsageRecords>()("app/UsageRecords", {
  effect: Effect.gen(function*() {
    const webhook = yield* UsageWebhook
    const worker = yield* WorkerConfig
    // Without a webhook no record has anywhere to go: none is made.
    const consumer: ExchangeConsumer | undefined = webhook.enabled ? makeUsageRecords(webhook.offer, worker) : undefined
    return { consumer } as const
  }),
  dependencies: [UsageWebhook.Default]
}) {}
