import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer, Metric, SubscriptionRef, TestClock } from "effect"
import { OllamaClient, OllamaUnavailable } from "../src/ollama/Client.js"
import { OllamaHealth } from "../src/ollama/Health.js"
import { OllamaProcess, ProcessState } from "../src/ollama/Process.js"
import { ollamaUp } from "../src/telemetry/Metrics.js"

/** OllamaHealth over an Ollama that answers when told, and a supervisor the test drives. */
const setup = (initial: ProcessState) =>
  Effect.gen(function*() {
    let answering = false
    let process = initial
    const changes = yield* SubscriptionRef.make(initial)
    const client = OllamaClient.make({
      ping: () =>
        Effect.suspend(() => answering ? Effect.void : Effect.fail(new OllamaUnavailable({ operation: "GET /", cause: "refused" }))),
      version: Effect.succeed("0.32.15")
    } as never)
    const supervisor = OllamaProcess.make({
      managed: initial._tag !== "Unmanaged",
      current: () => process,
      changes,
      computeDevices: () => undefined
    })
    const health = yield* Layer.build(
      OllamaHealth.DefaultWithoutDependencies.pipe(
        Layer.provide(Layer.succeed(OllamaClient, client)),
        Layer.provide(Layer.succeed(OllamaProcess, supervisor))
      )
    ).pipe(Effect.map((context) => Context.get(context, OllamaHealth)))
    const publish = (state: ProcessState) =>
      Effect.suspend(() => {
        process = state
        return SubscriptionRef.set(changes, state)
      })
    const answer = (value: boolean) => Effect.sync(() => (answering = value))
    // Lets the probe loop run one interval (100 ms while not up, 1 s when up).
    const tick = TestClock.adjust("1 second")
    return { answer, health, publish, tick }
  })

const running = ProcessState.Running({ pid: 1, since: 0, restarts: 0 })

describe("OllamaHealth", () => {
  it.scoped("is starting until Ollama first answers, then up", () =>
    Effect.gen(function*() {
      const { answer, health, tick } = yield* setup(running)
      yield* tick
      expect(health.snapshot().state).toBe("starting")
      yield* answer(true)
      yield* tick
      expect(health.snapshot()).toMatchObject({ state: "up", version: "0.32.15" })
    }))

  it.scoped("is down the moment the supervisor sees the child exit, even if a probe still got an answer", () =>
    Effect.gen(function*() {
      const { answer, health, publish, tick } = yield* setup(running)
      yield* answer(true)
      yield* tick
      expect([health.snapshot().state, health.isDown()]).toEqual(["up", false])

      yield* publish(ProcessState.Exited({ code: 1, signal: null, at: 0, restarts: 0 }))
      // Far less than the next probe (1 s away while up): the exit alone marks it down.
      yield* TestClock.adjust("1 millis")
      expect([health.snapshot().state, health.isDown()]).toEqual(["down", true])
      // Something still answers on the port (a probe in flight, a stray server): not our child.
      yield* tick
      yield* tick
      expect(health.snapshot().state).toBe("down")

      yield* publish(ProcessState.Starting({ restarts: 1 }))
      yield* tick
      expect(health.snapshot().state).toBe("down")
      yield* publish(ProcessState.Running({ pid: 2, since: 0, restarts: 1 }))
      yield* tick
      expect(health.snapshot().state).toBe("up")
    }))

  it.scoped("stays starting when the child exits before it ever answered", () =>
    Effect.gen(function*() {
      const { health, publish, tick } = yield* setup(running)
      yield* publish(ProcessState.Exited({ code: 1, signal: null, at: 0, restarts: 0 }))
      yield* tick
      expect(health.snapshot().state).toBe("starting")
      // Not known to be down: requests are still forwarded, in case it answers now.
      expect(health.isDown()).toBe(false)
    }))

  it.scoped("tracks an unmanaged Ollama by its answers alone, and ollama.up with it", () =>
    Effect.gen(function*() {
      const up = Metric.value(ollamaUp).pipe(Effect.map((state) => state.value))
      const { answer, health, tick } = yield* setup(ProcessState.Unmanaged())
      yield* answer(true)
      yield* tick
      expect([health.snapshot().state, yield* up]).toEqual(["up", 1])
      yield* answer(false)
      yield* tick
      yield* tick
      expect([health.snapshot().state, yield* up]).toEqual(["down", 0])
    }))

  it.scoped("awaitUp waits for the first answer", () =>
    Effect.gen(function*() {
      const { answer, health, tick } = yield* setup(running)
      const waiting = yield* Effect.fork(health.awaitUp)
      yield* tick
      expect(waiting.unsafePoll()).toBeNull()
      yield* answer(true)
      yield* tick
      expect(waiting.unsafePoll()?._tag).toBe("Success")
    }))
})
