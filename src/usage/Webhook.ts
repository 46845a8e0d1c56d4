/**
 * UsageWebhook: delivers every usage record to USER_MODEL_METRICS_WEBHOOK_URL, at least once.
 *
 * The proxy hands a record over synchronously (one queue offer per exchange, no fiber); four
 * sender fibers POST the records, retrying transient failures with exponential backoff, so a slow
 * or failing webhook never touches a client's response. On shutdown the queue is flushed within
 * SHUTDOWN_TIMEOUT. A record that cannot be delivered (queue full, retries exhausted, rejected,
 * shutdown deadline) is logged whole, at error level, for an operator to replay.
 */
import { Data, Duration, Effect, Either, Fiber, Option, Queue, Redacted, Runtime, Schedule } from "effect"
import { type Dispatcher, Pool } from "undici"
import { AppConfig } from "../Config.js"
import { USER_AGENT } from "../Version.js"
import type { UsageRecord } from "./Record.js"

/** Enough to overlap a slow webhook's latency without flooding it. */
const SENDERS = 4
const ATTEMPT_TIMEOUT_MS = 10_000
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

export interface UsageWebhookShape {
  /** Whether a webhook is configured; without one nothing needs metering. */
  readonly enabled: boolean
  /**
   * Hands a record over for delivery. Synchronous and cheap: it is called on the proxy's hot path
   * once per exchange, so it is not traced (a retried delivery is: UsageWebhook.retry).
   */
  readonly offer: (record: UsageRecord) => void
}

