/**
 * The test double itself: it must look like `ollama serve` to the official clients and, byte for
 * byte, to a proxy (fake-ollama/README.md, "What it follows"). Its knobs and its CLI are tested here too.
 */
import { compress as zstdCompress, init as zstdInit } from "@bokuweb/zstd-wasm"
import { type ChildProcess, spawn } from "node:child_process"
import { once } from "node:events"
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs"
import http, { type IncomingHttpHeaders, type IncomingMessage } from "node:http"
import net, { type AddressInfo } from "node:net"
import os from "node:os"
import path from "node:path"
import { fileURLToPath } from "node:url"
import { gzipSync } from "node:zlib"
import { Ollama } from "ollama"
import OpenAI from "openai"
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest"
import { decodeStruct, parseNodes, T } from "./fake-ollama/gojson.mjs"
import {
  BUSY_ERROR,
  DEFAULT_VRAM,
  embeddingFor,
  expectedFigures,
  type FakeOllama,
  generatedText,
  MIDSTREAM_ERROR,
  parseOllamaHost,
  startFakeOllama
} from "./fake-ollama/server.mjs"
import { zstdFrame, zstdRepeat } from "./support/zstd.js"

const BIN = fileURLToPath(new URL("./fake-ollama/bin/ollama", import.meta.url))

interface Raw {
  status: number
  headers: IncomingHttpHeaders
  body: Buffer
  text: string
  /** The data events as they arrived. */
  pieces: Array<Buffer>
}

/** One request with node:http, the body framed by Content-Length (a DELETE too). */
function raw(url: string, init: { method?: string; headers?: Record<string, string>; body?: string | Buffer } = {}): Promise<Raw> {
  return new Promise((resolve, reject) => {
    const body = init.body === undefined ? undefined : Buffer.from(init.body)
    const headers = { ...(body ? { "content-length": String(body.length) } : {}), ...init.headers }
    const req = http.request(url, { method: init.method ?? "GET", headers, agent: false }, (res) => {
      const pieces: Array<Buffer> = []
      res.on("data", (d: Buffer) => pieces.push(d))
      res.on("end", () => {
        const all = Buffer.concat(pieces)
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: all, text: all.toString("utf8"), pieces })
      })
      res.on("error", reject)
    })
    req.on("error", reject)
    req.end(body)
  })
}

/** A request whose response is handed over as soon as its headers are in. */
async function open(url: string, body: unknown) {
  const req = http.request(url, { method: "POST", agent: false, headers: { "content-type": "application/json" } })
  req.end(JSON.stringify(body))
  const [res] = (await once(req, "response")) as [IncomingMessage]
  return { req, res }
}

/** Reads a response to its end or to its breaking off. */
function readToEnd(res: IncomingMessage): Promise<{ text: string; complete: boolean }> {
  return new Promise((resolve) => {
    const chunks: Array<Buffer> = []
    res.on("data", (d: Buffer) => chunks.push(d))
    res.on("error", () => {})
    res.on("close", () => resolve({ text: Buffer.concat(chunks).toString("utf8"), complete: res.complete }))
  })
}

const lines = (text: string) => text.split("\n").filter((l) => l !== "").map((l) => JSON.parse(l) as Record<string, unknown>)
const post = (url: string, body: unknown, headers: Record<string, string> = {}) =>
  raw(url, { method: "POST", body: typeof body === "string" ? body : JSON.stringify(body), headers })
const chat = { model: "llama3.2", messages: [{ role: "user", content: "Hi there, llama" }] }

let fake: FakeOllama
beforeAll(async () => {
  fake = await startFakeOllama()
})
afterAll(() => fake?.close())
beforeEach(() => {
  fake.set({
    models: ["llama3.2", "nomic-embed-text"],
    tokens: 5,
    tokenDelayMs: undefined,
    splitWrites: undefined,
    errorAfterChunks: undefined,
    crashAfterChunks: undefined,
    busy: undefined,
    pullFailTimes: undefined,
    loadDelayMs: undefined,
    vram: undefined
  })
  fake.requests.length = 0
})

describe("with the ollama client", () => {
  const client = () => new Ollama({ host: fake.url })

  it("lists and shows the models on disk, a bare name meaning :latest", async () => {
    const { models } = await client().list()
    expect(models.map((m) => m.name)).toEqual(["llama3.2:latest", "nomic-embed-text:latest"])
    expect(models[0]!.details.family).toBe("llama")
    const shown = await client().show({ model: "llama3.2" })
    expect(shown.capabilities).toContain("completion")
    expect((await client().show({ model: "nomic-embed-text" })).capabilities).toEqual(["embedding"])
    await expect(client().show({ model: "nope" })).rejects.toThrow("model 'nope' not found")
  })

  it("streams a chat, then answers it whole, with the figures expectedFigures gives", async () => {
    const expected = expectedFigures("/api/chat", chat)
    const parts = []
    for await (const part of await client().chat({ ...chat, stream: true })) parts.push(part)
    expect(parts).toHaveLength(6)
    expect(parts.slice(0, -1).every((p) => !p.done)).toBe(true)
    expect(parts.map((p) => p.message.content).join("")).toBe(generatedText(5))
    const last = parts.at(-1)!
    expect(last).toMatchObject({
      model: "llama3.2",
      done: true,
      done_reason: "stop",
      eval_count: 5,
      prompt_eval_count: expected.promptEvalCount
    })
    expect(last.total_duration).toBe(expected.totalDuration)
    expect(last.created_at).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$/)

    const whole = await client().chat({ ...chat, stream: false })
    expect(whole.message).toEqual({ role: "assistant", content: generatedText(5) })
    expect(whole.eval_count).toBe(5)
  })

  it("generates, with the context and the six metrics on the last object", async () => {
    fake.set({ tokens: 3 })
    const parts = []
    for await (const part of await client().generate({ model: "llama3.2", prompt: "Why is the sky blue?", stream: true })) parts.push(part)
    const last = parts.at(-1)!
    const expected = fake.expected("/api/generate", { prompt: "Why is the sky blue?" })
    expect(expected.promptEvalCount).toBe(5)
    expect(last.context).toHaveLength(expected.promptEvalCount + 3)
    expect([
      last.total_duration,
      last.load_duration,
      last.prompt_eval_count,
      last.prompt_eval_duration,
      last.eval_count,
      last.eval_duration
    ]).toEqual([
      expected.totalDuration,
      expected.loadDuration,
      5,
      expected.promptEvalDuration,
      3,
      expected.evalDuration
    ])
    const limited = await client().generate({ model: "llama3.2", prompt: "x", stream: false, options: { num_predict: 2 } })
    expect([limited.response, limited.done_reason, limited.eval_count]).toEqual([generatedText(2), "length", 2])
  })

  it("pulls with progress, after which the model is on disk", async () => {
    const progress = []
    for await (const p of await client().pull({ model: "qwen3:0.6b", stream: true })) progress.push(p)
    const statuses = progress.map((p) => p.status)
    expect(statuses[0]).toBe("pulling manifest")
    expect(statuses.slice(-3)).toEqual(["verifying sha256 digest", "writing manifest", "success"])
    const layer = progress.filter((p) => p.status.startsWith("pulling ") && p.digest)
    expect(layer[0]).not.toHaveProperty("completed")
    expect(layer.some((p) => p.completed > 0 && p.completed < p.total)).toBe(true)
    expect(layer.at(-1)!.completed).toBe(layer.at(-1)!.total)
    expect(fake.models()).toContain("qwen3:0.6b")
    await expect(
      client().pull({ model: "no-such-model", stream: true }).then(async (it) => {
        for await (const _ of it);
      })
    ).rejects.toThrow(
      "pull model manifest: file does not exist"
    )
  })

  it("embeds deterministically, and counts the input tokens", async () => {
    const answer = await client().embed({ model: "nomic-embed-text", input: ["hello", "hello world"] })
    expect(answer.embeddings).toHaveLength(2)
    // JSON carries float32 values in their shortest form: read back as float32 they are exact.
    expect(answer.embeddings[0]!.map(Math.fround)).toEqual(Array.from(embeddingFor("hello", 768)))
    expect(Math.hypot(...answer.embeddings[1]!)).toBeCloseTo(1, 5)
    expect(answer.prompt_eval_count).toBe(expectedFigures("/api/embed", { input: ["hello", "hello world"] }).promptEvalCount)
    const short = await client().embed({ model: "nomic-embed-text", input: "hello", dimensions: 8 })
    expect(short.embeddings[0]).toHaveLength(8)
  })

  it("warms a model into /api/ps and unloads it", async () => {
    const warm = await client().generate({ model: "llama3.2", prompt: "", keep_alive: -1 })
    expect([warm.done, warm.done_reason]).toEqual([true, "load"])
    const { models } = await client().ps()
    expect(models.map((m) => m.name)).toEqual(["llama3.2:latest"])
    expect(new Date(models[0]!.expires_at).getUTCFullYear()).toBeGreaterThan(2200)
    expect(models[0]).toMatchObject({ size_vram: models[0]!.size, context_length: 4096 })
    const unload = await client().generate({ model: "llama3.2", prompt: "", keep_alive: 0 })
    expect(unload.done_reason).toBe("unload")
    expect((await client().ps()).models).toEqual([])
  })

  it("refuses an embedding model on chat and an unknown model", async () => {
    await expect(client().chat({ model: "nomic-embed-text", messages: [{ role: "user", content: "x" }] })).rejects.toThrow(
      "\"nomic-embed-text\" does not support chat"
    )
    await expect(client().chat({ model: "nope", messages: [] })).rejects.toThrow("model 'nope' not found")
  })
})

