/**
 * Limits per key with the counters in this process (one worker): what a client sees (429 in its
 * API's shape, Retry-After, OpenAI's x-ratelimit-* headers, the real clients' errors and retries),
 * what Ollama sees (nothing of a refused request), what the records, access line and /metrics say.
 */
import Anthropic from "@anthropic-ai/sdk"
import { randomUUID } from "node:crypto"
import { mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Ollama } from "ollama"
import OpenAI from "openai"
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest"
import { ndjson, open, raw } from "./support/http.js"
import { scrape } from "./support/metrics.js"
import { startProxy, untilReady } from "./support/proxy.js"
import { spanRecorder } from "./support/spans.js"
import { type Stack, startStack } from "./support/stack.js"

const KEYS = {
  rpm: "sk-rpm-3f0a9c",
  retry: "sk-retry-77b1e0",
  budget: "sk-budget-c41d2a",
  over: "sk-over-0e9f11",
  abort: "sk-abort-51aa3c",
  conc: "sk-conc-9d2b71",
  none: "sk-none-1c8e40",
  admin: "sk-admin-5b6f02"
}

const KEY_FILE = `
keys:
  - { name: rpm, key: ${KEYS.rpm}, limits: { requests_per_minute: 3, tokens_per_minute: 600 } }
  - { name: retry, key: ${KEYS.retry}, limits: { requests_per_minute: 30 } }
  - { name: budget, key: ${KEYS.budget}, limits: { tokens_per_day: 60, tokens_per_month: 1000000 } }
  - { name: over, key: ${KEYS.over}, limits: { tokens_per_day: 1 } }
  - { name: abort, key: ${KEYS.abort}, limits: { tokens_per_month: 1000000 } }
  - { name: conc, key: ${KEYS.conc}, limits: { concurrent_requests: 2 } }
  - { name: none, key: ${KEYS.none}, limits: {} }
  - { name: admin, key: ${KEYS.admin}, scopes: [all], limits: {} }
`

let stack: Stack
let fake: Stack["fake"]
let webhook: Stack["webhook"]
let proxy: Stack["proxy"]

beforeAll(async () => {
  const dir = mkdtempSync(join(tmpdir(), "limits-"))
  writeFileSync(join(dir, "keys.yaml"), KEY_FILE)
  stack = await startStack({
    AUTHORIZATION_KEYS_FILE: join(dir, "keys.yaml"),
    // File entries name their limits; this would apply to those that do not.
    AUTHORIZATION_DEFAULT_LIMITS: "requests_per_minute=1",
    // Slots for every stream these tests hold open at once: they test the limits, not the schedule.
    QUEUE_SLOTS: "4"
  })
  ;({ fake, proxy, webhook } = stack)
})

afterAll(() => stack?.close())

beforeEach(() => {
  fake.set({ tokens: 5, tokenDelayMs: 0 })
})

const bearer = (key: string) => ({ authorization: `Bearer ${key}` })
const chatBody = (stream: boolean) => JSON.stringify({ model: "llama3.2", messages: [{ role: "user", content: "Hi" }], stream })
const recordOf = async (requestId: string) => {
  await webhook.until((received) => received.some((r) => r.record.request_id === requestId))
  return webhook.received.find((r) => r.record.request_id === requestId)!.record
}
const seenByOllama = (requestId: string) => fake.requests.filter((r) => r.headers["x-request-id"] === requestId).length

