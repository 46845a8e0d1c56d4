import { afterEach, describe, expect, it } from "@effect/vitest"
import { Chunk, Duration, Effect, Layer, Logger, LogLevel, Metric, Schedule } from "effect"
import { randomBytes, randomUUID } from "node:crypto"
import { mkdtempSync, readdirSync, readFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Webhook } from "standardwebhooks"
import { configFromEnv } from "../src/Config.js"
import { makeLogger } from "../src/telemetry/Logging.js"
import type { UsageRecord } from "../src/usage/Record.js"
import { parseSegment } from "../src/usage/Spool.js"
import { parseRetryAfter, retrySchedule, UsageWebhook, webhookDisabled, WebhookRejected, WebhookUnreachable } from "../src/usage/Webhook.js"
import { WebhookConfig } from "../src/usage/WebhookConfig.js"
import { freePort } from "./support/http.js"
import { startWebhook, type WebhookReceiver } from "./support/webhook.js"

const KEY = "whk-secret-8d1f0c2e"

const record = (n = 0): UsageRecord => ({
  id: randomUUID(),
  request_id: `req-${n}`,
  created_at: "2026-08-20T10:00:01.123456789Z",
  endpoint: "/api/chat",
  model: "llama3.2",
  api_key_name: "alice",
  key_metadata: null,
  key_period_totals: null,
  user_id: "u-1",
  user_name: "Zoë",
  user_email: "zoe@example.com",
  user_role: "user",
  chat_id: null,
  status: 200,
  outcome: "completed",
  stream: true,
  done_reason: "stop",
  total_duration: 10706818083,
  load_duration: 6338219291,
  prompt_eval_count: 26,
  prompt_eval_duration: 130079000,
  eval_count: 259,
  eval_duration: 4232710000,
  usage_estimated: false,
  usage_counted_by: "ollama",
  web_searches: null,
  metering_error: null,
  time_to_first_chunk_ms: 12.5,
  duration_ms: 4300.25,
  queue_wait_ms: 0
})

/** Log lines of every webhook run in this file, to check the key never appears. */
const allLogs: Array<string> = []

/**
 * Runs `use` with a UsageWebhook configured by `env`, then releases it (which flushes), and
 * returns the JSON log lines written meanwhile.
 */
const withWebhook = async (
  env: Record<string, string>,
  use: (webhook: UsageWebhook) => Promise<void> | void
): Promise<Array<Record<string, any>>> => {
  const lines: Array<string> = []
  const logger = Logger.replace(
    Logger.defaultLogger,
    makeLogger(true, (line) => {
      lines.push(line)
      allLogs.push(line)
    })
  )
  const layer = UsageWebhook.Default.pipe(
    Layer.provide(configFromEnv({ AUTHORIZATION_LOG_LEVEL: "debug", WEBHOOK_RETRY_DELAY: "10ms", ...env })),
    Layer.provide(Layer.merge(logger, Logger.minimumLogLevel(LogLevel.Debug)))
  )
  await Effect.gen(function*() {
    const webhook = yield* UsageWebhook
    yield* Effect.promise(async () => use(webhook))
  }).pipe(Effect.provide(layer), Effect.runPromise)
  return lines.map((l) => JSON.parse(l))
}

const undelivered = (logs: ReadonlyArray<Record<string, any>>) => logs.filter((l) => l.msg === "usage record not delivered")

let receiver: WebhookReceiver | undefined
afterEach(async () => {
  await receiver?.close()
  receiver = undefined
})