describe("with the openai client", () => {
  const client = () => new OpenAI({ baseURL: `${fake.url}/v1`, apiKey: "x", maxRetries: 0 })

  it("completes a chat whole, with usage", async () => {
    const answer = await client().chat.completions.create({ model: "llama3.2", messages: chat.messages as never })
    const expected = expectedFigures("/v1/chat/completions", chat)
    expect(answer.object).toBe("chat.completion")
    expect(answer.choices[0]!.message.content).toBe(generatedText(5))
    expect(answer.choices[0]!.finish_reason).toBe("stop")
    expect(answer.usage).toEqual(expected.usage)
  })

  it("streams a chat, with a usage chunk only when include_usage is asked", async () => {
    const chunks = []
    const stream = await client().chat.completions.create({
      model: "llama3.2",
      messages: chat.messages as never,
      stream: true,
      stream_options: { include_usage: true }
    })
    for await (const chunk of stream) chunks.push(chunk)
    expect(chunks.map((c) => c.choices[0]?.delta.content ?? "").join("")).toBe(generatedText(5))
    expect(chunks.at(-2)!.choices[0]!.finish_reason).toBe("stop")
    expect(chunks.at(-1)!.choices).toEqual([])
    expect(chunks.at(-1)!.usage).toEqual({ prompt_tokens: 4, completion_tokens: 5, total_tokens: 9 })

    const plain = []
    for await (
      const chunk of await client().chat.completions.create({ model: "llama3.2", messages: chat.messages as never, stream: true })
    ) plain.push(chunk)
    expect(plain.some((c) => c.usage)).toBe(false)
    expect(plain).toHaveLength(6)
  })

  it("embeds (base64 by default in this SDK) to the same vectors as /api/embed", async () => {
    const answer = await client().embeddings.create({ model: "nomic-embed-text", input: "hello" })
    expect(answer.data[0]!.embedding).toEqual(Array.from(embeddingFor("hello", 768)))
    expect(answer.usage).toEqual({ prompt_tokens: 2, total_tokens: 2 })
    const floats = await client().embeddings.create({ model: "nomic-embed-text", input: ["a", "b"], encoding_format: "float" })
    expect(floats.data.map((d) => d.index)).toEqual([0, 1])
  })

  it("lists and retrieves models, and errors in the OpenAI shape", async () => {
    const ids = []
    for await (const model of client().models.list()) ids.push(model.id)
    expect(ids).toEqual(["llama3.2:latest", "nomic-embed-text:latest"])
    expect(await client().models.retrieve("llama3.2")).toMatchObject({ id: "llama3.2", object: "model", owned_by: "library" })
    await expect(client().models.retrieve("nope")).rejects.toMatchObject({ status: 404, type: "not_found_error" })
  })
})

