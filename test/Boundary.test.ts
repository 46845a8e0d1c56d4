/**
 * The exchange boundary as a user and an operator see it: every exchange read once, whatever
 * consumers are installed; a failure inside the reading or a consumer never breaks the response
 * and never goes unseen (a log line with the request id, a metric, a record that says so).
 */
import { Context, Effect, Layer } from "effect"
import { randomUUID } from "node:crypto"
import { Ollama } from "ollama"
import OpenAI from "openai"
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest"
import { UsageReaders } from "../src/exchange/Boundary.js"
import { type Exchange, ExchangeAdmission, type ExchangeConsumer, ExchangeConsumers } from "../src/exchange/Exchange.js"
import { UsageReader } from "../src/exchange/UsageReader.js"
import { Limits } from "../src/limits/Limits.js"
import { makeTelemetryConsumer } from "../src/telemetry/Telemetry.js"
import { Tracing } from "../src/telemetry/Tracing.js"
import type { UsageRecord } from "../src/usage/Record.js"
import { makeUsageRecords } from "../src/usage/Records.js"
import { startFakeOllama } from "./fake-ollama/server.mjs"
import { noLimitsAdmission } from "./support/layer.js"
import { scrape } from "./support/metrics.js"
import { startProxy, untilReady } from "./support/proxy.js"
import { startRedis } from "./support/redis.js"
import { makeSignal } from "./support/signal.js"
import { startWebhook, type WebhookReceiver } from "./support/webhook.js"

const KEY = "boundary-test-key-77a1"
const auth = { authorization: `Bearer ${KEY}` }

type Fake = Awaited<ReturnType<typeof startFakeOllama>>
let fake: Fake
let webhook: WebhookReceiver

beforeAll(async () => {
  fake = await startFakeOllama()
  webhook = await startWebhook()
})

afterAll(async () => {
  await webhook?.close()
  await fake?.close()
})

afterEach(() => {
  vi.restoreAllMocks()
})

/** The app's JSON log lines, read where they are written. */
const captureLogs = () => {
  const lines: Array<Record<string, unknown>> = []
  const changed = makeSignal()
  const write = process.stdout.write.bind(process.stdout)
  vi.spyOn(process.stdout, "write").mockImplementation((chunk: string | Uint8Array, ...rest: Array<any>) => {
    for (const line of String(chunk).split("\n").filter(Boolean)) {
      try {
        lines.push(JSON.parse(line))
      } catch {
        return write(chunk, ...rest)
      }
    }
    changed.notify()
    return true
  })
  return {
    lines,
    until: (predicate: (line: Record<string, unknown>) => boolean) =>
      changed.until(() => lines.find(predicate), 5000, () => `no such log line in ${JSON.stringify(lines)}`)
  }
}

const env = (extra: Record<string, string> = {}) => ({
  OLLAMA_HOST: fake.url,
  AUTHORIZATION_APIKEY_ALICE: KEY,
  AUTHORIZATION_LOG_JSON: "true",
  METRICS_PUBLIC: "true",
  ...extra
})

const failures = async (url: string, part: string) => (await scrape(url)).value("ollama_proxy_exchange_failures_total", { part }) ?? 0

/** A usage reader that breaks on its second body chunk, the way a bug in a reader would. */
class BreakingReader extends UsageReader {
  private chunks = 0
  override push(chunk: Buffer) {
    if (++this.chunks === 2) throw new Error("reader bug")
    super.push(chunk)
  }
}

describe("a failure inside the reading", () => {
  it("the client gets its whole answer; the record says it is incomplete; one log line and the metric say so", async () => {
    const logs = captureLogs()
    const proxy = await startProxy(
      env({ USER_MODEL_METRICS_WEBHOOK_URL: webhook.url, AUTHORIZATION_LOG_LEVEL: "error" }),
      Layer.succeed(UsageReaders, (format) => new BreakingReader(format))
    )
    try {
      await untilReady(proxy.url)
      const before = await failures(proxy.url, "reading")
      const id = randomUUID()
      const messages = [{ role: "user", content: "Why is the sky blue?" }]
      const client = new Ollama({ host: proxy.url, headers: { ...auth, "x-request-id": id } })
      let content = ""
      let done = false
      for await (const part of await client.chat({ model: "llama3.2", messages, stream: true })) {
        content += part.message.content
        done ||= part.done
      }
      expect(content).toBe(fake.expected("/api/chat", { model: "llama3.2", messages }).content)
      expect(done).toBe(true)

      await webhook.until((got) => got.some((g) => g.record.request_id === id))
      const record = webhook.accepted().find((r) => r.request_id === id)!
      expect(record).toMatchObject({ outcome: "completed", status: 200, metering_error: "response body: reader bug", eval_count: null })

      const line = await logs.until((l) => l.request_id === id && l.part === "reading")
      expect(line).toMatchObject({ level: "error", path: "/api/chat", api_key_name: "alice", error: "response body: reader bug" })
      expect(String(line.msg)).toMatch(/incomplete/)
      expect(logs.lines.filter((l) => l.request_id === id && l.level === "error")).toHaveLength(1)
      expect(await failures(proxy.url, "reading")).toBe(before + 1)
    } finally {
      await proxy.close()
    }
  })
})

