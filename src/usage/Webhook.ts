/**
 * UsageWebhook: delivers every usage record to USER_MODEL_METRICS_WEBHOOK_URL, at least once.
 *
 * The proxy hands a record over synchronously, once per exchange. It is written to the outbox
 * (Outbox.ts: Redis, the spool, or memory) and then queued (Queue.ts), which decides what each POST
 * carries; Delivery.ts signs and sends it. A failed POST is retried with exponential backoff, so a
 * slow or failing webhook never touches a client's response. A record leaves the outbox once the
 * webhook acknowledges it with a 2xx, or refuses it with a 4xx (then it is logged whole). A record
 * the webhook did not take (retries exhausted, a 410, the shutdown deadline) stays in a durable
 * outbox for the next start or another worker; the memory outbox logs it whole, one line per
 * record at error level, for an operator to replay. On shutdown the queue is flushed within
 * SHUTDOWN_TIMEOUT.
 */
import { Duration, Effect, FiberSet, Metric, Option, Redacted, Runtime, Schedule, type Tracer } from "effect"
import { randomUUID } from "node:crypto"
import { RedisConfig, ShutdownConfig } from "../config/Shared.js"
import { labelCache, NO_LABELS } from "../telemetry/Metrics.js"
import { type Attempt, type DeliveryError, isGone, isRetryable, makePoster, retrySchedule, WebhookRejected } from "./Delivery.js"
import { memoryOutbox, type Outbox } from "./Outbox.js"
import { type Batch, DeliveryQueue, type Outgoing } from "./Queue.js"
import type { UsageRecord } from "./Record.js"
import { redisOutbox } from "./RedisOutbox.js"
import { openSpool } from "./Spool.js"
import { WebhookConfig } from "./WebhookConfig.js"

export { isRetryable, parseRetryAfter, retrySchedule, WebhookRejected, WebhookUnreachable } from "./Delivery.js"

// The webhook's own instruments: the Prometheus export reads every Effect metric, wherever defined.
/** Labels: outcome = delivered | failed (refused, or gave up after retries) | dropped (queue full) | kept (left in the outbox). */
export const webhookRecords = Metric.counter("usage.webhook.records", {
  description: "Usage records by final outcome",
  incremental: true
})
const outcomeLabels = labelCache(["outcome"])
export const webhookRecordLabels = (outcome: "delivered" | "failed" | "dropped" | "kept") => outcomeLabels(outcome)
const webhookRetries = Metric.counter("usage.webhook.retries", { description: "Webhook delivery attempts retried", incremental: true })
export const webhookQueueDepth = Metric.gauge("usage.webhook.queue.depth", { description: "Usage records waiting for delivery" })
export const outboxAge = Metric.gauge("usage.outbox.age", {
  description: "Seconds the oldest usage record not yet delivered has waited"
})
export const webhookDisabled = Metric.gauge("usage.webhook.disabled", {
  description: "1 once the webhook answered 410 Gone: nothing more is sent to it until restart"
})

/** What every later POST to a webhook that answered 410 comes to, without being sent. */
/** How long start-up waits for the outbox's Redis, as the limits wait for theirs. */
const OUTBOX_READY_WAIT_MS = 2000

const GONE = new WebhookRejected({ status: 410, retryAfter: undefined })

export interface UsageWebhookShape {
  /** Whether a webhook is configured; without one nothing needs metering. */
  readonly enabled: boolean
  /**
   * Hands a record over for delivery. Synchronous and cheap: it is called on the proxy's hot path
   * once per exchange, so it is not traced (a retried delivery is: UsageWebhook.retry).
   */
  readonly offer: (record: UsageRecord, parent?: Tracer.ExternalSpan) => void
}

