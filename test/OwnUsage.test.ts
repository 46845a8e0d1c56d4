/**
 * GET /v1/usage: a key reads its own limits, what is left of them and its tokens by model, from
 * the counters the limits use (in the process, and in a real Redis shared by two workers); never
 * another key's; 401 in OpenAI's shape without a key; Ollama never sees it.
 */
import { mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Ollama } from "ollama"
import OpenAI from "openai"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type FakeOllama, startFakeOllama } from "./fake-ollama/server.mjs"
import { raw, relayed } from "./support/http.js"
import { type RunningProxy, startProxy, untilReady } from "./support/proxy.js"
import { startRedis, type TestRedis } from "./support/redis.js"

const KEYS = { alice: "sk-alice-5e1f0a", bob: "sk-bob-c3d9b2", ops: "sk-ops-71a0e4" }
const KEY_FILE = `
keys:
  - { name: alice, key: ${KEYS.alice}, limits: { requests_per_minute: 10, concurrent_requests: 2, tokens_per_day: 100000 } }
  - { name: bob, key: ${KEYS.bob}, limits: {} }
  - { name: ops, key: ${KEYS.ops}, scopes: [metrics], limits: {} }
`

let fake: FakeOllama
let redis: TestRedis
let keysFile: string
const proxies: Array<RunningProxy> = []

beforeAll(async () => {
  fake = await startFakeOllama({ models: ["llama3.2", "qwen3:0.6b"] })
  redis = await startRedis()
  const dir = mkdtempSync(join(tmpdir(), "own-usage-"))
  keysFile = join(dir, "keys.yaml")
  writeFileSync(keysFile, KEY_FILE)
}, 30_000)

afterAll(async () => {
  for (const proxy of proxies) await proxy.close()
  await fake?.close()
  await redis?.close()
})

const start = async (env: Record<string, string> = {}) => {
  const proxy = await startProxy({ OLLAMA_HOST: fake.url, AUTHORIZATION_KEYS_FILE: keysFile, ...env })
  proxies.push(proxy)
  await untilReady(proxy.url)
  return proxy
}

interface OwnUsage {
  object: string
  api_key_name: string
  limits: Record<string, { window: string; limit: number; used: number; remaining: number; resets_at: string | null }>
  tokens: Record<"day" | "month", { period: string; resets_at: string; total: number; by_model: Record<string, number> }>
}

const usageOf = async (url: string, key: string): Promise<OwnUsage> => {
  const answer = await raw(`${url}/v1/usage`, { headers: { authorization: `Bearer ${key}` } })
  expect(answer.status).toBe(200)
  expect(answer.headers["content-type"]).toMatch(/^application\/json/)
  return JSON.parse(answer.text)
}

/** A chat through the native client; the tokens and model its answer reports. */
const chat = async (url: string, key: string, model: string) => {
  const answer = await new Ollama({ host: url, headers: { authorization: `Bearer ${key}` } })
    .chat({ model, messages: [{ role: "user", content: "Hi" }], stream: false })
  return { model: answer.model, tokens: answer.prompt_eval_count + answer.eval_count }
}

const sumByModel = (used: ReadonlyArray<{ model: string; tokens: number }>) => {
  const byModel: Record<string, number> = {}
  for (const { model, tokens } of used) byModel[model] = (byModel[model] ?? 0) + tokens
  return byModel
}