describe("requests_per_minute", () => {
  it("lets the minute's requests in with OpenAI's headers, then refuses with 429 in each API's shape; Ollama never sees a refused one", async () => {
    const openai = new OpenAI({ baseURL: `${proxy.url}/v1`, apiKey: KEYS.rpm, maxRetries: 0 })
    const first = await openai.chat.completions.create({ model: "llama3.2", messages: [{ role: "user", content: "Hi" }] }).withResponse()
    expect(first.response.headers.get("x-ratelimit-limit-requests")).toBe("3")
    expect(first.response.headers.get("x-ratelimit-remaining-requests")).toBe("2")
    expect(first.response.headers.get("x-ratelimit-reset-requests")).toMatch(/^(19\.\d+|20)s$/)
    expect(first.response.headers.get("x-ratelimit-limit-tokens")).toBe("600")
    expect(first.response.headers.get("x-ratelimit-remaining-tokens")).toBe("600")
    const tags = await raw(`${proxy.url}/api/tags`, { headers: bearer(KEYS.rpm) })
    expect(tags.status).toBe(200)
    expect(tags.headers["x-ratelimit-remaining-requests"]).toBe("1")
    // A stream's answer head carries them too.
    const streamed = await raw(`${proxy.url}/api/chat`, { method: "POST", headers: bearer(KEYS.rpm), body: chatBody(true) })
    expect(streamed.status).toBe(200)
    expect(streamed.headers["x-ratelimit-remaining-requests"]).toBe("0")
    // The tokens of the two chats are counted.
    expect(Number(streamed.headers["x-ratelimit-remaining-tokens"])).toBeLessThan(600)

    const id = randomUUID()
    const error = await openai.chat.completions.create({ model: "llama3.2", messages: [{ role: "user", content: "Hi" }] }, {
      headers: { "x-request-id": id }
    }).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(OpenAI.RateLimitError)
    const limited = error as InstanceType<typeof OpenAI.RateLimitError>
    expect(limited.status).toBe(429)
    expect(limited.type).toBe("requests")
    expect(limited.code).toBe("rate_limit_exceeded")
    expect(limited.message).toContain("requests_per_minute")
    const retryAfter = Number(limited.headers?.get("retry-after"))
    expect(retryAfter).toBeGreaterThanOrEqual(19)
    expect(retryAfter).toBeLessThanOrEqual(20)
    expect(Number(limited.headers?.get("retry-after-ms"))).toBeGreaterThan(19_000)
    expect(limited.headers?.get("x-ratelimit-remaining-requests")).toBe("0")
    expect(seenByOllama(id)).toBe(0)

    const native = await raw(`${proxy.url}/api/chat`, { method: "POST", headers: bearer(KEYS.rpm), body: chatBody(false) })
    expect(native.status).toBe(429)
    expect(JSON.parse(native.text)).toEqual({ error: expect.stringContaining("requests_per_minute (3 requests per minute)") })
    // Like every answer the proxy writes itself, the refusal closes its connection.
    expect(native.headers.connection).toBe("close")
    const ollama = new Ollama({ host: proxy.url, headers: bearer(KEYS.rpm) })
    await expect(ollama.list()).rejects.toMatchObject({ status_code: 429 })
    const anthropic = new Anthropic({ baseURL: proxy.url, apiKey: KEYS.rpm, maxRetries: 0 })
    const refused = await anthropic.messages.create({ model: "llama3.2", max_tokens: 5, messages: [{ role: "user", content: "Hi" }] })
      .catch((e: unknown) => e)
    expect(refused).toBeInstanceOf(Anthropic.RateLimitError)
    expect((refused as InstanceType<typeof Anthropic.RateLimitError>).error).toMatchObject({
      type: "error",
      error: { type: "rate_limit_error" }
    })
  })

  it("the openai client waits for Retry-After and its retry succeeds", async () => {
    // 30 a minute: one more every 2 s once the minute's 30 are spent.
    for (let i = 0; i < 30; i++) expect((await raw(`${proxy.url}/api/tags`, { headers: bearer(KEYS.retry) })).status).toBe(200)
    const openai = new OpenAI({ baseURL: `${proxy.url}/v1`, apiKey: KEYS.retry, maxRetries: 1 })
    const started = Date.now()
    const id = randomUUID()
    const answer = await openai.chat.completions.create({ model: "llama3.2", messages: [{ role: "user", content: "Hi" }] }, {
      headers: { "x-request-id": id }
    })
    expect(answer.choices[0]!.message.content).toContain("Hello")
    expect(Date.now() - started).toBeGreaterThanOrEqual(1500)
    expect(seenByOllama(id)).toBe(1)
  })
})

