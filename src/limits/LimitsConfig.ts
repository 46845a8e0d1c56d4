/**
 * The limits' own slice of the environment: how long a request waits for the counters' store and
 * what is decided when it does not answer. Where the store is (REDIS_URL) is a slice of its own,
 * src/config/Shared.ts, since the usage outbox uses the same Redis; the limits of keys that name
 * none belong to the keys (src/keys/KeysConfig.ts), which hand them out.
 */
import { Context, Duration, Either, Layer } from "effect"
import { all, type Parse, parsePositiveDuration, quoted, readSlice, withDefault } from "../config/Read.js"

const parseStoreFailure: Parse<"open" | "closed"> = (raw) => {
  const v = raw.trim().toLowerCase()
  return v === "open" || v === "closed" ? Either.right(v) : Either.left(`${quoted(raw)} is not open or closed`)
}

/** What happens when the counters' store does not answer. */
export interface LimitsConfigShape {
  /** How long a request waits for Redis before LIMITS_ON_STORE_FAILURE decides. */
  readonly timeout: Duration.Duration
  readonly onFailure: "open" | "closed"
}

const limits = all({
  timeout: withDefault("LIMITS_STORE_TIMEOUT", parsePositiveDuration, Duration.millis(200)),
  onFailure: withDefault<"open" | "closed">("LIMITS_ON_STORE_FAILURE", parseStoreFailure, "open")
})

export class LimitsConfig extends Context.Tag("app/LimitsConfig")<LimitsConfig, LimitsConfigShape>() {
  static readonly variables = limits.variables
  static readonly layer = Layer.effect(LimitsConfig, readSlice(limits))
}