describe("consumers, each on its own", () => {
  /** Remembers each exchange it saw end. */
  const recorder = () => {
    const ended: Array<Exchange> = []
    const changed = makeSignal()
    const consumer: ExchangeConsumer = {
      name: "recorder",
      open: () => ({
        end: (exchange) => {
          ended.push(exchange)
          changed.notify()
        }
      })
    }
    return { consumer, ended, until: (id: string) => changed.until(() => ended.find((e) => e.requestId === id), 5000, () => "never ended") }
  }

  it("one that fails neither breaks the answer nor stops the others; a record that cannot be made is logged", async () => {
    const logs = captureLogs()
    const seen = recorder()
    const failing: ExchangeConsumer = {
      name: "audit",
      open: () => {
        throw new Error("audit store unreachable")
      }
    }
    const records = makeUsageRecords((record: UsageRecord) => {
      throw new Error(`cannot queue ${record.id}`)
    })
    const consumers = Layer.effect(
      ExchangeConsumers,
      Effect.map(makeTelemetryConsumer, (telemetry) => [failing, telemetry, records, seen.consumer])
    ).pipe(Layer.provide(Layer.succeed(Tracing, Tracing.off)), Layer.merge(noLimitsAdmission))
    const proxy = await startProxy(env(), undefined, consumers)
    try {
      await untilReady(proxy.url)
      const id = randomUUID()
      const answer = await new Ollama({ host: proxy.url, headers: { ...auth, "x-request-id": id } })
        .generate({ model: "llama3.2", prompt: "Hi", stream: false })
      expect(answer.done).toBe(true)

      const exchange = await seen.until(id)
      expect(exchange.reading.answer?.measured).toBe(true)
      const audit = await logs.until((l) => l.request_id === id && l.part === "audit")
      expect(audit).toMatchObject({ level: "error", error: "audit store unreachable" })
      const usage = await logs.until((l) => l.request_id === id && l.part === "usage")
      expect(usage).toMatchObject({ level: "error", path: "/api/generate" })
      expect(String(usage.error)).toMatch(/^cannot queue /)
      expect(await failures(proxy.url, "audit")).toBe(1)
      expect(await failures(proxy.url, "usage")).toBe(1)
      expect(await failures(proxy.url, "recorder")).toBe(0)
    } finally {
      await proxy.close()
    }
  })
})

describe("a record that waits for the charge", () => {
  it("fails after Redis answered: counted and logged once, no unhandled rejection, the answer whole", async () => {
    const logs = captureLogs()
    const redis = await startRedis()
    // With limits shared in Redis, the record is made once the charge is back: outside the
    // boundary's try, where a throw used to become an unhandled rejection, seen by no one.
    const records = makeUsageRecords((record: UsageRecord) => {
      throw new Error(`cannot queue ${record.id}`)
    })
    const consumers = Layer.effectContext(
      Effect.map(
        Limits,
        (limits) =>
          Context.make(ExchangeConsumers, [limits.consumer, records]).pipe(
            Context.add(ExchangeAdmission, { admit: limits.admit, ownUsage: limits.ownUsage })
          )
      )
    ).pipe(Layer.provide(Limits.Default), Layer.orDie)
    const proxy = await startProxy(
      env({ REDIS_URL: redis.url, AUTHORIZATION_DEFAULT_LIMITS: "tokens_per_day=1000000" }),
      undefined,
      consumers
    )
    try {
      await untilReady(proxy.url)
      const before = await failures(proxy.url, "usage")
      const id = randomUUID()
      const answer = await new Ollama({ host: proxy.url, headers: { ...auth, "x-request-id": id } })
        .generate({ model: "llama3.2", prompt: "Hi", stream: false })
      expect(answer.done).toBe(true)
      const usage = await logs.until((l) => l.request_id === id && l.part === "usage")
      expect(usage).toMatchObject({ level: "error", path: "/api/generate", msg: "usage: the end of an exchange failed" })
      expect(String(usage.error)).toMatch(/^cannot queue /)
      expect(logs.lines.filter((l) => l.request_id === id && l.level === "error")).toHaveLength(1)
      expect(await failures(proxy.url, "usage")).toBe(before + 1)
    } finally {
      await proxy.close()
      await redis.close()
    }
  })
})

describe("metering without a webhook", () => {
  it("an OpenAI stream that did not ask for usage is still read: its tokens reach the metrics, its bytes stay the client's", async () => {
    const proxy = await startProxy(env())
    try {
      await untilReady(proxy.url)
      const before = (await scrape(proxy.url)).total("gen_ai_client_token_usage_sum", { gen_ai_token_type: "output" })
      const client = new OpenAI({ baseURL: `${proxy.url}/v1`, apiKey: KEY, maxRetries: 0 })
      const chunks = []
      const stream = await client.chat.completions.create({
        model: "llama3.2",
        messages: [{ role: "user", content: "Hi" }],
        stream: true
      })
      for await (const chunk of stream) chunks.push(chunk)
      // The usage event the proxy asked for never reaches a client that did not ask.
      expect(chunks.every((c) => c.usage === undefined || c.usage === null)).toBe(true)
      const expected = fake.expected("/v1/chat/completions", { model: "llama3.2", messages: [{ role: "user", content: "Hi" }] })
      const after = (await scrape(proxy.url)).total("gen_ai_client_token_usage_sum", { gen_ai_token_type: "output" })
      expect(after - before).toBe(expected.evalCount)
    } finally {
      await proxy.close()
    }
  })
})
