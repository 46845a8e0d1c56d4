/**
 * Where the counters of limits live: one interface, two implementations that keep the same
 * counters by the same rules, so one set of tests runs against both (test/LimitStore.test.ts):
 * `embeddedStore` here (in this process: one worker, and tests), and `redisStore` in
 * RedisStore.ts (shared by every worker, in one Lua script per operation).
 *
 * The counters of one key name:
 * - requests and tokens per minute are levels that drain continuously, `limit` per 60 s (a token
 *   bucket seen from the other side): a request is let in while requests + 1 <= limit, and while
 *   the tokens are below their limit; tokens are added when the exchange ends, so the level may go
 *   past the limit (a stream is never cut) and the next requests wait until it has drained back;
 * - requests in flight are slots; in Redis each has a lease the worker renews while its exchange
 *   lasts, so the slots of a worker that died free themselves when their lease runs out (in this
 *   process a count is enough: no slot outlives the process that counts it);
 * - tokens per UTC day and per UTC month are plain sums per calendar period.
 * An admission checks every limit of the key and changes nothing unless all of them let it in.
 *
 * Why not @effect/experimental's RateLimiter (0.61.1), measured on a 2-core machine (Node 20,
 * `npm run bench:ratelimiter`, bench/ratelimiter-cost.mjs):
 * - Its `consume` is an Effect: 1.8 us CPU per call run with runSync on its memory store, the same
 *   as a fiber (runCallback, which a Redis store needs), 4.5 us for three limits, against 0.11 us
 *   for admitting and charging all five limits here. A small request costs the whole proxy ~40 us
 *   CPU (GET /api/tags bench), so that alone is 5-11% of it, and the goal is at most 5%.
 * - Its fixed window refuses a charge that passes the limit and does not record it: consuming 90
 *   then 50 of 100 leaves 90 counted (a stream's tokens, known only at its end, must be counted
 *   even when they go over), and a charge above the limit is never recorded at all.
 * - A window is a duration from the first use, with no calendar periods (tokens per UTC day and
 *   month), and there is no acquire/release for requests in flight, nor leases that expire.
 * - One consume is one key: the limits of a request checked one by one increment the first ones
 *   before a later one refuses. Here one script checks all of them and increments none on refusal.
 */
import type { KeyLimits, LimitName } from "../Limits.js"

export const MINUTE = 60_000
/** Rounding slack: a level that is an integer in exact arithmetic may come out a hair above it. */
const EPSILON = 1e-9
/** How long a slot lasts unless renewed; workers renew theirs every third of it. */
export const LEASE_MS = 30_000

/** The key's counters, as an admission or a charge left them. */
export interface Usage {
  /** Requests in the last minute (the drained level). */
  readonly requests: number
  /** Tokens in the last minute (the drained level). */
  readonly tokens: number
  /** Requests in flight. */
  readonly concurrent: number
  readonly tokensDay: number
  readonly tokensMonth: number
}

export interface Admission {
  /** The limit that refused (the one that frees last, when several do); undefined = let in. */
  readonly refused: LimitName | undefined
  /** When the refused request could pass, from now. */
  readonly retryAfterMs: number
  readonly usage: Usage
}

export interface AdmitRequest {
  readonly name: string
  readonly limits: KeyLimits
  /** Whether token limits apply (an inference request); requests and slots apply to every request. */
  readonly tokens: boolean
  /** The slot this request takes when the key has concurrent_requests. */
  readonly slot: string
  readonly now: number
}

export interface ChargeRequest {
  readonly name: string
  readonly limits: KeyLimits
  /** Input + output tokens of the exchange (0 for none). */
  readonly tokens: number
  /** The slot to give back, or "" when the exchange held none. */
  readonly slot: string
  readonly now: number
}

export interface HeldSlot {
  readonly name: string
  readonly slot: string
}

/** A store answers at once (embedded) or after a round trip (Redis); the request path handles both. */
export interface SyncLimitStore {
  readonly shared: false
  readonly admit: (request: AdmitRequest) => Admission
  readonly charge: (request: ChargeRequest) => Usage
  readonly read: (name: string, limits: KeyLimits, now: number) => Usage
}

export interface AsyncLimitStore {
  readonly shared: true
  readonly admit: (request: AdmitRequest) => Promise<Admission>
  readonly charge: (request: ChargeRequest) => Promise<Usage>
  readonly renew: (slots: ReadonlyArray<HeldSlot>, now: number) => Promise<void>
  readonly read: (name: string, limits: KeyLimits, now: number) => Promise<Usage>
}

export type AnyLimitStore = SyncLimitStore | AsyncLimitStore

/** The UTC day and month `now` falls in: their names (in keys and records) and when they end. */
export interface Periods {
  readonly day: string
  readonly dayEnd: number
  readonly month: string
  readonly monthEnd: number
}

let current: Periods | undefined
let currentStart = 0

const pad = (n: number) => (n < 10 ? `0${n}` : String(n))

export const periodsAt = (now: number): Periods => {
  if (current !== undefined && now >= currentStart && now < current.dayEnd) return current
  const date = new Date(now)
  const y = date.getUTCFullYear()
  const m = date.getUTCMonth()
  const d = date.getUTCDate()
  currentStart = Date.UTC(y, m, d)
  current = {
    day: `${y}-${pad(m + 1)}-${pad(d)}`,
    dayEnd: Date.UTC(y, m, d + 1),
    month: `${y}-${pad(m + 1)}`,
    monthEnd: Date.UTC(y, m + 1, 1)
  }
  return current
}

