/**
 * The two stores of limits' counters (in process, and Redis through its Lua scripts) against one
 * set of tests, with the clock given: each keeps the same counters by the same rules.
 */
import { randomUUID } from "node:crypto"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { limitHeaders } from "../src/limits/Headers.js"
import { redisStore } from "../src/limits/RedisStore.js"
import { type Admission, embeddedStore, MINUTE, type ModelTokens, type Usage } from "../src/limits/Store.js"
import { type KeyLimits, type LimitDef, LIMITS, type LimitTable, planner } from "../src/limits/Table.js"
import { startRedis, type TestRedis } from "./support/redis.js"

/** The counters by the names of the table's first five entries. */
interface Named {
  requests: number
  tokens: number
  concurrent: number
  tokensDay: number
  tokensMonth: number
}
interface NamedAdmission {
  refused: string | undefined
  retryAfterMs: number
  usage: Named
}

interface Store {
  admit: (limits: KeyLimits, now: number, options?: { tokens?: boolean; slot?: string }) => Promise<NamedAdmission>
  charge: (limits: KeyLimits, now: number, tokens: number, slot?: string, model?: string) => Promise<Named>
  renew: (slots: ReadonlyArray<string>, now: number) => Promise<void>
  read: (limits: KeyLimits, now: number) => Promise<Named>
  byModel: (now: number) => Promise<ModelTokens>
}

const named = ({ tokensDay, tokensMonth, used }: Usage): Named => ({
  requests: used[0]!,
  tokens: used[1]!,
  concurrent: used[2]!,
  tokensDay,
  tokensMonth
})
const namedAdmission = ({ refused, retryAfterMs, usage }: Admission): NamedAdmission => ({
  refused: refused?.def.name,
  retryAfterMs,
  usage: named(usage)
})

const LEASE = 5_000
let redis: TestRedis
const closers: Array<() => Promise<void>> = []

beforeAll(async () => {
  redis = await startRedis()
})
afterAll(async () => {
  for (const close of closers) await close()
  await redis?.close()
})

/** Each store, for a table (LIMITS, or LIMITS and a fixture's limit), behind one interface. */
const STORES: Record<string, (table?: LimitTable) => Store & { usage: (limits: KeyLimits, now: number) => Promise<Usage> }> = {
  embedded: (table = LIMITS) => {
    const store = embeddedStore(table)
    const plan = planner(table)
    const name = "alice"
    return {
      admit: async (limits, now, o = {}) =>
        namedAdmission(store.admit({ name, plan: plan(limits), now, tokens: o.tokens ?? true, slot: o.slot ?? randomUUID() })),
      charge: async (limits, now, tokens, slot = "", model = "") =>
        named(store.charge({ name, plan: plan(limits), now, tokens, slot, model })),
      renew: async () => {},
      read: async (limits, now) => named(store.read(name, plan(limits), now)),
      usage: async (limits, now) => store.read(name, plan(limits), now),
      byModel: async (now) => store.byModel(name, now)
    }
  },
  redis: (table = LIMITS) => {
    const store = redisStore({
      url: redis.url,
      timeoutMs: 2000,
      leaseMs: LEASE,
      prefix: `test-${randomUUID()}:`,
      onConnectionError: () => {},
      table
    })
    const plan = planner(table)
    closers.push(store.close)
    const ready = store.ready(5000).then((up) => {
      if (!up) throw new Error("the test Redis did not answer")
    })
    const name = "alice: a name with {braces} and spaces"
    return {
      admit: (limits, now, o = {}) =>
        ready.then(() => store.admit({ name, plan: plan(limits), now, tokens: o.tokens ?? true, slot: o.slot ?? randomUUID() }))
          .then(namedAdmission),
      charge: (limits, now, tokens, slot = "", model = "") =>
        ready.then(() => store.charge({ name, plan: plan(limits), now, tokens, slot, model })).then(named),
      renew: (slots, now) => ready.then(() => store.renew(slots.map((slot) => ({ name, slot })), now)),
      read: (limits, now) => ready.then(() => store.read(name, plan(limits), now)).then(named),
      usage: (limits, now) => ready.then(() => store.read(name, plan(limits), now)),
      byModel: (now) => ready.then(() => store.byModel(name, now))
    }
  }
}

