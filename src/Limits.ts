/**
 * What a key may use: requests and tokens per minute, requests in flight at once, and token
 * budgets per UTC day and month. Written the same way in the key file's `limits` and in
 * AUTHORIZATION_DEFAULT_LIMITS (`requests_per_minute=60,tokens_per_day=200000`); every field is
 * optional, and a key without any has no limits.
 */
import { Either, Schema } from "effect"
import { didYouMean } from "./NearMiss.js"

export const LIMIT_NAMES = [
  "requests_per_minute",
  "tokens_per_minute",
  "concurrent_requests",
  "tokens_per_day",
  "tokens_per_month"
] as const
export type LimitName = (typeof LIMIT_NAMES)[number]

/** A key's limits, by the names the key file uses; absent = no such limit. */
export type KeyLimits = { readonly [name in LimitName]?: number | undefined }

const Positive = Schema.Number.pipe(
  Schema.filter((n) => Number.isSafeInteger(n) && n > 0, { message: () => "a positive integer" })
)

/** The key file's `limits` field. */
export const KeyLimitsSchema = Schema.Struct({
  requests_per_minute: Schema.optional(Positive),
  tokens_per_minute: Schema.optional(Positive),
  concurrent_requests: Schema.optional(Positive),
  tokens_per_day: Schema.optional(Positive),
  tokens_per_month: Schema.optional(Positive)
})

/** Limits with no field set are no limits: undefined, so the request path skips them at once. */
export const someLimits = (limits: KeyLimits | undefined): KeyLimits | undefined =>
  limits !== undefined && LIMIT_NAMES.some((name) => limits[name] !== undefined) ? limits : undefined

/** Whether two keys of one name carry the same limits (they share one set of counters). */
export const sameLimits = (a: KeyLimits | undefined, b: KeyLimits | undefined): boolean =>
  LIMIT_NAMES.every((name) => a?.[name] === b?.[name])

/** AUTHORIZATION_DEFAULT_LIMITS: `name=value` pairs separated by commas; empty = no limits. */
export const parseLimits = (raw: string): Either.Either<KeyLimits | undefined, string> => {
  const limits: { [name in LimitName]?: number } = {}
  for (const item of raw.split(",")) {
    if (item.trim() === "") continue
    const eq = item.indexOf("=")
    const name = (eq < 0 ? item : item.slice(0, eq)).trim().toLowerCase()
    if (!(LIMIT_NAMES as ReadonlyArray<string>).includes(name)) {
      return Either.left(`${JSON.stringify(name)} is not a limit (${LIMIT_NAMES.join(", ")})${didYouMean(name, LIMIT_NAMES)}`)
    }
    const value = eq < 0 ? "" : item.slice(eq + 1).trim()
    const n = /^\d+$/.test(value) ? Number(value) : NaN
    if (!Number.isSafeInteger(n) || n <= 0) return Either.left(`${name}=${JSON.stringify(value)}: not a positive integer`)
    if (limits[name as LimitName] !== undefined) return Either.left(`${name} is given twice`)
    limits[name as LimitName] = n
  }
  return Either.right(someLimits(limits))
}
