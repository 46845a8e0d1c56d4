/**
 * Delivery: one signed POST of a batch to the webhook, on undici's dispatch callbacks, and what
 * its failures mean (retry or not, and when). The queue (Queue.ts) decides what to send; this
 * module only sends.
 *
 * Every POST carries Standard Webhooks headers (https://www.standardwebhooks.com/): `webhook-id`
 * (the batch's key: a lone record's id, stable across retries), `webhook-timestamp` (this attempt)
 * and, with USER_MODEL_METRICS_WEBHOOK_SECRET, `webhook-signature`, one `v1,` signature per secret
 * so that a receiver verifies with either the old or the new one while they are rotated.
 */
import { Data, Duration, Redacted, Schedule, type Tracer } from "effect"
import type { IncomingHttpHeaders } from "node:http"
import { Webhook as Signer } from "standardwebhooks"
import { type Dispatcher, Pool } from "undici"
import { USER_AGENT } from "../Version.js"

const MAX_RETRY_DELAY = Duration.minutes(1)

/** The webhook answered, but not with a 2xx. */
export class WebhookRejected extends Data.TaggedError("WebhookRejected")<{
  readonly status: number
  readonly retryAfter: Duration.Duration | undefined
}> {
  override get message() {
    return `the webhook answered HTTP ${this.status}`
  }
}

/** No answer: connection refused or reset, DNS, timeout. */
export class WebhookUnreachable extends Data.TaggedError("WebhookUnreachable")<{
  readonly reason: string
}> {
  override get message() {
    return `the webhook did not answer: ${this.reason}`
  }
}

export type DeliveryError = WebhookRejected | WebhookUnreachable

/** 410 Gone: the receiver says this URL takes nothing any more (Standard Webhooks: stop sending). */
export const isGone = (error: DeliveryError): boolean => error._tag === "WebhookRejected" && error.status === 410

/** Transient failures are retried; any other 4xx means the record itself is refused. */
export const isRetryable = (error: DeliveryError): boolean =>
  error._tag === "WebhookUnreachable" || error.status === 408 || error.status === 429 || error.status >= 500

/** A Retry-After header: delay-seconds or an HTTP date. */
export const parseRetryAfter = (value: string | undefined, now: number): Duration.Duration | undefined => {
  if (value === undefined) return undefined
  const v = value.trim()
  if (/^\d+$/.test(v)) return Duration.seconds(Number(v))
  const date = Date.parse(v)
  return Number.isNaN(date) ? undefined : Duration.millis(Math.max(0, date - now))
}

/**
 * When to try again after a failed attempt: after `initial`, doubling, capped at a minute, with
 * jitter so that senders recovering together do not hit the webhook together; after Retry-After
 * when the webhook says; the last try at `maxRetryTime` after the first failure, none after it.
 */
export const retrySchedule = (initial: Duration.Duration, maxRetryTime: Duration.Duration) => {
  const budget = Duration.toMillis(maxRetryTime)
  return Schedule.exponential(initial, 2).pipe(
    Schedule.modifyDelay((_, delay) => Duration.min(delay, MAX_RETRY_DELAY)),
    Schedule.jittered,
    Schedule.zipRight(Schedule.identity<DeliveryError>()),
    Schedule.whileInput(isRetryable),
    Schedule.intersect(Schedule.elapsed),
    Schedule.whileOutput(([, elapsed]) => Duration.toMillis(elapsed) < budget),
    Schedule.modifyDelay(([error, elapsed], delay) =>
      Duration.min(
        error._tag === "WebhookRejected" && error.retryAfter !== undefined ? error.retryAfter : delay,
        Duration.millis(budget - Duration.toMillis(elapsed))
      )
    )
  )
}

/** What went wrong, without the URL (it may carry a token in its query). */
const transportReason = (error: unknown): string => {
  const code = typeof error === "object" && error !== null && "code" in error ? String(error.code) : undefined
  const message = error instanceof Error ? error.message : String(error)
  return code === undefined || message.includes(code) ? message : `${code}: ${message}`
}

const traceparentOf = (span: Tracer.ExternalSpan) => `00-${span.traceId}-${span.spanId}-${span.sampled ? "01" : "00"}`

/** What one POST carries, the same on every retry. */
export interface Payload {
  /** The `webhook-id` and Idempotency-Key: a lone record's id, or a batch's own. */
  readonly key: string
  readonly body: string
  /** The trace of the exchange that produced a lone record; a batch mixes traces and carries none. */
  readonly parent: Tracer.ExternalSpan | undefined
}