interface Level {
  u: number
  t: number
}

/** A level drained to `now`: `limit` per minute. */
const drained = (level: Level | undefined, limit: number, now: number) =>
  level === undefined ? 0 : Math.max(0, level.u - (Math.max(0, now - level.t) * limit) / MINUTE)

interface Counters {
  requests: Level | undefined
  tokens: Level | undefined
  inFlight: number
  day: string
  tokensDay: number
  month: string
  tokensMonth: number
}

/**
 * The counters in this process's memory: exact for one worker, and what tests use. Measured on the
 * tags bench, keeping slots by id here (a Map entry per request, pruned at each admission) cost the
 * request path ~0.5 us of CPU and more garbage: the count costs nothing.
 */
export const embeddedStore = (): SyncLimitStore => {
  const byName = new Map<string, Counters>()

  const countersOf = (name: string, now: number) => {
    let c = byName.get(name)
    const periods = periodsAt(now)
    if (c === undefined) {
      c = { requests: undefined, tokens: undefined, inFlight: 0, day: periods.day, tokensDay: 0, month: periods.month, tokensMonth: 0 }
      byName.set(name, c)
    }
    if (c.day !== periods.day) {
      c.day = periods.day
      c.tokensDay = 0
    }
    if (c.month !== periods.month) {
      c.month = periods.month
      c.tokensMonth = 0
    }
    return c
  }

  const usageOf = (c: Counters, limits: KeyLimits, now: number): Usage => ({
    requests: limits.requests_per_minute === undefined ? 0 : drained(c.requests, limits.requests_per_minute, now),
    tokens: limits.tokens_per_minute === undefined ? 0 : drained(c.tokens, limits.tokens_per_minute, now),
    concurrent: c.inFlight,
    tokensDay: c.tokensDay,
    tokensMonth: c.tokensMonth
  })

  return {
    shared: false,
    admit: ({ limits, name, now, tokens }) => {
      const c = countersOf(name, now)
      const rpm = limits.requests_per_minute
      const tpm = limits.tokens_per_minute
      const conc = limits.concurrent_requests
      const requests = rpm === undefined ? 0 : drained(c.requests, rpm, now)
      const used = tpm === undefined ? 0 : drained(c.tokens, tpm, now)
      const concurrent = conc === undefined ? 0 : c.inFlight
      // The limit that refuses, and when it would not: the one that frees last wins.
      let refused: LimitName | undefined
      let wait = 0
      if (rpm !== undefined && requests + 1 > rpm + EPSILON) {
        refused = "requests_per_minute"
        wait = ((requests + 1 - rpm) * MINUTE) / rpm
      }
      if (tokens && tpm !== undefined && used >= tpm - EPSILON) {
        const ms = ((used - tpm) * MINUTE) / tpm + 1
        if (refused === undefined || ms > wait) [refused, wait] = ["tokens_per_minute", ms]
      }
      if (conc !== undefined && concurrent >= conc && (refused === undefined || 1000 > wait)) {
        ;[refused, wait] = ["concurrent_requests", 1000]
      }
      if (tokens && (limits.tokens_per_day !== undefined || limits.tokens_per_month !== undefined)) {
        const periods = periodsAt(now)
        if (
          limits.tokens_per_day !== undefined && c.tokensDay >= limits.tokens_per_day &&
          (refused === undefined || periods.dayEnd - now > wait)
        ) {
          ;[refused, wait] = ["tokens_per_day", periods.dayEnd - now]
        }
        if (
          limits.tokens_per_month !== undefined && c.tokensMonth >= limits.tokens_per_month &&
          (refused === undefined || periods.monthEnd - now > wait)
        ) {
          ;[refused, wait] = ["tokens_per_month", periods.monthEnd - now]
        }
      }
      if (refused === undefined) {
        if (rpm !== undefined) {
          if (c.requests === undefined) c.requests = { u: 0, t: 0 }
          c.requests.u = requests + 1
          c.requests.t = now
        }
        if (conc !== undefined) c.inFlight++
      }
      const admitted = refused === undefined ? 1 : 0
      return {
        refused,
        retryAfterMs: Math.ceil(wait),
        usage: {
          requests: rpm === undefined ? 0 : requests + admitted,
          tokens: used,
          concurrent: conc === undefined ? 0 : concurrent + admitted,
          tokensDay: c.tokensDay,
          tokensMonth: c.tokensMonth
        }
      }
    },
    charge: ({ limits, name, now, slot, tokens }) => {
      const c = countersOf(name, now)
      if (slot !== "" && c.inFlight > 0) c.inFlight--
      if (tokens > 0) {
        const tpm = limits.tokens_per_minute
        if (tpm !== undefined) c.tokens = { u: drained(c.tokens, tpm, now) + tokens, t: now }
        c.tokensDay += tokens
        c.tokensMonth += tokens
      }
      return usageOf(c, limits, now)
    },
    read: (name, limits, now) => usageOf(countersOf(name, now), limits, now)
  }
}
