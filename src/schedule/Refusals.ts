/**
 * The answers of a request that cannot wait for a slot of Ollama's: 429 when it is the key's own
 * queue that is full or its own requests hold the slots it waited for, 503 when the worker as a
 * whole is too busy (every key's requests together). Both say when to come back (`Retry-After`,
 * and `retry-after-ms`, which the `openai` client reads first), where the request stood in its
 * key's queue (`x-queue-position`) and how long it waited (`x-queue-wait-ms`). The body is in the
 * API family's shape (src/exchange/Errors.ts).
 */
import type { Refusal } from "../exchange/Errors.js"

export type QueueRefusalReason = "key_queue_full" | "worker_queue_full" | "waited_too_long"

/**
 * When a slot may be free for the request: its place in line times the mean time a slot is held,
 * spread over the slots; at least a second, at most the longest wait (a client told to come back
 * later than it may wait would only be refused again).
 */
export const retryAfterMs = (ahead: number, meanHoldMs: number, slots: number, maxWaitMs: number): number =>
  Math.round(Math.min(maxWaitMs, Math.max(1000, ((ahead + 1) * meanHoldMs) / slots)))

const seconds = (ms: number) => `${Math.round(ms / 100) / 10}s`

export const queueRefusal = (
  reason: QueueRefusalReason,
  /** For waited_too_long: whether the key's own requests hold slots (then its share is in use: 429). */
  keyRunning: boolean,
  figures: { readonly position: number; readonly waitedMs: number; readonly retryMs: number; readonly limit: number }
): Refusal => {
  const { limit, position, retryMs, waitedMs } = figures
  const whole = reason === "worker_queue_full" || (reason === "waited_too_long" && !keyRunning)
  const message = reason === "key_queue_full"
    ? `too many requests of this API key are waiting for the model (${limit} at most); retry in ${seconds(retryMs)}`
    : reason === "worker_queue_full"
    ? `the worker is busy: ${limit} requests are waiting for the model; retry in ${seconds(retryMs)}`
    : `no slot of the model was free for this request within ${seconds(limit)}${
      whole ? ": the worker is busy" : ": this API key's other requests hold its share"
    }; retry in ${seconds(retryMs)}`
  return {
    status: whole ? 503 : 429,
    message,
    headers: {
      "retry-after": String(Math.ceil(retryMs / 1000)),
      "retry-after-ms": String(retryMs),
      "x-queue-position": String(position),
      "x-queue-wait-ms": String(Math.round(waitedMs))
    },
    openAiType: "requests"
  }
}
