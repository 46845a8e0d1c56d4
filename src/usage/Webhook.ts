/**
 * UsageWebhook: delivers every usage record to USER_MODEL_METRICS_WEBHOOK_URL, at least once.
 *
 * The proxy hands a record over synchronously, once per exchange: it is POSTed at once when one
 * of WEBHOOK_CONCURRENCY connections is free, else queued (bounded); a failed POST is retried
 * with exponential backoff, so a slow or failing webhook never touches a client's response. On
 * shutdown the queue is flushed within SHUTDOWN_TIMEOUT. A record that cannot be delivered (queue full, retries exhausted, rejected,
 * shutdown deadline) is logged whole, at error level, for an operator to replay.
 */
import { Data, Duration, Effect, Either, Fiber, identity, MutableQueue, Option, Redacted, Runtime, Schedule, type Tracer } from "effect"
import type { IncomingHttpHeaders } from "node:http"
import { type Dispatcher, Pool } from "undici"
import { AppConfig } from "../Config.js"
import { NO_LABELS, webhookQueueDepth, webhookRecordLabels, webhookRecords, webhookRetries } from "../telemetry/Metrics.js"
import { USER_AGENT } from "../Version.js"
import type { UsageRecord } from "./Record.js"

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
  readonly offer: (record: UsageRecord, parent?: Tracer.ExternalSpan) => void
}

/** A record on its way: the JSON is made once, when the record is handed over. */
interface Outgoing {
  readonly id: string
  readonly body: string
  /** The trace of the exchange that produced the record, continued by every POST of it. */
  readonly parent: Tracer.ExternalSpan | undefined
}

const traceparentOf = (span: Tracer.ExternalSpan) => `00-${span.traceId}-${span.spanId}-${span.sampled ? "01" : "00"}`

/** A POST under way: when it was sent and, once undici has begun it, how to cut it. */
interface Attempt {
  readonly since: number
  controller?: Dispatcher.DispatchController
}

/** What a POST came to: undefined when the webhook took the record. */
type Sent = (error: DeliveryError | undefined) => void

/**
 * undici's callbacks for one POST. A class, not an object literal, on purpose: the proxy's relay
 * hands undici a literal with these same five methods, and a second literal of that shape holding
 * other functions makes V8 generalise the map they share. The relay's per-chunk callback then
 * stops being inlined: measured, the stream relay lost a quarter of its throughput.
 */
class PostHandler implements Dispatcher.DispatchHandler {
  private status = 0
  private retryAfter: string | undefined

  constructor(
    private readonly started: (controller: Dispatcher.DispatchController) => void,
    private readonly settle: (error: DeliveryError | undefined) => void
  ) {}

  onRequestStart(controller: Dispatcher.DispatchController) {
    this.started(controller)
  }

  onResponseStart(_c: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders) {
    if (statusCode < 200) return // an interim answer: the real one follows
    this.status = statusCode
    const value = headers["retry-after"]
    this.retryAfter = Array.isArray(value) ? value[0] : value
  }

  onResponseData() {}

  onResponseEnd() {
    const status = this.status
    this.settle(
      status >= 200 && status < 300 ? undefined : new WebhookRejected({ status, retryAfter: parseRetryAfter(this.retryAfter, Date.now()) })
    )
  }

  onResponseError(_c: Dispatcher.DispatchController, error: Error) {
    this.settle(new WebhookUnreachable({ reason: transportReason(error) }))
  }
}

