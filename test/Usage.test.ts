/**
 * Usage metering end to end: the real proxy on a real port in front of the fake Ollama, the real
 * `ollama` and `openai` clients, and a real webhook receiver that the records are POSTed to.
 */
import { Schema } from "effect"
import { randomUUID } from "node:crypto"
import { once } from "node:events"
import { type IncomingMessage, request as httpRequest } from "node:http"
import { Ollama } from "ollama"
import OpenAI from "openai"
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest"
import { UsageRecord } from "../src/usage/Record.js"
import { startFakeOllama } from "./fake-ollama/server.mjs"
import { freePort, open, raw } from "./support/http.js"
import { type RunningProxy, spawnProxy, startProxy, untilReady } from "./support/proxy.js"
import { startWebhook, type WebhookReceiver } from "./support/webhook.js"

const KEY = "usage-test-key-5f1e"
const WEBHOOK_KEY = "webhook-secret-93ab7"
const auth = { authorization: `Bearer ${KEY}` }

type Fake = Awaited<ReturnType<typeof startFakeOllama>>
let fake: Fake
let webhook: WebhookReceiver
let proxy: RunningProxy

const FAKE_DEFAULTS = { tokens: 5, tokenDelayMs: 0, splitWrites: false, errorAfterChunks: undefined, crashAfterChunks: undefined }

const proxyEnv = (webhookUrl: string) => ({
  OLLAMA_MANAGED: "false",
  OLLAMA_HOST: fake.url,
  AUTHORIZATION_APIKEY_ALICE: KEY,
  AUTHORIZATION_DEFAULT_SCOPES: "inference,read,metrics",
  USER_MODEL_METRICS_WEBHOOK_URL: webhookUrl,
  USER_MODEL_METRICS_WEBHOOK_API_KEY: WEBHOOK_KEY,
  WEBHOOK_RETRY_DELAY: "10ms"
})

beforeAll(async () => {
  fake = await startFakeOllama()
  webhook = await startWebhook()
  proxy = await startProxy(proxyEnv(webhook.url))
  await untilReady(proxy.url)
})

afterAll(async () => {
  await proxy?.close()
  await webhook?.close()
  await fake?.close()
})

beforeEach(() => {
  fake.set(FAKE_DEFAULTS)
  webhook.answer = () => ({ status: 204 })
})

/** The record of one request, once the webhook has it. */
const recordOf = async (requestId: string) => {
  await webhook.until((got) => got.some((g) => g.accepted && g.record.request_id === requestId))
  const records = webhook.accepted().filter((r) => r.request_id === requestId)
  expect(records).toHaveLength(1)
  // The proxy sends records as it builds them: here each is held to the schema.
  Schema.decodeUnknownSync(UsageRecord, { onExcessProperty: "error" })(records[0])
  return records[0]!
}

/** The Ollama figures the fake reports for a request, as record fields. */
const nativeFigures = (path: string, body: unknown) => {
  const f = fake.expected(path, body)
  return {
    prompt_eval_count: f.promptEvalCount,
    eval_count: f.evalCount,
    prompt_eval_duration: f.promptEvalDuration,
    eval_duration: f.evalDuration,
    load_duration: f.loadDuration,
    total_duration: f.totalDuration
  }
}

const NO_DURATIONS = { total_duration: null, load_duration: null, prompt_eval_duration: null, eval_duration: null }

const ollama = (requestId: string, headers: Record<string, string> = {}) =>
  new Ollama({ host: proxy.url, headers: { ...auth, "x-request-id": requestId, ...headers } })

const openai = (requestId: string, base = proxy.url) =>
  new OpenAI({ baseURL: `${base}/v1`, apiKey: KEY, defaultHeaders: { "x-request-id": requestId }, maxRetries: 0 })

/** A raw POST of a JSON body; the whole answer. */
const post = (url: string, body: unknown, headers: Record<string, string> = {}) =>
  raw(url, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body)
  })