describe("token budgets", () => {
  it("counts streamed and whole answers into the day's budget and refuses the next inference, but not a model list", async () => {
    const ollama = new Ollama({ host: proxy.url, headers: bearer(KEYS.budget) })
    const openai = new OpenAI({ baseURL: `${proxy.url}/v1`, apiKey: KEYS.budget, maxRetries: 0 })
    let spent = 0
    const ids: Array<string> = []
    for (let i = 0; spent < 60; i++) {
      const id = randomUUID()
      ids.push(id)
      if (i % 2 === 0) {
        const stream = await ollama.chat({ model: "llama3.2", messages: [{ role: "user", content: "Hi" }], stream: true })
        let done: { prompt_eval_count: number; eval_count: number } | undefined
        for await (const part of stream) if (part.done) done = part
        spent += done!.prompt_eval_count + done!.eval_count
        // Not the request id of a client library call: read it from the record below.
        ids.pop()
      } else {
        const answer = await openai.chat.completions.create({ model: "llama3.2", messages: [{ role: "user", content: "Hi" }] }, {
          headers: { "x-request-id": id }
        })
        spent += answer.usage!.total_tokens
      }
    }
    const last = await recordOf(ids.at(-1)!)
    expect(last.key_period_totals).toMatchObject({ tokens_day: expect.any(Number), tokens_month: expect.any(Number) })
    const error = await openai.chat.completions.create({ model: "llama3.2", messages: [{ role: "user", content: "Hi" }] })
      .catch((e: unknown) => e)
    expect(error).toBeInstanceOf(OpenAI.RateLimitError)
    const limited = error as InstanceType<typeof OpenAI.RateLimitError>
    expect(limited.type).toBe("tokens")
    expect(limited.message).toContain("tokens_per_day")
    expect(limited.headers?.get("x-ratelimit-limit-tokens-day")).toBe("60")
    expect(limited.headers?.get("x-ratelimit-remaining-tokens-day")).toBe("0")
    const midnight = new Date()
    midnight.setUTCHours(24, 0, 0, 0)
    expect(Number(limited.headers?.get("retry-after"))).toBe(Math.ceil((midnight.getTime() - Date.now()) / 1000))
    await expect(ollama.generate({ model: "llama3.2", prompt: "Hi" })).rejects.toMatchObject({ status_code: 429 })
    expect((await raw(`${proxy.url}/api/tags`, { headers: bearer(KEYS.budget) })).status).toBe(200)

    const day = new Date().toISOString().slice(0, 10)
    const totals = (await recordOf(ids.at(-1)!)).key_period_totals as Record<string, unknown>
    expect(totals.day).toBe(day)
    expect(totals.month).toBe(day.slice(0, 7))
    expect(totals.tokens_day).toBe(totals.tokens_month)
    expect(totals.tokens_day).toBeGreaterThanOrEqual(60)

    const metrics = await scrape(proxy.url, bearer(KEYS.admin))
    expect(metrics.value("ollama_proxy_key_remaining_tokens_day", { api_key_name: "budget" })).toBe(0)
    expect(metrics.value("ollama_proxy_key_remaining_tokens_month", { api_key_name: "budget" })).toBe(1000000 - spent)
    expect(metrics.total("ollama_proxy_requests_total", { api_key_name: "budget", outcome: "rate_limited", status: "429" })).toBe(2)
  })

  it("a stream admitted under the budget runs to its end past it; the next request is refused", async () => {
    fake.set({ tokens: 40 })
    const first = await raw(`${proxy.url}/api/generate`, {
      method: "POST",
      headers: bearer(KEYS.over),
      body: JSON.stringify({ model: "llama3.2", prompt: "Hi" })
    })
    expect(first.status).toBe(200)
    const lines = ndjson(first.text)
    expect(lines.at(-1)).toMatchObject({ done: true, eval_count: 40 })
    expect(lines.length).toBe(41)
    const next = await raw(`${proxy.url}/api/generate`, {
      method: "POST",
      headers: bearer(KEYS.over),
      body: JSON.stringify({ model: "llama3.2", prompt: "Hi" })
    })
    expect(next.status).toBe(429)
  })

  it("a client that hangs up is charged the tokens it received", async () => {
    fake.set({ tokens: 50, tokenDelayMs: 30 })
    const id = randomUUID()
    const { req, res } = await open(`${proxy.url}/api/chat`, {
      method: "POST",
      headers: { ...bearer(KEYS.abort), "x-request-id": id },
      body: chatBody(true)
    })
    let received = ""
    for await (const chunk of res) {
      received += String(chunk)
      if (received.split("\n").length > 4) break
    }
    req.destroy()
    const record = await recordOf(id)
    expect(record).toMatchObject({ outcome: "client_aborted", usage_estimated: true })
    expect(record.key_period_totals).toMatchObject({ tokens_day: record.eval_count, tokens_month: record.eval_count })
    expect(record.eval_count).toBeGreaterThanOrEqual(4)
  })
})

