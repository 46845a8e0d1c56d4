/**
 * What a client is told of its key's limits: OpenAI's `x-ratelimit-*` headers on every answer
 * (the minute's requests and tokens, with `reset` as OpenAI writes it: `1s`, `6m0s`, `120ms`), the
 * same trio for the day's and month's token budgets, and on a refusal `Retry-After` (seconds, as
 * HTTP says) and `retry-after-ms` (which the `openai` client reads first).
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

const remaining = (limit: number, used: number) => String(Math.max(0, Math.floor(limit - used + 1e-9)))

/** The rate-limit headers for a key's limits as `usage` left them at `now`. */
export const limitHeaders = (limits: KeyLimits, usage: Usage, now: number): OutgoingHttpHeaders => {
  const headers: OutgoingHttpHeaders = {}
  const rpm = limits.requests_per_minute
  if (rpm !== undefined) {
    headers["x-ratelimit-limit-requests"] = String(rpm)
    headers["x-ratelimit-remaining-requests"] = remaining(rpm, usage.requests)
    headers["x-ratelimit-reset-requests"] = resetText((usage.requests * MINUTE) / rpm)
  }
  const tpm = limits.tokens_per_minute
  if (tpm !== undefined) {
    headers["x-ratelimit-limit-tokens"] = String(tpm)
    headers["x-ratelimit-remaining-tokens"] = remaining(tpm, usage.tokens)
    headers["x-ratelimit-reset-tokens"] = resetText((usage.tokens * MINUTE) / tpm)
  }
  if (limits.tokens_per_day !== undefined || limits.tokens_per_month !== undefined) {
    const periods = periodsAt(now)
    if (limits.tokens_per_day !== undefined) {
      headers["x-ratelimit-limit-tokens-day"] = String(limits.tokens_per_day)
      headers["x-ratelimit-remaining-tokens-day"] = remaining(limits.tokens_per_day, usage.tokensDay)
      headers["x-ratelimit-reset-tokens-day"] = resetText(periods.dayEnd - now)
    }
    if (limits.tokens_per_month !== undefined) {
      headers["x-ratelimit-limit-tokens-month"] = String(limits.tokens_per_month)
      headers["x-ratelimit-remaining-tokens-month"] = remaining(limits.tokens_per_month, usage.tokensMonth)
      headers["x-ratelimit-reset-tokens-month"] = resetText(periods.monthEnd - now)
    }
  }
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
