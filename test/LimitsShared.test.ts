/**
 * Two workers (two processes of the built service) sharing one real Redis hold a key to its
 * limits exactly, through the real clients; a Redis that dies or stalls never hangs a request and
 * gets the configured answer, and limits hold again when it is back.
 */
import { randomUUID } from "node:crypto"
import { mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Ollama } from "ollama"
import OpenAI from "openai"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type FakeOllama, startFakeOllama } from "./fake-ollama/server.mjs"
import { ndjson, open, raw, readToEnd } from "./support/http.js"
import { scrape } from "./support/metrics.js"
import { type SpawnedProxy, spawnProxy, untilReady } from "./support/proxy.js"
import { startRedis, type TestRedis } from "./support/redis.js"
import { startWebhook, type WebhookReceiver } from "./support/webhook.js"

const KEYS = {
  minute: "sk-minute-1b0c8d",
  month: "sk-month-7e51aa",
  conc: "sk-conc-44f0e2",
  down: "sk-down-a9c310",
  probe: "sk-probe-09de5f",
  stall: "sk-stall-3a7b02",
  ops: "sk-ops-6c2e71"
}
const MONTH_BUDGET = 120

const KEY_FILE = `
keys:
  - { name: minute, key: ${KEYS.minute}, limits: { requests_per_minute: 10 } }
  - { name: month, key: ${KEYS.month}, limits: { tokens_per_month: ${MONTH_BUDGET} } }
  - { name: conc, key: ${KEYS.conc}, limits: { concurrent_requests: 5 } }
  - { name: down, key: ${KEYS.down}, limits: { requests_per_minute: 2 } }
  - { name: probe, key: ${KEYS.probe}, limits: { concurrent_requests: 1000, requests_per_minute: 1000000 } }
  - { name: stall, key: ${KEYS.stall}, limits: { concurrent_requests: 1, requests_per_minute: 1000000 } }
  - { name: ops, key: ${KEYS.ops}, scopes: [all], limits: {} }
`

let redis: TestRedis
let fake: FakeOllama
let webhook: WebhookReceiver
let a: SpawnedProxy
let b: SpawnedProxy

const bearer = (key: string) => ({ authorization: `Bearer ${key}` })

beforeAll(async () => {
  redis = await startRedis()
  fake = await startFakeOllama()
  webhook = await startWebhook()
  const dir = mkdtempSync(join(tmpdir(), "limits-shared-"))
  writeFileSync(join(dir, "keys.yaml"), KEY_FILE)
  const env = {
    OLLAMA_MANAGED: "false",
    OLLAMA_HOST: fake.url,
    AUTHORIZATION_KEYS_FILE: join(dir, "keys.yaml"),
    USER_MODEL_METRICS_WEBHOOK_URL: webhook.url,
    REDIS_URL: redis.url,
    LIMITS_STORE_TIMEOUT: "300ms"
  }
  ;[a, b] = await Promise.all([
    spawnProxy({ ...env, LIMITS_ON_STORE_FAILURE: "open" }),
    spawnProxy({ ...env, LIMITS_ON_STORE_FAILURE: "closed" })
  ])
  await Promise.all([untilReady(a.url), untilReady(b.url)])
}, 30_000)

afterAll(async () => {
  await a?.kill()
  await b?.kill()
  await webhook?.close()
  await fake?.close()
  await redis?.close()
})

