/**
 * The counters in Redis, shared by every worker: the same counters and rules as the embedded
 * store (Store.ts), each operation one Lua script, so it runs atomically in Redis (no worker reads
 * a counter another is about to change) in one round trip. Every key has an expiry: a minute's
 * level when it has drained, a slot set a lease after its last renewal, a day or month sum a
 * minute after its period ends. The keys of one name share a hash tag, so a Redis Cluster keeps
 * them in one slot, as a script needs. Times are the workers' clocks (kept by NTP on any host).
 *
 * A Redis that is down or slow fails a command at once (no offline queue) or after `timeout`;
 * the caller decides what that means (LIMITS_ON_STORE_FAILURE).
 */
import { Redis } from "ioredis"
import type { KeyLimits, LimitName } from "../Limits.js"
import { type AsyncLimitStore, LEASE_MS, periodsAt, type Usage } from "./Store.js"

const DRAINED = `
local MINUTE = 60000
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
`

/**
 * KEYS: requests, tokens, slots, day, month. ARGV: now, rpm, tpm, concurrent, day, month (0 = no
 * such limit), token limits apply (1/0), slot, lease, day end, month end.
 * Returns: refused (0 = let in, else the index in REFUSED), wait ms, then the counters.
 */
const ADMIT = `${DRAINED}
local now = tonumber(ARGV[1])
local rpm, tpm, conc = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local day, month = tonumber(ARGV[5]), tonumber(ARGV[6])
local tokens = ARGV[7] == "1"
local lease = tonumber(ARGV[9])
local EPS = 1e-9
local ru = drained(KEYS[1], rpm, now)
local tu = drained(KEYS[2], tpm, now)
local n = 0
if conc > 0 then
  redis.call("ZREMRANGEBYSCORE", KEYS[3], "-inf", now)
  n = redis.call("ZCARD", KEYS[3])
end
local dv = tonumber(redis.call("GET", KEYS[4]) or "0")
local mv = tonumber(redis.call("GET", KEYS[5]) or "0")
local refused, wait = 0, 0
local function refuse(i, ms)
  if refused == 0 or ms > wait then
    refused = i
    wait = ms
  end
end
if rpm > 0 and ru + 1 > rpm + EPS then refuse(1, (ru + 1 - rpm) * MINUTE / rpm) end
if tokens and tpm > 0 and tu >= tpm - EPS then refuse(2, (tu - tpm) * MINUTE / tpm + 1) end
if conc > 0 and n >= conc then refuse(3, 1000) end
if tokens and day > 0 and dv >= day then refuse(4, tonumber(ARGV[10]) - now) end
if tokens and month > 0 and mv >= month then refuse(5, tonumber(ARGV[11]) - now) end
if refused == 0 then
  if rpm > 0 then
    ru = ru + 1
    redis.call("HSET", KEYS[1], "u", tostring(ru), "t", ARGV[1])
    redis.call("PEXPIRE", KEYS[1], math.ceil(ru * MINUTE / rpm) + 1000)
  end
  if conc > 0 then
    redis.call("ZADD", KEYS[3], now + lease, ARGV[8])
    redis.call("PEXPIRE", KEYS[3], lease + 1000)
    n = n + 1
  end
end
return { refused, tostring(math.ceil(wait)), tostring(ru), tostring(tu), n, dv, mv }
`

/**
 * KEYS: requests, tokens, slots, day, month. ARGV: now, rpm, tpm, concurrent, tokens, slot (""
 * = none), day end, month end. Gives the slot back, adds the tokens; with neither, only reads.
 * Returns the counters.
 */
const CHARGE = `${DRAINED}
local now = tonumber(ARGV[1])
local rpm, tpm, conc = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local tokens = tonumber(ARGV[5])
if ARGV[6] ~= "" then redis.call("ZREM", KEYS[3], ARGV[6]) end
local tu = drained(KEYS[2], tpm, now)
local dv, mv
if tokens > 0 then
  if tpm > 0 then
    tu = tu + tokens
    redis.call("HSET", KEYS[2], "u", tostring(tu), "t", ARGV[1])
    redis.call("PEXPIRE", KEYS[2], math.ceil(tu * MINUTE / tpm) + 1000)
  end
  dv = redis.call("INCRBY", KEYS[4], tokens)
  redis.call("PEXPIREAT", KEYS[4], tonumber(ARGV[7]) + 60000)
  mv = redis.call("INCRBY", KEYS[5], tokens)
  redis.call("PEXPIREAT", KEYS[5], tonumber(ARGV[8]) + 60000)
else
  dv = tonumber(redis.call("GET", KEYS[4]) or "0")
  mv = tonumber(redis.call("GET", KEYS[5]) or "0")
end
local n = 0
if conc > 0 then n = redis.call("ZCOUNT", KEYS[3], "(" .. ARGV[1], "+inf") end
return { tostring(drained(KEYS[1], rpm, now)), tostring(tu), n, dv, mv }
`

