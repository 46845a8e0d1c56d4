/**
 * The two stores of limits' counters (in process, and Redis through its Lua scripts) against one
 * set of tests, with the clock given: each keeps the same counters by the same rules.
 */
import { randomUUID } from "node:crypto"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type { KeyLimits } from "../src/Limits.js"
import { redisStore } from "../src/limits/RedisStore.js"
import { type Admission, embeddedStore, MINUTE, type Usage } from "../src/limits/Store.js"
import { startRedis, type TestRedis } from "./support/redis.js"

interface Store {
  admit: (limits: KeyLimits, now: number, options?: { tokens?: boolean; slot?: string }) => Promise<Admission>
  charge: (limits: KeyLimits, now: number, tokens: number, slot?: string) => Promise<Usage>
  renew: (slots: ReadonlyArray<string>, now: number) => Promise<void>
  read: (limits: KeyLimits, now: number) => Promise<Usage>
}

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

const STORES: Record<string, () => Store> = {
  embedded: () => {
    const store = embeddedStore()
    const name = "alice"
    return {
      admit: async (limits, now, o = {}) => store.admit({ name, limits, now, tokens: o.tokens ?? true, slot: o.slot ?? randomUUID() }),
      charge: async (limits, now, tokens, slot = "") => store.charge({ name, limits, now, tokens, slot }),
      renew: async () => {},
      read: async (limits, now) => store.read(name, limits, now)
    }
  },
  redis: () => {
    const store = redisStore({
      url: redis.url,
      timeoutMs: 2000,
      leaseMs: LEASE,
      prefix: `test-${randomUUID()}:`,
      onConnectionError: () => {}
    })
    closers.push(store.close)
    const ready = store.ready(5000).then((up) => {
      if (!up) throw new Error("the test Redis did not answer")
    })
    const name = "alice: a name with {braces} and spaces"
    return {
      admit: (limits, now, o = {}) =>
        ready.then(() => store.admit({ name, limits, now, tokens: o.tokens ?? true, slot: o.slot ?? randomUUID() })),
      charge: (limits, now, tokens, slot = "") => ready.then(() => store.charge({ name, limits, now, tokens, slot })),
      renew: (slots, now) => ready.then(() => store.renew(slots.map((slot) => ({ name, slot })), now)),
      read: (limits, now) => ready.then(() => store.read(name, limits, now))
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
    const limits = { requests_per_minute: 10, tokens_per_minute: 100, concurrent_requests: 2, tokens_per_day: 10, tokens_per_month: 10 }
    const now = Date.now()
    await store.admit({ name: "k", limits, now, tokens: true, slot: "s" })
    await store.charge({ name: "k", limits, now, tokens: 5, slot: "" })
    const { Redis } = await import("ioredis")
    const client = new Redis(redis.url)
    try {
      const keys = await client.keys(`${prefix}*`)
      expect(keys.length).toBe(5)
      for (const key of keys) expect(await client.pttl(key), key).toBeGreaterThan(0)
    } finally {
      client.disconnect()
    }
  })
})
