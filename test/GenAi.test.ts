import { describe, expect, it } from "@effect/vitest"
import { classify } from "../src/exchange/Classify.js"
import { RequestScanner } from "../src/exchange/RequestScan.js"
import { responseUsage } from "../src/telemetry/GenAi.js"
import { readAnswer } from "./support/exchange.js"

/** Feeds `text` in pieces of `size` bytes, the way a socket may cut it. */
const pieces = (text: string | Buffer, size: number) => {
  const bytes = Buffer.isBuffer(text) ? text : Buffer.from(text)
  const out: Array<Buffer> = []
  for (let i = 0; i < bytes.length; i += size) out.push(bytes.subarray(i, i + size))
  return out
}

const scan = (body: string, size = 1 << 20) => {
  const scanner = new RequestScanner()
  for (const piece of pieces(body, size)) scanner.write(piece)
  return { model: scanner.model, stream: scanner.stream }
}

const CONTENT_TYPES = { ndjson: "application/x-ndjson", sse: "text/event-stream", json: "application/json; charset=utf-8" }

/** The GenAI view of what the exchange's reading made of `body`, answered on `path`. */
const read = (path: string, format: keyof typeof CONTENT_TYPES, body: string | Buffer, size = 1 << 20) =>
  responseUsage(readAnswer(path, { "content-type": CONTENT_TYPES[format] }, pieces(body, size)), classify("POST", path).genAi!)

describe("classify", () => {
  it.each([
    ["POST", "/api/chat", "/api/chat", "chat"],
    // Ollama answers a trailing slash with a redirect (307), not with a generation.
    ["POST", "/api/generate/", "other", undefined],
    ["POST", "/api/embed", "/api/embed", "embeddings"],
    ["POST", "/v1/chat/completions", "/v1/chat/completions", "chat"],
    ["POST", "/v1/completions", "/v1/completions", "text_completion"],
    ["POST", "/v1/embeddings", "/v1/embeddings", "embeddings"],
    ["POST", "/v1/messages", "/v1/messages", "chat"],
    ["GET", "/api/chat", "/api/chat", undefined],
    ["GET", "/api/tags", "/api/tags", undefined],
    ["HEAD", "/api/blobs/sha256:abc", "/api/blobs/:digest", undefined],
    ["GET", "/v1/models/llama3.2", "/v1/models/:model", undefined],
    ["GET", "/wp-admin/x.php", "other", undefined]
  ])("%s %s is %s (%s)", (method, path, route, operation) => {
    const endpoint = classify(method, path)
    expect(endpoint.route).toBe(route)
    expect(endpoint.genAi).toBe(operation)
  })
})

describe("RequestScanner", () => {
  it("finds the top-level model and stream flag, whatever their place", () => {
    expect(scan(`{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}`)).toEqual({ model: "llama3.2", stream: undefined })
    expect(scan(`{"messages":[{"role":"user","content":"say \\"model\\": no"}],"stream":false,"model":"qwen3:8b"}`))
      .toEqual({ model: "qwen3:8b", stream: false })
    expect(scan(` { "stream" : true , "model" : "a/b:latest" } `)).toEqual({ model: "a/b:latest", stream: true })
  })

  it("ignores nested keys named model or stream", () => {
    expect(scan(`{"options":{"model":"inner","stream":true},"format":{"model":"x"},"model":"outer"}`))
      .toEqual({ model: "outer", stream: undefined })
    expect(scan(`{"messages":[{"model":"m","stream":false}]}`)).toEqual({ model: undefined, stream: undefined })
  })

  it("gives the same answer however the body is cut, escapes included", () => {
    const body = `{"prompt":"a \\\\\\" b \\\\","images":["${"QUJD".repeat(5000)}"],"model":"m\\u00e9\\"x","stream":true}`
    const whole = scan(body)
    expect(whole).toEqual({ model: "mé\"x", stream: true })
    for (const size of [1, 2, 3, 7, 64, 1000]) expect(scan(body, size)).toEqual(whole)
  })

  it("keeps nothing for a body that is not a JSON object", () => {
    expect(scan("not json")).toEqual({ model: undefined, stream: undefined })
    expect(scan("")).toEqual({ model: undefined, stream: undefined })
  })
})

