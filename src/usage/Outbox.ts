/**
 * The outbox: where a usage record waits from the end of its exchange until the webhook
 * acknowledges it. Three modes, by what is configured (README, "Durable usage delivery"):
 *   redis   a Redis Stream with a consumer group (RedisOutbox.ts): any worker delivers what a
 *           dead one left
 *   spool   append-only files in USAGE_SPOOL_DIR (Spool.ts): replayed at the next start
 *   memory  the delivery queue itself: a record not delivered by shutdown is logged whole
 */
import type { Outgoing } from "./Queue.js"

export type OutboxMode = "memory" | "spool" | "redis"

export interface Outbox {
  readonly mode: OutboxMode
  /**
   * Writes the record, as durably as the mode can, then calls `ready` (at once, or once Redis
   * answered): only then is it queued for delivery.
   */
  readonly add: (item: Outgoing, ready: () => void) => void
  /** The webhook acknowledged these (or refused them, and they were logged): they go. */
  readonly ack: (items: ReadonlyArray<Outgoing>) => void
  /**
   * The webhook did not take these and this worker stops trying: they stay in the outbox for a
   * later claim (this worker's or another's), not held as if still on their way.
   */
  readonly release: (items: ReadonlyArray<Outgoing>) => void
  /** Whether a record the webhook did not take stays here for later (else it is logged). */
  readonly durable: boolean
  /**
   * Records to deliver that this process did not make: an earlier run's, or a dead worker's.
   * Called at start and then periodically.
   */
  readonly claim: () => Promise<ReadonlyArray<Outgoing>>
  /**
   * Resolves true once the outbox can take records durably, false when `waitMs` passes first.
   * Awaited before the server listens: a worker that took requests before its Redis answered
   * would put their records in the fallback (memory, without a spool), lost if it is killed.
   */
  readonly ready: (waitMs: number) => Promise<boolean>
  readonly close: () => Promise<void>
}

export const memoryOutbox: Outbox = {
  mode: "memory",
  durable: false,
  add: (_item, ready) => ready(),
  ack: () => {},
  release: () => {},
  claim: () => Promise.resolve([]),
  ready: () => Promise.resolve(true),
  close: () => Promise.resolve()
}
