/**
 * Preloader: once Ollama answers, pulls every PRELOAD_MODEL* and warms it into memory with
 * PRELOAD_KEEP_ALIVE, so the models are loaded before RunPod routes the first request. Its state
 * (a plain snapshot) is what /ping reports; after an Ollama restart the models are warmed again.
 */
import { Clock, Duration, Effect, LogLevel, Option, Schedule, Stream, SubscriptionRef } from "effect"
import { setPreloadState } from "../telemetry/Metrics.js"
import { type ModelNotFound, OllamaClient, type OllamaError, type OllamaUnavailable, type PullProgress, type WarmedWith } from "./Client.js"
import { OllamaHealth } from "./Health.js"
import { PreloadConfig } from "./OllamaConfig.js"

export type ModelState = "pending" | "pulling" | "warming" | "ready" | "failed"

export interface ModelStatus {
  readonly model: string
  readonly state: ModelState
  /** Pull progress over the layers seen so far, 0-100. */
  readonly percent?: number
  readonly warmedWith?: WarmedWith
  /** Why the model failed for good. */
  readonly error?: string
}

export interface PreloadSnapshot {
  /** waiting: for Ollama to answer the first time; done: every model is ready or failed. */
  readonly state: "waiting" | "running" | "done"
  readonly models: ReadonlyArray<ModelStatus>
}

type PreloadError = OllamaUnavailable | OllamaError | ModelNotFound

const isTransient = (error: PreloadError) => error._tag === "OllamaUnavailable" || (error._tag === "OllamaError" && error.retryable)

const RETRIES = 8

/**
 * Between attempts after a transient failure: 0.5 s doubling, capped at 30 s, 8 retries
 * (about 90 s of waiting). Time Ollama spends down does not count: each attempt first waits for
 * it to answer.
 */
export const retrySchedule = Schedule.exponential(Duration.millis(500)).pipe(
  Schedule.modifyDelay((_, delay) => Duration.min(delay, Duration.seconds(30))),
  Schedule.intersect(Schedule.recurs(RETRIES))
)

const LOG_EVERY_PERCENT = 10
const LOG_EVERY_MS = 5_000

export interface PullTotals {
  readonly completed: number
  readonly total: number
  readonly percent: number
}

/**
 * Sums a pull's progress lines over its layers and says when a progress log line is due: when the
 * next 10 % is passed or 5 s went by, never for every line.
 */
export class PullMeter {
  private readonly layers = new Map<string, { total: number; completed: number }>()
  private loggedTenth = 0
  private loggedAt: number

  constructor(startedAt: number) {
    this.loggedAt = startedAt
  }

  /** The totals after this line, or undefined when the line carries no byte counts. */
  add(progress: PullProgress): PullTotals | undefined {
    if (progress.digest === undefined || progress.total === undefined || progress.total <= 0) return undefined
    this.layers.set(progress.digest, { total: progress.total, completed: progress.completed ?? 0 })
    let completed = 0
    let total = 0
    for (const layer of this.layers.values()) {
      completed += layer.completed
      total += layer.total
    }
    return { completed, total, percent: Math.min(100, Math.floor((completed / total) * 1000) / 10) }
  }

  /** Whether these totals deserve a log line now; if so, counts it as logged. */
  due(totals: PullTotals, now: number): boolean {
    const tenth = Math.floor(totals.percent / LOG_EVERY_PERCENT)
    if (tenth <= this.loggedTenth && now - this.loggedAt < LOG_EVERY_MS) return false
    this.loggedTenth = Math.max(tenth, this.loggedTenth)
    this.loggedAt = now
    return true
  }
}