export class UsageWebhook extends Effect.Service<UsageWebhook>()("app/UsageWebhook", {
  scoped: Effect.gen(function*() {
    const config = yield* AppConfig
    if (Option.isNone(config.webhookUrl)) {
      return { enabled: false, offer: () => {} } satisfies UsageWebhookShape as UsageWebhookShape
    }
    const url = config.webhookUrl.value
    const apiKey = config.webhookApiKey
    // undici directly, not the platform HttpClient: every inference exchange sends a record, and
    // measured, a record cost ~300 us of CPU through HttpClient (an Effect timeout, an AbortSignal,
    // a response stream, schema encoding, a span) against ~35 us with `post` and `deliver` below.
    const pool = yield* Effect.acquireRelease(
      Effect.sync(() => new Pool(url.origin, { connections: SENDERS, connectTimeout: ATTEMPT_TIMEOUT_MS, keepAliveTimeout: 30_000 })),
      (pool) => Effect.promise(() => pool.destroy())
    )
    const path = `${url.pathname}${url.search}`
    const queue = yield* Queue.dropping<UsageRecord>(config.webhookQueueSize)
    const runFork = Runtime.runFork(yield* Effect.runtime<never>())

    /** Records taken in but not yet delivered or given up; the flush waits for zero. */
    let outstanding = 0
    const idle = yield* Effect.makeLatch(true)
    let closing = false

    const undelivered = (record: UsageRecord, reason: string) =>
      Effect.logError("usage record not delivered").pipe(Effect.annotateLogs({ reason, record }))

    const offer = (record: UsageRecord): void => {
      if (!closing && queue.unsafeOffer(record)) {
        if (outstanding++ === 0) idle.unsafeClose()
        return
      }
      runFork(undelivered(record, closing ? "offered after shutdown began" : `queue full (${config.webhookQueueSize} records)`))
    }

    /** One POST, on undici's dispatch callbacks: no response stream object, no AbortSignal. */
    const post = (record: UsageRecord) =>
      Effect.async<void, DeliveryError>((resume) => {
        const headers: Record<string, string> = {
          "content-type": "application/json",
          "user-agent": USER_AGENT,
          "idempotency-key": record.id
        }
        if (Option.isSome(apiKey)) headers.authorization = `Bearer ${Redacted.value(apiKey.value)}`
        let controller: Dispatcher.DispatchController | undefined
        let status = 0
        let retryAfter: string | undefined
        pool.dispatch(
          {
            method: "POST",
            path,
            headers,
            // Built to its schema (the tests decode what the webhook receives): not validated again.
            body: JSON.stringify(record),
            headersTimeout: ATTEMPT_TIMEOUT_MS,
            bodyTimeout: ATTEMPT_TIMEOUT_MS
          },
          {
            onRequestStart: (c) => {
              controller = c
            },
            onResponseStart: (_c, statusCode, responseHeaders) => {
              if (statusCode < 200) return
              status = statusCode
              const value = responseHeaders["retry-after"]
              retryAfter = Array.isArray(value) ? value[0] : value
            },
            onResponseData: () => {},
            onResponseEnd: () =>
              resume(
                status >= 200 && status < 300
                  ? Effect.void
                  : Effect.fail(new WebhookRejected({ status, retryAfter: parseRetryAfter(retryAfter, Date.now()) }))
              ),
            onResponseError: (_c, error) => resume(Effect.fail(new WebhookUnreachable({ reason: transportReason(error) })))
          }
        )
        return Effect.sync(() => controller?.abort(new Error("usage webhook shutting down")))
      })

    const attemptFailed = (record: UsageRecord, error: DeliveryError) =>
      Effect.logWarning("usage webhook attempt failed").pipe(Effect.annotateLogs({ record_id: record.id, reason: error.message }))

    const schedule = retrySchedule(config.webhookRetryDelay, config.webhookMaxRetryTime)

    /** After a failed first attempt: retry on the schedule, or give the record to the log. */
    const retry = Effect.fn("UsageWebhook.retry")(function*(record: UsageRecord, first: DeliveryError) {
      yield* Effect.annotateCurrentSpan({ "usage.record_id": record.id, "usage.request_id": record.request_id })
      yield* attemptFailed(record, first)
      const driver = yield* Schedule.driver(schedule)
      let error = first
      while (isRetryable(error)) {
        // Sleeps until the next try; fails once the schedule is done (out of time).
        if (Either.isLeft(yield* Effect.either(driver.next(error)))) {
          return yield* undelivered(record, `gave up retrying: ${error.message}`)
        }
        const result = yield* Effect.either(post(record))
        if (Either.isRight(result)) return
        error = result.left
        yield* attemptFailed(record, error)
      }
      yield* undelivered(record, error.message)
    })

    // Nearly every record goes out on its first try: only the others pay for a span, log lines
    // and the schedule (a span per record cost more than the POST itself).
    const deliver = (record: UsageRecord) =>
      post(record).pipe(
        Effect.catchAll((error) => retry(record, error)),
        Effect.onInterrupt(() => undelivered(record, "shutdown deadline reached"))
      )

    const settle = Effect.sync(() => {
      if (--outstanding === 0) idle.unsafeOpen()
    })
    const sender = Queue.take(queue).pipe(
      Effect.flatMap((record) => deliver(record).pipe(Effect.ensuring(settle))),
      Effect.forever
    )
    const senders = yield* Effect.forEach(Array.from({ length: SENDERS }), () => Effect.forkScoped(sender))

    // Added after the senders were forked, so it runs before the scope interrupts them.
    yield* Effect.addFinalizer(() =>
      Effect.gen(function*() {
        closing = true
        if (outstanding > 0) {
          yield* Effect.logInfo("delivering queued usage records").pipe(Effect.annotateLogs({ records: outstanding }))
        }
        // Finalizers run uninterruptibly: without `interruptible` the wait would outlast its deadline.
        yield* idle.await.pipe(Effect.interruptible, Effect.timeoutTo({ duration: config.shutdownTimeout, onSuccess: () => true, onTimeout: () => false }))
        // Senders still retrying log their record as they are interrupted; then what was never taken.
        yield* Fiber.interruptAll(senders)
        for (const record of yield* Queue.takeAll(queue)) yield* undelivered(record, "shutdown deadline reached")
      }).pipe(Effect.withSpan("UsageWebhook.flush"))
    )

    yield* Effect.logInfo("usage webhook enabled").pipe(
      Effect.annotateLogs({ url: `${url.origin}${url.pathname}`, queue_size: config.webhookQueueSize })
    )
    return { enabled: true, offer } satisfies UsageWebhookShape as UsageWebhookShape
  })
}) {}
