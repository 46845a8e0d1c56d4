import { describe, expect, it } from "@effect/vitest"
import { Clock, Context, Duration, Effect, Layer, Logger, Schedule, Stream, SubscriptionRef, TestClock } from "effect"
import { configFromEnv } from "../src/Config.js"
import {
  type LocalModel,
  ModelNotFound,
  OllamaClient,
  OllamaError,
  OllamaUnavailable,
  type PullProgress,
  type WarmedWith
} from "../src/ollama/Client.js"
import { type HealthSnapshot, OllamaHealth, type OllamaState } from "../src/ollama/Health.js"
import { humanBytes, Preloader, PullMeter } from "../src/ollama/Preloader.js"
import { partialLayer } from "./support/layer.js"

type PullError = OllamaUnavailable | OllamaError | ModelNotFound

interface FakeOllama {
  readonly pull?: (model: string, attempt: number) => Stream.Stream<PullProgress, PullError>
  readonly warm?: (model: string, attempt: number) => Effect.Effect<WarmedWith, PullError>
  readonly tags?: ReadonlyArray<LocalModel>
}

interface Call {
  readonly op: "pull" | "warm"
  readonly model: string
  readonly at: number
  readonly keepAlive?: string | number
}

const success: ReadonlyArray<PullProgress> = [
  { status: "pulling manifest" },
  { status: "pulling abc", digest: "sha256:abc", total: 1000, completed: 1000 },
  { status: "success" }
]

/** The Preloader over a scripted Ollama; `health` is the state the test moves by hand. */
const setup = (env: Record<string, string>, fake: FakeOllama = {}, initial: OllamaState = "up") =>
  Effect.gen(function*() {
    const calls: Array<Call> = []
    const logs: Array<{ level: string; msg: string; annotations: Record<string, unknown> }> = []
    const attempts = new Map<string, number>()
    const attempt = (key: string) => {
      const n = (attempts.get(key) ?? 0) + 1
      attempts.set(key, n)
      return n
    }
    const changes = yield* SubscriptionRef.make<HealthSnapshot>({ state: initial, since: 0 })
    const health = partialLayer(OllamaHealth, {
      changes,
      awaitUp: changes.changes.pipe(Stream.filter((s) => s.state === "up"), Stream.take(1), Stream.runDrain)
    })
    const client = partialLayer(OllamaClient, {
      pull: (model: string) =>
        Stream.unwrap(Effect.gen(function*() {
          calls.push({ op: "pull", model, at: yield* Clock.currentTimeMillis })
          return fake.pull?.(model, attempt(`pull ${model}`)) ?? Stream.fromIterable(success)
        })),
      warm: (model: string, keepAlive: string | number) =>
        Effect.gen(function*() {
          calls.push({ op: "warm", model, keepAlive, at: yield* Clock.currentTimeMillis })
          return yield* (fake.warm?.(model, attempt(`warm ${model}`)) ?? Effect.succeed<WarmedWith>("generate"))
        }),
      tags: Effect.succeed(fake.tags ?? [])
    })
    const logger = Logger.make(({ annotations, logLevel, message }) => {
      const parts = Array.isArray(message) ? message : [message]
      logs.push({ level: logLevel.label, msg: String(parts[0]), annotations: Object.fromEntries(annotations) })
    })
    const preloader = yield* Layer.build(
      Preloader.DefaultWithoutDependencies.pipe(
        Layer.provide(client),
        Layer.provide(health),
        Layer.provide(configFromEnv(env))
      )
    ).pipe(
      Effect.map((context) => Context.get(context, Preloader)),
      Effect.provide(Logger.replace(Logger.defaultLogger, logger))
    )
    const setHealth = (state: OllamaState) => SubscriptionRef.set(changes, { state, since: 0 })
    /** Advances the clock in small steps until the condition holds (or fails the test). */
    const until = (condition: () => boolean, limit: Duration.DurationInput = "10 minutes", step: Duration.DurationInput = "100 millis") =>
      Effect.gen(function*() {
        const steps = Duration.toMillis(limit) / Duration.toMillis(step)
        for (let i = 0; i < steps && !condition(); i++) yield* TestClock.adjust(step)
        if (!condition()) throw new Error(`condition not met within ${Duration.format(limit)}`)
      })
    return { preloader, calls, logs, setHealth, until }
  })

const done = (preloader: Preloader) => () => preloader.snapshot().state === "done"

