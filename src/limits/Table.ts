/**
 * The limits a key may carry, one entry each: everything else is derived from the entry. The
 * key file's schema and AUTHORIZATION_DEFAULT_LIMITS read the names; both stores (Store.ts in the
 * process, RedisStore.ts in Redis, whose Lua script is assembled from one part per entry) keep
 * the counter its window and count call for; Headers.ts writes its `x-ratelimit-*` trio and its
 * refusal; Limits.ts sets its `ollama_proxy.key.remaining_*` gauge; GET /v1/usage lists it.
 *
 * To add a limit, add an entry (and its row in the README's table of limits). A new kind of
 * window is the one change that reaches the stores.
 *
 * This file imports nothing of the proxy: keys/ (its slice of the environment too) and the
 * exchange read it, as they read Scopes.ts.
 */
import { Either, Schema } from "effect"
import { didYouMean } from "../NearMiss.js"

/**
 * Where a limit counts: a rolling minute (a level that drains `limit` per 60 s), a UTC calendar
 * day or month (a plain sum, back to 0 when the period turns), or the key's requests in flight.
 */
export type Window = "minute" | "day" | "month" | "in_flight"

/**
 * What it counts: requests (counted when one is let in, and checked as `count + 1 <= limit`, so
 * never exceeded), or tokens (counted when an exchange ends, checked on inference only as `count <
 * limit`, so a stream is never cut). `in_flight` counts requests.
 */
export type Counted = "requests" | "tokens"

export interface LimitDef {
  /** Its name in the key file and AUTHORIZATION_DEFAULT_LIMITS. */
  readonly name: string
  readonly window: Window
  readonly counts: Counted
  /**
   * `x-ratelimit-{limit,remaining,reset}-<headers>`, OpenAI's names for the minute's; undefined
   * for none. Token limits' headers go on inference answers (and refusals) only.
   */
  readonly headers: string | undefined
  /** The gauge `ollama_proxy.key.remaining_<gauge>` and its description. */
  readonly gauge: string
  readonly gaugeDescription: string
  /** The refusal's words after the value: `(60 requests per minute)`. */
  readonly what: string
  /**
   * The Redis key of its counter, after the key name's prefix (a day's or month's gets the period
   * appended). None for tokens per day or month: those are the key's own token totals, which the
   * stores keep for every key anyway (usage records, GET /v1/usage).
   */
  readonly redisKey: string | undefined
}

export const LIMITS = [
  {
    name: "requests_per_minute",
    window: "minute",
    counts: "requests",
    headers: "requests",
    gauge: "requests",
    gaugeDescription: "Requests the key may still make in the current minute (requests_per_minute)",
    what: "requests per minute",
    redisKey: "r"
  },
  {
    name: "tokens_per_minute",
    window: "minute",
    counts: "tokens",
    headers: "tokens",
    gauge: "tokens",
    gaugeDescription: "Tokens the key may still use in the current minute (tokens_per_minute)",
    what: "tokens per minute",
    redisKey: "t"
  },
  {
    name: "concurrent_requests",
    window: "in_flight",
    counts: "requests",
    headers: undefined,
    gauge: "concurrent_requests",
    gaugeDescription: "Requests the key may still start while its others are in flight (concurrent_requests)",
    what: "requests in flight at once",
    redisKey: "c"
  },
  {
    name: "tokens_per_day",
    window: "day",
    counts: "tokens",
    headers: "tokens-day",
    gauge: "tokens_day",
    gaugeDescription: "Tokens left in the key's budget for the current UTC day (tokens_per_day)",
    what: "tokens today (UTC)",
    redisKey: undefined
  },
  {
    name: "tokens_per_month",
    window: "month",
    counts: "tokens",
    headers: "tokens-month",
    gauge: "tokens_month",
    gaugeDescription: "Tokens left in the key's budget for the current UTC month (tokens_per_month)",
    what: "tokens this month (UTC)",
    redisKey: undefined
  }
] as const satisfies ReadonlyArray<LimitDef>

export type LimitTable = ReadonlyArray<LimitDef>
export type LimitName = (typeof LIMITS)[number]["name"]

/** A key's limits, by name; absent = no such limit. */
export type KeyLimits = { readonly [name: string]: number | undefined }

const Positive = Schema.Number.pipe(
  Schema.filter((n) => Number.isSafeInteger(n) && n > 0, { message: () => "a positive integer" })
)

/** The key file's `limits` field. */
export const KeyLimitsSchema: Schema.Schema<KeyLimits> = Schema.Struct(
  Object.fromEntries(LIMITS.map((def) => [def.name, Schema.optional(Positive)]))
)

