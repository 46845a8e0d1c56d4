/**
 * The counters in Redis, shared by every worker: the same counters and rules as the embedded
 * store (Store.ts), each operation one Lua script, so it runs atomically in Redis (no worker reads
 * a counter another is about to change) in one round trip. Every key has an expiry: a minute's
 * level when it has drained, a slot set a lease after its last renewal, a day or month sum a
 * minute after its period ends. The keys of one name share a hash tag, so a Redis Cluster keeps
 * them in one slot, as a script needs. Times are the workers' clocks (kept by NTP on any host).
 *
 * The two scripts are assembled from the table (Table.ts): one part per entry, chosen by its
 * window and what it counts, so an entry of a known kind needs nothing here. Besides the entries'
 * counters every key name has its tokens per UTC day and month, in all (`d:`, `m:`) and by model
 * (hashes `md:`, `mm:`), added in the same charge.
 *
 * A Redis that is down or slow fails a command at once (no offline queue) or after `timeout`;
 * the caller decides what that means (LIMITS_ON_STORE_FAILURE).
 */
import { Redis } from "ioredis"
import { untilReady } from "../Redis.js"
import { type AsyncLimitStore, LEASE_MS, type ModelTokens, periodsAt, type Usage } from "./Store.js"
import { Kind, kindOf, LIMITS, type LimitTable, type Plan } from "./Table.js"

const DRAINED = `
local MINUTE = 60000
local EPS = 1e-9
local function drained(key, limit, now)
  if limit == 0 then return 0 end
  local h = redis.call("HMGET", key, "u", "t")
  local u = tonumber(h[1])
  if not u then return 0 end
  local dt = now - tonumber(h[2])
  if dt < 0 then dt = 0 end
  u = u - dt * limit / MINUTE
  if u < 0 then return 0 end
  return u
end
local function sum(key)
  return tonumber(redis.call("GET", key) or "0")
end
`

/**
 * KEYS (both scripts): tokens of the day, of the month, by model of the day, of the month, then
 * each entry's own counter (Table.ts's `redisKey`) in table order.
 * ARGV (both): now, day end, month end, slot ("" = none), then each entry's value (0 = the key
 * does not have it) in table order from ARGV[FIRST_VALUE].
 */
const FIXED_KEYS = 4
const FIRST_VALUE = 5

/**
 * An entry in a script: `i` its number (its table index + 1, what `refuse` reports), `v` its
 * value, `u` (u<i>) its count, `k` its key, `end` when its period ends, `total` the key's tokens
 * of its period.
 */
interface Entry {
  readonly i: number
  readonly v: string
  readonly u: string
  readonly k: string
  readonly end: "dayEnd" | "monthEnd"
  readonly total: "dv" | "mv"
}

/** Each kind's part of the scripts. */
interface Part {
  /** Sets `u` to the entry's count and calls refuse(i, ms) when it would refuse. */
  readonly check: (e: Entry) => string
  /** Counts an admitted request. */
  readonly take: (e: Entry) => string
  /** Counts an ended exchange's tokens or gives its slot back, and sets `u` for the answer. */
  readonly charge: (e: Entry) => string
}

const PARTS: Record<Kind, Part> = {
  [Kind.MinuteRequests]: {
    check: ({ i, k, u, v }) =>
      `${u} = drained(${k}, ${v}, now)
if ${v} > 0 and ${u} + 1 > ${v} + EPS then refuse(${i}, (${u} + 1 - ${v}) * MINUTE / ${v}) end`,
    take: ({ k, u, v }) =>
      `if ${v} > 0 then
  ${u} = ${u} + 1
  redis.call("HSET", ${k}, "u", tostring(${u}), "t", ARGV[1])
  redis.call("PEXPIRE", ${k}, math.ceil(${u} * MINUTE / ${v}) + 1000)
end`,
    charge: ({ k, u, v }) => `${u} = drained(${k}, ${v}, now)`
  },
  [Kind.MinuteTokens]: {
    check: ({ i, k, u, v }) =>
      `${u} = drained(${k}, ${v}, now)
if tokens and ${v} > 0 and ${u} >= ${v} - EPS then refuse(${i}, (${u} - ${v}) * MINUTE / ${v} + 1) end`,
    take: () => "",
    charge: ({ k, u, v }) =>
      `${u} = drained(${k}, ${v}, now)
if tokens > 0 and ${v} > 0 then
  ${u} = ${u} + tokens
  redis.call("HSET", ${k}, "u", tostring(${u}), "t", ARGV[1])
  redis.call("PEXPIRE", ${k}, math.ceil(${u} * MINUTE / ${v}) + 1000)
end`
  },
  [Kind.InFlight]: {
    check: ({ i, k, u, v }) =>
      `if ${v} > 0 then
  redis.call("ZREMRANGEBYSCORE", ${k}, "-inf", now)
  ${u} = redis.call("ZCARD", ${k})
  if ${u} >= ${v} then refuse(${i}, 1000) end
end`,
    take: ({ k, u, v }) =>
      `if ${v} > 0 then
  redis.call("ZADD", ${k}, now + lease, ARGV[4])
  redis.call("PEXPIRE", ${k}, lease + 1000)
  ${u} = ${u} + 1
end`,
    charge: ({ k, u, v }) =>
      `if ARGV[4] ~= "" then redis.call("ZREM", ${k}, ARGV[4]) end
if ${v} > 0 then ${u} = redis.call("ZCOUNT", ${k}, "(" .. ARGV[1], "+inf") end`
  },
  [Kind.PeriodRequests]: {
    check: ({ end, i, k, u, v }) =>
      `${u} = sum(${k})
if ${v} > 0 and ${u} + 1 > ${v} then refuse(${i}, ${end} - now) end`,
    take: ({ end, k, u, v }) =>
      `if ${v} > 0 then
  ${u} = redis.call("INCR", ${k})
  redis.call("PEXPIREAT", ${k}, ${end} + 60000)
end`,
    charge: ({ k, u }) => `${u} = sum(${k})`
  },
  [Kind.PeriodTokens]: {
    check: ({ end, i, total, u, v }) =>
      `${u} = ${total}
if tokens and ${v} > 0 and ${u} >= ${v} then refuse(${i}, ${end} - now) end`,
    take: () => "",
    charge: ({ total, u }) => `${u} = ${total}`
  }
}

