/**
 * Where the counters of limits live: one interface, two implementations that keep the same
 * counters by the same rules, so one set of tests runs against both (test/LimitStore.test.ts):
 * `embeddedStore` here (in this process: one worker, and tests), and `redisStore` in
 * RedisStore.ts (shared by every worker, in one Lua script per operation).
 *
 * The counters of one key name, one per entry of the table (Table.ts) by its window:
 * - a minute's is a level that drains continuously, `limit` per 60 s (a token bucket seen from the
 *   other side): requests are let in while requests + 1 <= limit, inference while the tokens are
 *   below their limit; tokens are added when the exchange ends, so the level may go past the limit
 *   (a stream is never cut) and the next requests wait until it has drained back;
 * - requests in flight are slots; in Redis each has a lease the worker renews while its exchange
 *   lasts, so the slots of a worker that died free themselves when their lease runs out (in this
 *   process a count is enough: no slot outlives the process that counts it);
 * - a UTC day's or month's is a plain sum per calendar period. The key's tokens per day and month
 *   (in all, and by model) are kept for every key, limits or not: the usage records and
 *   GET /v1/usage report them, and the token budgets per day and month are checked against them.
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
import { Kind, type LimitTable, type Plan, type PlannedLimit } from "./Table.js"

export const MINUTE = 60_000
/** Rounding slack: a level that is an integer in exact arithmetic may come out a hair above it. */
export const EPSILON = 1e-9
/** How long a slot lasts unless renewed; workers renew theirs every third of it. */
export const LEASE_MS = 30_000

/** The key's counters, as an admission or a charge left them. */
export interface Usage {
  /** By the table's index: each limit's count (0 for a limit the key does not have). */
  readonly used: ReadonlyArray<number>
  /** The key's tokens in the current UTC day and month. */
  readonly tokensDay: number
  readonly tokensMonth: number
}

export interface Admission {
  /** The limit that refused (the one that frees last, when several do); undefined = let in. */
  readonly refused: PlannedLimit | undefined
  /** When the refused request could pass, from now. */
  readonly retryAfterMs: number
  readonly usage: Usage
}

export interface AdmitRequest {
  readonly name: string
  readonly plan: Plan
  /** Whether token limits apply (an inference request); requests and slots apply to every request. */
  readonly tokens: boolean
  /** The slot this request takes when the key has a limit of requests in flight. */
  readonly slot: string
  readonly now: number
}

export interface ChargeRequest {
  readonly name: string
  readonly plan: Plan
  /** Input + output tokens of the exchange (0 for none). */
  readonly tokens: number
  /** The model they were used with ("" when none is known): the key's tokens are kept by model too. */
  readonly model: string
  /** The slot to give back, or "" when the exchange held none. */
  readonly slot: string
  readonly now: number
}

export interface HeldSlot {
  readonly name: string
  readonly slot: string
}

/** A key's tokens by model in the current UTC day and month (GET /v1/usage). */
export interface ModelTokens {
  readonly day: Readonly<Record<string, number>>
  readonly month: Readonly<Record<string, number>>
}

/** A store answers at once (embedded) or after a round trip (Redis); the request path handles both. */
export interface SyncLimitStore {
  readonly shared: false
  readonly admit: (request: AdmitRequest) => Admission
  readonly charge: (request: ChargeRequest) => Usage
  readonly read: (name: string, plan: Plan, now: number) => Usage
  readonly byModel: (name: string, now: number) => ModelTokens
}

