/**
 * UsageWebhook: delivers every usage record to USER_MODEL_METRICS_WEBHOOK_URL, at least once.
 *
 * The proxy hands a record over synchronously, once per exchange. With
 * USER_MODEL_METRICS_WEBHOOK_BATCH_SIZE at 1 (the default) each record is POSTed alone, at once when
 * one of WEBHOOK_CONCURRENCY connections is free, else queued (bounded); above 1, records gather
 * into a batch, POSTed as one JSON array when it is full or USER_MODEL_METRICS_WEBHOOK_BATCH_WAIT
 * after its first record. A failed POST is retried with exponential backoff, so a slow or failing
 * webhook never touches a client's response. On shutdown the queue is flushed within
 * SHUTDOWN_TIMEOUT. A record that cannot be delivered (queue full, retries exhausted, rejected,
 * shutdown deadline) is logged whole, one line per record, at error level, for an operator to
 * replay; a record is logged only if the webhook did not acknowledge it with a 2xx.
 */
import { Data, Duration, Effect, FiberSet, Metric, Option, Redacted, Runtime, Schedule, type Tracer } from "effect"
import { randomUUID } from "node:crypto"
import type { IncomingHttpHeaders } from "node:http"
import { type Dispatcher, Pool } from "undici"
import { AppConfig } from "../Config.js"
import { labelCache, NO_LABELS } from "../telemetry/Metrics.js"
import { USER_AGENT } from "../Version.js"
import type { UsageRecord } from "./Record.js"

// The webhook's own instruments: the Prometheus export reads every Effect metric, wherever defined.
/** Labels: outcome = delivered | failed (gave up after retries) | dropped (queue full). */
export const webhookRecords = Metric.counter("usage.webhook.records", {
  description: "Usage records by final outcome",
  incremental: true
})
const outcomeLabels = labelCache(["outcome"])
export const webhookRecordLabels = (outcome: "delivered" | "failed" | "dropped") => outcomeLabels(outcome)
const webhookRetries = Metric.counter("usage.webhook.retries", { description: "Webhook delivery attempts retried", incremental: true })
export const webhookQueueDepth = Metric.gauge("usage.webhook.queue.depth", { description: "Usage records waiting for delivery" })

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
  readonly json: string
}

/**
 * What one POST carries, the same on every retry: one record (its `id` is the Idempotency-Key, its
 * exchange's trace the POST's `traceparent`), or a batch as a JSON array under a key of its own.
 */
interface Batch {
  readonly key: string
  readonly records: Array<Outgoing>
  /** Made when the batch is closed. */
  body: string
  /** The trace of the exchange that produced a lone record; a batch mixes traces and carries none. */
  readonly parent: Tracer.ExternalSpan | undefined
  /** A POST of it is on the wire (for the log line at the shutdown deadline). */
  posting: boolean
  /** Acknowledged by a 2xx, or given to the log: nothing more happens to it. */
  done: boolean
}

const traceparentOf = (span: Tracer.ExternalSpan) => `00-${span.traceId}-${span.spanId}-${span.sampled ? "01" : "00"}`

/** A POST on the wire: when it was sent and, once undici has begun it, how to cut it. */
interface Attempt {
  readonly since: number
  controller?: Dispatcher.DispatchController
}

/** What a POST came to: undefined when the webhook took it. */
type Sent = (error: DeliveryError | undefined) => void

/**
 * undici's callbacks for one POST. A class, not an object literal, on purpose: the proxy's relay
 * hands undici a literal with these same five methods, and a second literal of that shape holding
 * other functions makes V8 generalise the map they share. The relay's per-chunk callback then
 * stops being inlined: measured, the stream relay lost a quarter of its throughput.
 *
 * The answer counts from its status line: a 2xx there is the webhook's acknowledgement, whatever
 * then happens to the rest of the response; `ended` runs once the response is over, either way.
 */
class PostHandler implements Dispatcher.DispatchHandler {
  private answered = false

  constructor(
    private readonly started: (controller: Dispatcher.DispatchController) => void,
    private readonly settle: Sent,
    private readonly ended: () => void
  ) {}

