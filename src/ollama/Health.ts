/**
 * OllamaHealth: whether Ollama answers, as a state that /ping and the proxy read for free.
 * A background loop probes `GET /`; the proxy reports connection failures so a dead Ollama is
 * noticed at once, not at the next probe.
 */
import { Duration, Effect, Queue, Runtime, Schedule, SubscriptionRef } from "effect"
import { OllamaClient } from "./Client.js"

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
const INTERVAL_NOT_UP = Duration.millis(100)

export class OllamaHealth extends Effect.Service<OllamaHealth>()("app/OllamaHealth", {
  scoped: Effect.gen(function*() {
    const client = yield* OllamaClient
    const changes = yield* SubscriptionRef.make<HealthSnapshot>({ state: "starting", since: Date.now() })
    let current: HealthSnapshot = { state: "starting", since: Date.now() }
    const nudges = yield* Queue.sliding<void>(1)
    const runFork = Runtime.runFork(yield* Effect.runtime<never>())

    const set = (state: OllamaState, version?: string) =>
      Effect.suspend(() => {
        if (state === current.state) return Effect.void
        const previous = current.state
        current = version === undefined ? { state, since: Date.now() } : { state, since: Date.now(), version }
        const log = state === "up"
          ? Effect.logInfo("ollama is up")
          : previous === "up"
          ? Effect.logWarning("ollama stopped answering")
          : Effect.void
        return SubscriptionRef.set(changes, current).pipe(Effect.zipRight(log))
      })

    const probe = client.ping(PROBE_TIMEOUT).pipe(
      Effect.zipRight(client.version.pipe(Effect.option)),
      Effect.matchEffect({
        onFailure: () => set(current.state === "starting" ? "starting" : "down"),
        onSuccess: (version) => current.state === "up" ? Effect.void : set("up", version._tag === "Some" ? version.value : undefined)
      })
    )

    // Probe, then wait for the interval or a nudge, whichever comes first.
    const waitNext = Effect.suspend(() =>
      Queue.take(nudges).pipe(Effect.timeout(current.state === "up" ? INTERVAL_UP : INTERVAL_NOT_UP), Effect.ignore)
    )
    // A probe a second would be a trace a second: the loop makes no spans.
    yield* probe.pipe(Effect.zipRight(waitNext), Effect.repeat(Schedule.forever), Effect.withTracerEnabled(false), Effect.forkScoped)

    return {
      /** The state now; a plain read, cheap enough for every request. */
      snapshot: (): HealthSnapshot => current,
      isUp: (): boolean => current.state === "up",
      changes,
      /** The proxy could not reach Ollama: mark it down now and probe again at once. */
      reportUnreachable: (): void => {
        if (current.state === "up") {
          runFork(set("down"))
        }
        nudges.unsafeOffer(undefined)
      },
      set
    } as const
  }),
  dependencies: [OllamaClient.Default]
}) {}