describe("records for the native API, with the ollama client", () => {
  it("streamed chat: the done object's figures, the key's name, timings", async () => {
    const id = randomUUID()
    const messages = [{ role: "user", content: "Why is the sky blue?" }]
    const parts: Array<string> = []
    for await (const part of await ollama(id).chat({ model: "llama3.2", messages, stream: true })) parts.push(part.message.content)
    expect(parts.join("")).toBe(fake.expected("/api/chat", { model: "llama3.2", messages }).content)
    const record = await recordOf(id)
    expect(record).toMatchObject({
      request_id: id,
      endpoint: "/api/chat",
      model: "llama3.2",
      api_key_name: "alice",
      status: 200,
      outcome: "completed",
      stream: true,
      done_reason: "stop",
      ...nativeFigures("/api/chat", { model: "llama3.2", messages })
    })
    expect(record.id).toMatch(/^[0-9a-f-]{36}$/)
    expect(record.created_at).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$/)
    expect(record.time_to_first_chunk_ms).toBeGreaterThan(0)
    expect(record.duration_ms).toBeGreaterThanOrEqual(record.time_to_first_chunk_ms as number)
  })

  it("chat with stream:false, generate split at odd byte offsets, and a length stop", async () => {
    const chatId = randomUUID()
    const messages = [{ role: "user", content: "Hi" }]
    await ollama(chatId).chat({ model: "llama3.2", messages, stream: false })
    expect(await recordOf(chatId)).toMatchObject({
      stream: false,
      outcome: "completed",
      ...nativeFigures("/api/chat", { model: "llama3.2", messages })
    })

    fake.set({ splitWrites: true, tokens: 12 })
    const genId = randomUUID()
    const body = { model: "llama3.2", prompt: "Count to twelve", options: { num_predict: 7 } }
    for await (const _ of await ollama(genId).generate({ ...body, stream: true })) void _
    expect(await recordOf(genId)).toMatchObject({
      endpoint: "/api/generate",
      stream: true,
      done_reason: "length",
      ...nativeFigures("/api/generate", body)
    })
    expect(fake.expected("/api/generate", body).evalCount).toBe(7)
  })

  it("embeddings: /api/embed with figures, legacy /api/embeddings with the model from the request", async () => {
    const embedId = randomUUID()
    await ollama(embedId).embed({ model: "nomic-embed-text", input: ["one", "two three"] })
    const f = fake.expected("/api/embed", { model: "nomic-embed-text", input: ["one", "two three"] })
    expect(await recordOf(embedId)).toMatchObject({
      endpoint: "/api/embed",
      model: "nomic-embed-text",
      stream: false,
      prompt_eval_count: f.promptEvalCount,
      eval_count: 0,
      done_reason: null
    })

    const legacyId = randomUUID()
    await ollama(legacyId).embeddings({ model: "nomic-embed-text", prompt: "one" })
    expect(await recordOf(legacyId)).toMatchObject({
      endpoint: "/api/embeddings",
      model: "nomic-embed-text",
      status: 200,
      // Ollama answers {"embedding":[...]} without counts: the proxy estimates the prompt's ("one": 3 bytes, 1 token).
      prompt_eval_count: 1,
      usage_estimated: true,
      usage_counted_by: "request_estimate"
    })
  })

  it("who: the user and chat headers, names percent-decoded", async () => {
    const id = randomUUID()
    await ollama(id, {
      "X-OpenWebUI-User-Name": "Zo%C3%AB%20M%C3%BCller",
      "X-OpenWebUI-User-Id": "8c1d-42",
      "X-OpenWebUI-User-Email": "zoe@example.com",
      "X-OpenWebUI-User-Role": "admin",
      "X-OpenWebUI-Chat-Id": "chat-7"
    }).chat({ model: "llama3.2", messages: [{ role: "user", content: "Hi" }], stream: false })
    expect(await recordOf(id)).toMatchObject({
      user_name: "Zoë Müller",
      user_id: "8c1d-42",
      user_email: "zoe@example.com",
      user_role: "admin",
      chat_id: "chat-7"
    })
  })

  it("a load or an unload is recorded, with no tokens: it changes what every tenant gets", async () => {
    const loadId = randomUUID()
    const load = await post(`${proxy.url}/api/generate`, { model: "llama3.2", keep_alive: -1 }, { ...auth, "x-request-id": loadId })
    expect(JSON.parse(load.body.toString()).done_reason).toBe("load")
    expect(await recordOf(loadId)).toMatchObject({ endpoint: "/api/generate", done_reason: "load", prompt_eval_count: 0, eval_count: 0 })
  })
})