describe("Preloader", () => {
  it.scoped("pulls then warms each model, in order, with PRELOAD_KEEP_ALIVE", () =>
    Effect.gen(function*() {
      const { calls, logs, preloader, until } = yield* setup(
        { PRELOAD_MODEL: "a", PRELOAD_MODEL_2: "b a", PRELOAD_KEEP_ALIVE: "30m", PRELOAD_CONCURRENCY: "1" },
        { tags: [{ name: "a:latest", size: 2_000_000_000 }, { name: "b:latest", size: 500_000_000 }] }
      )
      yield* until(done(preloader))
      expect(calls.map((c) => `${c.op} ${c.model}${c.keepAlive === undefined ? "" : ` ${c.keepAlive}`}`)).toEqual([
        "pull a",
        "warm a 30m",
        "pull b",
        "warm b 30m"
      ])
      expect(preloader.snapshot().models.map((m) => [m.model, m.state, m.warmedWith])).toEqual([
        ["a", "ready", "generate"],
        ["b", "ready", "generate"]
      ])
      const onDisk = logs.filter((l) => l.msg.startsWith("model"))
      expect(onDisk.filter((l) => l.msg === "model on disk").map((l) => [l.annotations.model, l.annotations.size])).toEqual([
        ["a:latest", "2.0 GB"],
        ["b:latest", "500 MB"]
      ])
      expect(logs.find((l) => l.msg === "models on disk")?.annotations).toMatchObject({ count: 2, size: "2.5 GB" })
    }))

  it.scoped("overlaps pulls up to PRELOAD_CONCURRENCY", () =>
    Effect.gen(function*() {
      const slow = Stream.fromIterable(success).pipe(Stream.schedule(Schedule.spaced("1 second")))
      const { calls, preloader, until } = yield* setup(
        { PRELOAD_MODEL: "a b c", PRELOAD_CONCURRENCY: "2" },
        { pull: () => slow }
      )
      yield* until(done(preloader))
      const pulls = calls.filter((c) => c.op === "pull").map((c) => [c.model, c.at])
      expect(pulls).toEqual([["a", 0], ["b", 0], ["c", 3000]])
    }))

  it.scoped("waits for Ollama to answer before the first pull", () =>
    Effect.gen(function*() {
      const { calls, preloader, setHealth, until } = yield* setup({ PRELOAD_MODEL: "a" }, {}, "starting")
      yield* TestClock.adjust("1 minute")
      expect(calls).toEqual([])
      expect(preloader.snapshot().state).toBe("waiting")
      yield* setHealth("up")
      yield* until(done(preloader))
      expect(calls.map((c) => c.op)).toEqual(["pull", "warm"])
    }))

  it.scoped("retries a transient failure on the schedule and then succeeds", () =>
    Effect.gen(function*() {
      const { calls, logs, preloader, until } = yield* setup({ PRELOAD_MODEL: "a" }, {
        pull: (_, attempt) =>
          attempt === 1
            ? Stream.fail(new OllamaUnavailable({ operation: "POST /api/pull", cause: "connection reset" }))
            : attempt === 2
            ? Stream.fail(new OllamaError({ operation: "POST /api/pull", status: 500, error: "boom", retryable: true }))
            : Stream.fromIterable(success)
      })
      yield* until(done(preloader))
      expect(calls.filter((c) => c.op === "pull").map((c) => c.at)).toEqual([0, 500, 1500])
      expect(preloader.snapshot().models[0]?.state).toBe("ready")
      expect(logs.filter((l) => l.msg === "pull failed").map((l) => l.annotations.attempt)).toEqual([1, 2])
    }))

  it.scoped("reports a model that does not exist once, without retrying, and finishes", () =>
    Effect.gen(function*() {
      const { calls, logs, preloader, until } = yield* setup({ PRELOAD_MODEL: "nope good" }, {
        pull: (model) =>
          model === "nope"
            ? Stream.fail(new ModelNotFound({ model, error: "pull model manifest: file does not exist" }))
            : Stream.fromIterable(success)
      })
      yield* until(done(preloader))
      expect(calls.filter((c) => c.model === "nope")).toHaveLength(1)
      expect(preloader.snapshot().models.map((m) => [m.model, m.state])).toEqual([["nope", "failed"], ["good", "ready"]])
      expect(preloader.snapshot().models[0]?.error).toContain("file does not exist")
      expect(logs.filter((l) => l.level === "ERROR").map((l) => [l.msg, l.annotations.model])).toEqual([
        ["preload failed", "nope"]
      ])
      expect(logs.find((l) => l.msg === "preload finished")).toMatchObject({ level: "WARN", annotations: { failed: "nope" } })
    }))

  it.scoped("gives up on a model after the retries, so /ping does not wait forever", () =>
    Effect.gen(function*() {
      const { calls, preloader, until } = yield* setup({ PRELOAD_MODEL: "a" }, {
        warm: () => Effect.fail(new OllamaError({ operation: "POST /api/generate", status: 500, error: "out of memory", retryable: true }))
      })
      yield* until(done(preloader), "5 minutes", "1 second")
      expect(calls.filter((c) => c.op === "warm")).toHaveLength(9)
      expect(preloader.snapshot().models[0]).toMatchObject({ state: "failed", error: expect.stringContaining("out of memory") })
    }))

  it.scoped("does not retry a bad request", () =>
    Effect.gen(function*() {
      const { calls, preloader, until } = yield* setup({ PRELOAD_MODEL: "a" }, {
        warm: () => Effect.fail(new OllamaError({ operation: "POST /api/generate", status: 400, error: "bad", retryable: false }))
      })
      yield* until(done(preloader))
      expect(calls.filter((c) => c.op === "warm")).toHaveLength(1)
    }))

  it.scoped("warms the ready models again when Ollama comes back", () =>
    Effect.gen(function*() {
      const { calls, logs, preloader, setHealth, until } = yield* setup({ PRELOAD_MODEL: "a nope" }, {
        pull: (model) => model === "nope" ? Stream.fail(new ModelNotFound({ model, error: "not found" })) : Stream.fromIterable(success)
      })
      const rounds = () => SubscriptionRef.get(preloader.warmed)
      yield* until(done(preloader))
      // Each round of warming that ended is counted, for the GPU check to look after it.
      expect(yield* rounds()).toBe(1)
      yield* setHealth("down")
      yield* setHealth("up")
      yield* until(() => calls.filter((c) => c.op === "warm").length === 2)
      yield* until(() => preloader.snapshot().models[0]?.state === "ready")
      expect(calls.map((c) => `${c.op} ${c.model}`)).toEqual(["pull a", "pull nope", "warm a", "warm a"])
      expect(logs.some((l) => l.msg.startsWith("ollama is back"))).toBe(true)
      expect(preloader.snapshot().state).toBe("done")
      yield* TestClock.adjust("1 second")
      expect(yield* rounds()).toBe(2)
    }))

  it.scoped("has nothing to do without PRELOAD_MODEL", () =>
    Effect.gen(function*() {
      const { calls, preloader } = yield* setup({})
      expect(preloader.snapshot()).toEqual({ state: "done", models: [] })
      expect(calls).toEqual([])
    }))
})