/**
 * 23:59:00 UTC on the last day of next month: a minute before a day and a month end. Redis
 * compares the store's PEXPIREAT (a period's end plus a minute) with the real clock, so the test's
 * clock must run ahead of the real one, on any date the suite runs: a fixed date in the past made
 * Redis delete the day's and month's counters as soon as they were written.
 */
const today = new Date()
const T0 = Date.UTC(today.getUTCFullYear(), today.getUTCMonth() + 2, 0, 23, 59, 0)
/** 00:00 UTC on the first day of the month after T0's next: when the month after T0's ends. */
const MONTH_AFTER_T0_ENDS = Date.UTC(today.getUTCFullYear(), today.getUTCMonth() + 3, 1)

describe.each(Object.keys(STORES))("the %s store", (kind) => {
  const make = STORES[kind]!

  it("lets requests_per_minute requests in, refuses the next until one has drained, then lets one in", async () => {
    const store = make()
    const limits = { requests_per_minute: 6 }
    for (let i = 0; i < 6; i++) expect((await store.admit(limits, T0 + i)).refused).toBeUndefined()
    const refused = await store.admit(limits, T0 + 10)
    expect(refused.refused).toBe("requests_per_minute")
    // Six a minute drain one every 10 s: the level at T0+10ms is 6 minus 10 ms worth.
    expect(refused.retryAfterMs).toBeGreaterThan(9_900)
    expect(refused.retryAfterMs).toBeLessThanOrEqual(10_000)
    expect((await store.admit(limits, T0 + 10 + refused.retryAfterMs - 20)).refused).toBe("requests_per_minute")
    expect((await store.admit(limits, T0 + 10 + refused.retryAfterMs)).refused).toBeUndefined()
    expect((await store.admit(limits, T0 + 10 + refused.retryAfterMs + 1)).refused).toBe("requests_per_minute")
  })

  it("a refused request changes no counter, even when only one of the key's limits refused it", async () => {
    const store = make()
    const limits = { requests_per_minute: 2, concurrent_requests: 1 }
    const first = await store.admit(limits, T0, { slot: "a" })
    expect(first.refused).toBeUndefined()
    expect(first.usage).toMatchObject({ requests: 1, concurrent: 1 })
    for (let i = 0; i < 5; i++) expect((await store.admit(limits, T0 + 1, { slot: `b${i}` })).refused).toBe("concurrent_requests")
    await store.charge(limits, T0 + 2, 0, "a")
    // The five refusals took no request of the minute: the second is still there.
    expect((await store.admit(limits, T0 + 3, { slot: "c" })).refused).toBeUndefined()
    await store.charge(limits, T0 + 4, 0, "c")
    expect((await store.admit(limits, T0 + 5, { slot: "d" })).refused).toBe("requests_per_minute")
  })

  it("counts every token of a charge past tokens_per_minute, refuses inference until they drained, not other requests", async () => {
    const store = make()
    const limits = { tokens_per_minute: 100 }
    expect((await store.admit(limits, T0)).refused).toBeUndefined()
    expect((await store.charge(limits, T0, 90)).tokens).toBe(90)
    expect((await store.admit(limits, T0)).refused).toBeUndefined()
    expect((await store.charge(limits, T0, 50)).tokens).toBe(140)
    const refused = await store.admit(limits, T0)
    expect(refused.refused).toBe("tokens_per_minute")
    // 40 tokens over at 100 a minute: 24 s, and a millisecond to be under.
    expect(refused.retryAfterMs).toBe(24_001)
    expect((await store.admit(limits, T0, { tokens: false })).refused).toBeUndefined()
    expect((await store.admit(limits, T0 + 24_001)).refused).toBeUndefined()
    expect((await store.read(limits, T0 + 60_000)).tokens).toBeCloseTo(40, 6)
    expect((await store.read(limits, T0 + 84_000)).tokens).toBe(0)
  })

  it("a charge larger than the whole limit is counted too", async () => {
    const store = make()
    const limits = { tokens_per_minute: 100 }
    expect((await store.charge(limits, T0, 150)).tokens).toBe(150)
    expect((await store.admit(limits, T0)).refused).toBe("tokens_per_minute")
  })

  it("keeps tokens per UTC day and month: refused until midnight, let in the next day", async () => {
    const store = make()
    const limits = { tokens_per_day: 1000, tokens_per_month: 5000 }
    expect(await store.charge(limits, T0, 999)).toMatchObject({ tokensDay: 999, tokensMonth: 999 })
    expect((await store.admit(limits, T0)).refused).toBeUndefined()
    expect(await store.charge(limits, T0 + 1, 10)).toMatchObject({ tokensDay: 1009, tokensMonth: 1009 })
    const refused = await store.admit(limits, T0 + 1000)
    expect(refused).toMatchObject({ refused: "tokens_per_day", retryAfterMs: MINUTE - 1000 })
    expect(refused.usage).toMatchObject({ tokensDay: 1009, tokensMonth: 1009 })
    // Past midnight it is a new day and a new month.
    expect((await store.admit(limits, T0 + MINUTE)).refused).toBeUndefined()
    expect(await store.read(limits, T0 + MINUTE)).toMatchObject({ tokensDay: 0, tokensMonth: 0 })
    expect(await store.charge(limits, T0 + MINUTE + 1, 5000)).toMatchObject({ tokensDay: 5000, tokensMonth: 5000 })
    const month = await store.admit(limits, T0 + MINUTE + 2)
    expect(month.refused).toBe("tokens_per_month")
    expect(month.retryAfterMs).toBe(MONTH_AFTER_T0_ENDS - (T0 + MINUTE + 2))
  })

  it("holds concurrent_requests with slots given back at the end", async () => {
    const store = make()
    const limits = { concurrent_requests: 2 }
    expect((await store.admit(limits, T0, { slot: "a" })).refused).toBeUndefined()
    expect((await store.admit(limits, T0, { slot: "b" })).refused).toBeUndefined()
    expect((await store.admit(limits, T0, { slot: "c" })).refused).toBe("concurrent_requests")
    expect((await store.charge(limits, T0 + 1, 0, "b")).concurrent).toBe(1)
    expect((await store.admit(limits, T0 + 2, { slot: "d" })).refused).toBeUndefined()
    expect((await store.admit(limits, T0 + 2, { slot: "e" })).refused).toBe("concurrent_requests")
    expect((await store.charge(limits, T0 + 3, 0, "a")).concurrent).toBe(1)
    expect((await store.charge(limits, T0 + 3, 0, "d")).concurrent).toBe(0)
  })

  it("when several limits refuse, names the one that frees last", async () => {
    const hourBeforeMidnight = T0 - 3_540_000
    const store = make()
    const limits = { requests_per_minute: 1, tokens_per_minute: 1000, tokens_per_day: 10_000 }
    expect((await store.admit(limits, hourBeforeMidnight)).refused).toBeUndefined()
    await store.charge(limits, hourBeforeMidnight, 1001)
    // The minute's request frees in 60 s, its tokens in 61 ms.
    expect(await store.admit(limits, hourBeforeMidnight)).toMatchObject({ refused: "requests_per_minute", retryAfterMs: MINUTE })
    await store.charge(limits, hourBeforeMidnight, 9000)
    // The day's budget frees at midnight, an hour on.
    expect(await store.admit(limits, hourBeforeMidnight)).toMatchObject({ refused: "tokens_per_day", retryAfterMs: 3_600_000 })
  })

  it("keeps the key's tokens by model for the UTC day and month, for a key without limits too", async () => {
    const store = make()
    await store.charge({}, T0, 30, "", "llama3.2")
    await store.charge({}, T0 + 1, 12, "", "qwen3:0.6b")
    expect(await store.charge({}, T0 + 2, 8, "", "llama3.2")).toMatchObject({ tokensDay: 50, tokensMonth: 50 })
    expect(await store.byModel(T0 + 3)).toEqual({
      day: { "llama3.2": 38, "qwen3:0.6b": 12 },
      month: { "llama3.2": 38, "qwen3:0.6b": 12 }
    })
    // Past midnight on the last day of the month: a new day and a new month.
    await store.charge({}, T0 + MINUTE, 5, "", "llama3.2")
    expect(await store.byModel(T0 + MINUTE)).toEqual({ day: { "llama3.2": 5 }, month: { "llama3.2": 5 } })
  })

  it("enforces a sixth limit added to the table alone, with its headers", async () => {
    // The fixture: requests per UTC day, one entry; nothing else is told of it.
    const requestsPerDay: LimitDef = {
      name: "requests_per_day",
      window: "day",
      counts: "requests",
      headers: "requests-day",
      gauge: "requests_day",
      gaugeDescription: "Requests the key may still make in the current UTC day (requests_per_day)",
      what: "requests today (UTC)",
      redisKey: "rd"
    }
    const table = [...LIMITS, requestsPerDay]
    const store = STORES[kind]!(table)
    const limits = { requests_per_day: 3, tokens_per_day: 1000 }
    const plan = planner(table)(limits)
    for (let i = 0; i < 3; i++) expect((await store.admit(limits, T0 + i, { tokens: false })).refused).toBeUndefined()
    const refused = await store.admit(limits, T0 + 10_000, { tokens: false })
    expect(refused).toMatchObject({ refused: "requests_per_day", retryAfterMs: MINUTE - 10_000 })
    // Counted by the store as the table's sixth counter, beside the others' (and left alone by charges).
    await store.charge(limits, T0 + 10_001, 40)
    const usage = await store.usage(limits, T0 + 10_002)
    expect(usage.used[5]).toBe(3)
    expect(usage.tokensDay).toBe(40)
    const headers = limitHeaders(`fixture-${kind}`, plan, usage, T0 + 10_002, false)
    expect(headers).toEqual({
      "x-ratelimit-limit-requests-day": "3",
      "x-ratelimit-remaining-requests-day": "0",
      "x-ratelimit-reset-requests-day": "50s"
    })
    // The token budget's headers join on inference answers.
    expect(limitHeaders(`fixture-${kind}`, plan, usage, T0 + 10_002, true)["x-ratelimit-remaining-tokens-day"]).toBe("960")
    // A new UTC day: let in again.
    expect((await store.admit(limits, T0 + MINUTE, { tokens: false })).refused).toBeUndefined()
    expect((await store.usage(limits, T0 + MINUTE)).used[5]).toBe(1)
  })
})