describe("two workers and one Redis", () => {
  it("let exactly requests_per_minute requests in between them, however they arrive", async () => {
    const results = await Promise.all(
      Array.from({ length: 30 }, (_, i) => raw(`${(i % 2 === 0 ? a : b).url}/api/tags`, { headers: bearer(KEYS.minute) }))
    )
    expect(results.filter((r) => r.status === 200)).toHaveLength(10)
    expect(results.filter((r) => r.status === 429)).toHaveLength(20)
    const remaining = results.filter((r) => r.status === 200).map((r) => r.headers["x-ratelimit-remaining-requests"]).sort()
    expect(remaining).toEqual(["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"])
    for (const worker of [a, b]) {
      const openai = new OpenAI({ baseURL: `${worker.url}/v1`, apiKey: KEYS.minute, maxRetries: 0 })
      const error = await openai.models.list().catch((e: unknown) => e)
      expect(error).toBeInstanceOf(OpenAI.RateLimitError)
      const limited = error as InstanceType<typeof OpenAI.RateLimitError>
      expect(limited.type).toBe("requests")
      expect(Number(limited.headers?.get("retry-after"))).toBeGreaterThanOrEqual(5)
      expect(Number(limited.headers?.get("retry-after"))).toBeLessThanOrEqual(6)
      await worker.waitForLine((l) => l.msg === "access" && l.api_key_name === "minute" && l.rate_limit === "requests_per_minute")
    }
  })

  it("reach a monthly budget through streamed and whole answers on both, count every token, and refuse the next on both", async () => {
    fake.set({ tokens: 7, tokenDelayMs: 0 })
    let spent = 0
    const ids: Array<string> = []
    for (let i = 0; spent < MONTH_BUDGET; i++) {
      const worker = i % 2 === 0 ? a : b
      const id = randomUUID()
      ids.push(id)
      const headers = { ...bearer(KEYS.month), "x-request-id": id }
      switch (i % 4) {
        case 0: {
          const ollama = new Ollama({ host: worker.url, headers })
          let last: { prompt_eval_count: number; eval_count: number } | undefined
          for await (const part of await ollama.chat({ model: "llama3.2", messages: [{ role: "user", content: "Hi" }], stream: true })) {
            if (part.done) last = part
          }
          spent += last!.prompt_eval_count + last!.eval_count
          break
        }
        case 1: {
          const openai = new OpenAI({ baseURL: `${worker.url}/v1`, apiKey: KEYS.month, maxRetries: 0 })
          const answer = await openai.chat.completions.create({ model: "llama3.2", messages: [{ role: "user", content: "Hi" }] }, {
            headers
          })
          spent += answer.usage!.total_tokens
          break
        }
        case 2: {
          const openai = new OpenAI({ baseURL: `${worker.url}/v1`, apiKey: KEYS.month, maxRetries: 0 })
          const stream = await openai.chat.completions.create({
            model: "llama3.2",
            messages: [{ role: "user", content: "Hi" }],
            stream: true,
            stream_options: { include_usage: true }
          }, { headers })
          for await (const chunk of stream) if (chunk.usage) spent += chunk.usage.total_tokens
          break
        }
        default: {
          const ollama = new Ollama({ host: worker.url, headers })
          const answer = await ollama.generate({ model: "llama3.2", prompt: "Hi", stream: false })
          spent += answer.prompt_eval_count + answer.eval_count
        }
      }
    }
    for (const worker of [a, b]) {
      const openai = new OpenAI({ baseURL: `${worker.url}/v1`, apiKey: KEYS.month, maxRetries: 0 })
      const error = await openai.chat.completions.create({ model: "llama3.2", messages: [{ role: "user", content: "Hi" }] })
        .catch((e: unknown) => e)
      expect(error).toBeInstanceOf(OpenAI.RateLimitError)
      expect((error as InstanceType<typeof OpenAI.RateLimitError>).type).toBe("tokens")
      expect((error as Error).message).toContain("tokens_per_month")
      await expect(new Ollama({ host: worker.url, headers: bearer(KEYS.month) }).generate({ model: "llama3.2", prompt: "Hi" }))
        .rejects.toMatchObject({ status_code: 429 })
    }
    // Every record carries the totals after its exchange, counted across both workers: the last
    // one's are every token the clients were told of.
    await webhook.until((received) => ids.every((id) => received.some((r) => r.record.request_id === id)))
    const records = ids.map((id) => webhook.received.find((r) => r.record.request_id === id)!.record)
    const totals = records.map((r) => (r.key_period_totals as { tokens_month: number }).tokens_month).sort((x, y) => x - y)
    expect(totals.at(-1)).toBe(spent)
    expect(new Set(totals).size).toBe(records.length)
    expect(records.map((r) => r.prompt_eval_count as number + (r.eval_count as number)).reduce((x, y) => x + y)).toBe(spent)
    for (const worker of [a, b]) {
      const metrics = await scrape(worker.url, bearer(KEYS.ops))
      expect(metrics.value("ollama_proxy_key_remaining_tokens_month", { api_key_name: "month" })).toBe(0)
    }
  })

  it("hold concurrent_requests under 50 parallel streams, and each admitted stream runs to its end", async () => {
    fake.set({ tokens: 10, tokenDelayMs: 100 })
    const body = JSON.stringify({ model: "llama3.2", messages: [{ role: "user", content: "Hi" }] })
    const opened = await Promise.all(
      Array.from(
        { length: 50 },
        (_, i) => open(`${(i % 2 === 0 ? a : b).url}/api/chat`, { method: "POST", headers: bearer(KEYS.conc), body })
      )
    )
    const bodies = await Promise.all(opened.map(({ res }) => readToEnd(res).then((read) => ({ status: res.statusCode, ...read }))))
    const admitted = bodies.filter((r) => r.status === 200)
    expect(admitted).toHaveLength(5)
    expect(bodies.filter((r) => r.status === 429)).toHaveLength(45)
    for (const stream of admitted) {
      expect(stream.complete).toBe(true)
      expect(ndjson(stream.body).at(-1)).toMatchObject({ done: true, eval_count: 10 })
    }
    fake.set({ tokens: 5, tokenDelayMs: 0 })
    // Every slot was given back.
    const again = await Promise.all(
      Array.from(
        { length: 5 },
        (_, i) => raw(`${(i % 2 === 0 ? a : b).url}/api/chat`, { method: "POST", headers: bearer(KEYS.conc), body })
      )
    )
    expect(again.map((r) => r.status)).toEqual([200, 200, 200, 200, 200])
  })
})

