/**
 * Fair shares of Ollama's slots (src/schedule/), end to end: the proxy on a real port in front of
 * the fake Ollama with as many parallel slots, the keys in a key file, raw node:http clients. What
 * is asserted is what clients see (answers, headers, waits) and what Ollama saw (which requests,
 * in which order, never more at once than its slots).
 */
import { randomUUID } from "node:crypto"
import { mkdtempSync, writeFileSync } from "node:fs"
import { request as httpRequest } from "node:http"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { ndjson, open, raw } from "./support/http.js"
import { scrape } from "./support/metrics.js"
import { type Stack, startStack } from "./support/stack.js"

const KEYS = {
  heavy: "sk-heavy-5e1f0a",
  light: "sk-light-93c2d7",
  a3: "sk-weight3-0b7e44",
  b1: "sk-weight1-c6a9f1",
  other: "sk-other-71d0b3",
  ops: "sk-ops-2f8e6c"
}

const keyFile = () => {
  const dir = mkdtempSync(join(tmpdir(), "schedule-"))
  const path = join(dir, "keys.yaml")
  writeFileSync(
    path,
    `
keys:
  - { name: heavy, key: ${KEYS.heavy} }
  - { name: light, key: ${KEYS.light} }
  - { name: a3, key: ${KEYS.a3}, weight: 3 }
  - { name: b1, key: ${KEYS.b1}, weight: 1 }
  - { name: other, key: ${KEYS.other} }
  - { name: ops, key: ${KEYS.ops}, scopes: [all] }
`
  )
  return path
}

const bearer = (key: string) => ({ authorization: `Bearer ${key}` })
const chat = JSON.stringify({ model: "llama3.2", messages: [{ role: "user", content: "Hi" }], stream: true })

/** Waits for a condition that the proxy's or Ollama's state will reach. */
const until = async (condition: () => boolean | Promise<boolean>, timeoutMs = 10_000) => {
  const deadline = Date.now() + timeoutMs
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error("timed out waiting for a condition")
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}

interface Streamed {
  readonly id: string
  readonly status: number
  readonly waitedMs: number
  /** From sending the request to the first byte of the answer's body. */
  readonly firstTokenMs: number
  readonly evalCount: number
  readonly complete: boolean
}

/** One streamed chat, read to its end. */
const streamChat = (url: string, key: string): Promise<Streamed> =>
  new Promise((resolve, reject) => {
    const id = randomUUID()
    const sent = performance.now()
    const req = httpRequest(`${url}/api/chat`, { method: "POST", headers: { ...bearer(key), "x-request-id": id } }, (res) => {
      let firstTokenMs = -1
      let body = ""
      res.setEncoding("utf8")
      res.on("data", (chunk: string) => {
        if (firstTokenMs < 0) firstTokenMs = performance.now() - sent
        body += chunk
      })
      res.on("error", reject)
      res.on("end", () => {
        const lines = res.statusCode === 200 ? ndjson(body) : []
        const done = lines.at(-1)
        resolve({
          id,
          status: res.statusCode!,
          waitedMs: Number(res.headers["x-queue-wait-ms"]),
          firstTokenMs,
          evalCount: done?.done === true ? Number(done.eval_count) : 0,
          complete: res.complete && done?.done === true
        })
      })
    })
    req.on("error", reject)
    req.end(chat)
  })

const median = (values: ReadonlyArray<number>) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!