export class UsageWebhook extends Effect.Service<UsageWebhook>()("app/UsageWebhook", {
  scoped: Effect.gen(function*() {
    const config = yield* WebhookConfig
    const { redisUrl } = yield* RedisConfig
    const { shutdownTimeout } = yield* ShutdownConfig
    // Read as 0 before anything happened, not missing, webhook or not.
    webhookRetries.unsafeValue(NO_LABELS)
    webhookQueueDepth.unsafeValue(NO_LABELS)
    outboxAge.unsafeUpdate(0, NO_LABELS)
    webhookDisabled.unsafeUpdate(0, NO_LABELS)
    if (Option.isNone(config.webhookUrl)) {
      return { enabled: false, offer: () => {} } satisfies UsageWebhookShape as UsageWebhookShape
    }
    const url = config.webhookUrl.value
    const batchSize = config.webhookBatchSize
    // Retries run as fibers of this set: the shutdown deadline, or the scope's end, interrupts them.
    const retries = yield* FiberSet.make<void, never>()
    const runRetry = yield* FiberSet.runtime(retries)<never>()
    const runSync = Runtime.runSync(yield* Effect.runtime<never>())
    const runFork = Runtime.runFork(yield* Effect.runtime<never>())

    // Every inference exchange hands over a record, so the way to the webhook is plain callbacks:
    // measured under the stream benchmark, a record cost ~300 us of the proxy's CPU through the
    // platform HttpClient and still ~65 us through a queue and sender fibers. Effect takes over
    // for the few POSTs that fail: retries on the Schedule, spans, logs.
    const poster = yield* Effect.acquireRelease(
      Effect.sync(() =>
        makePoster({
          url,
          apiKey: Option.getOrUndefined(config.webhookApiKey),
          secrets: config.webhookSecrets,
          connections: config.webhookConcurrency,
          timeout: config.webhookTimeout
        })
      ),
      (poster) => Effect.promise(() => poster.close())
    )

    const spooled = Option.map(config.usageSpoolDir, openSpool)
    if (Option.isSome(spooled) && spooled.value.torn > 0) {
      yield* Effect.logWarning("usage spool: damaged lines skipped").pipe(Effect.annotateLogs({ lines: spooled.value.torn }))
    }
    const fallback: Outbox = Option.getOrElse(spooled, () => memoryOutbox)
    const outbox: Outbox = yield* Effect.acquireRelease(
      Effect.sync(() =>
        Option.match(redisUrl, {
          onNone: () => fallback,
          onSome: (redisUrl) =>
            redisOutbox({
              url: Redacted.value(redisUrl),
              fallback,
              claimIdleMs: Duration.toMillis(config.usageOutboxClaimIdle),
              onFailure: (error) =>
                runFork(
                  Effect.logError("usage outbox: Redis failed, records go to the " + fallback.mode).pipe(
                    Effect.annotateLogs({ error: error.message })
                  )
                ),
              onRecovered: () => runFork(Effect.logInfo("usage outbox: Redis answers again"))
            })
        })
      ),
      (outbox) => Effect.promise(() => outbox.close())
    )
    // Bounded like the limits' wait: a Redis that is down at start leaves the worker serving,
    // with records in the fallback until Redis answers (said once in the log above).
    if (!(yield* Effect.promise(() => outbox.ready(OUTBOX_READY_WAIT_MS)))) {
      yield* Effect.logWarning("usage outbox: Redis did not answer at start, records go to the " + fallback.mode)
    }

    const logUndelivered = (records: ReadonlyArray<Outgoing | UsageRecord>, reason: string, outcome: "failed" | "dropped") =>
      Effect.forEach(records, (record) =>
        Effect.logError("usage record not delivered").pipe(
          Effect.annotateLogs({ reason, record: "json" in record ? JSON.parse(record.json) : record })
        ), { discard: true }).pipe(
          Effect.zipLeft(Effect.sync(() => webhookRecords.unsafeUpdate(records.length, webhookRecordLabels(outcome))))
        )

    /** Not taken by the webhook: left in a durable outbox for later, else logged. */
    const keep = (batch: Batch, reason: string) => {
      if (!outbox.durable) return logUndelivered(batch.records, reason, "failed")
      outbox.release(batch.records)
      webhookRecords.unsafeUpdate(batch.records.length, webhookRecordLabels("kept"))
      return Effect.logWarning("usage records left in the outbox").pipe(
        Effect.annotateLogs({ reason, records: batch.records.length, outbox: outbox.mode })
      )
    }

    const idle = yield* Effect.makeLatch(true)
    let disabled = false

    const nearFull = (queued: number) =>
      runFork(
        Effect.logError("usage queue nearly full: records past WEBHOOK_QUEUE_SIZE will not be taken").pipe(
          Effect.annotateLogs({ queued, capacity: config.webhookQueueSize, outbox: outbox.mode })
        )
      )

    /** POSTs on the wire, and their batches: what the shutdown deadline cuts. */
    const posts = new Map<Attempt, Batch>()

    /** One POST as an Effect, for retries: interrupting it cuts the request. */
    const post = (batch: Batch) =>
      Effect.async<void, DeliveryError>((resume) => {
        const attempt = poster.send(batch, (error) => {
          posts.delete(attempt)
          resume(error === undefined ? Effect.void : Effect.fail(error))
        })
        posts.set(attempt, batch)
        return Effect.sync(() => {
          posts.delete(attempt)
          poster.cancel(attempt, "usage webhook: delivery cancelled")
        })
      })

    const acknowledged = (batch: Batch) => {
      if (!queue.settle(batch)) return
      outbox.ack(batch.records)
      webhookRecords.unsafeUpdate(batch.records.length, webhookRecordLabels("delivered"))
    }

    const gone = Effect.suspend(() => {
      if (disabled) return Effect.void
      disabled = true
      webhookDisabled.unsafeUpdate(1, NO_LABELS)
      return Effect.logError("usage webhook disabled: it answered 410 Gone; nothing more is sent to it until restart").pipe(
        Effect.annotateLogs({ url: `${url.origin}${url.pathname}`, outbox: outbox.mode })
      )
    })

    /** The webhook did not take the batch: a refused record is logged and goes; any other stays. */
    const giveUp = (batch: Batch, error: DeliveryError | undefined, reason: string) =>
      Effect.suspend(() => {
        if (!queue.settle(batch)) return Effect.void
        if (error !== undefined && !isRetryable(error) && !isGone(error)) {
          outbox.ack(batch.records)
          return logUndelivered(batch.records, reason, "failed")
        }
        return keep(batch, reason)
      }).pipe(Effect.uninterruptible)

    const describe = (batch: Batch) => batchSize === 1 ? { record_id: batch.key } : { batch_id: batch.key, records: batch.records.length }

    const policy = retrySchedule(config.webhookRetryDelay, config.webhookMaxRetryTime)

    /**
     * After a failed first POST: retry on the schedule, or give up. The body is one attempt; its
     * first run reports the first POST's failure (made on the fast path, outside Effect) so that
     * the schedule counts from it, and every later run POSTs again.
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
        if (disabled) return yield* Effect.fail(GONE)
        webhookRetries.unsafeUpdate(1, NO_LABELS)
        yield* post(batch)
        acknowledged(batch)
      },
      (effect, batch) =>
        effect.pipe(
          Effect.tapError((error) =>
            Effect.logWarning("usage webhook attempt failed").pipe(Effect.annotateLogs({ ...describe(batch), reason: error.message }))
          ),
          Effect.retry(Schedule.whileInput(policy, (error: DeliveryError) => !isGone(error))),
          Effect.catchAll((error) =>
            Effect.zipRight(
              isGone(error) ? gone : Effect.void,
              giveUp(
                batch,
                error,
                isGone(error) ? "the webhook is gone (410)" : isRetryable(error) ? `gave up retrying: ${error.message}` : error.message
              )
            )
          ),
          Effect.ensuring(Effect.sync(() => queue.finished()))
        )
    )

    const start = (batch: Batch) => {
      if (disabled) return runFork(Effect.ensuring(giveUp(batch, GONE, "the webhook is gone (410)"), Effect.sync(() => queue.finished())))
      const attempt = poster.send(batch, (error) => {
        posts.delete(attempt)
        if (error === undefined) {
          acknowledged(batch)
          return queue.finished()
        }
        const retrying = retry(batch, { first: error })
        runRetry(batch.parent === undefined ? retrying : Effect.withParentSpan(retrying, batch.parent))
      })
      posts.set(attempt, batch)
    }

    const queue: DeliveryQueue = new DeliveryQueue({
      batchSize,
      capacity: config.webhookQueueSize,
      senders: config.webhookConcurrency,
      batchWaitMs: Duration.toMillis(config.webhookBatchWait),
      start,
      newKey: randomUUID,
      nearFull
    })
    queue.onChange = (outstanding) => {
      webhookQueueDepth.unsafeUpdate(outstanding, NO_LABELS)
      if (outstanding === 0) idle.unsafeOpen()
      else idle.unsafeClose()
    }

    const drop = (record: UsageRecord | Outgoing, reason: string) => runSync(logUndelivered([record], reason, "dropped"))
    const full = `queue full (${config.webhookQueueSize} records)`

    const offer = (record: UsageRecord, parent?: Tracer.ExternalSpan): void => {
      if (queue.closed) return drop(record, "offered after shutdown began")
      // Built to its schema (the tests decode what the webhook receives): not validated again.
      const item: Outgoing = { id: record.id, json: JSON.stringify(record), since: Date.now() }
      const queued = () => {
        const taken = queue.offer(item, parent)
        if (taken === "taken") return
        // Past shutdown, a durable outbox keeps it for the next start or another worker.
        if (taken === "closed" && outbox.durable) return webhookRecords.unsafeUpdate(1, webhookRecordLabels("kept"))
        // Refused here, it must not be delivered later: it is logged, and leaves the outbox.
        outbox.ack([item])
        drop(item, taken === "full" ? full : "offered after shutdown began")
      }
      try {
        outbox.add(item, queued)
      } catch (error) {
        // A spool that cannot be written (disk full): the record goes to the log, not nowhere.
        drop(item, `the outbox could not take it: ${error instanceof Error ? error.message : String(error)}`)
      }
    }

    /** Records an earlier run or a dead worker left; what the queue cannot take now stays for later. */
    const claim = Effect.promise(() => outbox.claim()).pipe(
      Effect.flatMap((items) =>
        items.length === 0 || queue.closed ? Effect.void : Effect.suspend(() => {
          let taken = 0
          for (const item of items) if (queue.offer(item) === "taken") taken++
          return Effect.logInfo("delivering usage records from the outbox").pipe(
            Effect.annotateLogs({ records: taken, left: items.length - taken, outbox: outbox.mode })
          )
        })
      )
    )
    yield* Effect.forkScoped(
      claim.pipe(Effect.repeat(Schedule.spaced(Duration.max(Duration.millis(500), Duration.times(config.usageOutboxClaimIdle, 0.5)))))
    )

    const ages = setInterval(() => {
      const oldest = queue.oldest()
      outboxAge.unsafeUpdate(oldest === undefined ? 0 : (Date.now() - oldest) / 1000, NO_LABELS)
    }, 1000)
    ages.unref()
    yield* Effect.addFinalizer(() => Effect.sync(() => clearInterval(ages)))

    yield* Effect.addFinalizer(() =>
      Effect.gen(function*() {
        queue.close()
        if (queue.outstanding > 0) {
          yield* Effect.logInfo("delivering queued usage records").pipe(Effect.annotateLogs({ records: queue.outstanding }))
        }
        // Finalizers run uninterruptibly: without `interruptible` the wait would outlast its deadline.
        yield* idle.await.pipe(
          Effect.interruptible,
          Effect.timeoutTo({ duration: shutdownTimeout, onSuccess: () => true, onTimeout: () => false })
        )
        if (queue.outstanding === 0) return
        // Out of time. What is not done now is kept, and only that: a batch is settled before its
        // POST is cut, so the callbacks of the cut POSTs change nothing, and a 2xx that arrived
        // before this point was taken synchronously and left nothing to keep.
        const onWire = new Set(posts.values())
        const left = [...queue.undone].map((batch) => {
          // A POST cut while the webhook had not answered may still have reached it: replays of
          // these must be deduplicated on `id` (the README says so).
          const reason = onWire.has(batch) ? "shutdown deadline reached while the webhook had not answered" : "shutdown deadline reached"
          queue.settle(batch)
          return { batch, reason }
        })
        yield* FiberSet.clear(retries)
        for (const attempt of posts.keys()) poster.cancel(attempt, "usage webhook shutting down")
        posts.clear()
        for (const { batch, reason } of left) yield* keep(batch, reason)
      }).pipe(Effect.withSpan("UsageWebhook.flush"))
    )

    yield* Effect.logInfo("usage webhook enabled").pipe(
      Effect.annotateLogs({
        url: `${url.origin}${url.pathname}`,
        queue_size: config.webhookQueueSize,
        batch_size: batchSize,
        concurrency: config.webhookConcurrency,
        outbox: outbox.mode,
        signed: config.webhookSecrets.length > 0
      })
    )
    return { enabled: true, offer } satisfies UsageWebhookShape as UsageWebhookShape
  })
}) {}
