/**
 * The delivery queue: which records go out in which POST, and when. No HTTP here: it calls
 * `start` with a batch when a sender is free, and is told when that batch is done. Its tests
 * (test/Queue.test.ts) drive it with a fake `start`.
 *
 * A batch moves through these states, and only forward:
 *   gathering  records join it (batch size above 1) until it is full or BATCH_WAIT passed
 *   waiting    closed, every sender busy
 *   sending    a sender has it: a POST on the wire, or retries (the sender stays busy meanwhile,
 *              so a failing webhook slows intake, not memory)
 *   done       acknowledged (2xx), refused, or kept in the outbox for later: nothing more happens
 *
 * Bounded: at most `capacity` records gathering or waiting (those a sender has are not counted).
 */
import type { Tracer } from "effect"

/** A record on its way: its JSON made once, when it is handed over. */
export interface Outgoing {
  readonly id: string
  readonly json: string
  /** When it was handed over (Date.now()), for the outbox's age. */
  readonly since: number
}

export type BatchState = "gathering" | "waiting" | "sending" | "done"

export interface Batch {
  /** `webhook-id`: a lone record's own id, else the batch's. */
  readonly key: string
  readonly records: Array<Outgoing>
  /** Made when the batch is closed; the same on every retry. */
  body: string
  readonly parent: Tracer.ExternalSpan | undefined
  state: BatchState
}

export interface QueueOptions {
  readonly batchSize: number
  readonly capacity: number
  readonly senders: number
  readonly batchWaitMs: number
  /** A sender takes the batch (its state is `sending`); it calls `finished` once it is done. */
  readonly start: (batch: Batch) => void
  readonly newKey: () => string
  /** The queue passed 90% of its capacity (again, after having gone under 50%). */
  readonly nearFull: (queued: number) => void
}

export type Offered = "taken" | "full" | "closed"

export class DeliveryQueue {
  private readonly waiting: Array<Batch> = []
  private open: Batch | undefined
  private openTimer: ReturnType<typeof setTimeout> | undefined
  /** Records gathering or waiting: at most `capacity`. */
  private queued = 0
  /** Senders busy with a batch. */
  private active = 0
  private warned = false
  private closing = false
  /** Every batch not done: what the shutdown deadline keeps or logs. */
  readonly undone = new Set<Batch>()
  /** Records taken and not done. */
  outstanding = 0
  /** Runs whenever `outstanding` changes, and `idle` when it comes to 0. */
  onChange: (outstanding: number) => void = () => {}

  constructor(private readonly options: QueueOptions) {}

  get closed(): boolean {
    return this.closing
  }

  /** Hands a record over: one exchange's, or one recovered from the outbox. */
  offer(item: Outgoing, parent?: Tracer.ExternalSpan): Offered {
    if (this.closing) return "closed"
    const { batchSize, capacity } = this.options
    if (batchSize === 1) {
      const batch: Batch = { key: item.id, records: [item], body: item.json, parent, state: "waiting" }
      if (this.active < this.options.senders) {
        this.take(batch)
        this.begin(batch)
        return "taken"
      }
      if (this.queued >= capacity) return "full"
      this.take(batch)
      this.queued++
      this.waiting.push(batch)
      this.checkFull()
      return "taken"
    }
    if (this.queued >= capacity) return "full"
    if (this.open === undefined) {
      this.open = { key: this.options.newKey(), records: [], body: "", parent: undefined, state: "gathering" }
      this.undone.add(this.open)
      this.openTimer = setTimeout(() => this.closeOpen(), this.options.batchWaitMs)
      this.openTimer.unref()
    }
    this.open.records.push(item)
    this.queued++
    this.changed(1)
    this.checkFull()
    if (this.open.records.length >= batchSize) this.closeOpen()
    return "taken"
  }

  /** The batch is done (acknowledged, refused, kept); false when it already was. */
  settle(batch: Batch): boolean {
    if (batch.state === "done") return false
    if (batch.state === "waiting") {
      const at = this.waiting.indexOf(batch)
      if (at >= 0) this.waiting.splice(at, 1)
      this.queued -= batch.records.length
    }
    batch.state = "done"
    this.undone.delete(batch)
    this.changed(-batch.records.length)
    return true
  }

  /** A sender is free again: it takes the next waiting batch. */
  finished(): void {
    this.active--
    const next = this.waiting.shift()
    if (next === undefined) return
    this.queued -= next.records.length
    if (this.queued < this.options.capacity / 2) this.warned = false
    this.begin(next)
  }

  /** Shutdown: nothing new is taken, and the gathering batch goes at once. */
  close(): void {
    this.closing = true
    this.closeOpen()
  }

  /** When the oldest record not done was handed over, or undefined when there is none. */
  oldest(): number | undefined {
    let oldest: number | undefined
    for (const batch of this.undone) {
      for (const r of batch.records) if (oldest === undefined || r.since < oldest) oldest = r.since
    }
    return oldest
  }

  private take(batch: Batch) {
    this.undone.add(batch)
    this.changed(1)
  }

  private changed(delta: number) {
    this.outstanding += delta
    this.onChange(this.outstanding)
  }

  private begin(batch: Batch) {
    this.active++
    batch.state = "sending"
    this.options.start(batch)
  }

  private checkFull() {
    if (this.warned || this.queued < this.options.capacity * 0.9) return
    this.warned = true
    this.options.nearFull(this.queued)
  }

  private closeOpen() {
    const batch = this.open
    if (batch === undefined) return
    this.open = undefined
    if (this.openTimer !== undefined) clearTimeout(this.openTimer)
    this.openTimer = undefined
    batch.body = `[${batch.records.map((r) => r.json).join(",")}]`
    if (this.active < this.options.senders) {
      this.queued -= batch.records.length
      this.begin(batch)
    } else {
      batch.state = "waiting"
      this.waiting.push(batch)
    }
  }
}
