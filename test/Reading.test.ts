import { describe, expect, it } from "@effect/vitest"
import { type ExchangeTap, observe } from "../src/http/Exchange.js"
import { classify, responseUsage } from "../src/telemetry/GenAi.js"
import { apiKindOf, ExchangeMeter, readingOf } from "../src/usage/Meter.js"
import type { UsageRecord } from "../src/usage/Record.js"
import { makeUsageTap } from "../src/usage/Tap.js"
import { ndjson, play } from "./support/exchange.js"

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

/** A tap that reads the exchange's shared meter the way telemetry does, counting what it feeds. */
const readingTap = (seen: Array<{ meter: ExchangeMeter; fed: number }>): ExchangeTap => (context) => {
  const kind = apiKindOf(context.req.method, context.req.url ?? "/")
  if (kind === undefined) return undefined
  const meter = readingOf(context, kind)
  const entry = { meter, fed: 0 }
  seen.push(entry)
  if (!meter.claim()) return { onEnd: () => meter.end() }
  return {
    onRequestData: meter.requestData,
    onResponseStart: (status, headers) => meter.responseStart(status, headers),
    onData: (chunk) => {
      entry.fed++
      meter.push(chunk)
    },
    onEnd: () => meter.end()
  }
}

describe("one reading per exchange", () => {
  it("is created once per exchange context and claimed once", () => {
    const a = {}
    const meter = readingOf(a, "native")
    expect(readingOf(a, "native")).toBe(meter)
    expect(readingOf({}, "native")).not.toBe(meter)
    expect(meter.claim()).toBe(true)
    expect(meter.claim()).toBe(false)
  })

  it("the usage tap reads the meter another tap feeds, and feeds it itself when alone", () => {
    const records: Array<UsageRecord> = []
    const usage = makeUsageTap((record) => records.push(record))
    const seen: Array<{ meter: ExchangeMeter; fed: number }> = []
    play((context) => observe([readingTap(seen), usage], context), chat)
    play(usage, chat)
    expect(seen).toHaveLength(1)
    expect(seen[0]!.fed).toBe(chat.response.chunks.length)
    const [shared, alone] = records
    const figures = { model: "llama3.2", stream: true, done_reason: "stop", prompt_eval_count: 26, eval_count: 259 }
    expect(shared).toMatchObject(figures)
    expect(alone).toMatchObject(figures)
    expect(seen[0]!.meter.request.model).toBe("llama3.2")
  })

  it("a tap that did not create the reading gets no feeding hooks", () => {
    const usage = makeUsageTap(() => undefined)
    play((context) => {
      readingOf(context, "native").claim()
      const observer = usage(context)
      expect(observer?.onData).toBeUndefined()
      expect(observer?.onResponseStart).toBeUndefined()
      expect(observer?.onRequestData).toBeUndefined()
      return observer
    }, chat)
  })
})

describe("responseUsage, other API families", () => {
  const read = (path: string, contentType: string, body: string, status = 200) => {
    const endpoint = classify("POST", path)
    const meter = new ExchangeMeter(endpoint.kind!)
    meter.responseStart(status, { "content-type": contentType })
    meter.push(Buffer.from(body))
    meter.end()
    return responseUsage(meter, endpoint.operation!)
  }

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
      )?.error
    )
      .toBe("busy")
    expect(read("/v1/chat/completions", "text/event-stream", `data: {"error":{"message":"boom"}}\n\n`)?.error).toBe("boom")
    expect(read("/api/chat", "application/json", `{"error":"model 'x' not found"}`, 404)).toBeUndefined()
  })
})