export class UsageWebhook extends Effect.Service<UsageWebhook>()("app/UsageWebhook", {
  scoped: Effect.gen(function*() {
    const config = yield* AppConfig
    if (Option.isNone(config.webhookUrl)) {
      return { enabled: false, offer: () => {} } satisfies UsageWebhookShape as UsageWebhookShape
    }
    const url = config.webhookUrl.value
    const timeoutMs = Duration.toMillis(config.webhookTimeout)
    // One record per POST and one POST per connection at a time: with a webhook R seconds away,
    // at most senders / R records per second get through; the rest wait in the queue.
    const senders = config.webhookConcurrency
    const pool = yield* Effect.acquireRelease(
      Effect.sync(() => new Pool(url.origin, { connections: senders, connectTimeout: timeoutMs, keepAliveTimeout: 30_000 })),
      (pool) => Effect.promise(() => pool.destroy())
    )
    const path = `${url.pathname}${url.search}`
    const runtime = yield* Effect.runtime<never>()
    const runFork = Runtime.runFork(runtime)

    // Every inference exchange hands over a record, so the way to the webhook is plain callbacks:
    // measured under the stream benchmark, a record cost ~300 us of the proxy's CPU through the
    // platform HttpClient (an Effect timeout, an AbortSignal, a response stream, schema encoding,
    // a span) and still ~65 us through a queue and sender fibers. Effect takes over for the few
    // records whose first POST fails: retries on the Schedule, spans, logs.
    const waiting = MutableQueue.bounded<Outgoing>(config.webhookQueueSize)
    /** POSTs and retries under way; at most `senders`. */
    let active = 0
    /** Records taken in but not yet delivered or given up: active + waiting. The flush waits for 0. */
    let outstanding = 0
    const idle = yield* Effect.makeLatch(true)
    /** Shutdown has begun: new records are refused. */
    let closing = false
    /** The shutdown deadline has passed: what is still under way is logged, not retried. */
    let stopped = false
    const inFlight = new Map<Outgoing, Attempt>()
    const retrying = new Set<Fiber.RuntimeFiber<void>>()

    const undelivered = (item: Outgoing | UsageRecord, reason: string, outcome: "failed" | "dropped" = "failed") =>
      Effect.logError("usage record not delivered").pipe(
        Effect.zipLeft(Effect.sync(() => webhookRecords.unsafeUpdate(1, webhookRecordLabels(outcome)))),
        Effect.annotateLogs({ reason, record: "body" in item ? JSON.parse(item.body) : item })
      )

    /** The headers every POST carries, made once. */
    const fixedHeaders: Record<string, string> = { "content-type": "application/json", "user-agent": USER_AGENT }
    if (Option.isSome(config.webhookApiKey)) fixedHeaders.authorization = `Bearer ${Redacted.value(config.webhookApiKey.value)}`

    /** One POST, on undici's dispatch callbacks: no response stream object, no AbortSignal. */
    const send = (item: Outgoing, sent: Sent) => {
      const headers: Record<string, string> = { ...fixedHeaders, "idempotency-key": item.id }
      if (item.parent !== undefined) headers.traceparent = traceparentOf(item.parent)
      const attempt: Attempt = { since: performance.now() }
      inFlight.set(item, attempt)
      pool.dispatch(
        // undici's own timeouts are off: the sweep below times every POST out (WEBHOOK_TIMEOUT).
        { method: "POST", path, headers, body: item.body, headersTimeout: 0, bodyTimeout: 0 },
        new PostHandler(
          (controller) => {
            if (inFlight.get(item) === attempt) attempt.controller = controller
            else controller.abort(new Error("usage webhook: delivery cancelled"))
          },
          (error) => {
            inFlight.delete(item)
            if (!stopped) sent(error)
          }
        )
      )
    }

    /** A POST as an Effect, for retries: interrupting it cuts the request. */
    const post = (item: Outgoing) =>
      Effect.async<void, DeliveryError>((resume) => {
        send(item, (error) => resume(error === undefined ? Effect.void : Effect.fail(error)))
        return Effect.sync(() => {
          const attempt = inFlight.get(item)
          inFlight.delete(item)
          attempt?.controller?.abort(new Error("usage webhook shutting down"))
        })
      })

    // One timer for every POST under way: a POST unanswered after WEBHOOK_TIMEOUT is cut, and
    // fails as unreachable (so it is retried). Checked a few times per timeout, at most once a second.
    const sweep = setInterval(() => {
      const expired = performance.now() - timeoutMs
      for (const attempt of inFlight.values()) {
        if (attempt.since <= expired) attempt.controller?.abort(new Error(`no answer within ${timeoutMs} ms`))
      }
    }, Math.min(1000, Math.max(10, timeoutMs / 4)))
    sweep.unref()
    yield* Effect.addFinalizer(() => Effect.sync(() => clearInterval(sweep)))

    const attemptFailed = (item: Outgoing, error: DeliveryError) =>
      Effect.logWarning("usage webhook attempt failed").pipe(Effect.annotateLogs({ record_id: item.id, reason: error.message }))

    const schedule = retrySchedule(config.webhookRetryDelay, config.webhookMaxRetryTime)

    /** After a failed first POST: retry on the schedule, or give the record to the log. */
    const retry = Effect.fn("UsageWebhook.retry")(function*(item: Outgoing, first: DeliveryError) {
      yield* Effect.annotateCurrentSpan({ "usage.record_id": item.id })
      yield* attemptFailed(item, first)
      const driver = yield* Schedule.driver(schedule)
      let error = first
      while (isRetryable(error)) {
        // Sleeps until the next try; fails once the schedule is done (out of time).
        if (Either.isLeft(yield* Effect.either(driver.next(error)))) {
          return yield* undelivered(item, `gave up retrying: ${error.message}`)
        }
        webhookRetries.unsafeUpdate(1, NO_LABELS)
        const result = yield* Effect.either(post(item))
        if (Either.isRight(result)) return delivered()
        error = result.left
        yield* attemptFailed(item, error)
      }
      yield* undelivered(item, error.message)
    }, (effect, item) =>
      Effect.onInterrupt(effect, () => undelivered(item, "shutdown deadline reached")).pipe(
        item.parent === undefined ? identity : Effect.withParentSpan(item.parent)
      ))

    const delivered = () => webhookRecords.unsafeUpdate(1, webhookRecordLabels("delivered"))

    const finished = () => {
      active--
      if (--outstanding === 0) idle.unsafeOpen()
      webhookQueueDepth.unsafeUpdate(outstanding, NO_LABELS)
      const next = MutableQueue.poll(waiting, undefined)
      if (next !== undefined) start(next)
    }

    const start = (item: Outgoing) => {
      active++
      send(item, (error) => {
        if (error === undefined) {
          delivered()
          return finished()
        }
        const fiber = runFork(retry(item, error))
        retrying.add(fiber)
        fiber.addObserver(() => {
          retrying.delete(fiber)
          if (!stopped) finished()
        })
      })
    }

    const offer = (record: UsageRecord, parent?: Tracer.ExternalSpan): void => {
      if (closing) {
        runFork(undelivered(record, "offered after shutdown began", "dropped"))
        return
      }
      // Built to its schema (the tests decode what the webhook receives): not validated again.
      const item: Outgoing = { id: record.id, body: JSON.stringify(record), parent }
      if (active >= senders && !MutableQueue.offer(waiting, item)) {
        runFork(undelivered(record, `queue full (${config.webhookQueueSize} records)`, "dropped"))
        return
      }
      if (outstanding++ === 0) idle.unsafeClose()
      webhookQueueDepth.unsafeUpdate(outstanding, NO_LABELS)
      if (active < senders) start(item)
    }

    yield* Effect.addFinalizer(() =>
      Effect.gen(function*() {
        closing = true
        if (outstanding > 0) {
          yield* Effect.logInfo("delivering queued usage records").pipe(Effect.annotateLogs({ records: outstanding }))
        }
        // Finalizers run uninterruptibly: without `interruptible` the wait would outlast its deadline.
        yield* idle.await.pipe(
          Effect.interruptible,
          Effect.timeoutTo({
            duration: config.shutdownTimeout,
            onSuccess: () => true,
            onTimeout: () => false
          })
        )
        stopped = true
        // Out of time: retries log their record as they are interrupted, POSTs under way are cut
        // and logged, and so is every record still waiting.
        yield* Fiber.interruptAll(retrying)
        for (const [item, attempt] of inFlight) {
          attempt.controller?.abort(new Error("usage webhook shutting down"))
          yield* undelivered(item, "shutdown deadline reached")
        }
        inFlight.clear()
        for (let item = MutableQueue.poll(waiting, undefined); item !== undefined; item = MutableQueue.poll(waiting, undefined)) {
          yield* undelivered(item, "shutdown deadline reached")
        }
      }).pipe(Effect.withSpan("UsageWebhook.flush"))
    )

    yield* Effect.logInfo("usage webhook enabled").pipe(
      Effect.annotateLogs({ url: `${url.origin}${url.pathname}`, queue_size: config.webhookQueueSize })
    )
    return { enabled: true, offer } satisfies UsageWebhookShape as UsageWebhookShape
  })
}) {}