describe("on the wire", () => {
  it("answers / and /api/version with Go's exact bytes", async () => {
    const root = await raw(`${fake.url}/`)
    expect([root.status, root.headers["content-type"], root.text]).toEqual([200, "text/plain; charset=utf-8", "Ollama is running"])
    const head = await raw(`${fake.url}/`, { method: "HEAD" })
    expect([head.status, head.headers["content-length"], head.body.length]).toEqual([200, "17", 0])
    const version = await raw(`${fake.url}/api/version`)
    expect([version.headers["content-type"], version.text]).toEqual(["application/json; charset=utf-8", "{\"version\":\"0.32.15\"}"])
  })

  it("lists no models as [], never null", async () => {
    fake.set({ models: [] })
    expect((await raw(`${fake.url}/api/tags`)).text).toBe("{\"models\":[]}")
    expect((await raw(`${fake.url}/api/ps`)).text).toBe("{\"models\":[]}")
  })

  it("answers an unknown path 404 and a wrong method 405, in plain text", async () => {
    const missing = await raw(`${fake.url}/api/nope`)
    expect([missing.status, missing.headers["content-type"], missing.text]).toEqual([404, "text/plain", "404 page not found"])
    const wrong = await raw(`${fake.url}/api/chat`)
    expect([wrong.status, wrong.headers["content-type"], wrong.text]).toEqual([405, "text/plain", "405 method not allowed"])
  })

  it("copies and deletes with an empty 200, and 404s a model that is not there", async () => {
    const copied = await post(`${fake.url}/api/copy`, { source: "llama3.2", destination: "mine" })
    expect([copied.status, copied.headers["content-length"], copied.body.length, copied.headers["content-type"]]).toEqual([
      200,
      "0",
      0,
      undefined
    ])
    expect(fake.models()).toContain("mine:latest")
    const deleted = await raw(`${fake.url}/api/delete`, { method: "DELETE", body: JSON.stringify({ model: "mine" }) })
    expect([deleted.status, deleted.body.length]).toEqual([200, 0])
    const again = await raw(`${fake.url}/api/delete`, { method: "DELETE", body: JSON.stringify({ model: "mine" }) })
    expect([again.status, again.text]).toEqual([404, `{"error":"model 'mine' not found"}`])
  })

  it("streams NDJSON, one line per write, each ended by a newline", async () => {
    const res = await post(`${fake.url}/api/chat`, chat)
    expect(res.headers["content-type"]).toBe("application/x-ndjson")
    expect(res.headers["transfer-encoding"]).toBe("chunked")
    expect(res.text.endsWith("}\n")).toBe(true)
    expect(res.pieces.every((p) => p.toString().endsWith("\n"))).toBe(true)
    const all = lines(res.text)
    expect(all).toHaveLength(6)
    expect(all.at(-1)).toMatchObject({ done: true, done_reason: "stop", eval_count: 5 })
  })

  it("answers single objects without a newline, /v1 and non-streamed pulls with one", async () => {
    const whole = await post(`${fake.url}/api/chat`, { ...chat, stream: false })
    expect([whole.headers["content-type"], whole.text.endsWith("}")]).toEqual(["application/json; charset=utf-8", true])
    const v1 = await post(`${fake.url}/v1/chat/completions`, chat)
    expect([v1.headers["content-type"], v1.text.endsWith("}\n")]).toEqual(["application/json", true])
    const pulled = await post(`${fake.url}/api/pull`, { name: "all-minilm", stream: false })
    expect([pulled.status, pulled.headers["content-type"], pulled.text]).toEqual([200, "application/json", "{\"status\":\"success\"}\n"])
    const failed = await post(`${fake.url}/api/pull`, { model: "no-such", stream: false })
    expect([failed.status, failed.text]).toEqual([500, "{\"error\":\"pull model manifest: file does not exist\"}\n"])
    const streamedFail = await post(`${fake.url}/api/pull`, { model: "no-such" })
    expect([streamedFail.status, streamedFail.text]).toEqual([
      200,
      "{\"status\":\"pulling manifest\"}\n{\"error\":\"pull model manifest: file does not exist\"}\n"
    ])
  })

  it("streams SSE on /v1 when asked, ending with [DONE]", async () => {
    const res = await post(`${fake.url}/v1/chat/completions`, { ...chat, stream: true, stream_options: { include_usage: true } })
    expect(res.headers["content-type"]).toBe("text/event-stream")
    expect(res.text.endsWith("data: [DONE]\n\n")).toBe(true)
    const events = res.text.split("\n\n").filter(Boolean)
    expect(events.every((e) => e.startsWith("data: "))).toBe(true)
    const completions = await post(`${fake.url}/v1/completions`, {
      model: "llama3.2",
      prompt: "Hi",
      stream: true,
      stream_options: { include_usage: true }
    })
    const chunks = completions.text
      .split("\n\n")
      .filter((e) => e.startsWith("data: {"))
      .map((e) => JSON.parse(e.slice(6)))
    expect(chunks.slice(0, -1).every((c) => c.usage.total_tokens === 0)).toBe(true)
    expect(chunks.at(-1)).toMatchObject({ choices: [], usage: { prompt_tokens: 1, completion_tokens: 5, total_tokens: 6 } })
  })

  it("answers Ollama's errors with their statuses and shapes", async () => {
    const cases: Array<[string, string, number, string]> = [
      ["/api/chat", "", 400, "{\"error\":\"missing request body\"}"],
      ["/api/chat", "{nope", 400, `{"error":"invalid character 'n' looking for beginning of object key string"}`],
      ["/api/generate", JSON.stringify({ model: "ghost", prompt: "x" }), 404, `{"error":"model 'ghost' not found"}`],
      [
        "/api/generate",
        JSON.stringify({ model: "nomic-embed-text", prompt: "x" }),
        400,
        "{\"error\":\"\\\"nomic-embed-text\\\" does not support generate\"}"
      ],
      [
        "/api/generate",
        JSON.stringify({ model: "llama3.2", keep_alive: "soon" }),
        400,
        "{\"error\":\"time: invalid duration \\\"soon\\\"\"}"
      ]
    ]
    for (const [path, body, status, text] of cases) {
      const res = await post(`${fake.url}${path}`, body)
      expect([path, res.status, res.headers["content-type"], res.text]).toEqual([path, status, "application/json; charset=utf-8", text])
    }
    fake.set({ busy: true })
    const busy = await post(`${fake.url}/api/chat`, chat)
    expect([busy.status, busy.text]).toEqual([503, JSON.stringify({ error: BUSY_ERROR })])
    const v1busy = await post(`${fake.url}/v1/chat/completions`, chat)
    expect([v1busy.status, v1busy.text]).toEqual([
      503,
      `${JSON.stringify({ error: { message: BUSY_ERROR, type: "api_error", param: null, code: null } })}\n`
    ])
    const v1bad = await post(`${fake.url}/v1/chat/completions`, { model: "llama3.2", messages: [] })
    expect([v1bad.status, JSON.parse(v1bad.text)]).toEqual([400, {
      error: { message: "[] is too short - 'messages'", type: "invalid_request_error", param: null, code: null }
    }])
  })

  it("answers a warm-up with one object even when streaming, and marks the model loaded", async () => {
    const res = await post(`${fake.url}/api/chat`, { model: "llama3.2", messages: [], keep_alive: "10m" })
    expect(res.headers["content-type"]).toBe("application/json; charset=utf-8")
    expect(JSON.parse(res.text)).toMatchObject({
      model: "llama3.2",
      message: { role: "assistant", content: "" },
      done: true,
      done_reason: "load"
    })
    expect(fake.loaded()).toEqual(["llama3.2:latest"])
    const expires = Date.parse(JSON.parse((await raw(`${fake.url}/api/ps`)).text).models[0].expires_at)
    expect(expires - Date.now()).toBeGreaterThan(9 * 60_000)
  })

  it("refuses a non-local Host with an empty 403, and lets local names through", async () => {
    const refused = await raw(`${fake.url}/api/tags`, { headers: { host: "api.example.com" } })
    expect([refused.status, refused.headers["content-length"], refused.body.length]).toEqual([403, "0", 0])
    for (
      const host of [
        "localhost:11434",
        "127.0.0.1",
        "10.1.2.3:80",
        "192.168.0.9",
        "[::1]:8080",
        "ollama.localhost",
        "box.local",
        "svc.internal:1",
        os.hostname()
      ]
    ) {
      expect([host, (await raw(`${fake.url}/api/version`, { headers: { host } })).status]).toEqual([host, 200])
    }
    expect((await raw(`${fake.url}/api/version`, { headers: { host: "8.8.8.8" } })).status).toBe(403)
  })

  it("answers a CORS preflight 204, and refuses an origin it does not know", async () => {
    const preflight = await raw(`${fake.url}/api/chat`, {
      method: "OPTIONS",
      headers: { origin: "http://localhost:3000", "access-control-request-method": "POST" }
    })
    expect([preflight.status, preflight.headers["access-control-allow-origin"]]).toEqual([204, "http://localhost:3000"])
    expect(preflight.headers["access-control-allow-methods"]).toBe("GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS")
    expect((await raw(`${fake.url}/api/tags`, { headers: { origin: "https://evil.example" } })).status).toBe(403)
  })

  it("stores blobs by verified digest", async () => {
    const data = Buffer.from("a layer")
    const digest = `sha256:${(await import("node:crypto")).createHash("sha256").update(data).digest("hex")}`
    expect((await raw(`${fake.url}/api/blobs/${digest}`, { method: "HEAD" })).status).toBe(404)
    const wrong = await raw(`${fake.url}/api/blobs/${digest}`, { method: "POST", body: "other bytes" })
    expect(wrong.status).toBe(400)
    expect(JSON.parse(wrong.text).error).toMatch(/^digest mismatch, expected "sha256:[0-9a-f]{64}", got "sha256:[0-9a-f]{64}"$/)
    expect((await raw(`${fake.url}/api/blobs/${digest}`, { method: "POST", body: data })).status).toBe(201)
    expect((await raw(`${fake.url}/api/blobs/${digest}`, { method: "POST", body: data })).status).toBe(200)
    expect((await raw(`${fake.url}/api/blobs/${digest}`, { method: "HEAD" })).status).toBe(200)
  })

  it("speaks Anthropic on /v1/messages, usage in message_start and message_delta", async () => {
    const body = { model: "llama3.2", max_tokens: 100, messages: [{ role: "user", content: "Hello there" }] }
    const expected = expectedFigures("/v1/messages", body)
    const streamed = await post(`${fake.url}/v1/messages`, { ...body, stream: true })
    expect(streamed.headers["content-type"]).toBe("text/event-stream")
    const events = streamed.text
      .split("\n\n")
      .filter(Boolean)
      .map((e) => {
        const [event, data] = e.split("\n")
        return { event: event!.slice(7), data: JSON.parse(data!.slice(6)) }
      })
    expect(events.map((e) => e.event)).toEqual([
      "message_start",
      "content_block_start",
      ...Array(5).fill("content_block_delta"),
      "content_block_stop",
      "message_delta",
      "message_stop"
    ])
    expect(events[0]!.data.message.usage).toEqual({ input_tokens: expected.anthropicInputEstimate, output_tokens: 0 })
    expect(events.at(-2)!.data.usage).toEqual({ input_tokens: expected.promptEvalCount, output_tokens: 5 })
    const whole = JSON.parse((await post(`${fake.url}/v1/messages`, body)).text)
    expect(whole).toMatchObject({
      type: "message",
      stop_reason: "end_turn",
      usage: { input_tokens: expected.promptEvalCount, output_tokens: 5 }
    })
  })
})