/** The SSE body with the per-run parts (ids, timestamps) made constant, for byte comparison. */
const normalised = (body: Buffer) =>
  body.toString("utf8").replace(/"id":"(chatcmpl|cmpl)-\d+"/g, `"id":"$1-X"`).replace(/"created":\d+/g, `"created":0`)

describe("records for the OpenAI API", () => {
  it("a streamed chat without include_usage: metered, and the client's bytes are those of a direct run", async () => {
    const body = { model: "llama3.2", messages: [{ role: "user", content: "Hello there" }], stream: true }
    fake.set({ splitWrites: true })
    const direct = await post(`${fake.url}/v1/chat/completions`, body)
    const id = randomUUID()
    const proxied = await post(`${proxy.url}/v1/chat/completions`, body, { ...auth, "x-request-id": id })
    expect(proxied.status).toBe(200)
    expect(normalised(proxied.body)).toBe(normalised(direct.body))
    expect(proxied.body.toString()).not.toContain(`"usage"`)
    const forwarded = fake.requests.filter((r) => r.headers["x-request-id"] === id)[0]!
    expect(JSON.parse(forwarded.body.toString()).stream_options).toEqual({ include_usage: true })
    const u = fake.expected("/v1/chat/completions", body).usage!
    expect(await recordOf(id)).toMatchObject({
      endpoint: "/v1/chat/completions",
      model: "llama3.2",
      stream: true,
      outcome: "completed",
      done_reason: "stop",
      prompt_eval_count: u.prompt_tokens,
      eval_count: u.completion_tokens,
      ...NO_DURATIONS
    })
  })

  it("a streamed /v1/completions without include_usage: no zero usages reach the client either", async () => {
    const body = { model: "llama3.2", prompt: "Once upon a time", stream: true }
    const direct = await post(`${fake.url}/v1/completions`, body)
    const id = randomUUID()
    const proxied = await post(`${proxy.url}/v1/completions`, body, { ...auth, "x-request-id": id })
    expect(normalised(proxied.body)).toBe(normalised(direct.body))
    const u = fake.expected("/v1/completions", body).usage!
    expect(await recordOf(id)).toMatchObject({
      endpoint: "/v1/completions",
      prompt_eval_count: u.prompt_tokens,
      eval_count: u.completion_tokens
    })
  })

  it("the openai client: a stream that asks for usage gets it, one that does not gets none", async () => {
    const messages = [{ role: "user" as const, content: "Hi" }]
    const asking = randomUUID()
    const chunks: Array<OpenAI.Chat.Completions.ChatCompletionChunk> = []
    const stream = await openai(asking).chat.completions.create({
      model: "llama3.2",
      messages,
      stream: true,
      stream_options: { include_usage: true }
    })
    for await (const chunk of stream) chunks.push(chunk)
    const usage = chunks.at(-1)!.usage!
    expect(usage.completion_tokens).toBe(5)
    expect(await recordOf(asking)).toMatchObject({ prompt_eval_count: usage.prompt_tokens, eval_count: usage.completion_tokens })

    const silent = randomUUID()
    const plain: Array<OpenAI.Chat.Completions.ChatCompletionChunk> = []
    for await (const chunk of await openai(silent).chat.completions.create({ model: "llama3.2", messages, stream: true })) plain.push(chunk)
    expect(plain.every((c) => c.usage === undefined || c.usage === null)).toBe(true)
    expect(plain.map((c) => c.choices[0]?.delta.content ?? "").join("")).toBe(
      fake.expected("/v1/chat/completions", { model: "llama3.2", messages }).content
    )
    expect(await recordOf(silent)).toMatchObject({ prompt_eval_count: usage.prompt_tokens, eval_count: 5 })
  })

  it("the openai client: a single chat.completion and /v1/embeddings", async () => {
    const chatId = randomUUID()
    const completion = await openai(chatId).chat.completions.create({ model: "llama3.2", messages: [{ role: "user", content: "Hi" }] })
    expect(await recordOf(chatId)).toMatchObject({
      stream: false,
      prompt_eval_count: completion.usage!.prompt_tokens,
      eval_count: completion.usage!.completion_tokens,
      done_reason: "stop"
    })

    const embedId = randomUUID()
    const embeddings = await openai(embedId).embeddings.create({ model: "nomic-embed-text", input: ["a", "b"] })
    expect(await recordOf(embedId)).toMatchObject({
      endpoint: "/v1/embeddings",
      model: "nomic-embed-text",
      prompt_eval_count: embeddings.usage.prompt_tokens,
      eval_count: 0
    })
  })

  it("the Responses API", async () => {
    const id = randomUUID()
    const events: Array<string> = []
    for await (const event of await openai(id).responses.create({ model: "llama3.2", input: "Hi", stream: true })) events.push(event.type)
    expect(events.at(-1)).toBe("response.completed")
    expect(await recordOf(id)).toMatchObject({ endpoint: "/v1/responses", stream: true, eval_count: 5, done_reason: "completed" })
  })
})

