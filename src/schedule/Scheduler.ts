/**
 * The schedule of Ollama's slots: at most QUEUE_SLOTS inference requests (by default
 * OLLAMA_NUM_PARALLEL, what Ollama runs at once) go to Ollama at a time; the others wait in one
 * queue per API key, and a free slot goes to the key with the least slot time so far for its
 * weight (Fair.ts). Without it Ollama queues what it cannot run in one FIFO line, and one key's
 * burst delays every other key's first token by the whole burst.
 *
 * Only inference waits: model management, reads and Ollama's health checks go straight on. The
 * proxy has one pool of slots for the worker, not one per model: the model is known only once the
 * body is read, in the relay, after this. With one model loaded (the RunPod case) that is the
 * same; with several, a request for one model may wait for a slot another model holds.
 *
 * A request is handed to the relay when it gets a slot; the slot is freed when its exchange ends
 * (this is a consumer of exchanges), and a stream is never cut to free one. A waiting request is
 * refused past the key's queue depth (QUEUE_MAX_PER_KEY), the worker's (QUEUE_MAX) or the longest
 * wait (QUEUE_MAX_WAIT), and leaves the queue at once when its client hangs up: Ollama never sees it.
 *
 * Plain callbacks and one timer per waiting request, no fiber: see src/exchange/Boundary.ts.
 */
import { Duration, Effect, Metric, MetricBoundaries, Runtime, type Scope } from "effect"
import { type Exchange, type ExchangeConsumer, type ExchangeWatch, writerOf } from "../exchange/Exchange.js"
import { labelCache, NO_LABELS } from "../telemetry/Metrics.js"
import type { Dispatch } from "./Dispatch.js"
import { Fair, type Ticket } from "./Fair.js"
import { QueueConfig } from "./QueueConfig.js"
import { queueRefusal, type QueueRefusalReason, retryAfterMs } from "./Refusals.js"

/** Labels: api_key_name. Left out of public scrapes, like every per-key gauge. */
const queueDepth = Metric.gauge("ollama_proxy.queue.depth", {
  description: "Inference requests of the key waiting for a slot of Ollama's"
})
const queueWaiting = Metric.gauge("ollama_proxy.queue.waiting", {
  description: "Inference requests waiting for a slot of Ollama's, every key together"
})
/** Labels: outcome = started (got a slot) | refused (waited QUEUE_MAX_WAIT) | left (its client hung up). */
const queueWait = Metric.histogram(
  "ollama_proxy.queue.wait",
  MetricBoundaries.fromIterable([0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 60, 120]),
  "Time inference requests waited for a slot of Ollama's, in seconds (0 when one was free), by how the wait ended"
)
const outcomeLabels = labelCache(["outcome"])
const slotsBusy = Metric.gauge("ollama_proxy.slots.busy", { description: "Slots of Ollama's held by inference requests" })
const slotsTotal = Metric.gauge("ollama_proxy.slots.total", { description: "Inference requests the proxy sends Ollama at once" })
/** Labels: reason = key_queue_full | worker_queue_full | waited_too_long. */
const queueRefusals = Metric.counter("ollama_proxy.queue.refusals", {
  description: "Inference requests refused for want of a slot of Ollama's (429 or 503), by reason",
  incremental: true
})
const keyLabels = labelCache(["api_key_name"])
const reasonLabels = labelCache(["reason"])

/** A request in the schedule: what to send on, and while it waits, its timer and hang-up watch. */
class Waiter {
  timer: ReturnType<typeof setTimeout> | undefined = undefined
  onClose: (() => void) | undefined = undefined
  constructor(readonly exchange: Exchange, readonly forward: (exchange: Exchange) => void) {}
}

/** The schedule is the one writer of an exchange's wait (the relay turns it into x-queue-wait-ms). */
const writeQueueWait = writerOf("queueWaitMs", "the schedule")

export interface SchedulerShape {
  /** Undefined with QUEUE_SLOTS=0: inference requests go to Ollama as they come. */
  readonly dispatch: Dispatch | undefined
  /** Frees the slot of each exchange that held one, when it ends. */
  readonly consumer: ExchangeConsumer | undefined
}