describe("fair shares of two slots", () => {
  let stack: Stack

  beforeAll(async () => {
    stack = await startStack({ AUTHORIZATION_KEYS_FILE: keyFile(), QUEUE_SLOTS: "2" }, { numParallel: 2 })
  })
  afterAll(() => stack?.close())

  const waiting = async () => (await scrape(stack.proxy.url, bearer(KEYS.ops))).value("ollama_proxy_queue_waiting")
  const seenByOllama = (id: string) => stack.fake.requests.some((r) => r.headers["x-request-id"] === id)

  it("a light key's request starts at the next free slot, ahead of a heavy key's 16 waiting streams; nothing is cut", async () => {
    const { fake, proxy } = stack
    // About 200 ms a request: 16 heavy streams keep 14 waiting in the proxy for the two slots.
    fake.set({ tokens: 8, tokenDelayMs: 25 })
    fake.resetSlots()
    let stop = false
    const heavy: Array<Streamed> = []
    const loop = async () => {
      while (!stop) heavy.push(await streamChat(proxy.url, KEYS.heavy))
    }
    const loops = Array.from({ length: 16 }, loop)
    await until(async () => (await scrape(proxy.url, bearer(KEYS.ops))).value("ollama_proxy_queue_waiting") === 14)

    // The light key asks again a request's time after each answer: less than its half of the slots.
    const light: Array<Streamed & { readonly heavyAhead: number }> = []
    for (let i = 0; i < 8; i++) {
      const before = fake.requests.length
      const answer = await streamChat(proxy.url, KEYS.light)
      const at = fake.requests.findIndex((r) => r.headers["x-request-id"] === answer.id)
      light.push({ ...answer, heavyAhead: at - before })
      await new Promise((resolve) => setTimeout(resolve, 200))
    }
    stop = true
    await Promise.all(loops)

    // Ollama took the light request next, or after one heavy one dispatched as it arrived; first
    // come, first served it would have waited for the 14 before it.
    for (const answer of light) expect(answer.heavyAhead).toBeLessThanOrEqual(2)
    const heavyWaits = heavy.map((a) => a.waitedMs)
    expect(Math.max(...light.map((a) => a.waitedMs))).toBeLessThan(median(heavyWaits) / 3)
    for (const answer of [...heavy, ...light]) expect(answer).toMatchObject({ status: 200, complete: true, evalCount: 8 })
    const slots = fake.slots()
    expect(slots.peak).toBe(2)
    expect(slots.refused).toBe(0)

    // The wait each client was told is the one its usage record carries.
    const last = light.at(-1)!
    await stack.webhook.until((received) => received.some((r) => r.record.request_id === last.id))
    const record = stack.webhook.received.find((r) => r.record.request_id === last.id)!.record
    expect(record.queue_wait_ms).toBe(last.waitedMs)
  }, 60_000)

  it("a client that hangs up while it waits leaves the queue at once, and Ollama never sees its request", async () => {
    const { fake, proxy } = stack
    fake.set({ tokens: 100_000, tokenDelayMs: 20 })
    const held = await Promise.all(
      [0, 1].map(() => open(`${proxy.url}/api/chat`, { method: "POST", headers: bearer(KEYS.heavy), body: chat }))
    )
    for (const { res } of held) res.resume()
    const id = randomUUID()
    const left = httpRequest(`${proxy.url}/api/chat`, { method: "POST", headers: { ...bearer(KEYS.light), "x-request-id": id } })
    left.on("error", () => {})
    left.end(chat)
    await until(async () => (await waiting()) === 1)
    left.destroy()
    await until(async () => (await waiting()) === 0)
    expect((await scrape(proxy.url, bearer(KEYS.ops))).value("ollama_proxy_queue_wait_count", { outcome: "left" })).toBe(1)
    expect(fake.slots().waiting).toBe(0)

    // The next request waits for the slot, not for the one that left.
    const next = streamChat(proxy.url, KEYS.light)
    await until(async () => (await waiting()) === 1)
    fake.set({ tokens: 5, tokenDelayMs: 0 })
    for (const { req } of held) req.destroy()
    const answer = await next
    expect(answer).toMatchObject({ status: 200, complete: true })
    expect(answer.waitedMs).toBeGreaterThan(0)
    expect(seenByOllama(id)).toBe(false)
    expect(seenByOllama(answer.id)).toBe(true)
  }, 30_000)

  it("weights 3:1 give two saturating keys 3:1 of the tokens, within 10%", async () => {
    const { fake, proxy } = stack
    fake.set({ tokens: 4, tokenDelayMs: 10 })
    const tokens = { a3: 0, b1: 0 }
    let done = 0
    const loop = async (name: "a3" | "b1") => {
      while (done < 160) {
        const answer = await streamChat(proxy.url, KEYS[name])
        expect(answer.complete).toBe(true)
        // Counted while both keys still keep requests waiting.
        if (done++ < 160) tokens[name] += answer.evalCount
      }
    }
    await Promise.all([...Array.from({ length: 6 }, () => loop("a3")), ...Array.from({ length: 6 }, () => loop("b1"))])
    const ratio = tokens.a3 / tokens.b1
    expect(ratio).toBeGreaterThan(3 * 0.9)
    expect(ratio).toBeLessThan(3 * 1.1)
    expect(fake.slots().peak).toBe(2)
  }, 60_000)
})