/** The two scripts for a table, and the entries with a Redis key of their own (in KEYS' order). */
const scriptsOf = (table: LimitTable) => {
  const keyed = table.filter((def) => def.redisKey !== undefined)
  const entries = table.map((def, n): Entry & { part: Part } => {
    const month = def.window === "month"
    const keyIndex = keyed.indexOf(def)
    return {
      i: n + 1,
      v: `v${n + 1}`,
      u: `u${n + 1}`,
      // Token sums per period have no key of their own: they are the key's totals.
      k: keyIndex < 0 ? (month ? "KEYS[2]" : "KEYS[1]") : `KEYS[${FIXED_KEYS + keyIndex + 1}]`,
      end: month ? "monthEnd" : "dayEnd",
      total: month ? "mv" : "dv",
      part: PARTS[kindOf(def)]
    }
  })
  const each = (f: (part: Part) => (e: Entry) => string) => entries.map((e) => f(e.part)(e)).filter((lua) => lua !== "").join("\n")
  const head = `${DRAINED}
local now = tonumber(ARGV[1])
local dayEnd, monthEnd = tonumber(ARGV[2]), tonumber(ARGV[3])
${entries.map(({ i, u, v }) => `local ${v} = tonumber(ARGV[${FIRST_VALUE + i - 1}])\nlocal ${u} = 0`).join("\n")}
`
  const result = `{ ${["tostring(dv)", "tostring(mv)", ...entries.map(({ u }) => `tostring(${u})`)].join(", ")} }`

  const admit = `${head}
local tokens = ARGV[${FIRST_VALUE + table.length}] == "1"
local lease = tonumber(ARGV[${FIRST_VALUE + table.length + 1}])
local dv, mv = sum(KEYS[1]), sum(KEYS[2])
local refused, wait = 0, 0
local function refuse(i, ms)
  if refused == 0 or ms > wait then
    refused = i
    wait = ms
  end
end
${each((part) => part.check)}
if refused == 0 then
${each((part) => part.take)}
end
local result = ${result}
table.insert(result, 1, tostring(math.ceil(wait)))
table.insert(result, 1, refused)
return result
`
  const charge = `${head}
local tokens = tonumber(ARGV[${FIRST_VALUE + table.length}])
local model = ARGV[${FIRST_VALUE + table.length + 1}]
local dv, mv
if tokens > 0 then
  dv = redis.call("INCRBY", KEYS[1], tokens)
  redis.call("PEXPIREAT", KEYS[1], dayEnd + 60000)
  mv = redis.call("INCRBY", KEYS[2], tokens)
  redis.call("PEXPIREAT", KEYS[2], monthEnd + 60000)
  if model ~= "" then
    redis.call("HINCRBY", KEYS[3], model, tokens)
    redis.call("PEXPIREAT", KEYS[3], dayEnd + 60000)
    redis.call("HINCRBY", KEYS[4], model, tokens)
    redis.call("PEXPIREAT", KEYS[4], monthEnd + 60000)
  end
else
  dv, mv = sum(KEYS[1]), sum(KEYS[2])
end
${each((part) => part.charge)}
return ${result}
`
  return { admit, charge, keyed }
}

interface LimitsRedis extends Redis {
  limitsAdmit(...args: Array<string | number>): Promise<[number, string, ...Array<string>]>
  limitsCharge(...args: Array<string | number>): Promise<Array<string>>
}

/** How long a command other than an admission may wait for Redis. */
const CHARGE_TIMEOUT_MS = 5000

export interface RedisStoreOptions {
  readonly url: string
  /** How long a connection may take; commands wait at least CHARGE_TIMEOUT_MS. */
  readonly timeoutMs: number
  /** Connection errors and state changes, for the caller's (rate-limited) log. */
  readonly onConnectionError: (error: Error) => void
  readonly leaseMs?: number
  /** Prepended to every key (tests keep their runs apart with it). */
  readonly prefix?: string
  /** The limits it counts; LIMITS unless a test adds one. */
  readonly table?: LimitTable
}

