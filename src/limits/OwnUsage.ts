/**
 * GET /v1/usage: the calling key's own limits and tokens, read from the counters the limits use
 * (in Redis when they are shared, so every worker answers the same). The boundary hands the
 * exchange over once the key is known valid; this answers for that key's name and no other (the
 * request names none). No scope is needed, and the request is not counted against the key's
 * limits: a key refused by `requests_per_minute` can still read when it may come back.
 */
import type { Exchange } from "../exchange/Exchange.js"
import { left } from "./Headers.js"
import { type AnyLimitStore, MINUTE, type ModelTokens, periodEnd, periodsAt, type Usage } from "./Store.js"
import { type KeyLimits, NO_LIMITS, type Plan } from "./Table.js"

export interface OwnUsageOptions {
  readonly store: AnyLimitStore
  readonly planOf: (limits: KeyLimits) => Plan
  /** How long the answer waits for Redis (LIMITS_STORE_TIMEOUT) before it is a 503. */
  readonly timeoutMs: number
  /** Counts and logs a read that failed. */
  readonly failed: (error: unknown) => void
}

const iso = (ms: number) => new Date(ms).toISOString()

/** The answer's body: each limit the key has, then its tokens of the UTC day and month. */
export const ownUsageBody = (name: string, plan: Plan, usage: Usage, byModel: ModelTokens, now: number) => {
  const periods = periodsAt(now)
  const limits: Record<string, object> = {}
  for (const limit of plan.entries) {
    const used = usage.used[limit.index]!
    const window = limit.def.window
    limits[limit.def.name] = {
      window,
      counts: limit.def.counts,
      limit: limit.value,
      used: Math.ceil(used - 1e-9),
      remaining: left(limit.value, used),
      // A minute's level has drained to nothing then; a slot frees when its request ends.
      resets_at: window === "in_flight"
        ? null
        : window === "minute"
        ? iso(now + Math.ceil((used * MINUTE) / limit.value))
        : iso(periodEnd(limit, periods))
    }
  }
  return {
    object: "api_key.usage",
    api_key_name: name,
    limits,
    tokens: {
      day: { period: periods.day, resets_at: iso(periods.dayEnd), total: usage.tokensDay, by_model: byModel.day },
      month: { period: periods.month, resets_at: iso(periods.monthEnd), total: usage.tokensMonth, by_model: byModel.month }
    }
  }
}

export const makeOwnUsage = ({ failed, planOf, store, timeoutMs }: OwnUsageOptions) => (exchange: Exchange): void => {
  const key = exchange.caller.key
  if (key === null) {
    return exchange.refuse({ status: 404, message: "this proxy has no API keys: there is no key's usage to show" }, "rejected")
  }
  const name = key.name
  const plan = key.limits === undefined ? NO_LIMITS : planOf(key.limits)
  const now = Date.now()
  const answer = (usage: Usage, byModel: ModelTokens) => {
    if (exchange.finished) return
    const body = JSON.stringify(ownUsageBody(name, plan, usage, byModel, now))
    exchange.res.writeHead(200, {
      "content-type": "application/json; charset=utf-8",
      "content-length": Buffer.byteLength(body),
      "cache-control": "no-store",
      "x-request-id": exchange.requestId
    })
    exchange.res.end(body)
    exchange.finish("completed")
  }
  if (!store.shared) return answer(store.read(name, plan, now), store.byModel(name, now))
  let timer: ReturnType<typeof setTimeout> | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs)
  })
  Promise.race([Promise.all([store.read(name, plan, now), store.byModel(name, now)]), timeout]).then(
    ([usage, byModel]) => answer(usage, byModel),
    (error) => {
      failed(error)
      if (!exchange.finished) {
        exchange.refuse({
          status: 503,
          message: "the usage of this API key cannot be read now (its store does not answer); retry shortly",
          headers: { "retry-after": "1" }
        }, "rejected")
      }
    }
  ).finally(() => clearTimeout(timer))
}