describe("when Redis fails", () => {
  const probe = (worker: SpawnedProxy) => raw(`${worker.url}/api/tags`, { headers: bearer(KEYS.probe) })
  /** Each worker reconnects on its own (within 2 s); its answers carry the headers again once it has. */
  const reconnected = async () => {
    for (const worker of [a, b]) {
      const deadline = Date.now() + 10_000
      while ((await probe(worker)).headers["x-ratelimit-limit-requests"] === undefined) {
        if (Date.now() > deadline) throw new Error("the worker never reached Redis again")
        await new Promise((r) => setTimeout(r, 50))
      }
    }
  }

  it("a dead Redis: open lets requests in at once, closed refuses them with 503; limits hold again once it is back", async () => {
    fake.set({ tokens: 20, tokenDelayMs: 20 })
    // A stream in flight when Redis dies runs to its end.
    const inFlight = await open(`${a.url}/api/generate`, {
      method: "POST",
      headers: bearer(KEYS.down),
      body: JSON.stringify({ model: "llama3.2", prompt: "Hi" })
    })
    expect(inFlight.res.statusCode).toBe(200)
    await redis.kill()
    const started = performance.now()
    const [open1, closed1] = await Promise.all([probe(a), probe(b)])
    expect(performance.now() - started).toBeLessThan(250)
    expect(open1.status).toBe(200)
    expect(open1.headers["x-ratelimit-remaining-requests"]).toBeUndefined()
    expect(closed1.status).toBe(503)
    expect(closed1.headers["retry-after"]).toBe("1")
    expect(JSON.parse(closed1.text).error).toContain("cannot be checked now")
    const openai = new OpenAI({ baseURL: `${b.url}/v1`, apiKey: KEYS.probe, maxRetries: 0 })
    await expect(openai.models.list()).rejects.toBeInstanceOf(OpenAI.InternalServerError)
    expect(ndjson((await readToEnd(inFlight.res)).body).at(-1)).toMatchObject({ done: true })

    await a.waitForLine((l) => l.msg === "limits store (Redis) failed: requests decided without it" && l.on_store_failure === "open")
    await b.waitForLine((l) => l.msg === "limits store (Redis) failed: requests decided without it" && l.on_store_failure === "closed")
    const metricsA = await scrape(a.url, bearer(KEYS.ops))
    expect(metricsA.value("ollama_proxy_limits_store_failures_total", { operation: "admit", decision: "open" })).toBeGreaterThanOrEqual(1)
    expect(metricsA.value("ollama_proxy_limits_store_failures_total", { operation: "charge", decision: "retried" })).toBeGreaterThanOrEqual(
      1
    )
    const metricsB = await scrape(b.url, bearer(KEYS.ops))
    expect(metricsB.value("ollama_proxy_limits_store_failures_total", { operation: "admit", decision: "closed" })).toBeGreaterThanOrEqual(2)
    expect(metricsB.total("ollama_proxy_requests_total", { api_key_name: "probe", outcome: "rate_limited", status: "503" })).toBe(2)

    await redis.start()
    await reconnected()
    await a.waitForLine((l) => l.msg === "limits store (Redis) answers again")
    // Redis came back empty: the minute's two requests hold between the workers again.
    const statuses = []
    for (const worker of [a, b, a, b]) statuses.push((await raw(`${worker.url}/api/tags`, { headers: bearer(KEYS.down) })).status)
    expect(statuses).toEqual([200, 200, 429, 429])
  })

  it("a Redis that stalls: each request waits LIMITS_STORE_TIMEOUT at most, then open or closed decides", async () => {
    redis.pause()
    try {
      const started = performance.now()
      const [open1, closed1] = await Promise.all([raw(`${a.url}/api/tags`, { headers: bearer(KEYS.stall) }), probe(b)])
      const waited = performance.now() - started
      expect(waited).toBeGreaterThanOrEqual(280)
      expect(waited).toBeLessThan(1000)
      expect(open1.status).toBe(200)
      expect(closed1.status).toBe(503)
    } finally {
      redis.resume()
    }
    await reconnected()
    // The admission Redis answered late took the key's one slot: it was given back, so one
    // request runs again, and only one.
    fake.set({ tokens: 10, tokenDelayMs: 50 })
    const body = JSON.stringify({ model: "llama3.2", prompt: "Hi" })
    const running = await open(`${a.url}/api/generate`, { method: "POST", headers: bearer(KEYS.stall), body })
    expect(running.res.statusCode).toBe(200)
    expect((await raw(`${b.url}/api/generate`, { method: "POST", headers: bearer(KEYS.stall), body })).status).toBe(429)
    await readToEnd(running.res)
    fake.set({ tokens: 5, tokenDelayMs: 0 })
  })
})