export interface RedisLimitStore extends AsyncLimitStore {
  /** Resolves true once connected, false when `waitMs` passes first (the store still connects later). */
  readonly ready: (waitMs: number) => Promise<boolean>
  readonly close: () => Promise<void>
}

export const redisStore = (options: RedisStoreOptions): RedisLimitStore => {
  const leaseMs = options.leaseMs ?? LEASE_MS
  const prefix = options.prefix ?? "ollama-proxy:"
  const table = options.table ?? LIMITS
  const scripts = scriptsOf(table)
  const redis = new Redis(options.url, {
    // Commands while disconnected fail at once instead of waiting in a queue: a request never
    // waits for Redis to come back.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    // Admissions are timed by the caller (LIMITS_STORE_TIMEOUT); a charge is off the response's
    // path and may wait longer, since one that fails is charged again, and one that timed out
    // here but was done in Redis would then count twice.
    commandTimeout: Math.max(CHARGE_TIMEOUT_MS, options.timeoutMs),
    connectTimeout: Math.max(1000, options.timeoutMs),
    retryStrategy: (attempt) => Math.min(100 * attempt, 2000),
    lazyConnect: false
  }) as LimitsRedis
  redis.on("error", options.onConnectionError)
  const numberOfKeys = FIXED_KEYS + scripts.keyed.length
  redis.defineCommand("limitsAdmit", { numberOfKeys, lua: scripts.admit })
  redis.defineCommand("limitsCharge", { numberOfKeys, lua: scripts.charge })

  /** The start of every key of a name's counters; the braces keep them in one Redis Cluster slot. */
  const baseOf = (name: string) => `${prefix}{${encodeURIComponent(name)}}:`
  /** KEYS and the fixed ARGV of both scripts, then every entry's value (0 = none). */
  const argsOf = (name: string, plan: Plan, slot: string, now: number) => {
    const base = baseOf(name)
    const periods = periodsAt(now)
    const args: Array<string | number> = [
      `${base}d:${periods.day}`,
      `${base}m:${periods.month}`,
      `${base}md:${periods.day}`,
      `${base}mm:${periods.month}`
    ]
    for (const def of scripts.keyed) {
      args.push(
        def.window === "day"
          ? `${base}${def.redisKey}:${periods.day}`
          : def.window === "month"
          ? `${base}${def.redisKey}:${periods.month}`
          : `${base}${def.redisKey}`
      )
    }
    args.push(now, periods.dayEnd, periods.monthEnd, slot)
    const values = new Array<number>(table.length).fill(0)
    for (const limit of plan.entries) values[limit.index] = limit.value
    args.push(...values)
    return args
  }
  const usageOf = ([tokensDay, tokensMonth, ...used]: Array<string>): Usage => ({
    used: used.map(Number),
    tokensDay: Number(tokensDay),
    tokensMonth: Number(tokensMonth)
  })
  const charge = (name: string, plan: Plan, tokens: number, model: string, slot: string, now: number) =>
    redis.limitsCharge(...argsOf(name, plan, slot, now), tokens, model).then(usageOf)
  const tokensOf = (hash: Record<string, string>) => Object.fromEntries(Object.entries(hash).map(([model, n]) => [model, Number(n)]))

  return {
    shared: true,
    admit: ({ name, now, plan, slot, tokens }) =>
      redis.limitsAdmit(...argsOf(name, plan, slot, now), tokens ? 1 : 0, leaseMs).then(([refused, wait, ...usage]) => ({
        refused: refused === 0 ? undefined : plan.entries.find((limit) => limit.index === refused - 1),
        retryAfterMs: Number(wait),
        usage: usageOf(usage)
      })),
    charge: ({ model, name, now, plan, slot, tokens }) => charge(name, plan, tokens, model, slot, now),
    read: (name, plan, now) => charge(name, plan, 0, "", "", now),
    byModel: async (name, now): Promise<ModelTokens> => {
      const base = baseOf(name)
      const periods = periodsAt(now)
      const [day, month] = await Promise.all([redis.hgetall(`${base}md:${periods.day}`), redis.hgetall(`${base}mm:${periods.month}`)])
      return { day: tokensOf(day), month: tokensOf(month) }
    },
    renew: async (slots, now) => {
      if (slots.length === 0) return
      const inFlight = scripts.keyed.filter((def) => def.window === "in_flight")
      const pipeline = redis.pipeline()
      for (const { name, slot } of slots) {
        for (const def of inFlight) {
          const key = `${baseOf(name)}${def.redisKey}`
          pipeline.zadd(key, "XX", now + leaseMs, slot)
          pipeline.pexpire(key, leaseMs + 1000)
        }
      }
      const results = await pipeline.exec()
      const failed = results?.find(([error]) => error !== null)
      if (failed !== undefined) throw failed[0]
    },
    ready: (waitMs) => untilReady(redis, waitMs),
    close: async () => {
      redis.disconnect()
    }
  }
}