describe("the redis store's slots", () => {
  it("free themselves when the worker holding them stops renewing them", async () => {
    const store = STORES.redis!()
    const limits = { concurrent_requests: 2 }
    expect((await store.admit(limits, T0, { slot: "a" })).refused).toBeUndefined()
    expect((await store.admit(limits, T0, { slot: "d" })).refused).toBeUndefined()
    expect((await store.admit(limits, T0 + 2, { slot: "x" })).refused).toBe("concurrent_requests")
    // "a" belongs to a worker that died: only "d" is renewed.
    await store.renew(["d"], T0 + LEASE - 1)
    expect((await store.read(limits, T0 + LEASE)).concurrent).toBe(1)
    expect((await store.admit(limits, T0 + LEASE, { slot: "e" })).refused).toBeUndefined()
    expect((await store.admit(limits, T0 + LEASE, { slot: "f" })).refused).toBe("concurrent_requests")
  })
})

describe("the redis store", () => {
  it("expires every key it writes", async () => {
    const prefix = `ttl-${randomUUID()}:`
    const store = redisStore({ url: redis.url, timeoutMs: 2000, prefix, onConnectionError: () => {} })
    closers.push(store.close)
    expect(await store.ready(5000)).toBe(true)
    const plan = planner(LIMITS)({
      requests_per_minute: 10,
      tokens_per_minute: 100,
      concurrent_requests: 2,
      tokens_per_day: 10,
      tokens_per_month: 10
    })
    const now = Date.now()
    await store.admit({ name: "k", plan, now, tokens: true, slot: "s" })
    await store.charge({ name: "k", plan, now, tokens: 5, slot: "", model: "llama3.2" })
    const { Redis } = await import("ioredis")
    const client = new Redis(redis.url)
    try {
      const keys = await client.keys(`${prefix}*`)
      // requests, tokens, slots; the day's and month's tokens, in all and by model.
      expect(keys.length).toBe(7)
      for (const key of keys) expect(await client.pttl(key), key).toBeGreaterThan(0)
    } finally {
      client.disconnect()
    }
  })
})