describe("UsageWebhook delivery", () => {
  it("POSTs the record as JSON with the key, an Idempotency-Key and a User-Agent", async () => {
    receiver = await startWebhook()
    const r = record()
    const logs = await withWebhook(
      { USER_MODEL_METRICS_WEBHOOK_URL: receiver!.url, USER_MODEL_METRICS_WEBHOOK_API_KEY: KEY },
      async (w) => {
        w.offer(r)
        await receiver!.until((got) => got.length === 1)
      }
    )
    const [got] = receiver.received
    expect(got!.record).toEqual(r)
    expect(got!.headers["content-type"]).toBe("application/json")
    expect(got!.headers.authorization).toBe(`Bearer ${KEY}`)
    expect(got!.headers["idempotency-key"]).toBe(r.id)
    expect(got!.headers["user-agent"]).toMatch(/^ollama-authentication-proxy\/\S+$/)
    expect(undelivered(logs)).toEqual([])
  })

  it("sends no Authorization header without a key", async () => {
    receiver = await startWebhook()
    await withWebhook({ USER_MODEL_METRICS_WEBHOOK_URL: receiver!.url }, async (w) => {
      w.offer(record())
      await receiver!.until((got) => got.length === 1)
    })
    expect(receiver.received[0]!.headers.authorization).toBeUndefined()
  })

  it("is disabled without a URL", async () => {
    await withWebhook({}, (w) => {
      expect(w.enabled).toBe(false)
      w.offer(record())
    })
  })

  it("retries a webhook that fails three times, then delivers the record once, same id", async () => {
    receiver = await startWebhook((n) => (n < 3 ? { status: n === 1 ? 429 : 503 } : { status: 200 }))
    const r = record()
    const logs = await withWebhook({ USER_MODEL_METRICS_WEBHOOK_URL: receiver!.url }, async (w) => {
      w.offer(r)
      await receiver!.until((got) => got.some((g) => g.accepted))
    })
    expect(receiver.received.map((g) => g.headers["idempotency-key"])).toEqual([r.id, r.id, r.id, r.id])
    expect(receiver.accepted()).toEqual([r])
    expect(logs.filter((l) => l.msg === "usage webhook attempt failed").map((l) => l.reason)).toEqual([
      "the webhook answered HTTP 503",
      "the webhook answered HTTP 429",
      "the webhook answered HTTP 503"
    ])
    expect(undelivered(logs)).toEqual([])
  })

  it("cuts a POST left unanswered for WEBHOOK_TIMEOUT (undici's headers timeout) and sends the record again", async () => {
    receiver = await startWebhook((n) => (n === 0 ? "hang" : { status: 200 }))
    const r = record()
    const started = performance.now()
    const logs = await withWebhook({ USER_MODEL_METRICS_WEBHOOK_URL: receiver!.url, WEBHOOK_TIMEOUT: "300ms" }, async (w) => {
      w.offer(r)
      await receiver!.until((got) => got.some((g) => g.accepted))
    })
    expect(performance.now() - started).toBeGreaterThanOrEqual(300)
    expect(receiver.received.map((g) => g.headers["idempotency-key"])).toEqual([r.id, r.id])
    expect(receiver.accepted()).toEqual([r])
    expect(logs.filter((l) => l.msg === "usage webhook attempt failed").map((l) => l.reason)).toEqual([
      "the webhook did not answer: UND_ERR_HEADERS_TIMEOUT: Headers Timeout Error"
    ])
    expect(undelivered(logs)).toEqual([])
  })

  it("does not retry a 4xx other than 408 and 429, and logs the whole record", async () => {
    receiver = await startWebhook(() => ({ status: 422 }))
    const r = record()
    const logs = await withWebhook({ USER_MODEL_METRICS_WEBHOOK_URL: receiver!.url }, async (w) => {
      w.offer(r)
      await receiver!.until((got) => got.length === 1)
    })
    expect(receiver.received).toHaveLength(1)
    const [line] = undelivered(logs)
    expect(line).toMatchObject({ level: "error", reason: "the webhook answered HTTP 422", record: r })
  })

  it("gives up after WEBHOOK_MAX_RETRY_TIME on a webhook that is down, and logs the record", async () => {
    const url = `http://127.0.0.1:${await freePort()}/usage`
    const r = record()
    const logs = await withWebhook({ USER_MODEL_METRICS_WEBHOOK_URL: url, WEBHOOK_MAX_RETRY_TIME: "300ms" }, (w) => {
      w.offer(r)
    })
    const [line] = undelivered(logs)
    expect(line!.record).toEqual(r)
    expect(line!.reason).toMatch(/^gave up retrying: the webhook did not answer: .*ECONNREFUSED/)
    expect(logs.filter((l) => l.msg === "usage webhook attempt failed").length).toBeGreaterThan(2)
  })

  it("keeps WEBHOOK_CONCURRENCY POSTs under way at once (4 by default), the other records queued", async () => {
    for (const [env, expected] of [[{}, 4], [{ WEBHOOK_CONCURRENCY: "8" }, 8], [{ WEBHOOK_CONCURRENCY: "1" }, 1]] as const) {
      // Each answer takes a while: every sender is busy while the next records wait.
      receiver = await startWebhook(() => ({ status: 204, delayMs: 100 }))
      const records = Array.from({ length: 12 }, (_, i) => record(i))
      const logs = await withWebhook({ USER_MODEL_METRICS_WEBHOOK_URL: receiver!.url, ...env }, async (w) => {
        for (const r of records) w.offer(r)
        await receiver!.until((got) => got.filter((g) => g.accepted).length === records.length)
      })
      expect(receiver.maxInFlight()).toBe(expected)
      expect(receiver.accepted().map((r) => r.id).sort()).toEqual(records.map((r) => r.id).sort())
      expect(undelivered(logs)).toEqual([])
      await receiver.close()
      receiver = undefined
    }
  })

  it("logs a record the full queue cannot take, and delivers the rest", async () => {
    // The first four requests keep the four senders busy while the queue (2) fills up.
    receiver = await startWebhook((n) => ({ status: 204, delayMs: n < 4 ? 300 : 0 }))
    const records = Array.from({ length: 7 }, (_, i) => record(i))
    const logs = await withWebhook({ USER_MODEL_METRICS_WEBHOOK_URL: receiver!.url, WEBHOOK_QUEUE_SIZE: "2" }, async (w) => {
      // One at a time, so each is taken by a sender, not left in the small queue.
      for (const [i, r] of records.slice(0, 4).entries()) {
        w.offer(r)
        await receiver!.until((got) => got.length === i + 1)
      }
      for (const r of records.slice(4)) w.offer(r)
    })
    const lost = undelivered(logs)
    expect(lost).toHaveLength(1)
    expect(lost[0]!.reason).toBe("queue full (2 records)")
    expect(lost[0]!.record).toEqual(records[6])
    expect(receiver.accepted().map((r) => r.request_id).sort()).toEqual(["req-0", "req-1", "req-2", "req-3", "req-4", "req-5"])
  })
})