describe("concurrent_requests", () => {
  it("lets two streams in at once, refuses the others while they run, and frees the slots when they end", async () => {
    fake.set({ tokens: 10, tokenDelayMs: 40 })
    const send = () => raw(`${proxy.url}/api/chat`, { method: "POST", headers: bearer(KEYS.conc), body: chatBody(true) })
    const first = [
      open(`${proxy.url}/api/chat`, { method: "POST", headers: bearer(KEYS.conc), body: chatBody(true) }),
      open(`${proxy.url}/api/chat`, { method: "POST", headers: bearer(KEYS.conc), body: chatBody(true) })
    ]
    const running = await Promise.all(first)
    for (const { res } of running) expect(res.statusCode).toBe(200)
    const refused = await Promise.all(Array.from({ length: 10 }, send))
    expect(refused.map((r) => r.status)).toEqual(Array(10).fill(429))
    expect(JSON.parse(refused[0]!.text).error).toContain("concurrent_requests")
    expect(refused[0]!.headers["retry-after"]).toBe("1")
    for (const { res } of running) {
      res.resume()
      await new Promise((resolve) => res.on("end", resolve))
    }
    const after = await send()
    expect(after.status).toBe(200)
  })
})

describe("a key without limits", () => {
  it("gets no rate-limit headers", async () => {
    const tags = await raw(`${proxy.url}/api/tags`, { headers: bearer(KEYS.none) })
    expect(tags.status).toBe(200)
    expect(Object.keys(tags.headers).filter((h) => h.startsWith("x-ratelimit"))).toEqual([])
  })
})

describe("a refusal as telemetry sees it", () => {
  it("the server span names the limit that refused", async () => {
    const recorder = spanRecorder()
    const traced = await startProxy({
      OLLAMA_HOST: fake.url,
      AUTHORIZATION_APIKEY_TRACED: "sk-traced-5e0c1d",
      AUTHORIZATION_DEFAULT_LIMITS: "requests_per_minute=1"
    }, recorder.layer)
    try {
      await untilReady(traced.url)
      expect((await raw(`${traced.url}/api/tags`, { headers: bearer("sk-traced-5e0c1d") })).status).toBe(200)
      expect((await raw(`${traced.url}/api/tags`, { headers: bearer("sk-traced-5e0c1d") })).status).toBe(429)
    } finally {
      await traced.close()
    }
    const spans = recorder.named("GET /api/tags")
    expect(
      spans.map((
        s
      ) => [s.attributes["http.response.status_code"], s.attributes["ollama_proxy.outcome"], s.attributes["ollama_proxy.rate_limit"]])
    )
      .toEqual([[200, "completed", undefined], [429, "rate_limited", "requests_per_minute"]])
    expect(spans[1]!.attributes["ollama_proxy.refusal"]).toContain("rate limit reached: requests_per_minute")
  })
})