export class Scheduler extends Effect.Service<Scheduler>()("app/Scheduler", {
  scoped: Effect.gen(function*(): Effect.fn.Return<SchedulerShape, never, QueueConfig | Scope.Scope> {
    const queue = yield* QueueConfig
    const { maxPerKey, maxWaiting, slots } = queue
    const maxWaitMs = Duration.toMillis(queue.maxWait)
    const runFork = Runtime.runFork(yield* Effect.runtime<never>())
    slotsTotal.unsafeUpdate(slots, NO_LABELS)
    slotsBusy.unsafeUpdate(0, NO_LABELS)
    queueWaiting.unsafeUpdate(0, NO_LABELS)
    for (const reason of ["key_queue_full", "worker_queue_full", "waited_too_long"]) queueRefusals.unsafeUpdate(0, reasonLabels(reason))
    if (slots === 0) {
      yield* Effect.logInfo("dispatch off (QUEUE_SLOTS=0): inference requests go to Ollama as they come")
      return { dispatch: undefined, consumer: undefined }
    }

    /** Requests holding a slot, to free it when their exchange ends. */
    const held = new Map<Exchange, Ticket<Waiter>>()
    /** Requests waiting, to answer them if the proxy stops first. */
    const waiting = new Set<Ticket<Waiter>>()
    /** The mean time a slot is held, for Retry-After: a moving average of the last requests'. */
    let meanHoldMs = 1000

    const setDepth = (ticket: Ticket<Waiter>) => {
      queueDepth.unsafeUpdate(ticket.party.waiting, keyLabels(ticket.party.name))
      queueWaiting.unsafeUpdate(fair.waiting, NO_LABELS)
    }

    /** The request holds a slot: on to Ollama. */
    const go = (ticket: Ticket<Waiter>, waitedMs: number) => {
      const { exchange, forward } = ticket.item
      writeQueueWait(exchange, waitedMs)
      held.set(exchange, ticket)
      slotsBusy.unsafeUpdate(fair.busy, NO_LABELS)
      queueWait.unsafeUpdate(waitedMs / 1000, outcomeLabels("started"))
      forward(exchange)
    }

    /** A waiting request got a slot (inside another's release: it must not throw there). */
    const started = (ticket: Ticket<Waiter>) => {
      const waiter = ticket.item
      const { exchange } = waiter
      clearTimeout(waiter.timer)
      if (waiter.onClose !== undefined) exchange.res.off("close", waiter.onClose)
      waiting.delete(ticket)
      setDepth(ticket)
      try {
        go(ticket, Math.round(ticket.startedAt - ticket.arrivedAt))
      } catch (cause) {
        const error = cause instanceof Error ? cause : new Error(String(cause))
        runFork(
          Effect.logError("schedule: a request could not be sent on").pipe(
            Effect.annotateLogs({ request_id: exchange.requestId, error: error.message })
          )
        )
        exchange.res.destroy()
        exchange.finish("upstream_error", error)
      }
    }

    const fair = new Fair<Waiter>(slots, started)

    const refuse = (exchange: Exchange, reason: QueueRefusalReason, position: number, waitedMs: number, ahead: number) => {
      const name = exchange.caller.keyName ?? ""
      writeQueueWait(exchange, Math.round(waitedMs))
      queueRefusals.unsafeUpdate(1, reasonLabels(reason))
      const limit = reason === "key_queue_full" ? maxPerKey : reason === "worker_queue_full" ? maxWaiting : maxWaitMs
      const retryMs = retryAfterMs(ahead, meanHoldMs, slots, maxWaitMs)
      exchange.refuse(queueRefusal(reason, fair.runningOf(name) > 0, { position, waitedMs, retryMs, limit }), "rate_limited")
    }

    /** The client hung up while its request waited: it leaves the queue, and Ollama never sees it. */
    const leave = (ticket: Ticket<Waiter>) => {
      if (!fair.cancel(ticket)) return
      const { exchange, timer } = ticket.item
      clearTimeout(timer)
      waiting.delete(ticket)
      setDepth(ticket)
      const waitedMs = Math.round(performance.now() - ticket.arrivedAt)
      writeQueueWait(exchange, waitedMs)
      queueWait.unsafeUpdate(waitedMs / 1000, outcomeLabels("left"))
      exchange.finish("client_aborted")
    }

    /** The request waited QUEUE_MAX_WAIT. */
    const expire = (ticket: Ticket<Waiter>) => {
      const position = fair.positionOf(ticket)
      if (!fair.cancel(ticket)) return
      const { exchange, onClose } = ticket.item
      if (onClose !== undefined) exchange.res.off("close", onClose)
      waiting.delete(ticket)
      setDepth(ticket)
      const waitedMs = performance.now() - ticket.arrivedAt
      queueWait.unsafeUpdate(waitedMs / 1000, outcomeLabels("refused"))
      refuse(exchange, "waited_too_long", position, waitedMs, ticket.party.waiting)
    }

    const dispatch: Dispatch = (exchange, forward) => {
      if (!exchange.route.inference) return forward(exchange)
      const name = exchange.caller.keyName ?? ""
      if (fair.busy >= slots) {
        const keyWaiting = fair.waitingOf(name)
        if (keyWaiting >= maxPerKey) return refuse(exchange, "key_queue_full", keyWaiting + 1, 0, keyWaiting)
        if (fair.waiting >= maxWaiting) return refuse(exchange, "worker_queue_full", keyWaiting + 1, 0, fair.waiting)
      }
      const ticket = fair.enter(name, exchange.caller.key?.weight ?? 1, new Waiter(exchange, forward))
      if (ticket.running) return go(ticket, 0)
      const waiter = ticket.item
      waiter.timer = setTimeout(expire, maxWaitMs, ticket)
      waiter.onClose = () => leave(ticket)
      exchange.res.once("close", waiter.onClose)
      waiting.add(ticket)
      setDepth(ticket)
    }

    const watch: ExchangeWatch = {
      end: (exchange) => {
        const ticket = held.get(exchange)
        if (ticket === undefined) return
        held.delete(exchange)
        meanHoldMs += (performance.now() - ticket.startedAt - meanHoldMs) / 8
        fair.release(ticket)
        slotsBusy.unsafeUpdate(fair.busy, NO_LABELS)
      }
    }
    const consumer: ExchangeConsumer = {
      name: "schedule",
      open: (exchange) => (exchange.route.inference ? watch : undefined)
    }

    // The server drains before this is released; what still waits then is told the worker is busy.
    yield* Effect.addFinalizer(() =>
      Effect.sync(() => {
        for (const ticket of [...waiting]) expire(ticket)
      })
    )
    yield* Effect.logInfo("dispatch: inference requests share Ollama's slots fairly among keys").pipe(
      Effect.annotateLogs({ slots, max_wait_ms: maxWaitMs, max_per_key: maxPerKey, max_waiting: maxWaiting })
    )
    return { dispatch, consumer }
  })
}) {}
