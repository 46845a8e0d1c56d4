/**
 * OllamaHealth: whether Ollama answers, as a state that /ping and the proxy read for free.
 * A background loop probes `GET /`; the proxy reports connection failures, and in managed mode
 * the process supervisor reports exits, so a dead Ollama is noticed at once, not at the next probe.
 *
 * While Ollama does not answer, the state carries why (the connection was refused, no answer in
 * time, a status), and each change of state or of that reason is one log line naming where
 * Ollama was looked for: an Ollama that never answers (OLLAMA_MANAGED=false with a wrong
 * OLLAMA_HOST) must not be a silent 204 for ever. One line per change, never one per probe.
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
  /** Why Ollama did not answer, while it does not; undefined when up or not known. */
  readonly reason?: string
}

const PROBE_TIMEOUT = Duration.seconds(2)
const INTERVAL_UP = Duration.seconds(1)
/** `ollama serve` logs "Listening" before it answers; poll often so readiness is seen at once. */
const INTERVAL_NOT_UP = Duration.millis(100)

/**
 * Why a probe failed, in words that stay the same from one probe to the next (so that only a
 * change is logged): the socket error as Node says it (`connect ECONNREFUSED 127.0.0.1:11434`,
 * `getaddrinfo ENOTFOUND ollama`), no answer in time, or the status Ollama answered with.
 */
export const failureReason = (error: unknown): string => {
  for (let cause = error; typeof cause === "object" && cause !== null; cause = (cause as { cause?: unknown }).cause) {
    const e = cause as { _tag?: string; code?: unknown; message?: string; response?: { status: number } }
    if (e._tag === "TimeoutException") return `no answer to GET / within ${Duration.format(PROBE_TIMEOUT)} (timeout)`
    if (e._tag === "ResponseError" && e.response !== undefined) return `GET / answered ${e.response.status}`
    if (typeof e.code === "string" && e.message !== undefined) return e.message
  }
  return error instanceof Error ? error.message : String(error)
}

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

    const set = (state: OllamaState, version?: string, reason?: string) =>
      Effect.suspend(() => {
        if (state === "up" && ready !== undefined) {
          if (version !== undefined) ready.attribute("version", version)
          return endReady(Exit.void).pipe(Effect.zipRight(update(state, version)))
        }
        return update(state, version, reason)
      })

    const ollama = client.origin
    /** The line for a change: up, stopped answering, or (still) not answering for another reason. */
    const logChange = (previous: HealthSnapshot, next: HealthSnapshot) => {
      if (next.state === "up") {
        return Effect.logInfo("ollama is up").pipe(
          Effect.annotateLogs({ ollama, ...(next.version === undefined ? {} : { version: next.version }) })
        )
      }
      const fields = { ollama, ...(next.reason === undefined ? {} : { reason: next.reason }) }
      if (previous.state === "up") return Effect.logWarning("ollama stopped answering").pipe(Effect.annotateLogs(fields))
      if (next.reason === undefined) return Effect.void
      // A child of ours refuses connections until it listens: that is its start, not news.
      return next.state === "starting" && ollamaProcess.managed
        ? Effect.logDebug("ollama is not answering yet").pipe(Effect.annotateLogs(fields))
        : Effect.logWarning("ollama is not answering").pipe(Effect.annotateLogs(fields))
    }

    const update = (state: OllamaState, version?: string, reason?: string) =>
      Effect.suspend(() => {
        if (state === current.state && (state === "up" || reason === current.reason)) return Effect.void
        const previous = current
        const since = state === previous.state ? previous.since : Date.now()
        current = { state, since, ...(version === undefined ? {} : { version }), ...(reason === undefined ? {} : { reason }) }
        return SubscriptionRef.set(changes, current).pipe(
          Effect.zipRight(Metric.set(ollamaUp, state === "up" ? 1 : 0)),
          Effect.zipRight(logChange(previous, current).pipe(Effect.annotateLogs({ service: "OllamaHealth" })))
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
        onFailure: (error) => set(current.state === "starting" ? "starting" : "down", undefined, failureReason(error)),
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
              Effect.zipRight(set(
                current.state === "starting" ? "starting" : "down",
                undefined,
                `the ollama process exited (${process.signal === null ? `code ${process.code}` : process.signal})`
              ))
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
      /** Where Ollama is looked for (OLLAMA_HOST's origin). */
      origin: ollama,
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