describe("knobs", () => {
  it("splitWrites cuts lines across reads and merges others, and they still parse", async () => {
    const plain = await post(`${fake.url}/api/generate`, { model: "llama3.2", prompt: "split" })
    fake.set({ splitWrites: true, tokens: 40 })
    const split = await post(`${fake.url}/api/generate`, { model: "llama3.2", prompt: "split" })
    expect(split.pieces.some((p) => !p.toString("latin1").endsWith("\n"))).toBe(true)
    expect(split.pieces.some((p) => p.toString("latin1").slice(0, -1).includes("\n"))).toBe(true)
    const strip = (text: string) => lines(text).map(({ created_at: _, ...rest }) => rest)
    expect(strip(split.text)).toHaveLength(41)
    expect(strip(split.text).slice(0, 5)).toEqual(strip(plain.text).slice(0, 5))
    const single = await post(`${fake.url}/api/chat`, { ...chat, stream: false })
    expect(JSON.parse(single.text).done).toBe(true)
  })

  it("tokenDelayMs paces the stream, and a client abort is seen", async () => {
    fake.set({ tokens: 100, tokenDelayMs: 20 })
    const { req, res } = await open(`${fake.url}/api/generate`, { model: "llama3.2", prompt: "long" })
    await once(res, "data")
    expect(fake.requests[0]!.completed).toBe(false)
    req.destroy()
    const aborted = await fake.waitForAbort((r) => r.path === "/api/generate")
    expect([aborted.aborted, aborted.completed]).toEqual([true, false])
  })

  it("errorAfterChunks ends the stream with an error line, status 200; at 0 it is a 500", async () => {
    fake.set({ errorAfterChunks: 2 })
    const res = await post(`${fake.url}/api/chat`, chat)
    expect(res.status).toBe(200)
    expect(lines(res.text)).toEqual([expect.objectContaining({ done: false }), expect.objectContaining({ done: false }), {
      error: MIDSTREAM_ERROR
    }])
    fake.set({ errorAfterChunks: 0 })
    const early = await post(`${fake.url}/api/chat`, chat)
    expect([early.status, early.headers["content-type"], early.text]).toEqual([
      500,
      "application/json",
      JSON.stringify({ error: MIDSTREAM_ERROR })
    ])
  })

  it("crashAfterChunks cuts the connection after N lines, which is not a client abort", async () => {
    fake.set({ tokens: 20, crashAfterChunks: 3 })
    const { res } = await open(`${fake.url}/api/chat`, chat)
    const result = await readToEnd(res)
    expect(result.complete).toBe(false)
    expect(lines(result.text)).toHaveLength(3)
    const seen = await fake.waitFor((r) => r.path === "/api/chat")
    expect([seen.aborted, seen.completed]).toEqual([false, false])
  })

  it("pullFailTimes drops the first pulls, then they succeed", async () => {
    fake.set({ pullFailTimes: 1, models: [] })
    const client = new Ollama({ host: fake.url })
    await expect(
      client.pull({ model: "llama3.2", stream: true }).then(async (it) => {
        for await (const _ of it);
      })
    ).rejects.toThrow()
    expect(fake.models()).toEqual([])
    expect((await client.pull({ model: "llama3.2" })).status).toBe("success")
    expect(fake.models()).toEqual(["llama3.2:latest"])
  })

  it("vram: what does not fit in GPU memory is reported on the CPU, as size_vram < size; 0 puts everything there", async () => {
    const warm = (model: string) => post(`${fake.url}/api/generate`, { model, keep_alive: -1 })
    const ps = async () =>
      (JSON.parse((await raw(`${fake.url}/api/ps`)).text) as { models: Array<{ name: string; size: number; size_vram: number }> })
        .models
    // The default GPU holds both.
    expect(DEFAULT_VRAM).toBe(22.5 * 1024 ** 3)
    fake.set({ models: ["llama3.2", "qwen3:0.6b"] })
    await warm("llama3.2")
    await warm("qwen3:0.6b")
    expect((await ps()).map((m) => m.size_vram === m.size)).toEqual([true, true])

    // 2.1 GB: the first model fits, the second gets what is left.
    fake.set({ models: ["llama3.2", "qwen3:0.6b"], vram: 2_100_000_000 })
    await warm("llama3.2")
    await warm("qwen3:0.6b")
    const byName = Object.fromEntries((await ps()).map((m) => [m.name, m]))
    expect(byName["llama3.2:latest"]!.size_vram).toBe(byName["llama3.2:latest"]!.size)
    expect(byName["qwen3:0.6b"]!.size_vram).toBe(2_100_000_000 - byName["llama3.2:latest"]!.size)
    expect(byName["qwen3:0.6b"]!.size_vram).toBeLessThan(byName["qwen3:0.6b"]!.size)

    // No GPU: 0, and the model still answers (slowly, on a real one).
    fake.set({ models: ["llama3.2"], vram: 0 })
    expect(JSON.parse((await post(`${fake.url}/api/generate`, { model: "llama3.2", prompt: "x", stream: false })).text).done).toBe(true)
    expect((await ps()).map((m) => [m.name, m.size_vram])).toEqual([["llama3.2:latest", 0]])
  })

  it("loadDelayMs holds the answer: the request is seen before it is answered", async () => {
    fake.set({ loadDelayMs: 100 })
    const answer = post(`${fake.url}/api/chat`, { ...chat, stream: false })
    const seen = await fake.waitFor((r) => r.path === "/api/chat")
    expect(seen.completed).toBe(false)
    expect(JSON.parse((await answer).text).load_duration).toBe(101_000_000)
    expect(seen.completed).toBe(true)
    await expect(fake.waitFor((r) => r.path === "/never", 20)).rejects.toThrow("no request matched within 20 ms")
  })
})

