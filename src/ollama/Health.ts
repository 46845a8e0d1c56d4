/**
 * OllamaHealth: whether Ollama answers, as a state that /ping and the proxy read for free.
 * A background loop probes `GET /`; the proxy reports connection failures, and in managed mode
 * the process supervisor reports exits, so a dead Ollama is noticed at once, not at the next probe.
 */
import { Clock, Duration, Effect, Exit, Metric, Queue, Runtime, Schedule, Stream, SubscriptionRef, type Tracer } from "effect"
import { ollamaUp } from "../telemetry/Metrics.js"
import { OllamaClient } from "./Client.js"
import { OllamaProcess } from "./Process.js"

export type OllamaState =
  /** Never answered yet. */
  | "starting"
  | "up"
  /** Answered before, does not now. */
  | "down"

export interface HealthSnapshot {
  readonly state: OllamaState
  readonly since: number
  readonly version?: string
}

const PROBE_TIMEOUT = Duration.seconds(2)
const INTERVAL_UP = Duration.seconds(1)
/** `ollama serve` logs "Listening" before it answers; poll often so readiness is seen at once. */
const INTERVAL_NOT_UP = Duration.millis(100)

export class OllamaHealth extends Effect.Service<OllamaHealth>()("app/OllamaHealth", {
  scoped: Effect.gen(function*() {
    const client = yield* OllamaClient
    const ollamaProcess = yield* OllamaProcess
    const changes = yield* SubscriptionRef.make<HealthSnapshot>({ state: "starting", since: Date.now() })
    let current: HealthSnapshot = { state: "starting", since: Date.now() }
    const nudges = yield* Queue.sliding<void>(1)
    const runFork = Runtime.runFork(yield* Effect.runtime<never>())

    // OllamaProcess.ready: from a child's start (or ours, unmanaged) to its first answer.
    let ready: Tracer.Span | undefined
    const endReady = (exit: Exit.Exit<unknown, unknown>) =>
      Effect.suspend(() => {
        const span = ready
        ready = undefined
        return span === undefined ? Effect.void : Effect.map(Clock.currentTimeNanos, (now) => span.end(now, exit))
      })
    const startReady = (attributes: Record<string, unknown>) =>
      endReady(Exit.void).pipe(
        Effect.zipRight(Effect.makeSpan("OllamaProcess.ready", { attributes, root: true })),
        Effect.map((span) => void (ready = span))
      )

    const set = (state: OllamaState, version?: string) =>
      Effect.suspend(() => {
        if (state === "up" && ready !== undefined) {
          if (version !== undefined) ready.attribute("version", version)
          return endReady(Exit.void).pipe(Effect.zipRight(update(state, version)))
        }
        return update(state, version)
      })

    const update = (state: OllamaState, version?: string) =>
      Effect.suspend(() => {
        if (state === current.state) return Effect.void
        const previous = current.state
        current = version === undefined ? { state, since: Date.now() } : { state, since: Date.now(), version }
        const log = state === "up"
          ? Effect.logInfo("ollama is up").pipe(Effect.annotateLogs(version === undefined ? {} : { version }))
          : previous === "up"
          ? Effect.logWarning("ollama stopped answering")
          : Effect.void
        return SubscriptionRef.set(changes, current).pipe(
          Effect.zipRight(Metric.set(ollamaUp, state === "up" ? 1 : 0)),
          Effect.zipRight(log.pipe(Effect.annotateLogs({ service: "OllamaHealth" })))
        )
      })

    // An answer from a child the supervisor already saw exit (a probe in flight at the crash, a
    // stray server on the port) must not mark Ollama up.
    const childRunning = () => {
      const tag = ollamaProcess.current()._tag
      return tag === "Unmanaged" || tag === "Running"
    }

    const probe = client.ping(PROBE_TIMEOUT).pipe(
      Effect.zipRight(client.version.pipe(Effect.option)),
      Effect.matchEffect({
        onFailure: () => set(current.state === "starting" ? "starting" : "down"),
        onSuccess: (version) =>
          current.state === "up" || !childRunning()
            ? Effect.void
            : set("up", version._tag === "Some" ? version.value : undefined)
      })
    )

    // Probe, then wait for the interval or a nudge, whichever comes first.
    const waitNext = Effect.suspend(() =>
      Queue.take(nudges).pipe(Effect.timeout(current.state === "up" ? INTERVAL_UP : INTERVAL_NOT_UP), Effect.ignore)
    )
    // A probe a second would be a trace a second: the loop makes no spans.
    yield* probe.pipe(Effect.zipRight(waitNext), Effect.repeat(Schedule.forever), Effect.withTracerEnabled(false), Effect.forkScoped)

    yield* ollamaProcess.changes.changes.pipe(
      Stream.runForEach((process) => {
        switch (process._tag) {
          case "Exited":
            return endReady(Exit.fail("exited before answering")).pipe(
              Effect.zipRight(set(current.state === "starting" ? "starting" : "down"))
            )
          case "Running":
            return startReady({ pid: process.pid, restarts: process.restarts }).pipe(
              Effect.zipRight(Queue.offer(nudges, undefined))
            )
          case "Unmanaged":
            return current.state === "up" ? Effect.void : startReady({ managed: false })
          default:
            return Effect.void
        }
      }),
      Effect.forkScoped
    )

    return {
      /** The state now; a plain read, cheap enough for every request. */
      snapshot: (): HealthSnapshot => current,
      /**
       * Ollama answered before and does not now: requests fail fast. While it is starting it may
       * answer any moment (the first probe may still be under way as the port opens), so
       * requests are forwarded then, and a refused connection still ends in a 503.
       */
      isDown: (): boolean => current.state === "down",
      changes,
      /** Waits until Ollama answers (at once if it does now). */
      awaitUp: changes.changes.pipe(
        Stream.filter((s) => s.state === "up"),
        Stream.take(1),
        Stream.runDrain
      ),
      /** The proxy could not reach Ollama: mark it down now and probe again at once. */
      reportUnreachable: (): void => {
        if (current.state === "up") {
          runFork(set("down"))
        }
        nudges.unsafeOffer(undefined)
      }
    } as const
  }),
  dependencies: [OllamaClient.Default, OllamaProcess.Default]
}) {}