describe("pull progress", () => {
  const line = (completed: number, total = 1000, digest = "sha256:a"): PullProgress => ({
    status: `pulling ${digest}`,
    digest,
    total,
    completed
  })

  it("is logged at each 10 %, not per line", () => {
    const meter = new PullMeter(0)
    const logged: Array<number> = []
    for (let c = 0; c <= 1000; c += 7) {
      const totals = meter.add(line(c))!
      if (meter.due(totals, 1)) logged.push(Math.floor(totals.percent))
    }
    expect(logged).toEqual([10, 20, 30, 40, 50, 60, 70, 80, 90])
  })

  it("or every 5 s when it is slow", () => {
    const meter = new PullMeter(0)
    const logged: Array<number> = []
    for (let second = 1; second <= 20; second++) {
      const totals = meter.add(line(second))!
      if (meter.due(totals, second * 1000)) logged.push(second)
    }
    expect(logged).toEqual([5, 10, 15, 20])
  })

  it("sums the layers seen so far", () => {
    const meter = new PullMeter(0)
    meter.add(line(500, 1000, "sha256:a"))
    expect(meter.add(line(0, 1000, "sha256:b"))).toEqual({ completed: 500, total: 2000, percent: 25 })
    expect(meter.add({ status: "verifying sha256 digest" })).toBeUndefined()
  })

  it("sizes read like ollama list", () => {
    expect([humanBytes(999), humanBytes(4_661_224_676), humanBytes(274_302_450), humanBytes(1_234_000)]).toEqual([
      "999 B",
      "4.7 GB",
      "274 MB",
      "1.2 MB"
    ])
  })
})