describe("reading requests as Ollama's Go code does", () => {
  const v1chat = { model: "llama3.2", messages: [{ role: "user", content: "Hi" }] }
  const zstdHeaders = { "content-type": "application/json", "content-encoding": "zstd" }
  beforeEach(() => fake.set({ webSearchCalls: undefined }))

  // server/cloud_proxy.go cloudPassthroughMiddleware: zstd.NewReader(body, WithDecoderMaxMemory(8<<20)),
  // http.MaxBytesReader(..., 20<<20), io.ReadAll; any error a native 400.
  it("decompresses a zstd body on /v1/* (cloudPassthroughMiddleware), and takes other encodings and other paths as they are", async () => {
    await zstdInit()
    const packed = Buffer.from(zstdCompress(Buffer.from(JSON.stringify({ ...v1chat, stream: false })), 3))
    const res = await raw(`${fake.url}/v1/chat/completions`, { method: "POST", body: packed, headers: zstdHeaders })
    expect(res.status).toBe(200)
    expect(JSON.parse(res.text).usage.prompt_tokens).toBe(1)
    const seen = await fake.waitFor((r) => r.path === "/v1/chat/completions")
    expect(seen.decompressed?.toString()).toBe(JSON.stringify({ ...v1chat, stream: false }))
    expect(seen.decoded?.model).toBe("llama3.2")

    // GetHeader gives the first value, compared exactly.
    const upper = await raw(`${fake.url}/v1/chat/completions`, { method: "POST", body: packed, headers: { "content-encoding": "ZSTD" } })
    expect([upper.status, JSON.parse(upper.text).error.message]).toEqual([400, "invalid character '(' looking for beginning of value"])
    const native = await raw(`${fake.url}/api/chat`, { method: "POST", body: packed, headers: zstdHeaders })
    expect([native.status, native.text]).toEqual([400, "{\"error\":\"invalid character '(' looking for beginning of value\"}"])
    const gzipped = await raw(`${fake.url}/v1/messages`, {
      method: "POST",
      body: gzipSync(JSON.stringify(v1chat)),
      headers: { "content-encoding": "gzip" }
    })
    expect(gzipped.status).toBe(400)
    expect(JSON.parse(gzipped.text).error.message).toMatch(/^invalid character/)
  })

  it("refuses a frame whose window is over 8 MiB, or whose content size is (klauspost zstd frameDec.reset), in Ollama's native shape", async () => {
    const json = Buffer.from(JSON.stringify({ ...v1chat, max_tokens: 8 }))
    const at8 = await raw(`${fake.url}/v1/messages`, {
      method: "POST",
      body: zstdFrame([{ raw: json }], { windowLog: 23 }),
      headers: zstdHeaders
    })
    expect(at8.status).toBe(200)
    const over = zstdFrame([{ raw: json }], { windowLog: 23, windowMantissa: 1 })
    for (const path of ["/v1/messages", "/v1/responses", "/v1/embeddings"]) {
      const res = await raw(`${fake.url}${path}`, { method: "POST", body: over, headers: zstdHeaders })
      expect([res.status, res.headers["content-type"], res.text]).toEqual([
        400,
        "application/json; charset=utf-8",
        "{\"error\":\"window size exceeded\"}"
      ])
    }
    const sized = zstdFrame([{ raw: json }], { contentSize: (8 << 20) + 1 })
    const res = await raw(`${fake.url}/v1/completions`, { method: "POST", body: sized, headers: zstdHeaders })
    expect([res.status, res.text]).toEqual([400, "{\"error\":\"decompressed size exceeds configured limit\"}"])
    const garbage = await raw(`${fake.url}/v1/completions`, { method: "POST", body: "not zstd", headers: zstdHeaders })
    expect(garbage.text).toBe("{\"error\":\"invalid input: magic number mismatch\"}")
  })

  it("refuses a body that decompresses past 20 MiB (http.MaxBytesReader), though the frame is small and its window 8 MiB", async () => {
    const bomb = zstdRepeat(0x20, (20 << 20) + 1, { windowLog: 23 })
    expect(bomb.length).toBeLessThan(1000)
    const res = await raw(`${fake.url}/v1/chat/completions`, { method: "POST", body: bomb, headers: zstdHeaders })
    expect([res.status, res.text]).toEqual([400, "{\"error\":\"http: request body too large\"}"])
    // Exactly 20 MiB is read whole: then it is only whitespace, an EOF for the JSON decoder.
    const full = await raw(`${fake.url}/v1/chat/completions`, {
      method: "POST",
      body: zstdRepeat(0x20, 20 << 20, { windowLog: 23 }),
      headers: zstdHeaders
    })
    expect([full.status, JSON.parse(full.text).error.message]).toEqual([400, "EOF"])
  })

  // encoding/json decode.go `object`: exact name, else foldName (ASCII case, ſ = s, K = k); keys in order, the last wins.
  it("matches keys case-insensitively with Go's folding, the last one winning", async () => {
    const body =
      "{\"model\":\"nomic-embed-text\",\"MODEL\":\"llama3.2\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"stream\":true,\"\u017fTREAM\":false}"
    const res = await post(`${fake.url}/api/chat`, body)
    expect(res.status).toBe(200)
    expect(JSON.parse(res.text)).toMatchObject({ model: "llama3.2", done: true })
    const seen = await fake.waitFor((r) => r.path === "/api/chat")
    expect(seen.decoded).toMatchObject({ model: "llama3.2", stream: false })
    const kelvin = await post(
      `${fake.url}/api/generate`,
      "{\"model\":\"llama3.2\",\"prompt\":\"Hi\",\"stream\":false,\"\u212aeep_alive\":0}"
    )
    expect(JSON.parse(kelvin.text).done_reason).toBe("stop")
    expect(fake.loaded()).toEqual([])
    // Inside a map (options) keys are exact: NUM_CTX is not num_ctx.
    await post(`${fake.url}/api/generate`, { model: "llama3.2", prompt: "Hi", stream: false, options: { NUM_CTX: 9000 } })
    expect(fake.runner("llama3.2")?.contextLength).toBe(4096)
  })

  // decode.go `indirect`: a non-nil pointer or map is decoded into (merged); null sets it to nil.
  it("merges a repeated object into the value already there (options, stream_options) and resets it on null", async () => {
    const merged = await post(
      `${fake.url}/api/generate`,
      "{\"model\":\"llama3.2\",\"prompt\":\"Hi\",\"stream\":false,\"options\":{\"num_gpu\":0},\"Options\":{\"num_ctx\":9000}}"
    )
    expect(merged.status).toBe(200)
    expect(fake.runner("llama3.2")).toMatchObject({ sizeVram: 0, contextLength: 9000, options: { num_gpu: 0, num_ctx: 9000 } })
    const ps = JSON.parse((await raw(`${fake.url}/api/ps`)).text)
    expect(ps.models[0]).toMatchObject({ name: "llama3.2:latest", size_vram: 0, context_length: 9000 })

    const stream = async (tail: string) => {
      const res = await post(
        `${fake.url}/v1/chat/completions`,
        `{"model":"llama3.2","messages":[{"role":"user","content":"Hi"}],"stream":true,${tail}}`
      )
      return res.text.split("\n\n").filter((e) => e.startsWith("data: {")).some((e) => JSON.parse(e.slice(6)).usage)
    }
    expect(await stream("\"stream_options\":{\"include_usage\":true},\"Stream_Options\":{}")).toBe(true)
    expect(await stream("\"stream_options\":{\"include_usage\":true},\"Stream_Options\":{\"include_usage\":false}")).toBe(false)
    expect(await stream("\"stream_options\":{\"include_usage\":true},\"Stream_Options\":null")).toBe(false)
  })

  const transcribe = (query: string, parts: Array<{ name: string; value: string | Buffer; filename?: string; qp?: boolean }>) => {
    const boundary = "fakeboundary"
    const body = Buffer.concat([
      ...parts.flatMap((p) => [
        Buffer.from(
          `--${boundary}\r\nContent-Disposition: form-data; name="${p.name}"${p.filename ? `; filename="${p.filename}"` : ""}\r\n` +
            (p.qp ? "Content-Transfer-Encoding: quoted-printable\r\n" : "") + "\r\n"
        ),
        Buffer.from(p.value),
        Buffer.from("\r\n")
      ]),
      Buffer.from(`--${boundary}--\r\n`)
    ])
    return raw(`${fake.url}/v1/audio/transcriptions${query}`, {
      method: "POST",
      body,
      headers: { "content-type": `multipart/form-data; boundary=${boundary}` }
    })
  }

  // net/http Request.FormValue after ParseMultipartForm: Form holds the query's values first.
  it("takes the transcription's model from the query before the form (FormValue), and answers through the chat handler", async () => {
    fake.set({ models: ["llama3.2", "qwen3:0.6b"] })
    const res = await transcribe("?model=qwen3:0.6b", [
      { name: "model", value: "llama3.2" },
      { name: "file", value: Buffer.from("RIFF fake audio"), filename: "a.wav" }
    ])
    expect([res.status, res.headers["content-type"]]).toEqual([200, "application/json"])
    expect(JSON.parse(res.text)).toEqual({ text: generatedText(5).trim() })
    const seen = await fake.waitFor((r) => r.path.startsWith("/v1/audio/transcriptions"))
    expect(seen.decoded?.model).toBe("qwen3:0.6b")
    expect(fake.loaded()).toEqual(["qwen3:0.6b"])
    const missing = await transcribe("", [{ name: "model", value: "llama3.2" }])
    expect([missing.status, JSON.parse(missing.text).error.message]).toEqual([400, "file is required: http: no such file"])
  })

  // mime/multipart Reader.NextPart decodes Content-Transfer-Encoding: quoted-printable.
  it("decodes a quoted-printable form part as Go's multipart reader does", async () => {
    fake.set({ models: ["llama3.2", "qwen3:0.6b"] })
    const res = await transcribe("", [
      { name: "model", value: "qwen3=3A0=2E6=\r\nb", qp: true },
      { name: "response_format", value: "text" },
      { name: "file", value: Buffer.from("audio"), filename: "a.wav" }
    ])
    expect([res.status, res.headers["content-type"], res.text]).toEqual([200, "text/plain", generatedText(5).trim()])
    expect((await fake.waitFor((r) => r.path === "/v1/audio/transcriptions")).decoded?.model).toBe("qwen3:0.6b")
  })

  // api.Duration.UnmarshalJSON; routes.go: an empty prompt with keep_alive 0 expires the runner.
  it("keeps a model as keep_alive says: -1 pins it, a duration sets /api/ps expires_at, 0 without a prompt unloads it", async () => {
    await post(`${fake.url}/api/generate`, { model: "llama3.2", keep_alive: -1 })
    expect(fake.runner("llama3.2")?.forever).toBe(true)
    const pinned = JSON.parse((await raw(`${fake.url}/api/ps`)).text).models[0]
    expect(Number(pinned.expires_at.slice(0, 4))).toBeGreaterThan(2300)
    await post(`${fake.url}/api/chat`, { ...chat, stream: false, keep_alive: "10m" })
    expect(fake.runner("llama3.2")?.keepAliveNs).toBe(600_000_000_000n)
    const expires = Date.parse(JSON.parse((await raw(`${fake.url}/api/ps`)).text).models[0].expires_at)
    expect(Math.abs(expires - Date.now() - 600_000)).toBeLessThan(5000)
    const unload = await post(`${fake.url}/api/chat`, { model: "llama3.2", keep_alive: 0 })
    expect(JSON.parse(unload.text)).toMatchObject({ done: true, done_reason: "unload" })
    expect(fake.loaded()).toEqual([])
  })

  // server/sched.go needsReload: the runner options compared, auto num_ctx / negative num_gpu never a change.
  it("counts a reload when the runner options change, not when they stay or are left to Ollama", async () => {
    const gen = (options?: Record<string, unknown>) =>
      post(`${fake.url}/api/generate`, { model: "llama3.2", prompt: "Hi", stream: false, ...(options ? { options } : {}) })
    await gen()
    await gen({ num_gpu: -1, num_predict: 2 })
    expect(fake.reloads.get("llama3.2:latest")).toBeUndefined()
    for (const options of [{ num_ctx: 8192 }, { num_ctx: 8192, num_batch: 256 }, { num_ctx: 8192, num_batch: 256, use_mmap: false }]) {
      await gen(options)
    }
    await gen({ num_ctx: 8192, num_batch: 256, use_mmap: false, num_gpu: -1 })
    expect(fake.reloads.get("llama3.2:latest")).toBe(3)
    await gen({ num_ctx: 8192, num_batch: 256, use_mmap: false, num_thread: 2 })
    await gen({ num_ctx: 8192, num_batch: 256, use_mmap: false, num_thread: 2, main_gpu: 0 })
    expect(fake.reloads.get("llama3.2:latest")).toBe(5)
  })

  it("answers _debug_render_only with the rendered prompt, the Modelfile's SYSTEM in it, and generates nothing", async () => {
    fake.set({ models: [{ name: "llama3.2", system: "The secret word is llama." }] })
    const res = await post(`${fake.url}/api/chat`, { ...chat, _DEBUG_RENDER_ONLY: true })
    const body = JSON.parse(res.text)
    expect(body).toMatchObject({ model: "llama3.2", done: false, message: { role: "", content: "" } })
    expect(body._debug_info.rendered_template).toBe(
      "<|start_header_id|>system<|end_header_id|>\n\nThe secret word is llama.<|eot_id|>" +
        "<|start_header_id|>user<|end_header_id|>\n\nHi there, llama<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    expect(body.eval_count).toBeUndefined()
    // openai.ChatCompletionRequest has the field too, and ToChatCompletion passes _debug_info on.
    const v1 = JSON.parse((await post(`${fake.url}/v1/chat/completions`, { ...chat, _debug_render_only: true })).text)
    expect(v1._debug_info.rendered_template).toContain("The secret word is llama.")
    expect(v1.choices[0].message.content).toBe("")
  })

  // encoding/json: array elements decode into the existing ones; null leaves a non-pointer alone.
  it("decodes as encoding/json: slice elements reused, null on a value kept, the first type mismatch reported", () => {
    const shape = T.struct("x.Req", {
      items: T.slice(T.struct("x.Item", { a: T.string, b: T.string }), "[]x.Item"),
      name: T.string,
      flag: T.ptr(T.bool),
      count: T.int
    })
    const decode = (text: string) => decodeStruct(shape as never, parseNodes(text))
    expect(decode("{\"items\":[{\"a\":\"1\",\"b\":\"2\"},{\"a\":\"3\"}],\"Items\":[{\"A\":\"9\"}],\"ITEMS\":[{},{}]}")).toEqual({
      value: { items: [{ a: "9", b: "2" }, { a: "3" }] }
    })
    expect(decode("{\"name\":\"x\",\"Name\":null,\"flag\":true,\"Flag\":null}")).toEqual({ value: { name: "x", flag: undefined } })
    expect(decode("{\"count\":1.5,\"name\":1}")).toEqual({
      error: "json: cannot unmarshal number 1.5 into Go struct field Req.count of type int"
    })
    expect(decode("[]")).toEqual({ error: "json: cannot unmarshal array into Go value of type x.Req" })
  })

  // middleware/anthropic.go hasWebSearchTool (prefix web_search), openai.HasWebSearchTool (type web_search);
  // middleware/web_search.go maxWebSearchLoops = 3.
  it("counts the web searches Ollama would run, at most 3 per request", async () => {
    const messages = { model: "llama3.2", max_tokens: 16, messages: [{ role: "user", content: "news?" }] }
    await post(`${fake.url}/v1/messages`, { ...messages, tools: [{ type: "web_search_20250305", name: "web_search" }] })
    expect(fake.webSearches).toBe(1)
    await post(`${fake.url}/v1/messages`, { ...messages, tools: [{ type: " web_search_20250305", name: "web_search" }] })
    expect(fake.webSearches).toBe(1)
    fake.set({ webSearchCalls: 5 })
    await post(`${fake.url}/v1/responses`, { model: "llama3.2", input: "news?", Tools: [{ type: "web_search" }] })
    expect(fake.webSearches).toBe(4)
    expect((await fake.waitFor((r) => r.path === "/v1/responses")).webSearches).toBe(3)
  })

  // server/create.go (from a cloud model: RemoteHost, RemoteModel), ListHandler's ListModelResponse, modelref.ParseRef.
  it("lists a model created from a cloud model with remote_host, and counts its requests and :cloud spellings as cloud ones", async () => {
    const created = await post(`${fake.url}/api/create`, { model: "mine", from: "gpt-oss:120b-Cloud", stream: false })
    expect(created.status).toBe(200)
    await post(`${fake.url}/api/copy`, { source: "mine", destination: "yours" })
    const tags = JSON.parse((await raw(`${fake.url}/api/tags`)).text).models
    for (const name of ["mine:latest", "yours:latest"]) {
      expect(tags.find((m: { name: string }) => m.name === name)).toMatchObject({
        remote_model: "gpt-oss:120b",
        remote_host: "https://ollama.com:443"
      })
    }
    expect((await post(`${fake.url}/api/chat`, { model: "yours", messages: chat.messages, stream: false })).status).toBe(200)
    expect((await post(`${fake.url}/api/chat`, { model: "yours:local", messages: chat.messages, stream: false })).status).toBe(404)
    expect((await post(`${fake.url}/v1/chat/completions`, { model: "gpt-oss:120b: CLOUD", messages: chat.messages })).status).toBe(200)
    expect((await post(`${fake.url}/api/chat`, { model: "llama3.2:cloud:local", messages: chat.messages })).text).toBe(
      "{\"error\":\"use either :local or :cloud, not both: \\\"llama3.2:cloud:local\\\"\"}"
    )
    expect(fake.cloudRequests.map((r) => [r.path, r.model, r.remoteModel, r.remoteHost])).toEqual([
      ["/api/chat", "yours", "gpt-oss:120b", "https://ollama.com:443"],
      ["/v1/chat/completions", "gpt-oss:120b: CLOUD", "gpt-oss:120b", "https://ollama.com:443"]
    ])
    expect(fake.loaded()).toEqual([])
  })

  // server/cloud_proxy.go extractModelField: map[string]json.RawMessage, payload["model"], the exact key.
  it("sends a /v1 body to the cloud by its exact `model` key, whatever a folded `Model` after it says", async () => {
    const body = "{\"model\":\"gpt-oss:120b-cloud\",\"Model\":\"llama3.2\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}"
    const res = await post(`${fake.url}/v1/chat/completions`, body)
    expect(res.status).toBe(200)
    const seen = await fake.waitFor((r) => r.path === "/v1/chat/completions")
    expect([seen.decoded?.model, seen.cloud]).toEqual(["llama3.2", "https://ollama.com:443"])
    expect(fake.cloudRequests.map((r) => r.remoteModel)).toEqual(["gpt-oss:120b"])
    expect(fake.loaded()).toEqual([])
    // The other way round the middleware lets it through; the handler reads the folded MODEL last and sends it to the cloud itself.
    const local = await post(
      `${fake.url}/v1/chat/completions`,
      "{\"model\":\"llama3.2\",\"MODEL\":\"qwen3:0.6b-cloud\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}"
    )
    expect(JSON.parse(local.text).model).toBe("qwen3:0.6b-cloud")
    expect(fake.cloudRequests).toHaveLength(2)
  })

  // server/routes.go EmbeddingsHandler: api.EmbeddingResponse{Embedding}, no counts.
  it("answers /api/embeddings with the embedding alone, no token counts", async () => {
    const res = await post(`${fake.url}/api/embeddings`, { model: "nomic-embed-text", prompt: "Hi" })
    expect(Object.keys(JSON.parse(res.text))).toEqual(["embedding"])
  })
})

describe("parseOllamaHost, Ollama's OLLAMA_HOST rules", () => {
  it.each([
    ["", "127.0.0.1:11434"],
    ["1.2.3.4", "1.2.3.4:11434"],
    [":1234", ":1234"],
    ["0.0.0.0:8080", "0.0.0.0:8080"],
    ["[::1]", "[::1]:11434"],
    ["http://host", "host:80"],
    ["https://host", "host:443"],
    ["https://host:8443/some/path", "host:8443"],
    ["127.0.0.1:abc", "127.0.0.1:11434"],
    ["localhost:99999", "localhost:11434"],
    [" \"127.0.0.1:5000\" ", "127.0.0.1:5000"]
  ])("%j listens on %s", (value, address) => {
    expect(parseOllamaHost(value).address).toBe(address)
  })
})

describe("the ollama CLI, as a child process", () => {
  const freePort = async () => {
    const server = net.createServer().listen(0, "127.0.0.1")
    await once(server, "listening")
    const { port } = server.address() as AddressInfo
    await new Promise((resolve) => server.close(resolve))
    return port
  }

  const spawnOllama = (env: Record<string, string>, args = ["serve"]) => {
    const child: ChildProcess = spawn(BIN, args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] })
    const output = { stderr: "", stdout: "" }
    const waiters: Array<() => void> = []
    for (const name of ["stderr", "stdout"] as const) {
      child[name]!.on("data", (d: Buffer) => {
        output[name] += d.toString()
        waiters.forEach((w) => w())
      })
    }
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.on("exit", (code, signal) => resolve({ code, signal }))
    )
    /** The first match in that output, now or when it is written. */
    const waitFor = (name: "stderr" | "stdout", pattern: RegExp) =>
      new Promise<string>((resolve, reject) => {
        const check = () => {
          const match = pattern.exec(output[name])
          if (match) resolve(match[0])
        }
        waiters.push(check)
        check()
        void exited.then(() => setTimeout(() => reject(new Error(`exited before ${pattern} on ${name}: ${output.stderr}`)), 50))
      })
    const waitForStderr = (pattern: RegExp) => waitFor("stderr", pattern)
    return { child, exited, waitFor, waitForStderr, stderr: () => output.stderr, stdout: () => output.stdout }
  }

  it("logs where it listens before answering, serves, logs slog lines, and exits 0 on SIGTERM", async () => {
    const port = await freePort()
    const ollama = spawnOllama({ OLLAMA_HOST: `127.0.0.1:${port}`, FAKE_OLLAMA_STARTUP_DELAY_MS: "150" })
    const listening = await ollama.waitForStderr(
      /^time=\S+ level=INFO source=\S+ msg="Listening on 127\.0\.0\.1:\d+ \(version 0\.32\.15\)"$/m
    )
    expect(listening).toContain(`127.0.0.1:${port}`)
    const asked = Date.now()
    const root = await raw(`http://127.0.0.1:${port}/`)
    expect([root.status, root.text]).toEqual([200, "Ollama is running"])
    expect(Date.now() - asked).toBeGreaterThanOrEqual(100)
    // What it found to compute on: the default GPU, and the context that VRAM gives.
    expect(ollama.stderr()).toMatch(
      /level=INFO source=types\.go:32 msg="inference compute" id=GPU-\S+ filter_id="" library=CUDA compute=8\.9 name=CUDA0 description="NVIDIA L4" libdirs=ollama,cuda_v12 driver=12\.8 pci_id=0000:82:00\.0 type=discrete total="22\.5 GiB" available="22\.1 GiB"$/m
    )
    expect(ollama.stderr()).toMatch(/msg="vram-based default context" total_vram="22\.5 GiB" default_num_ctx=4096$/m)
    await ollama.waitFor("stdout", /^\[GIN\] \d{4}\/\d\d\/\d\d - \d\d:\d\d:\d\d \| 200 \| +\S+ \| +127\.0\.0\.1 \| GET +"\/"$/m)
    ollama.child.kill("SIGTERM")
    expect(await ollama.exited).toEqual({ code: 0, signal: null })
  })

  it("with FAKE_OLLAMA_VRAM=0 finds no GPU and loads models on the CPU; FAKE_OLLAMA_VRAM_FILE, read at each start, wins", async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "fake-ollama-"))
    const cpu = spawnOllama({ OLLAMA_HOST: `127.0.0.1:${await freePort()}`, FAKE_OLLAMA_VRAM: "0", FAKE_OLLAMA_MODELS: "llama3.2" })
    await cpu.waitForStderr(/msg="vram-based default context" total_vram="0 B" default_num_ctx=4096$/m)
    expect(cpu.stderr()).toMatch(/source=types\.go:50 msg="inference compute" id=cpu library=cpu compute="" name=cpu description=cpu /)
    const port = /Listening on 127\.0\.0\.1:(\d+)/.exec(cpu.stderr())![1]
    await post(`http://127.0.0.1:${port}/api/generate`, { model: "llama3.2", keep_alive: -1 })
    const ps = JSON.parse((await raw(`http://127.0.0.1:${port}/api/ps`)).text)
    expect(ps.models).toEqual([expect.objectContaining({ name: "llama3.2:latest", size_vram: 0 })])
    cpu.child.kill("SIGTERM")
    await cpu.exited

    const file = path.join(dir, "vram")
    writeFileSync(file, "48GiB\n")
    const big = spawnOllama({ OLLAMA_HOST: `127.0.0.1:${await freePort()}`, FAKE_OLLAMA_VRAM: "0", FAKE_OLLAMA_VRAM_FILE: file })
    await big.waitForStderr(/msg="vram-based default context" total_vram="48\.0 GiB" default_num_ctx=262144$/m)
    expect(big.stderr()).toMatch(/msg="inference compute" .*library=CUDA .*total="48\.0 GiB"/)
    big.child.kill("SIGTERM")
    await big.exited
  })

  it("fails at once with Go's error when the port is taken", async () => {
    const holder = net.createServer().listen(0, "127.0.0.1")
    await once(holder, "listening")
    const { port } = holder.address() as AddressInfo
    try {
      const ollama = spawnOllama({ OLLAMA_HOST: `127.0.0.1:${port}` })
      expect((await ollama.exited).code).toBe(1)
      expect(ollama.stderr()).toBe(`Error: listen tcp 127.0.0.1:${port}: bind: address already in use\n`)
    } finally {
      holder.close()
    }
  })

  it("with FAKE_OLLAMA_IGNORE_SIGTERM survives SIGTERM until SIGKILL", async () => {
    const port = await freePort()
    const ollama = spawnOllama({ OLLAMA_HOST: `127.0.0.1:${port}`, FAKE_OLLAMA_IGNORE_SIGTERM: "1" })
    await ollama.waitForStderr(/Listening on/)
    ollama.child.kill("SIGTERM")
    await ollama.waitForStderr(/ignoring SIGTERM/)
    expect((await raw(`http://127.0.0.1:${port}/`)).status).toBe(200)
    ollama.child.kill("SIGKILL")
    expect(await ollama.exited).toEqual({ code: null, signal: "SIGKILL" })
  })

  it("records what it receives, and exits 1 when told to crash mid-stream", async () => {
    const port = await freePort()
    const record = path.join(mkdtempSync(path.join(os.tmpdir(), "fake-ollama-")), "requests.jsonl")
    const ollama = spawnOllama({
      OLLAMA_HOST: `127.0.0.1:${port}`,
      FAKE_OLLAMA_RECORD_FILE: record,
      FAKE_OLLAMA_CRASH_AFTER_CHUNKS: "2",
      FAKE_OLLAMA_MODELS: "llama3.2"
    })
    await ollama.waitForStderr(/Listening on/)
    const { res } = await open(`http://127.0.0.1:${port}/api/generate`, { model: "llama3.2", prompt: "x" })
    const result = await readToEnd(res)
    expect([result.complete, lines(result.text).length]).toEqual([false, 2])
    expect((await ollama.exited).code).toBe(1)
    const recorded = readFileSync(record, "utf8").trim().split("\n").map((l) => JSON.parse(l))
    expect(recorded).toEqual([
      expect.objectContaining({ method: "POST", path: "/api/generate", body: "{\"model\":\"llama3.2\",\"prompt\":\"x\"}" })
    ])
  })

  it("prints its version, from the server when one runs", async () => {
    const none = spawnOllama({ OLLAMA_HOST: `127.0.0.1:${await freePort()}` }, ["--version"])
    expect((await none.exited).code).toBe(0)
    expect(none.stdout()).toBe("Warning: could not connect to a running Ollama instance\nWarning: client version is 0.32.15\n")
    const running = spawnOllama({ OLLAMA_HOST: fake.url }, ["-v"])
    expect((await running.exited).code).toBe(0)
    expect(running.stdout()).toBe("ollama version is 0.32.15\n")
  })
})
