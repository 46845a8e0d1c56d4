/**
 * What a client is told of its key's limits: OpenAI's `x-ratelimit-*` headers on every answer
 * (the minute's requests and tokens, with `reset` as OpenAI writes it: `1s`, `6m0s`, `120ms`), the
 * same trio for the day's and month's token budgets (the token ones on inference answers and on
 * refusals), and on a refusal `Retry-After` (seconds, as HTTP says) and `retry-after-ms` (which
 * the `openai` client reads first).
 */
import type { OutgoingHttpHeaders } from "node:http"
import type { KeyLimits, LimitName } from "../Limits.js"
import { MINUTE, periodsAt, type Usage } from "./Store.js"

/** A duration as OpenAI's reset headers write it (Go's duration format): `120ms`, `1s`, `1.5s`, `6m0s`, `1h2m3s`. */
export const resetText = (ms: number): string => {
  const total = Math.max(0, Math.ceil(ms))
  if (total < 1000) return `${total}ms`
  const hours = Math.floor(total / 3_600_000)
  const minutes = Math.floor((total % 3_600_000) / 60_000)
  const seconds = String((total % 60_000) / 1000)
  if (hours > 0) return `${hours}h${minutes}m${seconds}s`
  if (minutes > 0) return `${minutes}m${seconds}s`
  return `${seconds}s`
}

/** What is left of `limit` after `used`, in whole units. */
export const left = (limit: number, used: number) => Math.max(0, Math.floor(limit - used + 1e-9))

/** The figures the headers of one answer say, two per limit (what is left, the reset); -1 where a limit is absent. */
const NONE = -1
const FIGURES = 8
/** Each limit's trio of headers, in the figures' order; resets of the budgets are in whole seconds. */
const TRIOS = ["requests", "tokens", "tokens-day", "tokens-month"].map((name, i) => ({
  limit: `x-ratelimit-limit-${name}`,
  remaining: `x-ratelimit-remaining-${name}`,
  reset: `x-ratelimit-reset-${name}`,
  resetUnitMs: i < 2 ? 1 : 1000
}))

/**
 * The last headers made for a key name, with the limits and figures they say: the same again give
 * the same object. By name, not by limits: every key without limits of its own shares the one
 * object of AUTHORIZATION_DEFAULT_LIMITS, and their requests, interleaved, would miss each time.
 */
interface Made {
  readonly figures: Float64Array
  limits: KeyLimits
  tokens: boolean
  headers: OutgoingHttpHeaders
}
const made = new Map<string, Made>()
/** This answer's figures, compared with the last ones before any header is made. */
const current = new Float64Array(FIGURES)
const figure = (i: number, limit: number | undefined, used: number, reset: number) => {
  current[2 * i] = limit === undefined ? NONE : left(limit, used)
  current[2 * i + 1] = limit === undefined ? NONE : reset
}

/**
 * The rate-limit headers for a key's limits as `usage` left them at `now`: those of the token
 * limits only when `tokens` (they apply to inference requests alone). At a high rate of admitted
 * requests (the only case where this costs anything) the figures rarely change from one answer
 * to the next, so the headers of the last answer are handed out again while they do not: making
 * them anew for every request of the small-request bench cost it several percent (strings,
 * objects and their collection).
 */
export const limitHeaders = (name: string, limits: KeyLimits, usage: Usage, now: number, tokens: boolean): OutgoingHttpHeaders => {
  const rpm = limits.requests_per_minute
  const tpm = tokens ? limits.tokens_per_minute : undefined
  const day = tokens ? limits.tokens_per_day : undefined
  const month = tokens ? limits.tokens_per_month : undefined
  const periods = day !== undefined || month !== undefined ? periodsAt(now) : undefined
  figure(0, rpm, usage.requests, Math.ceil((usage.requests * MINUTE) / (rpm ?? 1)))
  figure(1, tpm, usage.tokens, Math.ceil((usage.tokens * MINUTE) / (tpm ?? 1)))
  figure(2, day, usage.tokensDay, periods === undefined ? 0 : Math.ceil((periods.dayEnd - now) / 1000))
  figure(3, month, usage.tokensMonth, periods === undefined ? 0 : Math.ceil((periods.monthEnd - now) / 1000))

  let last = made.get(name)
  if (last === undefined) made.set(name, last = { figures: new Float64Array(FIGURES).fill(NaN), limits, tokens, headers: {} })
  const f = last.figures
  let same = last.limits === limits && last.tokens === tokens
  for (let i = 0; same && i < FIGURES; i++) same = f[i] === current[i]
  if (same) return last.headers

  f.set(current)
  const headers: OutgoingHttpHeaders = {}
  const values = [rpm, tpm, day, month]
  for (let i = 0; i < TRIOS.length; i++) {
    const limit = values[i]
    if (limit === undefined) continue
    const trio = TRIOS[i]!
    headers[trio.limit] = String(limit)
    headers[trio.remaining] = String(f[2 * i])
    headers[trio.reset] = resetText(f[2 * i + 1]! * trio.resetUnitMs)
  }
  last.limits = limits
  last.tokens = tokens
  last.headers = headers
  return headers
}

const WHAT: Record<LimitName, string> = {
  requests_per_minute: "requests per minute",
  tokens_per_minute: "tokens per minute",
  concurrent_requests: "requests in flight at once",
  tokens_per_day: "tokens today (UTC)",
  tokens_per_month: "tokens this month (UTC)"
}

/** The refusal's words: which limit, how much, and when to come back. */
export const refusalMessage = (limit: LimitName, value: number, retryAfterMs: number) =>
  `rate limit reached: ${limit} (${value} ${WHAT[limit]}) for this API key; retry in ${resetText(retryAfterMs)}`
