/**
 * The slices more than one part reads, so that none of those parts hands them to the others:
 * SHUTDOWN_TIMEOUT (the listeners drain within it, the usage webhook flushes within it), REDIS_URL
 * (limits' counters, the usage outbox) and the RunPod worker's identity (records, logs, traces).
 */
import { Context, Duration, Effect, Either, Layer, Option, Redacted } from "effect"
import { all, optional, type Parse, parseDuration, readSlice, text, withDefault } from "./Read.js"

export interface ShutdownConfigShape {
  /** On SIGTERM, how long in-flight responses (and the usage records they leave) may take. */
  readonly shutdownTimeout: Duration.Duration
}

const shutdown = all({ shutdownTimeout: withDefault("SHUTDOWN_TIMEOUT", parseDuration, Duration.seconds(25)) })

export class ShutdownConfig extends Context.Tag("app/ShutdownConfig")<ShutdownConfig, ShutdownConfigShape>() {
  static readonly variables = shutdown.variables
  static readonly layer = Layer.effect(ShutdownConfig, readSlice(shutdown))
}

/** redis:// or rediss:// (TLS); the text is never echoed, since it may carry a password. */
const parseRedisUrl: Parse<Redacted.Redacted<string>> = (raw) => {
  try {
    const url = new URL(raw.trim())
    if ((url.protocol === "redis:" || url.protocol === "rediss:") && url.hostname !== "") return Either.right(Redacted.make(raw.trim()))
  } catch {
    // reported below
  }
  return Either.left("not a redis:// or rediss:// URL (like redis://:password@redis:6379/0)")
}

export interface RedisConfigShape {
  /** REDIS_URL: counters and the usage outbox shared by every worker; none = in this process. May carry a password. */
  readonly redisUrl: Option.Option<Redacted.Redacted<string>>
}

const redis = all({ redisUrl: optional("REDIS_URL", parseRedisUrl) })

export class RedisConfig extends Context.Tag("app/RedisConfig")<RedisConfig, RedisConfigShape>() {
  static readonly variables = redis.variables
  static readonly layer = Layer.effect(RedisConfig, readSlice(redis))
}

/**
 * Who this worker is, as RunPod's environment tells it (RUNPOD_POD_ID, RUNPOD_ENDPOINT_ID,
 * RUNPOD_DC_ID), under the names the usage record gives them; a variable that is not set is left
 * out, so elsewhere this is `{}`.
 */
export type WorkerIdentity = {
  readonly runpod_pod_id?: string
  readonly runpod_endpoint_id?: string
  readonly runpod_dc_id?: string
}

const worker = all({
  runpod_pod_id: optional("RUNPOD_POD_ID", text),
  runpod_endpoint_id: optional("RUNPOD_ENDPOINT_ID", text),
  runpod_dc_id: optional("RUNPOD_DC_ID", text)
})

export class WorkerConfig extends Context.Tag("app/WorkerConfig")<WorkerConfig, WorkerIdentity>() {
  static readonly variables = worker.variables
  static readonly layer = Layer.effect(
    WorkerConfig,
    readSlice(worker).pipe(
      Effect.map((ids): WorkerIdentity => ({
        ...Option.match(ids.runpod_pod_id, { onNone: () => ({}), onSome: (id) => ({ runpod_pod_id: id }) }),
        ...Option.match(ids.runpod_endpoint_id, { onNone: () => ({}), onSome: (id) => ({ runpod_endpoint_id: id }) }),
        ...Option.match(ids.runpod_dc_id, { onNone: () => ({}), onSome: (id) => ({ runpod_dc_id: id }) })
      }))
    )
  )
}