describe("UsageWebhook queue bound", () => {
  it("says once, at error level, when the queue is nearly full", async () => {
    receiver = await startWebhook(() => ({ status: 204, delayMs: 300 }))
    const records = Array.from({ length: 14 }, (_, i) => record(i))
    const logs = await withWebhook(
      { USER_MODEL_METRICS_WEBHOOK_URL: receiver!.url, WEBHOOK_QUEUE_SIZE: "10", WEBHOOK_CONCURRENCY: "1" },
      (w) => {
        for (const r of records) w.offer(r)
      }
    )
    expect(logs.filter((l) => l.msg.startsWith("usage queue nearly full"))).toMatchObject([{ level: "error", queued: 9, capacity: 10 }])
    expect(undelivered(logs).map((l) => l.reason)).toEqual(Array(3).fill("queue full (10 records)"))
  })
})

describe("UsageWebhook shutdown", () => {
  it("delivers every queued record before its scope closes", async () => {
    receiver = await startWebhook(() => ({ status: 200, delayMs: 20 }))
    const records = Array.from({ length: 20 }, (_, i) => record(i))
    const logs = await withWebhook({ USER_MODEL_METRICS_WEBHOOK_URL: receiver!.url }, (w) => {
      for (const r of records) w.offer(r)
    })
    expect(receiver.accepted().map((r) => r.id).sort()).toEqual(records.map((r) => r.id).sort())
    expect(logs.some((l) => l.msg === "delivering queued usage records" && l.records === 20)).toBe(true)
    expect(undelivered(logs)).toEqual([])
  })

  it("logs every record still undelivered at the shutdown deadline", async () => {
    receiver = await startWebhook(() => "hang")
    const records = Array.from({ length: 6 }, (_, i) => record(i))
    const started = Date.now()
    const logs = await withWebhook({ USER_MODEL_METRICS_WEBHOOK_URL: receiver!.url, SHUTDOWN_TIMEOUT: "300ms" }, (w) => {
      for (const r of records) w.offer(r)
    })
    expect(Date.now() - started).toBeLessThan(3000)
    const lost = undelivered(logs)
    // Four POSTs were on the wire (the webhook may have them: replays deduplicate on id), two waited.
    expect(lost.map((l) => l.reason).sort()).toEqual([
      ...Array(2).fill("shutdown deadline reached"),
      ...Array(4).fill("shutdown deadline reached while the webhook had not answered")
    ])
    expect(lost.map((l) => l.record.id).sort()).toEqual(records.map((r) => r.id).sort())
  })

  it("logs a record still being retried at the shutdown deadline once", async () => {
    receiver = await startWebhook(() => ({ status: 503 }))
    const records = [record(0), record(1)]
    const logs = await withWebhook({ USER_MODEL_METRICS_WEBHOOK_URL: receiver!.url, SHUTDOWN_TIMEOUT: "300ms" }, async (w) => {
      for (const r of records) w.offer(r)
      await receiver!.until((got) => got.length >= 6)
    })
    const lost = undelivered(logs)
    expect(lost).toHaveLength(2)
    for (const line of lost) expect(line.reason).toMatch(/^shutdown deadline reached/)
    expect(lost.map((l) => l.record.id).sort()).toEqual(records.map((r) => r.id).sort())
  })

  it("does not log a record the webhook acknowledged as the deadline struck", async () => {
    // The status line says 200 at once; the rest of the answer never comes. The record is
    // delivered: the deadline that cuts the unfinished response must not log it as lost.
    receiver = await startWebhook((n) => n < 2 ? { status: 200, holdBody: true } : "hang")
    const records = [record(0), record(1), record(2)]
    const logs = await withWebhook(
      { USER_MODEL_METRICS_WEBHOOK_URL: receiver!.url, SHUTDOWN_TIMEOUT: "300ms", WEBHOOK_CONCURRENCY: "3" },
      async (w) => {
        for (const r of records) w.offer(r)
        await receiver!.until((got) => got.length === 3)
      }
    )
    const lost = undelivered(logs)
    expect(lost.map((l) => [l.record.id, l.reason])).toEqual([[
      records[2]!.id,
      "shutdown deadline reached while the webhook had not answered"
    ]])
  })

  it("never writes the webhook key to the log", () => {
    expect(allLogs.length).toBeGreaterThan(10)
    expect(allLogs.join("\n")).not.toContain(KEY)
  })
})

