/**
 * The schedule's own slice of the environment (QUEUE_*, and OLLAMA_NUM_PARALLEL as Ollama reads
 * it): how many inference requests go to Ollama at once, and how long and how many may wait.
 */
import { Context, Duration, Effect, Either, Layer, Option } from "effect"
import { all, optional, type Parse, parsePositiveDuration, parsePositiveInt, quoted, readSlice, withDefault } from "../config/Read.js"

/** How inference requests wait for Ollama's slots (src/schedule/). */
export interface QueueConfigShape {
  /** Inference requests in flight to Ollama at once: QUEUE_SLOTS, else OLLAMA_NUM_PARALLEL, else 1; 0 = no dispatch. */
  readonly slots: number
  /** OLLAMA_NUM_PARALLEL as the proxy's environment gives it; a managed Ollama without it is given `slots`. */
  readonly ollamaNumParallel: Option.Option<number>
  /** How long a request may wait for a slot. */
  readonly maxWait: Duration.Duration
  /** Requests of one key waiting at once at most. */
  readonly maxPerKey: number
  /** Requests waiting at once at most, every key together. */
  readonly maxWaiting: number
}

const parseCount: Parse<number> = (raw) => {
  const n = /^\d+$/.test(raw.trim()) ? Number(raw.trim()) : NaN
  return Number.isSafeInteger(n) ? Either.right(n) : Either.left(`${quoted(raw)} is not a whole number (0 or more)`)
}

/** OLLAMA_NUM_PARALLEL as Ollama reads it (envconfig.Uint, then max(n, 1) in server/sched.go). */
const parseNumParallel: Parse<number> = (raw) => Either.map(parseCount(raw), (n) => Math.max(n, 1))

const fromEnvironment = all({
  queueSlots: optional("QUEUE_SLOTS", parseCount),
  ollamaNumParallel: optional("OLLAMA_NUM_PARALLEL", parseNumParallel),
  queueMaxWait: withDefault("QUEUE_MAX_WAIT", parsePositiveDuration, Duration.seconds(60)),
  queueMaxPerKey: withDefault("QUEUE_MAX_PER_KEY", parsePositiveInt, 100),
  queueMax: withDefault("QUEUE_MAX", parsePositiveInt, 512)
})

/**
 * The QUEUE_* variables, read and checked: the scheduler's, and the process supervisor's, which
 * gives a managed Ollama as many parallel requests as there are slots.
 */
export class QueueConfig extends Context.Tag("app/QueueConfig")<QueueConfig, QueueConfigShape>() {
  static readonly variables = fromEnvironment.variables
  static readonly layer = Layer.effect(
    QueueConfig,
    readSlice(fromEnvironment).pipe(
      Effect.map((raw): QueueConfigShape => ({
        slots: Option.getOrElse(raw.queueSlots, () => Option.getOrElse(raw.ollamaNumParallel, () => 1)),
        ollamaNumParallel: raw.ollamaNumParallel,
        maxWait: raw.queueMaxWait,
        maxPerKey: raw.queueMaxPerKey,
        maxWaiting: raw.queueMax
      }))
    )
  )
}