describe("records for the Anthropic API", () => {
  it("streamed and whole /v1/messages, with x-api-key", async () => {
    const body = { model: "llama3.2", max_tokens: 100, messages: [{ role: "user", content: "Hello" }] }
    const streamId = randomUUID()
    const streamed = await post(`${proxy.url}/v1/messages`, { ...body, stream: true }, { "x-api-key": KEY, "x-request-id": streamId })
    expect(streamed.body.toString()).toContain("event: message_stop")
    const f = fake.expected("/v1/messages", body)
    expect(await recordOf(streamId)).toMatchObject({
      endpoint: "/v1/messages",
      stream: true,
      api_key_name: "alice",
      prompt_eval_count: f.promptEvalCount,
      eval_count: f.evalCount,
      done_reason: "end_turn"
    })

    const wholeId = randomUUID()
    await post(`${proxy.url}/v1/messages`, body, { "x-api-key": KEY, "x-request-id": wholeId })
    expect(await recordOf(wholeId)).toMatchObject({ stream: false, prompt_eval_count: f.promptEvalCount, eval_count: f.evalCount })
  })
})

describe("records of exchanges that end badly", () => {
  it("a client that aborts mid-stream is billed for the tokens it received, as an estimate", async () => {
    fake.set({ tokens: 50, tokenDelayMs: 50 })
    const id = randomUUID()
    const { req, res } = await open(`${proxy.url}/api/chat`, {
      method: "POST",
      headers: { ...auth, "x-request-id": id },
      body: JSON.stringify({ model: "llama3.2", messages: [{ role: "user", content: "Tell me a story" }] })
    })
    // Three token lines, one per chunk Ollama streams; then the client hangs up.
    let received = ""
    for await (const chunk of res) {
      received += String(chunk)
      if (received.split("\n").length > 3) break
    }
    req.destroy()
    const lines = received.split("\n").length - 1
    expect(await recordOf(id)).toMatchObject({
      outcome: "client_aborted",
      model: "llama3.2",
      status: 200,
      stream: true,
      eval_count: lines,
      prompt_eval_count: null,
      eval_duration: null,
      usage_estimated: true,
      usage_counted_by: "received_chunks",
      done_reason: null
    })
  })

  /** Opens a streamed request, reads until `enough` says so, then hangs up; what arrived. */
  const readThenHangUp = async (path: string, headers: Record<string, string>, body: unknown, enough: (text: string) => boolean) => {
    const { req, res } = await open(`${proxy.url}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body: JSON.stringify(body)
    })
    let received = ""
    for await (const chunk of res) {
      received += String(chunk)
      if (enough(received)) break
    }
    req.destroy()
    return received
  }

  it("an OpenAI stream the client leaves: the data events it received, as an estimate", async () => {
    fake.set({ tokens: 50, tokenDelayMs: 50 })
    const id = randomUUID()
    const events = (text: string) => text.split("\n\n").filter((e) => e.startsWith("data: {")).length
    const received = await readThenHangUp("/v1/chat/completions", { ...auth, "x-request-id": id }, {
      model: "llama3.2",
      messages: [{ role: "user", content: "Tell me a story" }],
      stream: true
    }, (text) => events(text) >= 4)
    expect(await recordOf(id)).toMatchObject({
      outcome: "client_aborted",
      eval_count: events(received),
      prompt_eval_count: null,
      usage_estimated: true,
      usage_counted_by: "received_chunks"
    })
  })

  it("an Anthropic stream the client cancels: its deltas, and message_start's input estimate flagged as one", async () => {
    fake.set({ tokens: 50, tokenDelayMs: 50 })
    const id = randomUUID()
    const body = { model: "llama3.2", max_tokens: 100, messages: [{ role: "user", content: "Tell me a long story, please" }], stream: true }
    const deltas = (text: string) => text.split("event: content_block_delta\n").length - 1
    const received = await readThenHangUp("/v1/messages", { "x-api-key": KEY, "x-request-id": id }, body, (text) => deltas(text) >= 3)
    const record = await recordOf(id)
    expect(record).toMatchObject({
      outcome: "client_aborted",
      eval_count: deltas(received),
      prompt_eval_count: fake.expected("/v1/messages", body).anthropicInputEstimate,
      usage_estimated: true,
      usage_counted_by: "received_chunks"
    })
  })

  it("a stream Ollama ends with an error line: upstream_error", async () => {
    fake.set({ errorAfterChunks: 2 })
    const id = randomUUID()
    const res = await post(`${proxy.url}/api/generate`, { model: "llama3.2", prompt: "Hi" }, { ...auth, "x-request-id": id })
    expect(res.body.toString()).toContain(`{"error":`)
    // The two tokens before the error line reached the client: billed, as an estimate.
    expect(await recordOf(id)).toMatchObject({
      outcome: "upstream_error",
      status: 200,
      model: "llama3.2",
      eval_count: 2,
      usage_estimated: true,
      usage_counted_by: "received_chunks"
    })
  })

  it("an OpenAI stream Ollama stops short: upstream_error", async () => {
    fake.set({ errorAfterChunks: 2 })
    const id = randomUUID()
    await post(`${proxy.url}/v1/chat/completions`, { model: "llama3.2", messages: [{ role: "user", content: "Hi" }], stream: true }, {
      ...auth,
      "x-request-id": id
    })
    expect(await recordOf(id)).toMatchObject({ outcome: "upstream_error", status: 200, model: "llama3.2" })
  })

  it("Ollama dying mid-stream: upstream_error", async () => {
    fake.set({ crashAfterChunks: 2 })
    const id = randomUUID()
    await post(`${proxy.url}/api/chat`, { model: "llama3.2", messages: [{ role: "user", content: "Hi" }] }, { ...auth, "x-request-id": id })
      .catch(() => undefined)
    expect(await recordOf(id)).toMatchObject({ outcome: "upstream_error", model: "llama3.2" })
  })

  it("an error answer from Ollama is recorded with its status", async () => {
    const id = randomUUID()
    const res = await post(`${proxy.url}/api/chat`, { model: "no-such-model", messages: [] }, { ...auth, "x-request-id": id })
    expect(res.status).toBe(404)
    expect(await recordOf(id)).toMatchObject({ outcome: "completed", status: 404, model: null, eval_count: null })
  })
})

describe("the webhook does not touch the responses", () => {
  it("retries a webhook that fails three times: one record, same id", async () => {
    let failures = 0
    webhook.answer = (_n, got) => (got.record.request_id === id && failures++ < 3 ? { status: 503 } : { status: 204 })
    const id = randomUUID()
    await ollama(id).chat({ model: "llama3.2", messages: [{ role: "user", content: "Hi" }], stream: false })
    const record = await recordOf(id)
    const attempts = webhook.received.filter((g) => g.record.request_id === id)
    expect(attempts).toHaveLength(4)
    expect(new Set(attempts.map((a) => a.headers["idempotency-key"]))).toEqual(new Set([record.id]))
    expect(attempts[0]!.headers.authorization).toBe(`Bearer ${WEBHOOK_KEY}`)
  })

  it("a webhook slower than the responses does not slow them", async () => {
    webhook.answer = () => ({ status: 204, delayMs: 1000 })
    const ids = Array.from({ length: 4 }, () => randomUUID())
    const started = performance.now()
    for (const id of ids) {
      for await (const _ of await ollama(id).chat({ model: "llama3.2", messages: [{ role: "user", content: "Hi" }], stream: true })) void _
    }
    // Every response was complete before the webhook had answered a single record.
    expect(performance.now() - started).toBeLessThan(900)
    expect(webhook.accepted().filter((r) => (ids as Array<unknown>).includes(r.request_id))).toEqual([])
    for (const id of ids) await recordOf(id)
  })
})

describe("request bodies the proxy reads", () => {
  it("a chunked request body is read whole and sent on with its length", async () => {
    const id = randomUUID()
    const req = httpRequest(`${proxy.url}/v1/chat/completions`, { method: "POST", headers: { ...auth, "x-request-id": id } })
    req.write(`{"model":"llama3.2","stream":true,`)
    req.end(`"messages":[{"role":"user","content":"Hi"}]}`)
    const [res] = (await once(req, "response")) as [IncomingMessage]
    res.resume()
    await once(res, "end")
    const forwarded = fake.requests.find((r) => r.headers["x-request-id"] === id)!
    expect(forwarded.headers["content-length"]).toBe(String(forwarded.body.length))
    expect(forwarded.headers["transfer-encoding"]).toBeUndefined()
    expect(await recordOf(id)).toMatchObject({ eval_count: 5 })
  })

  it("a body over MAX_REQUEST_BODY is refused on an open proxy too: its usage could not be asked for", async () => {
    const { AUTHORIZATION_APIKEY_ALICE: _, ...withoutKeys } = proxyEnv(webhook.url)
    const open = await startProxy({ ...withoutKeys, MAX_REQUEST_BODY: "1MB" })
    try {
      await untilReady(open.url)
      const id = randomUUID()
      const body = JSON.stringify({ model: "llama3.2", stream: true, messages: [{ role: "user", content: "x".repeat(1024 * 1024) }] })
      const res = await post(`${open.url}/v1/chat/completions`, body, { "x-request-id": id })
      expect(res.status).toBe(413)
      expect(JSON.parse(res.text).error.message).toBe(
        `the request body is larger than the proxy checks (MAX_REQUEST_BODY, ${1024 * 1024} bytes)`
      )
      expect(fake.requests.some((r) => r.headers["x-request-id"] === id)).toBe(false)
      // Under the limit it goes on, with usage asked for.
      const small = await post(
        `${open.url}/v1/chat/completions`,
        JSON.stringify({ model: "llama3.2", stream: true, messages: [{ role: "user", content: "Hi" }] }),
        { "x-request-id": id }
      )
      expect(small.status).toBe(200)
      expect(JSON.parse(fake.requests.find((r) => r.headers["x-request-id"] === id)!.body.toString()).stream_options).toEqual({
        include_usage: true
      })
    } finally {
      await open.close()
    }
  })

  it("with keys, a body too large to check its model in is refused, and its connection closed", async () => {
    const id = randomUUID()
    const body = JSON.stringify({ messages: [{ role: "user", content: "x".repeat(33 * 1024 * 1024) }], model: "llama3.2", stream: true })
    const res = await post(`${proxy.url}/v1/chat/completions`, body, { ...auth, "x-request-id": id })
    expect(res.status).toBe(413)
    expect(res.headers.connection).toBe("close")
    expect(JSON.parse(res.text).error.message).toBe(
      `the request body is larger than the proxy checks (MAX_REQUEST_BODY, ${32 * 1024 * 1024} bytes)`
    )
    expect(fake.requests.some((r) => r.headers["x-request-id"] === id)).toBe(false)
  })
})

describe("the built service", () => {
  let own: WebhookReceiver | undefined
  afterEach(async () => {
    await own?.close()
    own = undefined
  })

  it("on SIGTERM delivers every queued record before it exits, and never logs the webhook key", async () => {
    own = await startWebhook(() => ({ status: 204, delayMs: 150 }))
    const child = await spawnProxy({ ...proxyEnv(own.url), AUTHORIZATION_LOG_LEVEL: "debug" })
    try {
      await untilReady(child.url)
      const ids = Array.from({ length: 12 }, () => randomUUID())
      await Promise.all(
        ids.map((id) =>
          post(`${child.url}/api/chat`, { model: "llama3.2", messages: [{ role: "user", content: "Hi" }], stream: false }, {
            ...auth,
            "x-request-id": id
          })
        )
      )
      expect(own.accepted().length).toBeLessThan(ids.length)
      const exit = await child.kill("SIGTERM")
      expect(exit.code).toBe(0)
      expect(own.accepted().map((r) => r.request_id).sort()).toEqual([...ids].sort())
      const output = JSON.stringify(child.lines) + child.stderr()
      expect(output).not.toContain(WEBHOOK_KEY)
      expect(child.lines.some((l) => l.msg === "delivering queued usage records")).toBe(true)
    } finally {
      await child.kill("SIGKILL")
    }
  })

  it("on SIGTERM cuts a stream at the deadline, then delivers its record too", async () => {
    own = await startWebhook()
    fake.set({ tokens: 1000, tokenDelayMs: 50 })
    const child = await spawnProxy({ ...proxyEnv(own.url), SHUTDOWN_TIMEOUT: "500ms" })
    try {
      await untilReady(child.url)
      const id = randomUUID()
      const { req, res } = await open(`${child.url}/api/chat`, {
        method: "POST",
        headers: { ...auth, "x-request-id": id },
        body: JSON.stringify({ model: "llama3.2", messages: [{ role: "user", content: "A long story" }] })
      })
      req.on("error", () => {})
      res.on("error", () => {})
      await once(res, "data")
      const started = performance.now()
      const exit = await child.kill("SIGTERM")
      expect(exit.code).toBe(0)
      expect(performance.now() - started).toBeLessThan(3000)
      const [record] = own.accepted()
      expect(own.accepted()).toHaveLength(1)
      expect(record!.request_id).toBe(id)
      // The cut races the upstream pool's release: either side may be seen to go first.
      expect(["client_aborted", "upstream_error"]).toContain(record!.outcome)
    } finally {
      await child.kill("SIGKILL")
    }
  })

  it("logs the whole record, at error level, when the webhook is down", async () => {
    const child = await spawnProxy({ ...proxyEnv(`http://127.0.0.1:${await freePort()}/usage`), WEBHOOK_MAX_RETRY_TIME: "200ms" })
    try {
      await untilReady(child.url)
      const id = randomUUID()
      await post(`${child.url}/api/chat`, { model: "llama3.2", messages: [{ role: "user", content: "Hi" }], stream: false }, {
        ...auth,
        "x-request-id": id
      })
      const line = await child.waitForLine((l) => l.msg === "usage record not delivered")
      expect(line).toMatchObject({
        level: "error",
        record: { request_id: id, endpoint: "/api/chat", model: "llama3.2", outcome: "completed" }
      })
      expect(String(line.reason)).toMatch(/^gave up retrying/)
      expect(JSON.stringify(child.lines) + child.stderr()).not.toContain(WEBHOOK_KEY)
    } finally {
      await child.kill("SIGKILL")
    }
  })
})

describe("the webhook in the exchange's trace and in the metrics", () => {
  it("POSTs the record with the caller's trace, and /metrics counts it delivered", async () => {
    const traceId = "4bf92f3577b34da6a3ce929d0e0e4736"
    const requestId = randomUUID()
    await post(`${proxy.url}/api/generate`, { model: "llama3.2", prompt: "trace me", stream: false }, {
      ...auth,
      "x-request-id": requestId,
      traceparent: `00-${traceId}-00f067aa0ba902b7-01`
    })
    await recordOf(requestId)
    const received = webhook.received.find((r) => r.record.request_id === requestId)!
    expect(received.headers.traceparent).toMatch(new RegExp(`^00-${traceId}-[0-9a-f]{16}-01$`))

    const metrics = (await raw(`${proxy.url}/metrics`, { headers: auth })).text
    const delivered = /^usage_webhook_records_total\{[^}]*outcome="delivered"[^}]*\} (\d+)/m.exec(metrics)
    expect(Number(delivered?.[1])).toBeGreaterThan(0)
    expect(metrics).toMatch(/^usage_webhook_queue_depth(\{[^}]*\})? 0$/m)
  })
})