describe("UsageWebhook batches (USER_MODEL_METRICS_WEBHOOK_BATCH_SIZE)", () => {
  const batched = (env: Record<string, string> = {}) => ({
    USER_MODEL_METRICS_WEBHOOK_URL: receiver!.url,
    USER_MODEL_METRICS_WEBHOOK_BATCH_SIZE: "5",
    ...env
  })

  it("POSTs full batches as JSON arrays at once, the rest after BATCH_WAIT, each record whole", async () => {
    receiver = await startWebhook()
    const records = Array.from({ length: 12 }, (_, i) => record(i))
    let offeredAt = 0
    const logs = await withWebhook(batched({ USER_MODEL_METRICS_WEBHOOK_BATCH_WAIT: "400ms" }), async (w) => {
      offeredAt = performance.now()
      for (const r of records) w.offer(r)
      await receiver!.until((got) => got.length === 2)
      expect(performance.now() - offeredAt).toBeLessThan(300)
      await receiver!.until((got) => got.length === 3)
      expect(performance.now() - offeredAt).toBeGreaterThanOrEqual(390)
    })
    expect(receiver.received.map((g) => g.records.length)).toEqual([5, 5, 2])
    for (const got of receiver.received) {
      expect(Array.isArray(JSON.parse(got.body))).toBe(true)
      expect(got.headers["content-type"]).toBe("application/json")
      // The key names the batch; every record keeps its own id for deduplication.
      expect(got.headers["idempotency-key"]).toMatch(/^[0-9a-f-]{36}$/)
      expect(records.map((r) => r.id)).not.toContain(got.headers["idempotency-key"])
    }
    expect(new Set(receiver.received.map((g) => g.headers["idempotency-key"])).size).toBe(3)
    expect(receiver.accepted()).toEqual(records)
    expect(undelivered(logs)).toEqual([])
  })

  it("retries a batch with the same key and body", async () => {
    receiver = await startWebhook((n) => (n === 0 ? { status: 503 } : { status: 200 }))
    const records = Array.from({ length: 5 }, (_, i) => record(i))
    const logs = await withWebhook(batched(), async (w) => {
      for (const r of records) w.offer(r)
      await receiver!.until((got) => got.some((g) => g.accepted))
    })
    const [first, second] = receiver.received
    expect(second!.headers["idempotency-key"]).toBe(first!.headers["idempotency-key"])
    expect(second!.body).toBe(first!.body)
    expect(receiver.accepted()).toEqual(records)
    expect(logs.filter((l) => l.msg === "usage webhook attempt failed")).toMatchObject([
      { batch_id: first!.headers["idempotency-key"], records: 5, reason: "the webhook answered HTTP 503" }
    ])
    expect(undelivered(logs)).toEqual([])
  })

  it("logs every record of a refused batch, one line each, replayable", async () => {
    receiver = await startWebhook(() => ({ status: 422 }))
    const records = Array.from({ length: 3 }, (_, i) => record(i))
    const logs = await withWebhook(batched({ USER_MODEL_METRICS_WEBHOOK_BATCH_WAIT: "50ms" }), async (w) => {
      for (const r of records) w.offer(r)
      await receiver!.until((got) => got.length === 1)
    })
    const lost = undelivered(logs)
    expect(lost.map((l) => l.record)).toEqual(records)
    for (const line of lost) expect(line).toMatchObject({ level: "error", reason: "the webhook answered HTTP 422" })
  })

  it("sends the gathering batch at shutdown without waiting, and delivers every queued one", async () => {
    receiver = await startWebhook(() => ({ status: 200, delayMs: 20 }))
    const records = Array.from({ length: 23 }, (_, i) => record(i))
    const started = performance.now()
    const logs = await withWebhook(batched({ USER_MODEL_METRICS_WEBHOOK_BATCH_WAIT: "1m", WEBHOOK_CONCURRENCY: "1" }), (w) => {
      for (const r of records) w.offer(r)
    })
    expect(performance.now() - started).toBeLessThan(5000)
    expect(receiver.received.map((g) => g.records.length)).toEqual([5, 5, 5, 5, 3])
    expect(receiver.accepted()).toEqual(records)
    expect(logs.some((l) => l.msg === "delivering queued usage records" && l.records === 23)).toBe(true)
    expect(undelivered(logs)).toEqual([])
  })

  it("logs each record of the batches still undelivered at the shutdown deadline, once", async () => {
    receiver = await startWebhook(() => "hang")
    const records = Array.from({ length: 7 }, (_, i) => record(i))
    const logs = await withWebhook(batched({ SHUTDOWN_TIMEOUT: "300ms", WEBHOOK_CONCURRENCY: "1" }), (w) => {
      for (const r of records) w.offer(r)
    })
    const lost = undelivered(logs)
    expect(lost.map((l) => l.record.id).sort()).toEqual(records.map((r) => r.id).sort())
    // The first batch was on the wire; the second waited for the one sender.
    expect(lost.map((l) => l.reason).sort()).toEqual([
      ...Array(2).fill("shutdown deadline reached"),
      ...Array(5).fill("shutdown deadline reached while the webhook had not answered")
    ])
  })

  it("counts WEBHOOK_QUEUE_SIZE in records, and logs each one the full queue cannot take", async () => {
    receiver = await startWebhook(() => ({ status: 204, delayMs: 300 }))
    const records = Array.from({ length: 9 }, (_, i) => record(i))
    const logs = await withWebhook(
      batched({ USER_MODEL_METRICS_WEBHOOK_BATCH_SIZE: "2", WEBHOOK_QUEUE_SIZE: "4", WEBHOOK_CONCURRENCY: "1" }),
      (w) => {
        for (const r of records) w.offer(r)
      }
    )
    // The first batch of two goes at once; four records then fill the queue; three are refused.
    const lost = undelivered(logs)
    expect(lost.map((l) => l.record)).toEqual(records.slice(6))
    for (const line of lost) expect(line.reason).toBe("queue full (4 records)")
    expect(receiver.accepted()).toEqual(records.slice(0, 6))
  })

  it("refuses a batch size the queue cannot hold, naming the variable", async () => {
    const env = { USER_MODEL_METRICS_WEBHOOK_BATCH_SIZE: "200", WEBHOOK_QUEUE_SIZE: "100" }
    const error = await Effect.runPromise(Effect.flip(WebhookConfig.pipe(Effect.provide(configFromEnv(env)))))
    expect(error.message).toBe(
      "invalid configuration: USER_MODEL_METRICS_WEBHOOK_BATCH_SIZE: 200 is more than WEBHOOK_QUEUE_SIZE (100): a batch could never fill"
    )
    for (const [variable, value] of [["USER_MODEL_METRICS_WEBHOOK_BATCH_SIZE", "0"], ["USER_MODEL_METRICS_WEBHOOK_BATCH_WAIT", "soon"]]) {
      const bad = await Effect.runPromise(Effect.flip(WebhookConfig.pipe(Effect.provide(configFromEnv({ [variable!]: value! })))))
      expect(bad.message).toContain(variable)
    }
  })
})