/** A POST on the wire, for the shutdown deadline or an interrupted retry to cut. */
export interface Attempt {
  controller?: Dispatcher.DispatchController
  cancelled: boolean
}

/** What a POST came to: undefined when the webhook took it. */
export type Sent = (error: DeliveryError | undefined) => void

/**
 * undici's callbacks for one POST. A class, not an object literal, on purpose: the proxy's relay
 * hands undici a literal with these same five methods, and a second literal of that shape holding
 * other functions makes V8 generalise the map they share. The relay's per-chunk callback then
 * stops being inlined: measured, the stream relay lost a quarter of its throughput.
 *
 * The answer counts from its status line: a 2xx there is the webhook's acknowledgement, whatever
 * then happens to the rest of the response.
 */
class PostHandler implements Dispatcher.DispatchHandler {
  private answered = false

  constructor(private readonly attempt: Attempt, private readonly settle: Sent) {}

  onRequestStart(controller: Dispatcher.DispatchController) {
    if (this.attempt.cancelled) controller.abort(new Error("usage webhook: delivery cancelled"))
    else this.attempt.controller = controller
  }

  onResponseStart(_c: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders) {
    if (statusCode < 200) return // an interim answer: the real one follows
    this.answered = true
    if (statusCode < 300) return this.settle(undefined)
    const value = headers["retry-after"]
    const retryAfter = parseRetryAfter(Array.isArray(value) ? value[0] : value, Date.now())
    this.settle(new WebhookRejected({ status: statusCode, retryAfter }))
  }

  onResponseData() {}

  onResponseEnd() {}

  onResponseError(_c: Dispatcher.DispatchController, error: Error) {
    if (!this.answered) this.settle(new WebhookUnreachable({ reason: transportReason(error) }))
  }
}

export interface PosterOptions {
  readonly url: URL
  readonly apiKey: Redacted.Redacted<string> | undefined
  readonly secrets: ReadonlyArray<Redacted.Redacted<string>>
  readonly connections: number
  readonly timeout: Duration.Duration
}

export interface Poster {
  /** One POST; `sent` runs once with its outcome, unless the attempt was cancelled first. */
  readonly send: (payload: Payload, sent: Sent) => Attempt
  readonly cancel: (attempt: Attempt, reason: string) => void
  readonly close: () => Promise<void>
}

export const makePoster = (options: PosterOptions): Poster => {
  const timeoutMs = Duration.toMillis(options.timeout)
  // undici's own timers (headersTimeout: no status line within WEBHOOK_TIMEOUT of sending) cut a
  // POST the webhook leaves unanswered; it fails as unreachable, so it is retried.
  const pool = new Pool(options.url.origin, { connections: options.connections, connectTimeout: timeoutMs, keepAliveTimeout: 30_000 })
  const path = `${options.url.pathname}${options.url.search}`
  const signers = options.secrets.map((secret) => new Signer(Redacted.value(secret)))
  const fixed: Record<string, string> = { "content-type": "application/json", "user-agent": USER_AGENT }
  if (options.apiKey !== undefined) fixed.authorization = `Bearer ${Redacted.value(options.apiKey)}`

  const send = (payload: Payload, sent: Sent): Attempt => {
    const now = new Date()
    const headers: Record<string, string> = {
      ...fixed,
      "idempotency-key": payload.key,
      "webhook-id": payload.key,
      "webhook-timestamp": String(Math.floor(now.getTime() / 1000))
    }
    if (signers.length > 0) headers["webhook-signature"] = signers.map((s) => s.sign(payload.key, now, payload.body)).join(" ")
    if (payload.parent !== undefined) headers.traceparent = traceparentOf(payload.parent)
    const attempt: Attempt = { cancelled: false }
    pool.dispatch(
      { method: "POST", path, headers, body: payload.body, headersTimeout: timeoutMs, bodyTimeout: timeoutMs },
      new PostHandler(attempt, (error) => {
        if (!attempt.cancelled) sent(error)
      })
    )
    return attempt
  }

  return {
    send,
    cancel: (attempt, reason) => {
      attempt.cancelled = true
      attempt.controller?.abort(new Error(reason))
    },
    close: () => pool.destroy()
  }
}
