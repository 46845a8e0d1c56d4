/**
 * What a client is told of its key's limits: OpenAI's `x-ratelimit-*` headers on every answer
 * (the minute's requests and tokens, with `reset` as OpenAI writes it: `1s`, `6m0s`, `120ms`), the
 * same trio for the day's and month's token budgets (the token ones on inference answers and on
 * refusals), and on a refusal `Retry-After` (seconds, as HTTP says) and `retry-after-ms` (which
 * the `openai` client reads first).
 */
import type { OutgoingHttpHeaders } from "node:http"
import type { KeyLimits, LimitName } from "./Limits.js"
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

const left = (limit: number, used: number) => Math.max(0, Math.floor(limit - used + 1e-9))

/** The figures the headers of one answer say, in a fixed order; -1 where a limit is absent. */
const NONE = -1
const FIGURES = 8

/** The last headers made for a key's limits, with their figures: the same figures give the same object. */
interface Made {
  readonly figures: Float64Array
  tokens: boolean
  headers: OutgoingHttpHeaders
}
const made = new WeakMap<KeyLimits, Made>()

/**
 * The rate-limit headers for a key's limits as `usage` left them at `now`: those of the token
 * limits only when `tokens` (they apply to inference requests alone). The budgets' resets are
 * given in whole seconds. At a high rate of admitted requests (the only case where this costs
 * anything) the figures rarely change from one answer to the next, so the headers of the last
 * answer are handed out again while they do not: making them anew for every request of the
 * small-request bench cost it several percent (strings, objects and their collection).
 */
export const limitHeaders = (limits: KeyLimits, usage: Usage, now: number, tokens: boolean): OutgoingHttpHeaders => {
  const rpm = limits.requests_per_minute
  const tpm = tokens ? limits.tokens_per_minute : undefined
  const day = tokens ? limits.tokens_per_day : undefined
  const month = tokens ? limits.tokens_per_month : undefined
  const periods = day !== undefined || month !== undefined ? periodsAt(now) : undefined
  let last = made.get(limits)
  if (last === undefined) made.set(limits, last = { figures: new Float64Array(FIGURES).fill(NaN), tokens, headers: {} })
  const f = last.figures
  const same = last.tokens === tokens &&
    f[0] === (rpm === undefined ? NONE : left(rpm, usage.requests)) &&
    f[1] === (rpm === undefined ? NONE : Math.ceil((usage.requests * MINUTE) / rpm)) &&
    f[2] === (tpm === undefined ? NONE : left(tpm, usage.tokens)) &&
    f[3] === (tpm === undefined ? NONE : Math.ceil((usage.tokens * MINUTE) / tpm)) &&
    f[4] === (day === undefined ? NONE : left(day, usage.tokensDay)) &&
    f[5] === (day === undefined ? NONE : Math.ceil((periods!.dayEnd - now) / 1000)) &&
    f[6] === (month === undefined ? NONE : left(month, usage.tokensMonth)) &&
    f[7] === (month === undefined ? NONE : Math.ceil((periods!.monthEnd - now) / 1000))
  if (same) return last.headers

  const headers: OutgoingHttpHeaders = {}
  f.fill(NONE)
  if (rpm !== undefined) {
    f[0] = left(rpm, usage.requests)
    f[1] = Math.ceil((usage.requests * MINUTE) / rpm)
    headers["x-ratelimit-limit-requests"] = String(rpm)
    headers["x-ratelimit-remaining-requests"] = String(f[0])
    headers["x-ratelimit-reset-requests"] = resetText(f[1])
  }
  if (tpm !== undefined) {
    f[2] = left(tpm, usage.tokens)
    f[3] = Math.ceil((usage.tokens * MINUTE) / tpm)
    headers["x-ratelimit-limit-tokens"] = String(tpm)
    headers["x-ratelimit-remaining-tokens"] = String(f[2])
    headers["x-ratelimit-reset-tokens"] = resetText(f[3])
  }
  if (day !== undefined) {
    f[4] = left(day, usage.tokensDay)
    f[5] = Math.ceil((periods!.dayEnd - now) / 1000)
    headers["x-ratelimit-limit-tokens-day"] = String(day)
    headers["x-ratelimit-remaining-tokens-day"] = String(f[4])
    headers["x-ratelimit-reset-tokens-day"] = resetText(f[5] * 1000)
  }
  if (month !== undefined) {
    f[6] = left(month, usage.tokensMonth)
    f[7] = Math.ceil((periods!.monthEnd - now) / 1000)
    headers["x-ratelimit-limit-tokens-month"] = String(month)
    headers["x-ratelimit-remaining-tokens-month"] = String(f[6])
    headers["x-ratelimit-reset-tokens-month"] = resetText(f[7] * 1000)
  }
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