describe("retrySchedule", () => {
  /** The delays before each retry, for a run of failures (the final step, which stops, is dropped). */
  const delays = (errors: ReadonlyArray<WebhookRejected | WebhookUnreachable>, maxRetryTime = Duration.minutes(10)) =>
    Schedule.run(Schedule.delays(retrySchedule(Duration.seconds(1), maxRetryTime)), 0, errors).pipe(
      Effect.map((chunk) => Chunk.toArray(chunk).map(Duration.toMillis).slice(0, -1))
    )
  const down = Array.from({ length: 100 }, () => new WebhookUnreachable({ reason: "down" }))

  it.effect("starts at the first delay, doubles with jitter, caps at a minute, stops at the deadline", () =>
    Effect.gen(function*() {
      const gaps = yield* delays(down)
      const doubling = [1000, 2000, 4000, 8000, 16000, 32000]
      doubling.forEach((expected, i) => {
        expect(gaps[i]).toBeGreaterThanOrEqual(expected * 0.8)
        expect(gaps[i]).toBeLessThanOrEqual(expected * 1.2)
      })
      for (const gap of gaps.slice(doubling.length, -1)) {
        expect(gap).toBeGreaterThanOrEqual(48_000)
        expect(gap).toBeLessThanOrEqual(72_000)
      }
      // The last attempt is made at the deadline, not after it, and is the last.
      expect(gaps.reduce((a, b) => a + b, 0)).toBeCloseTo(600_000, 3)
      expect(gaps.length).toBeLessThan(20)
    }))

  it.effect("waits as long as Retry-After says", () =>
    Effect.gen(function*() {
      const busy = Array.from({ length: 10 }, () => new WebhookRejected({ status: 503, retryAfter: Duration.seconds(30) }))
      expect(yield* delays(busy, Duration.seconds(100))).toEqual([30_000, 30_000, 30_000, 10_000])
    }))

  it.effect("does not retry a refused record", () =>
    Effect.gen(function*() {
      expect(yield* delays([new WebhookRejected({ status: 400, retryAfter: undefined })])).toEqual([])
      // A 408 is retried; the 400 that answers the retry is not.
      const timeout = new WebhookRejected({ status: 408, retryAfter: undefined })
      expect(yield* delays([timeout, new WebhookRejected({ status: 400, retryAfter: undefined })])).toHaveLength(1)
    }))

  it("reads Retry-After as seconds or as a date", () => {
    const now = Date.parse("2026-08-20T10:00:00Z")
    expect(parseRetryAfter("120", now)).toEqual(Duration.seconds(120))
    expect(parseRetryAfter("Thu, 20 Aug 2026 10:00:30 GMT", now)).toEqual(Duration.millis(30_000))
    expect(parseRetryAfter("soon", now)).toBeUndefined()
    expect(parseRetryAfter(undefined, now)).toBeUndefined()
  })
})

