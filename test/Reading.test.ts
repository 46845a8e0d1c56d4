import { describe, expect, it } from "@effect/vitest"
import { classify } from "../src/exchange/Classify.js"
import type { ExchangeConsumer } from "../src/exchange/Exchange.js"
import { makeUsageReader, UsageReader } from "../src/exchange/UsageReader.js"
import { responseUsage } from "../src/telemetry/GenAi.js"
import type { UsageRecord } from "../src/usage/Record.js"
import { makeUsageRecords } from "../src/usage/Records.js"
import { ndjson, play, readAnswer } from "./support/exchange.js"

const chat = {
  url: "/api/chat",
  body: `{"model":"llama3.2","messages":[],"stream":true}`,
  response: {
    status: 200,
    headers: { "content-type": "application/x-ndjson" },
    chunks: ndjson([
      { model: "llama3.2", created_at: "t", message: { role: "assistant", content: "Hi" }, done: false },
      {
        model: "llama3.2",
        created_at: "t",
        message: { role: "assistant", content: "" },
        done: true,
        done_reason: "stop",
        prompt_eval_count: 26,
        eval_count: 259
      }
    ])
  }
}

/** A consumer that remembers the reading it was given at the end of each exchange. */
const watching = (seen: Array<unknown>): ExchangeConsumer => ({
  name: "watcher",
  open: () => ({ end: (exchange) => void seen.push(exchange.reading) })
})

/** A usage reader that breaks on the n-th body chunk, the way a bug in a reader would. */
class BreakingReader extends UsageReader {
  private chunks = 0
  constructor(private readonly breakAt: number) {
    super("native")
  }
  override push(chunk: Buffer) {
    if (++this.chunks === this.breakAt) throw new Error("reader bug")
    super.push(chunk)
  }
}

describe("one reading per exchange", () => {
  it("every consumer reads the same reading, fed once", () => {
    const records: Array<UsageRecord> = []
    const seen: Array<unknown> = []
    const { exchange } = play([watching(seen), makeUsageRecords((record) => records.push(record))], chat)
    expect(seen).toEqual([exchange.reading])
    expect(exchange.reading.requestModel).toBe("llama3.2")
    expect(exchange.reading.bytesOut).toBe(chat.response.chunks.join("").length)
    expect(records).toHaveLength(1)
    expect(records[0]).toMatchObject({
      model: "llama3.2",
      stream: true,
      done_reason: "stop",
      prompt_eval_count: 26,
      eval_count: 259,
      metering_error: null
    })
  })

  it("a reader that breaks neither throws into the relay nor goes unnoticed: the record says so", () => {
    const records: Array<UsageRecord> = []
    const { exchange } = play(makeUsageRecords((record) => records.push(record)), chat, () => new BreakingReader(2))
    expect(exchange.reading.meteringError).toBe("response body: reader bug")
    expect(records).toHaveLength(1)
    // What was read before the break stays; the final figures never came.
    expect(records[0]).toMatchObject({ status: 200, outcome: "completed", eval_count: null, metering_error: "response body: reader bug" })
  })
})

describe("responseUsage, other API families", () => {
  const read = (path: string, contentType: string, body: string, status = 200) =>
    responseUsage(readAnswer(path, { "content-type": contentType }, [body], status, makeUsageReader), classify("POST", path).genAi!)

  it("OpenAI embeddings: input tokens only", () => {
    expect(
      read("/v1/embeddings", "application/json", `{"object":"list","data":[],"model":"e","usage":{"prompt_tokens":4,"total_tokens":4}}`)
    )
      .toEqual({ model: "e", inputTokens: 4 })
  })

  it("Responses API: the completed event's usage and status", () => {
    const body = [
      `event: response.created\ndata: {"type":"response.created","response":{"model":"m","status":"in_progress"}}`,
      `event: response.completed\ndata: {"type":"response.completed","response":{"model":"m","status":"completed","usage":{"input_tokens":3,"output_tokens":5}}}`
    ].join("\n\n") + "\n\n"
    expect(read("/v1/responses", "text/event-stream", body)).toEqual({
      model: "m",
      inputTokens: 3,
      outputTokens: 5,
      finishReasons: ["completed"]
    })
  })

  it("error events keep their message; a non-2xx answer has no usage", () => {
    expect(
      read(
        "/v1/messages",
        "text/event-stream",
        `event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"busy"}}\n\n`
      )
        ?.error
    )
      .toBe("busy")
    expect(read("/v1/chat/completions", "text/event-stream", `data: {"error":{"message":"boom"}}\n\n`)?.error).toBe("boom")
    expect(read("/api/chat", "application/json", `{"error":"model 'x' not found"}`, 404)).toBeUndefined()
  })
})