/** Sizes as `ollama list` shows them (powers of 1000). */
export const humanBytes = (bytes: number): string => {
  const units = ["B", "KB", "MB", "GB", "TB"]
  let value = bytes
  let unit = 0
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000
    unit++
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(value >= 100 ? 0 : 1)} ${units[unit]}`
}

export class Preloader extends Effect.Service<Preloader>()("app/Preloader", {
  scoped: Effect.gen(function*() {
    const config = yield* PreloadConfig
    const client = yield* OllamaClient
    const health = yield* OllamaHealth
    const models = config.preloadModels

    let snapshot: PreloadSnapshot = {
      state: models.length === 0 ? "done" : "waiting",
      models: models.map((model) => ({ model, state: "pending" }))
    }
    const setState = (state: PreloadSnapshot["state"]) => Effect.sync(() => (snapshot = { ...snapshot, state }))
    const setModel = (status: ModelStatus) =>
      Effect.sync(() => {
        snapshot = { ...snapshot, models: snapshot.models.map((m) => (m.model === status.model ? status : m)) }
      }).pipe(Effect.zipRight(setPreloadState(status.model, status.state)))
    yield* Effect.forEach(models, (model) => setPreloadState(model, "pending"), { discard: true })
    // Counts the rounds of warming that ended: the preload, then each reload after an Ollama restart.
    const warmed = yield* SubscriptionRef.make(0)
    const roundDone = SubscriptionRef.update(warmed, (n) => n + 1)

    /** Runs `attempt` once Ollama answers, again after transient failures, on retrySchedule. */
    const withRetries = <A>(what: string, attempt: Effect.Effect<A, PreloadError>) => {
      let attempts = 0
      return Effect.suspend(() => {
        attempts++
        return health.awaitUp.pipe(Effect.zipRight(attempt))
      }).pipe(
        Effect.tapError((error) =>
          isTransient(error)
            ? Effect.logWarning(`${what} failed`).pipe(Effect.annotateLogs({ attempt: attempts, error: error.message }))
            : Effect.void
        ),
        Effect.retry({ schedule: retrySchedule, while: isTransient })
      )
    }

    const pull = Effect.fn("Preloader.pull")(function*(model: string) {
      yield* Effect.annotateCurrentSpan("model", model)
      const startedAt = yield* Clock.currentTimeMillis
      const meter = new PullMeter(startedAt)
      yield* setModel({ model, state: "pulling" })
      yield* Effect.logInfo("pulling model")
      yield* withRetries(
        "pull",
        client.pull(model).pipe(
          Stream.runForEach((progress) =>
            Effect.gen(function*() {
              const totals = meter.add(progress)
              if (totals === undefined) {
                if (progress.status !== undefined) yield* Effect.logDebug(progress.status)
                return
              }
              yield* setModel({ model, state: "pulling", percent: totals.percent })
              if (meter.due(totals, yield* Clock.currentTimeMillis)) {
                yield* Effect.logInfo("pull progress").pipe(Effect.annotateLogs({
                  percent: totals.percent,
                  completed: humanBytes(totals.completed),
                  total: humanBytes(totals.total)
                }))
              }
            })
          )
        )
      )
      const elapsed = (yield* Clock.currentTimeMillis) - startedAt
      yield* Effect.logInfo("pulled model").pipe(Effect.annotateLogs({ duration_ms: elapsed }))
    })

    const warm = Effect.fn("Preloader.warm")(function*(model: string) {
      yield* Effect.annotateCurrentSpan("model", model)
      const startedAt = yield* Clock.currentTimeMillis
      yield* setModel({ model, state: "warming" })
      const warmedWith = yield* withRetries("warm", client.warm(model, config.preloadKeepAlive))
      yield* setModel({ model, state: "ready", warmedWith })
      const elapsed = (yield* Clock.currentTimeMillis) - startedAt
      yield* Effect.logInfo("model loaded").pipe(
        Effect.annotateLogs({ via: warmedWith, keep_alive: config.preloadKeepAlive, duration_ms: elapsed })
      )
    })

    const fail = (model: string) => (error: PreloadError) =>
      setModel({ model, state: "failed", error: error.message }).pipe(
        Effect.zipRight(Effect.logError("preload failed").pipe(Effect.annotateLogs({ error: error.message })))
      )

    const preloadModel = (model: string) =>
      pull(model).pipe(
        Effect.zipRight(warm(model)),
        Effect.catchAll(fail(model)),
        Effect.annotateLogs({ model })
      )

    const logModelsOnDisk = client.tags.pipe(
      Effect.flatMap((local) =>
        Effect.forEach(local, (m) =>
          Effect.logInfo("model on disk").pipe(
            Effect.annotateLogs({ model: m.name, size: humanBytes(m.size), bytes: m.size })
          )).pipe(
            Effect.zipRight(
              Effect.logInfo("models on disk").pipe(Effect.annotateLogs({
                count: local.length,
                size: humanBytes(local.reduce((sum, m) => sum + m.size, 0)),
                bytes: local.reduce((sum, m) => sum + m.size, 0)
              }))
            )
          )
      ),
      Effect.catchAll((error) => Effect.logWarning("cannot list models on disk").pipe(Effect.annotateLogs({ error: error.message })))
    )

    const preload = Effect.gen(function*() {
      yield* health.awaitUp
      const startedAt = yield* Clock.currentTimeMillis
      yield* setState("running")
      yield* Effect.logInfo("preloading models").pipe(
        Effect.annotateLogs({ models: models.join(","), concurrency: config.preloadConcurrency })
      )
      yield* Effect.forEach(models, preloadModel, { concurrency: config.preloadConcurrency, discard: true })
      yield* setState("done")
      const failed = snapshot.models.filter((m) => m.state === "failed").map((m) => m.model)
      const elapsed = (yield* Clock.currentTimeMillis) - startedAt
      yield* Effect.logWithLevel(failed.length === 0 ? LogLevel.Info : LogLevel.Warning, "preload finished").pipe(
        Effect.annotateLogs({ ready: models.length - failed.length, failed: failed.join(","), duration_ms: elapsed })
      )
      yield* roundDone
      yield* logModelsOnDisk
    }).pipe(Effect.withSpan("Preloader.preload"))

    /** A restarted Ollama has nothing in memory: load what was ready before. */
    const rewarm = Effect.suspend(() => {
      const ready = snapshot.models.filter((m) => m.state === "ready").map((m) => m.model)
      if (ready.length === 0) return Effect.void
      return Effect.logInfo("ollama is back, loading the preloaded models again").pipe(
        Effect.annotateLogs({ models: ready.join(",") }),
        Effect.zipRight(Effect.forEach(
          ready,
          (model) => warm(model).pipe(Effect.catchAll(fail(model)), Effect.annotateLogs({ model })),
          { concurrency: config.preloadConcurrency, discard: true }
        ))
      )
    }).pipe(Effect.withSpan("Preloader.rewarm"))

    if (models.length > 0) {
      yield* preload.pipe(Effect.annotateLogs({ service: "Preloader" }), Effect.forkScoped)
      yield* health.changes.changes.pipe(
        Stream.map((s) => s.state),
        Stream.changes,
        Stream.zipWithPrevious,
        Stream.filter(([previous, state]) => state === "up" && Option.getOrUndefined(previous) === "down"),
        Stream.runForEach(() => rewarm.pipe(Effect.zipRight(roundDone))),
        Effect.annotateLogs({ service: "Preloader" }),
        Effect.forkScoped
      )
    }

    return {
      /** The preload state now; a plain read for /ping. */
      snapshot: (): PreloadSnapshot => snapshot,
      /** How many rounds of warming have ended (the preload, each reload after a restart); 0 before the first. */
      warmed
    } as const
  }),
  dependencies: [OllamaClient.Default, OllamaHealth.Default]
}) {}