describe("UsageWebhook signatures (USER_MODEL_METRICS_WEBHOOK_SECRET)", () => {
  const secret = () => `whsec_${randomBytes(32).toString("base64")}`

  it("signs every delivery, retries included, once per secret: each verifies with standardwebhooks", async () => {
    receiver = await startWebhook((n) => (n % 2 === 0 ? { status: 503 } : { status: 200 }))
    const [oldSecret, newSecret] = [secret(), secret()]
    const records = [record(0), record(1), record(2)]
    const logs = await withWebhook(
      {
        USER_MODEL_METRICS_WEBHOOK_URL: receiver!.url,
        USER_MODEL_METRICS_WEBHOOK_SECRET: ` ${oldSecret}  ${newSecret} `,
        WEBHOOK_CONCURRENCY: "1"
      },
      async (w) => {
        for (const r of records) w.offer(r)
        await receiver!.until((got) => got.filter((g) => g.accepted).length === 3)
      }
    )
    expect(receiver.received).toHaveLength(6)
    for (const got of receiver.received) {
      const headers = got.headers as Record<string, string>
      expect(headers["webhook-signature"]!.split(" ")).toHaveLength(2)
      // Each secret alone verifies: a receiver holding either one during a rotation accepts it.
      for (const s of [oldSecret, newSecret]) expect(new Webhook(s).verify(got.body, headers)).toEqual(got.record)
      expect(() => new Webhook(secret()).verify(got.body, headers)).toThrow()
      expect(() => new Webhook(oldSecret).verify(got.body.replace("llama3.2", "llama3.3"), headers)).toThrow()
      expect(headers["webhook-id"]).toBe(got.record.id)
      expect(Math.abs(Number(headers["webhook-timestamp"]) - Date.now() / 1000)).toBeLessThan(30)
    }
    // A retry carries the same webhook-id: the receiver's deduplication key.
    expect(receiver.received.map((g) => g.headers["webhook-id"])).toEqual(records.flatMap((r) => [r.id, r.id]))
    expect(allLogs.join("\n")).not.toContain(oldSecret.slice(6))
    expect(undelivered(logs)).toEqual([])
  })

  it("sends no signature without a secret, and refuses a secret that is not whsec_ base64, naming the variable only", async () => {
    receiver = await startWebhook()
    await withWebhook({ USER_MODEL_METRICS_WEBHOOK_URL: receiver!.url }, async (w) => {
      w.offer(record())
      await receiver!.until((got) => got.length === 1)
    })
    expect(receiver.received[0]!.headers["webhook-signature"]).toBeUndefined()
    expect(receiver.received[0]!.headers["webhook-id"]).toBe(receiver.received[0]!.record.id)
    for (const bad of ["hunter2-not-a-secret", "whsec_!!!not base64"]) {
      const error = await Effect.runPromise(
        Effect.flip(WebhookConfig.pipe(Effect.provide(configFromEnv({ USER_MODEL_METRICS_WEBHOOK_SECRET: bad }))))
      )
      expect(error.message).toMatch(/^invalid configuration: USER_MODEL_METRICS_WEBHOOK_SECRET: /)
      expect(error.message).not.toContain("hunter2")
      expect(error.message).not.toContain("!!!")
    }
  })

  it("a 410 disables delivery to the URL, loudly, and leaves the records in the spool", async () => {
    receiver = await startWebhook(() => ({ status: 410 }))
    const dir = mkdtempSync(join(tmpdir(), "spool-"))
    const records = Array.from({ length: 5 }, (_, i) => record(i))
    const logs = await withWebhook(
      { USER_MODEL_METRICS_WEBHOOK_URL: receiver!.url, USAGE_SPOOL_DIR: dir, WEBHOOK_CONCURRENCY: "1" },
      async (w) => {
        w.offer(records[0]!)
        await receiver!.until((got) => got.length === 1)
        for (const r of records.slice(1)) w.offer(r)
      }
    )
    // One POST learnt that the URL is gone; nothing more was sent to it.
    expect(receiver.received).toHaveLength(1)
    expect(logs.filter((l) => l.level === "error" && /410 Gone/.test(l.msg))).toHaveLength(1)
    expect(undelivered(logs)).toEqual([])
    const [metrics] = await Effect.runPromise(Metric.value(webhookDisabled).pipe(Effect.map((s) => [s.value])))
    expect(metrics).toBe(1)
    // Every record is still in the spool, for the next start once the URL is fixed.
    const left = readdirSync(dir).flatMap((name) => parseSegment(readFileSync(join(dir, name), "utf8")).records.map((r) => r.id))
    expect(left.sort()).toEqual(records.map((r) => r.id).sort())
  })
})