describe("responseUsage: the reading's figures in GenAI terms", () => {
  const chatStream = [
    `{"model":"llama3.2","created_at":"t","message":{"role":"assistant","content":"Hi"},"done":false}`,
    `{"model":"llama3.2","created_at":"t","message":{"role":"assistant","content":" there"},"done":false}`,
    `{"model":"llama3.2","created_at":"t","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","total_duration":10,"prompt_eval_count":26,"eval_count":259}`
  ].join("\n") + "\n"

  it("reads Ollama's final NDJSON object, however the stream is cut", () => {
    for (const size of [1, 5, 40, 1 << 20]) {
      expect(read("/api/chat", "ndjson", chatStream, size)).toEqual({
        model: "llama3.2",
        inputTokens: 26,
        outputTokens: 259,
        finishReasons: ["stop"]
      })
    }
  })

  it("counts omitted counters as zero and keeps a final line without newline", () => {
    const body = `{"model":"m","response":"x","done":false}\n{"model":"m","response":"","done":true,"done_reason":"length"}`
    expect(read("/api/generate", "ndjson", body, 3)).toEqual({ model: "m", inputTokens: 0, outputTokens: 0, finishReasons: ["length"] })
  })

  it("reports an error line that ends a stream", () => {
    const body = `{"model":"m","response":"x","done":false}\n{"error":"model runner has unexpectedly stopped"}\n`
    expect(read("/api/generate", "ndjson", body)?.error).toBe("model runner has unexpectedly stopped")
  })

  it("reads OpenAI SSE with include_usage", () => {
    const events = [
      `{"id":"c","object":"chat.completion.chunk","model":"llama3.2","choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"},"finish_reason":null}]}`,
      `{"id":"c","object":"chat.completion.chunk","model":"llama3.2","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":null}]}`,
      `{"id":"c","object":"chat.completion.chunk","model":"llama3.2","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}`,
      `{"id":"c","object":"chat.completion.chunk","model":"llama3.2","choices":[],"usage":{"prompt_tokens":26,"completion_tokens":2,"total_tokens":28}}`,
      `[DONE]`
    ]
    const body = events.map((e) => `data: ${e}\n\n`).join("")
    for (const size of [7, 1 << 20]) {
      expect(read("/v1/chat/completions", "sse", body, size)).toEqual({
        model: "llama3.2",
        inputTokens: 26,
        outputTokens: 2,
        finishReasons: ["stop"]
      })
    }
  })

  it("reads Anthropic's message stream: input tokens at the start, output at the end", () => {
    const body = [
      `event: message_start\ndata: {"type":"message_start","message":{"id":"m","model":"llama3.2","usage":{"input_tokens":12,"output_tokens":1}}}`,
      ...Array.from(
        { length: 20 },
        () => `event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}`
      ),
      `event: content_block_stop\ndata: {"type":"content_block_stop","index":0}`,
      `event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":20}}`,
      `event: message_stop\ndata: {"type":"message_stop"}`
    ].join("\n\n") + "\n\n"
    expect(read("/v1/messages", "sse", body, 9)).toEqual({
      model: "llama3.2",
      inputTokens: 12,
      outputTokens: 20,
      finishReasons: ["end_turn"]
    })
  })

  it("reads single JSON bodies: native, OpenAI, embeddings", () => {
    expect(
      read(
        "/api/chat",
        "json",
        `{"model":"m","message":{"role":"assistant","content":"\\"eval_count\\":9"},"done":true,"done_reason":"stop","prompt_eval_count":3,"eval_count":4}`,
        4
      )
    )
      .toEqual({ model: "m", inputTokens: 3, outputTokens: 4, finishReasons: ["stop"] })
    expect(
      read(
        "/v1/chat/completions",
        "json",
        `{"id":"x","object":"chat.completion","model":"m","choices":[{"index":0,"message":{},"finish_reason":"length"}],"usage":{"prompt_tokens":5,"completion_tokens":6}}\n`
      )
    )
      .toEqual({ model: "m", inputTokens: 5, outputTokens: 6, finishReasons: ["length"] })
    expect(read("/api/embed", "json", `{"model":"e","embeddings":[[0.1,0.2]],"total_duration":1,"prompt_eval_count":7}`))
      .toEqual({ model: "e", inputTokens: 7 })
    expect(read("/api/chat", "json", `{"error":"model 'x' not found"}`)).toEqual({ error: "model 'x' not found" })
  })

  it("reads the figures of a body too large to parse from its edges", () => {
    const vector = Array.from({ length: 200_000 }, (_, i) => (i % 7) / 7).join(",")
    const body = `{"model":"nomic-embed-text","embeddings":[[${vector}]],"total_duration":5,"load_duration":1,"prompt_eval_count":42}`
    expect(body.length).toBeGreaterThan(1 << 20)
    expect(read("/api/embed", "json", body, 65536)).toEqual({ model: "nomic-embed-text", inputTokens: 42 })
  })
})