const REFUSED: ReadonlyArray<LimitName | undefined> = [
  undefined,
  "requests_per_minute",
  "tokens_per_minute",
  "concurrent_requests",
  "tokens_per_day",
  "tokens_per_month"
]

interface LimitsRedis extends Redis {
  limitsAdmit(...args: Array<string | number>): Promise<[number, string, string, string, number, number, number]>
  limitsCharge(...args: Array<string | number>): Promise<[string, string, number, number, number]>
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
}

export interface RedisLimitStore extends AsyncLimitStore {
  /** Resolves true once connected, false when `waitMs` passes first (the store still connects later). */
  readonly ready: (waitMs: number) => Promise<boolean>
  readonly close: () => Promise<void>
}

export const redisStore = (options: RedisStoreOptions): RedisLimitStore => {
  const leaseMs = options.leaseMs ?? LEASE_MS
  const prefix = options.prefix ?? "ollama-proxy:"
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
  redis.defineCommand("limitsAdmit", { numberOfKeys: 5, lua: ADMIT })
  redis.defineCommand("limitsCharge", { numberOfKeys: 5, lua: CHARGE })

  /** The start of every key of a name's counters; the braces keep them in one Redis Cluster slot. */
  const baseOf = (name: string) => `${prefix}{${encodeURIComponent(name)}}:`
  const keysOf = (name: string, now: number) => {
    const base = baseOf(name)
    const periods = periodsAt(now)
    return [`${base}r`, `${base}t`, `${base}c`, `${base}d:${periods.day}`, `${base}m:${periods.month}`]
  }
  const n = (limit: number | undefined) => limit ?? 0

  const chargeArgs = (name: string, limits: KeyLimits, tokens: number, slot: string, now: number) => {
    const periods = periodsAt(now)
    return [
      ...keysOf(name, now),
      now,
      n(limits.requests_per_minute),
      n(limits.tokens_per_minute),
      n(limits.concurrent_requests),
      tokens,
      slot,
      periods.dayEnd,
      periods.monthEnd
    ]
  }
  const usageOf = ([requests, tokens, concurrent, tokensDay, tokensMonth]: [string, string, number, number, number]): Usage => ({
    requests: Number(requests),
    tokens: Number(tokens),
    concurrent,
    tokensDay,
    tokensMonth
  })

  return {
    shared: true,
    admit: ({ limits, name, now, slot, tokens }) => {
      const periods = periodsAt(now)
      return redis.limitsAdmit(
        ...keysOf(name, now),
        now,
        n(limits.requests_per_minute),
        n(limits.tokens_per_minute),
        n(limits.concurrent_requests),
        n(limits.tokens_per_day),
        n(limits.tokens_per_month),
        tokens ? 1 : 0,
        slot,
        leaseMs,
        periods.dayEnd,
        periods.monthEnd
      ).then(([refused, wait, ...usage]) => ({ refused: REFUSED[refused], retryAfterMs: Number(wait), usage: usageOf(usage) }))
    },
    charge: ({ limits, name, now, slot, tokens }) => redis.limitsCharge(...chargeArgs(name, limits, tokens, slot, now)).then(usageOf),
    read: (name, limits, now) => redis.limitsCharge(...chargeArgs(name, limits, 0, "", now)).then(usageOf),
    renew: async (slots, now) => {
      if (slots.length === 0) return
      const pipeline = redis.pipeline()
      for (const { name, slot } of slots) {
        const key = `${baseOf(name)}c`
        pipeline.zadd(key, "XX", now + leaseMs, slot)
        pipeline.pexpire(key, leaseMs + 1000)
      }
      const results = await pipeline.exec()
      const failed = results?.find(([error]) => error !== null)
      if (failed !== undefined) throw failed[0]
    },
    ready: (waitMs) =>
      redis.status === "ready" ? Promise.resolve(true) : new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => {
          redis.off("ready", onReady)
          resolve(false)
        }, waitMs)
        const onReady = () => {
          clearTimeout(timer)
          resolve(true)
        }
        redis.once("ready", onReady)
      }),
    close: async () => {
      redis.disconnect()
    }
  }
}