describe("bounded waiting for one slot", () => {
  let stack: Stack

  beforeAll(async () => {
    stack = await startStack({
      AUTHORIZATION_KEYS_FILE: keyFile(),
      QUEUE_SLOTS: "1",
      QUEUE_MAX_PER_KEY: "2",
      QUEUE_MAX: "3",
      QUEUE_MAX_WAIT: "2s",
      METRICS_PUBLIC: "true"
    }, { numParallel: 1 })
    // The first scrape loads the exporter: not while a request's 2 s of waiting run.
    await scrape(stack.proxy.url, bearer(KEYS.ops))
  })
  afterAll(() => stack?.close())

  const waiting = async () => (await scrape(stack.proxy.url, bearer(KEYS.ops))).value("ollama_proxy_queue_waiting")
  const seenByOllama = (id: string) => stack.fake.requests.some((r) => r.headers["x-request-id"] === id)
  /** A stream that holds the one slot until its client hangs up. */
  const holdSlot = async () => {
    stack.fake.set({ tokens: 100_000, tokenDelayMs: 20 })
    const held = await open(`${stack.proxy.url}/api/chat`, { method: "POST", headers: bearer(KEYS.heavy), body: chat })
    expect(held.res.statusCode).toBe(200)
    held.res.resume()
    return held
  }

  it(
    "refuses past a key's queue (429) and the worker's (503) at once, and past the longest wait, each with Retry-After; reads never wait",
    async () => {
      const { fake, proxy } = stack
      const held = await holdSlot()
      const post = (key: string, path = "/api/chat", body = chat) => {
        const id = randomUUID()
        return { id, answer: raw(`${proxy.url}${path}`, { method: "POST", headers: { ...bearer(key), "x-request-id": id }, body }) }
      }
      const queued = [post(KEYS.heavy), post(KEYS.heavy)]
      await until(async () => (await waiting()) === 2)

      const keyFull = post(
        KEYS.heavy,
        "/v1/chat/completions",
        JSON.stringify({ model: "llama3.2", messages: [{ role: "user", content: "Hi" }] })
      )
      const refused = await keyFull.answer
      expect(refused.status).toBe(429)
      expect(JSON.parse(refused.text).error).toMatchObject({ type: "requests", code: "rate_limit_exceeded" })
      expect(Number(refused.headers["retry-after"])).toBeGreaterThanOrEqual(1)
      expect(refused.headers["x-queue-position"]).toBe("3")

      const lightQueued = post(KEYS.light)
      await until(async () => (await waiting()) === 3)
      const workerFull = post(
        KEYS.other,
        "/v1/messages",
        JSON.stringify({ model: "llama3.2", max_tokens: 10, messages: [{ role: "user", content: "Hi" }] })
      )
      const busy = await workerFull.answer
      expect(busy.status).toBe(503)
      expect(JSON.parse(busy.text)).toMatchObject({ type: "error", error: { type: "api_error" } })
      expect(Number(busy.headers["retry-after"])).toBeGreaterThanOrEqual(1)

      // Reads, model information and the health check go straight on while inference waits.
      expect((await raw(`${proxy.url}/api/tags`, { headers: bearer(KEYS.light) })).status).toBe(200)
      expect(
        (await raw(`${proxy.url}/api/show`, { method: "POST", headers: bearer(KEYS.light), body: JSON.stringify({ model: "llama3.2" }) }))
          .status
      )
        .toBe(200)
      expect((await fetch(`${proxy.healthUrl}/ping`)).status).toBe(200)

      // Per key for the metrics scope only; the total for everyone.
      const scraped = await scrape(proxy.url, bearer(KEYS.ops))
      expect(scraped.value("ollama_proxy_queue_depth", { api_key_name: "heavy" })).toBe(2)
      expect(scraped.value("ollama_proxy_queue_depth", { api_key_name: "light" })).toBe(1)
      expect(scraped.value("ollama_proxy_slots_busy")).toBe(1)
      expect(scraped.value("ollama_proxy_queue_refusals_total", { reason: "key_queue_full" })).toBe(1)
      const open_ = await scrape(proxy.url)
      expect(open_.text).not.toContain("ollama_proxy_queue_depth{")
      expect(open_.value("ollama_proxy_queue_waiting")).toBe(3)

      // QUEUE_MAX_WAIT: heavy's share is in use by its own stream (429); light had none (503).
      const [first, second] = await Promise.all(queued.map((q) => q.answer))
      for (const answer of [first!, second!]) {
        expect(answer.status).toBe(429)
        // An estimate, at most the longest wait.
        expect(["1", "2"]).toContain(answer.headers["retry-after"])
        expect(answer.headers["x-queue-position"]).toBe("1")
        expect(Number(answer.headers["x-queue-wait-ms"])).toBeGreaterThanOrEqual(2000)
        expect(JSON.parse(answer.text).error).toContain("hold its share")
      }
      const lightAnswer = await lightQueued.answer
      expect(lightAnswer.status).toBe(503)
      expect(Number(lightAnswer.headers["retry-after"])).toBeGreaterThanOrEqual(1)
      expect(JSON.parse(lightAnswer.text).error).toContain("the worker is busy")
      for (const { id } of [...queued, keyFull, lightQueued, workerFull]) expect(seenByOllama(id)).toBe(false)

      held.req.destroy()
      await until(async () => (await scrape(proxy.url, bearer(KEYS.ops))).value("ollama_proxy_slots_busy") === 0)
      fake.set({ tokens: 5, tokenDelayMs: 0 })
      const after = await raw(`${proxy.url}/api/chat`, { method: "POST", headers: bearer(KEYS.light), body: chat })
      expect(after.status).toBe(200)
      expect(after.headers["x-queue-wait-ms"]).toBe("0")
    },
    30_000
  )
})
