import { describe, expect, it } from "@effect/vitest"
import { Cause, Context, Effect, Layer, Logger, Metric, SubscriptionRef, TestClock } from "effect"
import { OllamaClient, OllamaUnavailable } from "../src/ollama/Client.js"
import { OllamaHealth } from "../src/ollama/Health.js"
import { OllamaProcess, ProcessState } from "../src/ollama/Process.js"
import { ollamaUp } from "../src/telemetry/Metrics.js"

/** OllamaHealth over an Ollama that answers when told, and a supervisor the test drives. */
const setup = (initial: ProcessState) =>
  Effect.gen(function*() {
    let answering = false
    let failure: unknown = REFUSED
    let process = initial
    const changes = yield* SubscriptionRef.make(initial)
    const client = OllamaClient.make({
      origin: ORIGIN,
      ping: () =>
        Effect.suspend(() => answering ? Effect.void : Effect.fail(new OllamaUnavailable({ operation: "GET /", cause: failure }))),
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
    const fail = (cause: unknown) => Effect.sync(() => (failure = cause))
    // Lets the probe loop run one interval (100 ms while not up, 1 s when up).
    const tick = TestClock.adjust("1 second")
    return { answer, fail, health, publish, tick }
  })

const ORIGIN = "http://127.0.0.1:11434"
/** What undici's connect failure looks like under HttpClient's RequestError. */
const REFUSED = { _tag: "RequestError", cause: Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:11434"), { code: "ECONNREFUSED" }) }

/** The log lines written meanwhile, as level, message and annotations. */
const captureLogs = () => {
  const lines: Array<Record<string, unknown>> = []
  const logger = Logger.make(({ annotations, logLevel, message }) => {
    lines.push({ level: logLevel.label, msg: Array.isArray(message) ? message[0] : message, ...Object.fromEntries(annotations) })
  })
  return { lines, layer: Logger.replace(Logger.defaultLogger, logger) }
}

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

  describe("says why Ollama does not answer, once per change, never once per probe", () => {
    const logs = captureLogs()
    it.scoped("an Ollama that is not ours: where it was looked for and what failed, then when it answers", () =>
      Effect.gen(function*() {
        const { answer, fail, health, tick } = yield* setup(ProcessState.Unmanaged())
        const notAnswering = (reason: string) => ({
          level: "WARN",
          msg: "ollama is not answering",
          ollama: ORIGIN,
          reason,
          service: "OllamaHealth"
        })
        // Twenty probes, one line.
        yield* tick
        yield* tick
        expect(logs.lines).toEqual([notAnswering("connect ECONNREFUSED 127.0.0.1:11434")])
        expect(health.snapshot()).toMatchObject({ state: "starting", reason: "connect ECONNREFUSED 127.0.0.1:11434" })

        yield* fail(new Cause.TimeoutException())
        yield* tick
        yield* fail({ _tag: "ResponseError", response: { status: 404 } })
        yield* tick
        yield* tick
        expect(logs.lines.slice(1)).toEqual([notAnswering("no answer to GET / within 2s (timeout)"), notAnswering("GET / answered 404")])

        yield* answer(true)
        yield* tick
        yield* tick
        expect(logs.lines.slice(3)).toEqual([{
          level: "INFO",
          msg: "ollama is up",
          ollama: ORIGIN,
          version: "0.32.15",
          service: "OllamaHealth"
        }])
        expect(health.snapshot().reason).toBeUndefined()

        yield* fail({ _tag: "ResponseError", response: { status: 500 } })
        yield* answer(false)
        yield* tick
        yield* tick
        expect(logs.lines.slice(4)).toEqual([
          { level: "WARN", msg: "ollama stopped answering", ollama: ORIGIN, reason: "GET / answered 500", service: "OllamaHealth" }
        ])
        expect(health.snapshot()).toMatchObject({ state: "down", reason: "GET / answered 500" })
      }).pipe(Effect.provide(logs.layer)))

    const managed = captureLogs()
    it.scoped("our own child refusing connections while it starts is not news: no warning, the reason still in the state", () =>
      Effect.gen(function*() {
        const { health, tick } = yield* setup(running)
        yield* tick
        expect(managed.lines).toEqual([])
        expect(health.snapshot()).toMatchObject({ state: "starting", reason: "connect ECONNREFUSED 127.0.0.1:11434" })
      }).pipe(Effect.provide(managed.layer)))
  })

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