/** Limits with no field set are no limits: undefined, so the request path skips them at once. */
export const someLimits = (limits: KeyLimits | undefined): KeyLimits | undefined =>
  limits !== undefined && LIMITS.some((def) => limits[def.name] !== undefined) ? limits : undefined

/** Whether two keys of one name carry the same limits (they share one set of counters). */
export const sameLimits = (a: KeyLimits | undefined, b: KeyLimits | undefined): boolean =>
  LIMITS.every((def) => a?.[def.name] === b?.[def.name])

/** The names of the limits, in the table's order (the key file's near-miss suggestions). */
export const LIMIT_NAMES: ReadonlyArray<string> = LIMITS.map((def) => def.name)

/** AUTHORIZATION_DEFAULT_LIMITS: `name=value` pairs separated by commas; empty = no limits. */
export const parseLimits = (raw: string): Either.Either<KeyLimits | undefined, string> => {
  const limits: Record<string, number> = {}
  const names = LIMITS.map((def) => def.name as string)
  for (const item of raw.split(",")) {
    if (item.trim() === "") continue
    const eq = item.indexOf("=")
    const name = (eq < 0 ? item : item.slice(0, eq)).trim().toLowerCase()
    if (!names.includes(name)) return Either.left(`${JSON.stringify(name)} is not a limit (${names.join(", ")})${didYouMean(name, names)}`)
    const value = eq < 0 ? "" : item.slice(eq + 1).trim()
    const n = /^\d+$/.test(value) ? Number(value) : NaN
    if (!Number.isSafeInteger(n) || n <= 0) return Either.left(`${name}=${JSON.stringify(value)}: not a positive integer`)
    if (limits[name] !== undefined) return Either.left(`${name} is given twice`)
    limits[name] = n
  }
  return Either.right(someLimits(limits))
}

/** How a store checks and counts an entry: its window and what it counts, as one number. */
export const Kind = { MinuteRequests: 0, MinuteTokens: 1, InFlight: 2, PeriodRequests: 3, PeriodTokens: 4 } as const
export type Kind = (typeof Kind)[keyof typeof Kind]

export const kindOf = (def: LimitDef): Kind =>
  def.window === "in_flight"
    ? Kind.InFlight
    : def.window === "minute"
    ? def.counts === "requests" ? Kind.MinuteRequests : Kind.MinuteTokens
    : def.counts === "requests"
    ? Kind.PeriodRequests
    : Kind.PeriodTokens

/** One limit of a key: its entry, the entry's place in the table, and the key's value for it. */
export interface PlannedLimit {
  readonly def: LimitDef
  readonly kind: Kind
  /** The entry's index in the table: counters and usage figures are kept by it. */
  readonly index: number
  readonly value: number
  /** Whether it applies to every request (requests, in flight) or to inference only (tokens). */
  readonly always: boolean
  /** For day and month windows. */
  readonly month: boolean
  /** Its three header names, made once: `x-ratelimit-limit-<headers>`, ...; undefined for none. */
  readonly trio: { readonly limit: string; readonly remaining: string; readonly reset: string } | undefined
}

/**
 * A key's limits made ready for the request path once per limits object (a key file reload makes
 * new ones): the entries it has, in table order. Made by `planner(table)`.
 */
export interface Plan {
  readonly limits: KeyLimits
  readonly entries: ReadonlyArray<PlannedLimit>
  /** The entries whose headers an inference answer carries, and those any other answer carries. */
  readonly headed: { readonly inference: ReadonlyArray<PlannedLimit>; readonly other: ReadonlyArray<PlannedLimit> }
}

/** The plan of a key without limits (its tokens are still counted, by model). */
export const NO_LIMITS: Plan = { limits: {}, entries: [], headed: { inference: [], other: [] } }

/** The plan of a key's limits against `table`, made once per limits object. */
export const planner = (table: LimitTable) => {
  const plans = new WeakMap<KeyLimits, Plan>()
  return (limits: KeyLimits): Plan => {
    let plan = plans.get(limits)
    if (plan === undefined) {
      const entries: Array<PlannedLimit> = []
      table.forEach((def, index) => {
        const value = limits[def.name]
        if (value === undefined) return
        const h = def.headers
        entries.push({
          def,
          kind: kindOf(def),
          index,
          value,
          always: def.counts === "requests",
          month: def.window === "month",
          trio: h === undefined
            ? undefined
            : { limit: `x-ratelimit-limit-${h}`, remaining: `x-ratelimit-remaining-${h}`, reset: `x-ratelimit-reset-${h}` }
        })
      })
      const inference = entries.filter((limit) => limit.trio !== undefined)
      plans.set(limits, plan = { limits, entries, headed: { inference, other: inference.filter((limit) => limit.always) } })
    }
    return plan
  }
}