export interface AsyncLimitStore {
  readonly shared: true
  readonly admit: (request: AdmitRequest) => Promise<Admission>
  readonly charge: (request: ChargeRequest) => Promise<Usage>
  readonly renew: (slots: ReadonlyArray<HeldSlot>, now: number) => Promise<void>
  readonly read: (name: string, plan: Plan, now: number) => Promise<Usage>
  readonly byModel: (name: string, now: number) => Promise<ModelTokens>
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

/** The end of the period a day or month limit counts in. */
export const periodEnd = (limit: PlannedLimit, periods: Periods) => (limit.month ? periods.monthEnd : periods.dayEnd)

/**
 * How long until a limit would let one more in, given its count `u` at `now`; -1 when it would
 * now. The same rules the Redis script's parts follow.
 */
export const waitOf = (limit: PlannedLimit, u: number, tokens: boolean, now: number): number => {
  const v = limit.value
  switch (limit.kind) {
    case Kind.MinuteRequests:
      return u + 1 > v + EPSILON ? ((u + 1 - v) * MINUTE) / v : -1
    case Kind.MinuteTokens:
      return tokens && u >= v - EPSILON ? ((u - v) * MINUTE) / v + 1 : -1
    case Kind.InFlight:
      return u >= v ? 1000 : -1
    case Kind.PeriodRequests:
      return u + 1 > v ? periodEnd(limit, periodsAt(now)) - now : -1
    case Kind.PeriodTokens:
      return tokens && u >= v ? periodEnd(limit, periodsAt(now)) - now : -1
  }
}

/** A level drained to `now`: `limit` per minute. */
const drained = (u: number, t: number, limit: number, now: number) => Math.max(0, u - (Math.max(0, now - t) * limit) / MINUTE)

interface Counters {
  /** By the table's index: a minute's level, the count in flight, or a period's sum. */
  readonly u: Float64Array
  /** By the table's index: when a minute's level was last set, or when a period's sum ends. */
  readonly t: Float64Array
  day: string
  tokensDay: number
  month: string
  tokensMonth: number
  dayByModel: Map<string, number>
  monthByModel: Map<string, number>
}

const add = (map: Map<string, number>, model: string, tokens: number) => map.set(model, (map.get(model) ?? 0) + tokens)

/**
 * The counters in this process's memory: exact for one worker, and what tests use. Measured on the
 * tags bench, keeping slots by id here (a Map entry per request, pruned at each admission) cost the
 * request path ~0.5 us of CPU and more garbage: the count costs nothing.
 */
export const embeddedStore = (table: LimitTable): SyncLimitStore => {
  const byName = new Map<string, Counters>()
  const size = table.length

  /** A usage's figures, all 0: a packed array (V8 makes `new Array(n).fill(0)` holey and slower). */
  const zeros = (): Array<number> => {
    const used: Array<number> = []
    for (let i = 0; i < size; i++) used.push(0)
    return used
  }

  const countersOf = (name: string, now: number) => {
    let c = byName.get(name)
    const periods = periodsAt(now)
    if (c === undefined) {
      c = {
        u: new Float64Array(size),
        t: new Float64Array(size),
        day: periods.day,
        tokensDay: 0,
        month: periods.month,
        tokensMonth: 0,
        dayByModel: new Map(),
        monthByModel: new Map()
      }
      byName.set(name, c)
    }
    if (c.day !== periods.day) {
      c.day = periods.day
      c.tokensDay = 0
      c.dayByModel = new Map()
    }
    if (c.month !== periods.month) {
      c.month = periods.month
      c.tokensMonth = 0
      c.monthByModel = new Map()
    }
    return c
  }

  /** A limit's count at `now`: a minute's level drained, a period's sum (0 once its period ended). */
  const countOf = (c: Counters, limit: PlannedLimit, now: number) => {
    const i = limit.index
    switch (limit.kind) {
      case Kind.MinuteRequests:
      case Kind.MinuteTokens:
        return drained(c.u[i]!, c.t[i]!, limit.value, now)
      case Kind.InFlight:
        return c.u[i]!
      case Kind.PeriodRequests:
        return c.t[i] === periodEnd(limit, periodsAt(now)) ? c.u[i]! : 0
      case Kind.PeriodTokens:
        return limit.month ? c.tokensMonth : c.tokensDay
    }
  }

  const usageOf = (c: Counters, plan: Plan, now: number): Usage => {
    const used = zeros()
    for (const limit of plan.entries) used[limit.index] = countOf(c, limit, now)
    return { used, tokensDay: c.tokensDay, tokensMonth: c.tokensMonth }
  }

  return {
    shared: false,
    admit: ({ name, now, plan, tokens }) => {
      const c = countersOf(name, now)
      const entries = plan.entries
      const used = zeros()
      // The limit that refuses, and when it would not: the one that frees last wins.
      let refused: PlannedLimit | undefined
      let wait = 0
      for (let k = 0; k < entries.length; k++) {
        const limit = entries[k]!
        const u = countOf(c, limit, now)
        used[limit.index] = u
        const ms = waitOf(limit, u, tokens, now)
        if (ms >= 0 && (refused === undefined || ms > wait)) {
          refused = limit
          wait = ms
        }
      }
      if (refused === undefined) {
        for (let k = 0; k < entries.length; k++) {
          const limit = entries[k]!
          const i = limit.index
          switch (limit.kind) {
            case Kind.MinuteRequests:
              c.u[i] = ++used[i]!
              c.t[i] = now
              break
            case Kind.InFlight:
              c.u[i] = ++used[i]!
              break
            case Kind.PeriodRequests:
              c.u[i] = ++used[i]!
              c.t[i] = periodEnd(limit, periodsAt(now))
          }
        }
      }
      return { refused, retryAfterMs: Math.ceil(wait), usage: { used, tokensDay: c.tokensDay, tokensMonth: c.tokensMonth } }
    },
    charge: ({ model, name, now, plan, slot, tokens }) => {
      const c = countersOf(name, now)
      for (const limit of plan.entries) {
        const i = limit.index
        if (limit.kind === Kind.InFlight) {
          if (slot !== "" && c.u[i]! > 0) c.u[i]!--
        } else if (limit.kind === Kind.MinuteTokens && tokens > 0) {
          c.u[i] = drained(c.u[i]!, c.t[i]!, limit.value, now) + tokens
          c.t[i] = now
        }
      }
      if (tokens > 0) {
        c.tokensDay += tokens
        c.tokensMonth += tokens
        if (model !== "") {
          add(c.dayByModel, model, tokens)
          add(c.monthByModel, model, tokens)
        }
      }
      return usageOf(c, plan, now)
    },
    read: (name, plan, now) => usageOf(countersOf(name, now), plan, now),
    byModel: (name, now) => {
      const c = countersOf(name, now)
      return { day: Object.fromEntries(c.dayByModel), month: Object.fromEntries(c.monthByModel) }
    }
  }
}