describe.each(
  [
    ["in the process", () => Promise.all([start(), undefined])],
    ["in Redis, shared by two workers", () => Promise.all([start({ REDIS_URL: redis.url }), start({ REDIS_URL: redis.url })])]
  ] as const
)("GET /v1/usage, the counters %s", (_, workers) => {
  it("gives each key its own limits, what is left and its tokens by model; never the other's", async () => {
    fake.set({ tokens: 6, tokenDelayMs: 0 })
    const [a, b = a] = await workers()
    const before = fake.requests.length
    const alice = [
      await chat(a.url, KEYS.alice, "llama3.2"),
      await chat(b.url, KEYS.alice, "qwen3:0.6b"),
      await chat(a.url, KEYS.alice, "llama3.2")
    ]
    const bob = [await chat(b.url, KEYS.bob, "qwen3:0.6b")]

    // Read from the other worker than the last request's: the counters are the same.
    const mine = await usageOf(a.url, KEYS.alice)
    const now = Date.now()
    const total = alice.reduce((n, u) => n + u.tokens, 0)
    expect(mine.object).toBe("api_key.usage")
    expect(mine.api_key_name).toBe("alice")
    expect(mine.tokens.day.by_model).toEqual(sumByModel(alice))
    expect(mine.tokens.month.by_model).toEqual(sumByModel(alice))
    expect(mine.tokens.day.total).toBe(total)
    expect(mine.tokens.day.period).toBe(new Date(now).toISOString().slice(0, 10))
    expect(mine.tokens.month.period).toBe(new Date(now).toISOString().slice(0, 7))
    const midnight = new Date(now)
    midnight.setUTCHours(24, 0, 0, 0)
    expect(mine.tokens.day.resets_at).toBe(midnight.toISOString())
    expect(Object.keys(mine.limits)).toEqual(["requests_per_minute", "concurrent_requests", "tokens_per_day"])
    expect(mine.limits.tokens_per_day).toEqual({
      window: "day",
      counts: "tokens",
      limit: 100000,
      used: total,
      remaining: 100000 - total,
      resets_at: midnight.toISOString()
    })
    // Three requests in the last minute, none in flight; the minute drains back within 18 s.
    expect(mine.limits.requests_per_minute).toMatchObject({ window: "minute", limit: 10, used: 3, remaining: 7 })
    const drained = Date.parse(mine.limits.requests_per_minute!.resets_at!) - now
    expect(drained).toBeGreaterThan(10_000)
    expect(drained).toBeLessThanOrEqual(18_000)
    expect(mine.limits.concurrent_requests).toMatchObject({ limit: 2, used: 0, remaining: 2, resets_at: null })

    // Bob has no limits: only his own tokens.
    const his = await usageOf(b.url, KEYS.bob)
    expect(his).toMatchObject({ api_key_name: "bob", limits: {} })
    expect(his.tokens.day.by_model).toEqual(sumByModel(bob))
    expect(JSON.stringify(his)).not.toContain("alice")
    expect(JSON.stringify(mine)).not.toContain("bob")

    // Neither read counted as a request of the minute, and Ollama saw none of them (only the
    // four chats; not the workers' own health checks and model list reads).
    expect((await usageOf(b.url, KEYS.alice)).limits.requests_per_minute!.used).toBe(3)
    const seen = relayed(fake.requests.slice(before)).map((r) => `${r.method} ${r.path}`)
    expect(seen).toEqual(["POST /api/chat", "POST /api/chat", "POST /api/chat", "POST /api/chat"])
  })
})

describe("GET /v1/usage", () => {
  it("needs no scope beyond a valid key, and answers 401 in OpenAI's shape without one", async () => {
    const proxy = await start()
    const ops = await usageOf(proxy.url, KEYS.ops)
    expect(ops).toMatchObject({ api_key_name: "ops", limits: {}, tokens: { day: { total: 0, by_model: {} } } })

    const none = await raw(`${proxy.url}/v1/usage`)
    expect(none.status).toBe(401)
    expect(none.headers["www-authenticate"]).toBe("Bearer")
    expect(JSON.parse(none.text)).toEqual({
      error: { message: expect.stringContaining("unauthorized"), type: "invalid_request_error", param: null, code: "invalid_api_key" }
    })
    const openai = new OpenAI({ baseURL: `${proxy.url}/v1`, apiKey: "sk-not-a-key", maxRetries: 0 })
    await expect(openai.get("/usage")).rejects.toBeInstanceOf(OpenAI.AuthenticationError)
    // The openai client reads it like any other endpoint of the family.
    const own = await new OpenAI({ baseURL: `${proxy.url}/v1`, apiKey: KEYS.bob, maxRetries: 0 }).get<OwnUsage>("/usage")
    expect(own.api_key_name).toBe("bob")
  })

  it("is a 503 in the family's shape when Redis does not answer, and reads again once it does", async () => {
    const proxy = await start({ REDIS_URL: redis.url, LIMITS_STORE_TIMEOUT: "300ms" })
    await usageOf(proxy.url, KEYS.alice)
    redis.pause()
    try {
      const stalled = await raw(`${proxy.url}/v1/usage`, { headers: { authorization: `Bearer ${KEYS.bob}` } })
      expect(stalled.status).toBe(503)
      expect(stalled.headers["retry-after"]).toBe("1")
      expect(JSON.parse(stalled.text).error).toMatchObject({ type: "server_error", message: expect.stringContaining("cannot be read now") })
    } finally {
      redis.resume()
    }
    expect((await usageOf(proxy.url, KEYS.bob)).api_key_name).toBe("bob")
  })
})