  onRequestStart(controller: Dispatcher.DispatchController) {
    this.started(controller)
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

  onResponseEnd() {
    this.ended()
  }

  onResponseError(_c: Dispatcher.DispatchController, error: Error) {
    this.ended()
    if (!this.answered) this.settle(new WebhookUnreachable({ reason: transportReason(error) }))
  }
}

export class UsageWebhook extends Effect.Service<UsageWebhook>()("app/UsageWebhook", {
  scoped: Effect.gen(function*() {
    const config = yield* AppConfig
    // Read as 0 before anything happened, not missing, webhook or not.
    webhookRetries.unsafeValue(NO_LABELS)
    webhookQueueDepth.unsafeValue(NO_LABELS)
    if (Option.isNone(config.webhookUrl)) {
      return { enabled: false, offer: () => {} } satisfies UsageWebhookShape as UsageWebhookShape
    }
    const url = config.webhookUrl.value
    const timeoutMs = Duration.toMillis(config.webhookTimeout)
    const batchSize = config.webhookBatchSize
    const batchWaitMs = Duration.toMillis(config.webhookBatchWait)
    // One POST per connection at a time: with a webhook R seconds away, at most
    // senders x batch size / R records per second get through; the rest wait in the queue.
    const senders = config.webhookConcurrency
    const pool = yield* Effect.acquireRelease(
      Effect.sync(() => new Pool(url.origin, { connections: senders, connectTimeout: timeoutMs, keepAliveTimeout: 30_000 })),
      (pool) => Effect.promise(() => pool.destroy())
    )
    const path = `${url.pathname}${url.search}`
    // Retries run as fibers of this set: closing the service's scope interrupts what is left.
    const retries = yield* FiberSet.make<void, never>()
    const runRetry = yield* FiberSet.runtime(retries)<never>()
    const runSync = Runtime.runSync(yield* Effect.runtime<never>())

    // Every inference exchange hands over a record, so the way to the webhook is plain callbacks:
    // measured under the stream benchmark, a record cost ~300 us of the proxy's CPU through the
    // platform HttpClient (an Effect timeout, an AbortSignal, a response stream, schema encoding,
    // a span) and still ~65 us through a queue and sender fibers. Effect takes over for the few
    // POSTs that fail: retries on the Schedule, spans, logs.

    /** Closed batches waiting for a sender. */
    const waiting: Array<Batch> = []
    /** The batch records gather in (batch size above 1), and the timer that closes it. */
    let open: Batch | undefined
    let openTimer: ReturnType<typeof setTimeout> | undefined
    /** Records in `open` and `waiting`: at most WEBHOOK_QUEUE_SIZE. */
    let queued = 0
    /** POSTs and retries under way; at most `senders`. */
    let active = 0
    /** Records taken in and not yet acknowledged or logged. The flush waits for 0. */
    let outstanding = 0
    const idle = yield* Effect.makeLatch(true)
    /** Every batch not done yet: what the shutdown deadline logs. */
    const undone = new Set<Batch>()
    /** POSTs on the wire: what the timeout sweep and the shutdown deadline cut. */
    const posts = new Set<Attempt>()
    /** Shutdown has begun: new records are refused, the open batch goes at once. */
    let closing = false

    const logUndelivered = (records: ReadonlyArray<Outgoing | UsageRecord>, reason: string, outcome: "failed" | "dropped") =>
      Effect.forEach(records, (record) =>
        Effect.logError("usage record not delivered").pipe(
          Effect.annotateLogs({ reason, record: "json" in record ? JSON.parse(record.json) : record })
        ), { discard: true }).pipe(
          Effect.zipLeft(Effect.sync(() => webhookRecords.unsafeUpdate(records.length, webhookRecordLabels(outcome))))
        )

    /** The end of a batch: acknowledged (delivered) or given to the log. */
    const settleBatch = (batch: Batch) => {
      batch.done = true
      undone.delete(batch)
      outstanding -= batch.records.length
      if (outstanding === 0) idle.unsafeOpen()
      webhookQueueDepth.unsafeUpdate(outstanding, NO_LABELS)
    }

    const acknowledged = (batch: Batch) => {
      if (batch.done) return
      settleBatch(batch)
      webhookRecords.unsafeUpdate(batch.records.length, webhookRecordLabels("delivered"))
    }

    /** Logs a batch's records unless it is already done (a 2xx or the shutdown deadline came first). */
    const giveUp = (batch: Batch, reason: string) =>
      Effect.suspend(() => {
        if (batch.done) return Effect.void
        settleBatch(batch)
        return logUndelivered(batch.records, reason, "failed")
      }).pipe(Effect.uninterruptible)

    /** The headers every POST carries, made once. */
    const fixedHeaders: Record<string, string> = { "content-type": "application/json", "user-agent": USER_AGENT }
    if (Option.isSome(config.webhookApiKey)) fixedHeaders.authorization = `Bearer ${Redacted.value(config.webhookApiKey.value)}`

    /**
     * One POST, on undici's dispatch callbacks: no response stream object, no AbortSignal. `sent`
     * runs once, unless the batch is done by then (the shutdown deadline cut it); returns the
     * attempt, for a retry to cut it when interrupted.
     */
    const send = (batch: Batch, sent: Sent): Attempt => {
      const headers: Record<string, string> = { ...fixedHeaders, "idempotency-key": batch.key }
      if (batch.parent !== undefined) headers.traceparent = traceparentOf(batch.parent)
      const attempt: Attempt = { since: performance.now() }
      posts.add(attempt)
      batch.posting = true
      pool.dispatch(
        // undici's own timeouts are off: the sweep below times every POST out (WEBHOOK_TIMEOUT).
        { method: "POST", path, headers, body: batch.body, headersTimeout: 0, bodyTimeout: 0 },
        new PostHandler(
          (controller) => {
            if (posts.has(attempt)) attempt.controller = controller
            else controller.abort(new Error("usage webhook: delivery cancelled"))
          },
          (error) => {
            batch.posting = false
            // The acknowledgement is taken here, synchronously: nothing can log this batch later.
            if (error === undefined) acknowledged(batch)
            if (!batch.done || error === undefined) sent(error)
          },
          () => posts.delete(attempt)
        )
      )
      return attempt
    }

    /** A POST as an Effect, for retries: interrupting it cuts the request. */
    const post = (batch: Batch) =>
      Effect.async<void, DeliveryError>((resume) => {
        const attempt = send(batch, (error) => resume(error === undefined ? Effect.void : Effect.fail(error)))
        return Effect.sync(() => {
          posts.delete(attempt)
          attempt.controller?.abort(new Error("usage webhook: delivery cancelled"))
        })
      })

    // One timer for every POST on the wire: a POST unanswered after WEBHOOK_TIMEOUT is cut, and
    // fails as unreachable (so it is retried). Checked a few times per timeout, at most once a second.
    const sweep = setInterval(() => {
      const expired = performance.now() - timeoutMs
      for (const attempt of posts) {
        if (attempt.since <= expired) attempt.controller?.abort(new Error(`no answer within ${timeoutMs} ms`))
      }
    }, Math.min(1000, Math.max(10, timeoutMs / 4)))
    sweep.unref()
    yield* Effect.addFinalizer(() => Effect.sync(() => clearInterval(sweep)))

    const describe = (batch: Batch) => batchSize === 1 ? { record_id: batch.key } : { batch_id: batch.key, records: batch.records.length }

    const attemptFailed = (batch: Batch, error: DeliveryError) =>
      Effect.logWarning("usage webhook attempt failed").pipe(Effect.annotateLogs({ ...describe(batch), reason: error.message }))

    const policy = retrySchedule(config.webhookRetryDelay, config.webhookMaxRetryTime)

    /**
     * After a failed first POST: retry on the schedule, or give the batch to the log. The body is
     * one attempt; its first run reports the first POST's failure (made on the fast path, outside
     * Effect) so that the schedule counts from it, and every later run POSTs again.
     */
    const retry = Effect.fn("UsageWebhook.retry")(
      function*(batch: Batch, failed: { first: DeliveryError | undefined }) {
        const first = failed.first
        if (first !== undefined) {
          failed.first = undefined
          yield* Effect.annotateCurrentSpan(
            batchSize === 1 ? { "usage.record_id": batch.key } : { "usage.batch_id": batch.key, "usage.records": batch.records.length }
          )
          return yield* Effect.fail(first)
        }
        webhookRetries.unsafeUpdate(1, NO_LABELS)
        yield* post(batch)
      },
      (effect, batch) =>
        effect.pipe(
          Effect.tapError((error) => attemptFailed(batch, error)),
          Effect.retry(policy),
          Effect.catchAll((error) => giveUp(batch, isRetryable(error) ? `gave up retrying: ${error.message}` : error.message)),
          // Its sender is busy until the batch is done: a failing webhook slows intake, not memory.
          Effect.ensuring(Effect.sync(finished))
        )
    )

    const finished = () => {
      active--
      let next = waiting.shift()
      while (next?.done === true) next = waiting.shift()
      if (next !== undefined) {
        queued -= next.records.length
        start(next)
      }
    }

    const start = (batch: Batch) => {
      active++
      send(batch, (error) => {
        if (error === undefined) return finished()
        const retrying = retry(batch, { first: error })
        runRetry(batch.parent === undefined ? retrying : Effect.withParentSpan(retrying, batch.parent))
      })
    }

    const take = (batch: Batch) => {
      undone.add(batch)
      if (outstanding === 0) idle.unsafeClose()
      outstanding += batch.records.length
      webhookQueueDepth.unsafeUpdate(outstanding, NO_LABELS)
    }

    /** Closes the gathering batch: it goes at once if a sender is free, else it waits its turn. */
    const closeOpen = () => {
      const batch = open
      if (batch === undefined) return
      open = undefined
      if (openTimer !== undefined) clearTimeout(openTimer)
      openTimer = undefined
      batch.body = `[${batch.records.map((r) => r.json).join(",")}]`
      if (active < senders) {
        queued -= batch.records.length
        start(batch)
      } else waiting.push(batch)
    }

    const drop = (record: UsageRecord, reason: string) => runSync(logUndelivered([record], reason, "dropped"))

    const offer = (record: UsageRecord, parent?: Tracer.ExternalSpan): void => {
      if (closing) return drop(record, "offered after shutdown began")
      // Built to its schema (the tests decode what the webhook receives): not validated again.
      const item: Outgoing = { id: record.id, json: JSON.stringify(record) }
      if (batchSize === 1) {
        const batch: Batch = { key: item.id, records: [item], body: item.json, parent, posting: false, done: false }
        if (active < senders) {
          take(batch)
          return start(batch)
        }
        if (queued >= config.webhookQueueSize) return drop(record, `queue full (${config.webhookQueueSize} records)`)
        take(batch)
        queued++
        waiting.push(batch)
        return
      }
      if (queued >= config.webhookQueueSize) return drop(record, `queue full (${config.webhookQueueSize} records)`)
      if (open === undefined) {
        open = { key: randomUUID(), records: [], body: "", parent: undefined, posting: false, done: false }
        take(open)
        openTimer = setTimeout(closeOpen, batchWaitMs)
        openTimer.unref()
      }
      open.records.push(item)
      queued++
      outstanding++
      webhookQueueDepth.unsafeUpdate(outstanding, NO_LABELS)
      if (open.records.length >= batchSize) closeOpen()
    }

    yield* Effect.addFinalizer(() =>
      Effect.gen(function*() {
        closing = true
        closeOpen()
        if (outstanding > 0) {
          yield* Effect.logInfo("delivering queued usage records").pipe(Effect.annotateLogs({ records: outstanding }))
        }
        // Finalizers run uninterruptibly: without `interruptible` the wait would outlast its deadline.
        yield* idle.await.pipe(
          Effect.interruptible,
          Effect.timeoutTo({ duration: config.shutdownTimeout, onSuccess: () => true, onTimeout: () => false })
        )
        if (outstanding === 0) return
        // Out of time. What is not done now is logged, and only that: a batch is marked done
        // before its POST is cut, so the callbacks of the cut POSTs change nothing, and a 2xx
        // that arrived before this point was taken synchronously and left nothing to log.
        const left = [...undone].map((batch) => {
          settleBatch(batch)
          // A POST cut while the webhook had not answered may still have reached it: replays of
          // these lines must be deduplicated on `id` (the README says so).
          return {
            batch,
            reason: batch.posting ? "shutdown deadline reached while the webhook had not answered" : "shutdown deadline reached"
          }
        })
        yield* FiberSet.clear(retries)
        for (const attempt of posts) attempt.controller?.abort(new Error("usage webhook shutting down"))
        posts.clear()
        waiting.length = 0
        for (const { batch, reason } of left) yield* logUndelivered(batch.records, reason, "failed")
      }).pipe(Effect.withSpan("UsageWebhook.flush"))
    )

    yield* Effect.logInfo("usage webhook enabled").pipe(
      Effect.annotateLogs({
        url: `${url.origin}${url.pathname}`,
        queue_size: config.webhookQueueSize,
        batch_size: batchSize,
        concurrency: senders
      })
    )
    return { enabled: true, offer } satisfies UsageWebhookShape as UsageWebhookShape
  })
}) {}
