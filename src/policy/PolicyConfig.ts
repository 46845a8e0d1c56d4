/**
 * The request policy's own slice of the environment (REQUEST_POLICY_*, MAX_REQUEST_BODY), read by
 * this part alone: the operator's rules for tenants (keys without `manage`), with the preloaded
 * models whose keep_alive the policy holds at PRELOAD_KEEP_ALIVE (taken from the preload slice,
 * src/ollama/OllamaConfig.ts, not read again).
 */
import { Context, Effect, Either, Layer, Option } from "effect"
import { all, optional, type Parse, parsePositiveInt, quoted, readSlice, withDefault } from "../config/Read.js"
import { normalizeModel } from "../keys/Models.js"
import { PreloadConfig } from "../ollama/OllamaConfig.js"
import { parseKeepAliveBound, readKeepAlive } from "./GoDuration.js"
import type { OperatorPolicy } from "./RequestPolicy.js"

const parseUnbounded: Parse<"rewrite" | "refuse"> = (raw) => {
  const v = raw.trim().toLowerCase()
  return v === "rewrite" || v === "refuse" ? Either.right(v) : Either.left(`${quoted(raw)} is not rewrite or refuse`)
}

/** A size in bytes: a number, or with KB, MB, GB (powers of 1024). */
export const parseSize: Parse<number> = (raw) => {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$/i.exec(raw)
  if (m === null) return Either.left(`${quoted(raw)} is not a size (like 32MB, 100MB, or bytes)`)
  const unit = (m[2] ?? "b").toLowerCase().replace("i", "")
  const bytes = Math.floor(Number(m[1]) * ({ b: 1, kb: 1024, mb: 1024 ** 2, gb: 1024 ** 3 } as Record<string, number>)[unit]!)
  return bytes > 0 ? Either.right(bytes) : Either.left(`${quoted(raw)} must be more than 0`)
}

const fromEnvironment = all({
  maxRequestBody: withDefault("MAX_REQUEST_BODY", parseSize, 32 * 1024 * 1024),
  keepAliveMin: withDefault("REQUEST_POLICY_KEEP_ALIVE_MIN", parseKeepAliveBound, 1e9),
  keepAliveMax: withDefault("REQUEST_POLICY_KEEP_ALIVE_MAX", parseKeepAliveBound, 30 * 60e9),
  keepAliveUnbounded: withDefault("REQUEST_POLICY_KEEP_ALIVE_UNBOUNDED", parseUnbounded, "rewrite" as const),
  numCtxMax: optional("REQUEST_POLICY_NUM_CTX_MAX", parsePositiveInt),
  numPredictMax: optional("REQUEST_POLICY_NUM_PREDICT_MAX", parsePositiveInt)
})

export class RequestPolicyConfig extends Context.Tag("app/RequestPolicyConfig")<RequestPolicyConfig, OperatorPolicy>() {
  static readonly variables = fromEnvironment.variables
  static readonly layer = Layer.effect(
    RequestPolicyConfig,
    Effect.gen(function*() {
      const { preloadKeepAlive, preloadModels } = yield* PreloadConfig
      const raw = yield* readSlice(fromEnvironment)
      const preload = readKeepAlive(preloadKeepAlive)
      const preloadNs = "ns" in preload ? preload.ns : Infinity
      return {
        maxRequestBody: raw.maxRequestBody,
        keepAliveMin: raw.keepAliveMin,
        keepAliveMax: raw.keepAliveMax,
        keepAliveUnbounded: raw.keepAliveUnbounded,
        numCtxMax: Option.getOrUndefined(raw.numCtxMax),
        numPredictMax: Option.getOrUndefined(raw.numPredictMax),
        preloaded: new Map(preloadModels.map((m) => [normalizeModel(m), preloadNs]))
      }
    })
  )
}
