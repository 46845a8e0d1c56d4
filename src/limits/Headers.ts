/**
 * What a client is told of its key's limits: OpenAI's `x-ratelimit-*` headers on every answer
 * (the minute's requests and tokens, with `reset` as OpenAI writes it: `1s`, `6m0s`, `120ms`), the
 * same trio for the day's and month's token budgets (the token ones on inference answers and on
 * refusals), and on a refusal `Retry-After` (seconds, as HTTP says) and `retry-after-ms` (which
 * the `openai` client reads first).
 */
import type { OutgoingHttpHeaders } from "node:http"
import { MINUTE, periodEnd, periodsAt, type Usage } from "./Store.js"
import { Kind, type Plan, type PlannedLimit } from "./Table.js"

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

/**
 * The last headers made for a key name, with the plan and figures they say: the same again give
 * the same object. By name, not by limits: every key without limits of its own shares the one
 * object of AUTHORIZATION_DEFAULT_LIMITS, and their requests, interleaved, would miss each time.
 */
interface Made {
  figures: Float64Array
  plan: Plan
  tokens: boolean
  headers: OutgoingHttpHeaders
}
const made = new Map<string, Made>()
/** This answer's figures, two per limit (what is left, the reset in ms), compared with the last ones before any header is made. */
let current = new Float64Array(16)

/**
 * The rate-limit headers for a key's limits as `usage` left them at `now`: those of the token
 * limits only when `tokens` (they apply to inference requests alone). A minute's reset is when
 * its level will have drained, in ms; a day's or month's when its period ends, in whole seconds.
 * At a high rate of admitted requests (the only case where this costs anything) the figures
 * rarely change from one answer to the next, so the headers of the last answer are handed out
 * again while they do not: making them anew for every request of the small-request bench cost it
 * several percent (strings, objects and their collection).
 */
export const limitHeaders = (name: string, plan: Plan, usage: Usage, now: number, tokens: boolean): OutgoingHttpHeaders => {
  const shown = tokens ? plan.headed.inference : plan.headed.other
  const n = 2 * shown.length
  if (current.length < n) current = new Float64Array(n)
  for (let k = 0; k < shown.length; k++) {
    const limit = shown[k]!
    const used = usage.used[limit.index]!
    current[2 * k] = left(limit.value, used)
    current[2 * k + 1] = limit.kind === Kind.MinuteRequests || limit.kind === Kind.MinuteTokens
      ? Math.ceil((used * MINUTE) / limit.value)
      : Math.ceil((periodEnd(limit, periodsAt(now)) - now) / 1000) * 1000
  }

  let last = made.get(name)
  if (last === undefined) made.set(name, last = { figures: new Float64Array(n).fill(NaN), plan, tokens, headers: {} })
  let same = last.plan === plan && last.tokens === tokens && last.figures.length === n
  for (let i = 0; same && i < n; i++) same = last.figures[i] === current[i]
  if (same) return last.headers

  if (last.figures.length === n) last.figures.set(current.subarray(0, n))
  else last.figures = current.slice(0, n)
  const headers: OutgoingHttpHeaders = {}
  for (let k = 0; k < shown.length; k++) {
    const limit = shown[k]!
    const trio = limit.trio!
    headers[trio.limit] = String(limit.value)
    headers[trio.remaining] = String(current[2 * k])
    headers[trio.reset] = resetText(current[2 * k + 1]!)
  }
  last.plan = plan
  last.tokens = tokens
  last.headers = headers
  return headers
}

/** The refusal's words: which limit, how much, and when to come back. */
export const refusalMessage = (limit: PlannedLimit, retryAfterMs: number) =>
  `rate limit reached: ${limit.def.name} (${limit.value} ${limit.def.what}) for this API key; retry in ${resetText(retryAfterMs)}`
