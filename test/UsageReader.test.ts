import { describe, expect, it } from "@effect/vitest"
import { classify, type UsageFormat } from "../src/exchange/Classify.js"
import { UsageEventFilter } from "../src/exchange/IncludeUsage.js"
import { type Line, LINE_LIMIT, LineReader, TailLines } from "../src/exchange/Lines.js"
import { readAnswer } from "./support/exchange.js"

const NDJSON = { "content-type": "application/x-ndjson" }
const JSON_TYPE = { "content-type": "application/json; charset=utf-8" }
const SSE = { "content-type": "text/event-stream" }

const FIGURES = {
  total_duration: 10706818083,
  load_duration: 6338219291,
  prompt_eval_count: 26,
  prompt_eval_duration: 130079000,
  eval_count: 259,
  eval_duration: 4232710000
}

const chatStream = (tokens: number, final: Record<string, unknown> = {}) => {
  const lines: Array<string> = []
  for (let i = 0; i < tokens; i++) {
    lines.push(
      JSON.stringify({
        model: "llama3.2",
        created_at: "2026-08-20T10:00:00.1Z",
        message: { role: "assistant", content: `tok${i} "q" 🦙` },
        done: false
      })
    )
  }
  lines.push(JSON.stringify({
    model: "llama3.2",
    created_at: "2026-08-20T10:00:01.123456789Z",
    message: { role: "assistant", content: "" },
    done: true,
    done_reason: "stop",
    ...FIGURES,
    ...final
  }))
  return Buffer.from(lines.map((l) => `${l}\n`).join(""))
}

/** The body in chunks of the given sizes (the last size repeats). */
const chunked = (body: Buffer, sizes: ReadonlyArray<number>): Array<Buffer> => {
  const out: Array<Buffer> = []
  let at = 0
  let i = 0
  while (at < body.length) {
    const size = sizes[Math.min(i++, sizes.length - 1)]!
    out.push(body.subarray(at, at + size))
    at += size
  }
  return out
}

/** Every way of cutting the body in two, plus byte by byte and a few odd sizes. */
const splits = function*(body: Buffer): Generator<Array<Buffer>> {
  yield [body]
  yield chunked(body, [1])
  yield chunked(body, [7, 13, 3])
  for (let cut = 1; cut < body.length; cut++) yield [body.subarray(0, cut), body.subarray(cut)]
}

/** An inference endpoint of each usage format. */
const PATHS: Record<Exclude<UsageFormat, "none">, string> = {
  native: "/api/chat",
  openai: "/v1/chat/completions",
  anthropic: "/v1/messages",
  responses: "/v1/responses",
  transcription: "/v1/audio/transcriptions"
}

/** What the exchange's reading made of an answer in `format`. */
const meter = (format: Exclude<UsageFormat, "none">, headers: Record<string, string>, chunks: Iterable<Buffer>, status = 200) => {
  const reading = readAnswer(PATHS[format], headers, chunks, status)
  const answer = reading.answer!
  return {
    usage: answer.usage,
    measured: answer.measured,
    failed: answer.failed,
    firstModel: answer.firstModel,
    loadOnly: reading.loadOnly,
    stream: reading.stream,
    firstChunkAt: reading.firstChunkAt,
    estimated: answer.estimated,
    countedBy: answer.countedBy
  }
}

const expectNativeFigures = (m: ReturnType<typeof meter>) => {
  expect(m.measured).toBe(true)
  expect(m.usage).toMatchObject({
    model: "llama3.2",
    doneReason: "stop",
    totalDuration: FIGURES.total_duration,
    loadDuration: FIGURES.load_duration,
    promptEvalCount: FIGURES.prompt_eval_count,
    promptEvalDuration: FIGURES.prompt_eval_duration,
    evalCount: FIGURES.eval_count,
    evalDuration: FIGURES.eval_duration
  })
}

describe("the usage format of a request", () => {
  it("meters the inference endpoints only, POST only", () => {
    const usageOf = (method: string, path: string) => classify(method, path).usage
    expect(usageOf("POST", "/api/chat")).toBe("native")
    expect(usageOf("POST", "/api/embeddings")).toBe("native")
    expect(usageOf("POST", "/v1/completions")).toBe("openai")
    expect(usageOf("POST", "/v1/messages")).toBe("anthropic")
    expect(usageOf("GET", "/api/chat")).toBe("none")
    expect(usageOf("POST", "/api/pull")).toBe("none")
    expect(usageOf("POST", "__proto__")).toBe("none")
  })
})

const text = (line: Line) => (Buffer.isBuffer(line) ? line.toString() : "long")

describe("TailLines", () => {
  const lastOf = (chunks: Iterable<Buffer>) => {
    const reader = new TailLines(1)
    for (const chunk of chunks) reader.push(chunk)
    const line = reader.end().at(-1)
    return line === undefined ? undefined : text(line)
  }

  it("finds the last line whatever the chunk boundaries", () => {
    const body = Buffer.from(`{"a":1}\n{"b":22}\n\n{"c":333}\n`)
    for (const chunks of splits(body)) expect(lastOf(chunks)).toBe(`{"c":333}`)
  })

  it("takes a body without a final newline as its last line", () => {
    const body = Buffer.from(`{"model":"m","embeddings":[[0.1,0.2]],"total_duration":5}`)
    for (const chunks of splits(body)) expect(lastOf(chunks)).toBe(body.toString())
  })

  it("returns nothing for an empty or blank body", () => {
    expect(lastOf([])).toBeUndefined()
    expect(lastOf([Buffer.from("\n\n \r\n")])).toBeUndefined()
  })

  it("keeps the lines of the last pieces, in order", () => {
    const body = Buffer.from("data: 1\n\ndata: 22\n\nevent: x\ndata: 333\n\n")
    for (const chunks of splits(body)) {
      const reader = new TailLines(6)
      for (const chunk of chunks) reader.push(chunk)
      const lines = reader.end().map(text)
      expect(lines.length).toBeGreaterThanOrEqual(1)
      expect(["data: 1", "data: 22", "event: x", "data: 333"].slice(-lines.length)).toEqual(lines)
    }
  })
})

describe("LineReader", () => {
  it("hands over every line once, split or coalesced", () => {
    const body = Buffer.from("data: 1\n\ndata: 22\n\nevent: x\ndata: 333\n\n")
    for (const chunks of splits(body)) {
      const lines: Array<string> = []
      const reader = new LineReader((line: Line) => lines.push(text(line)))
      for (const chunk of chunks) reader.push(chunk)
      reader.end()
      expect(lines).toEqual(["data: 1", "", "data: 22", "", "event: x", "data: 333", ""])
    }
  })
})

describe("reading usage, native", () => {
  it("reads the done object of an NDJSON stream at every chunk boundary", () => {
    const body = chatStream(3)
    for (const chunks of splits(body)) {
      const m = meter("native", NDJSON, chunks)
      expectNativeFigures(m)
      expect(m.stream).toBe(true)
      expect(m.usage.createdAt).toBe("2026-08-20T10:00:01.123456789Z")
    }
  })

  it("reads a single object (stream:false) without a trailing newline", () => {
    const body = Buffer.from(
      JSON.stringify({
        model: "llama3.2",
        created_at: "x",
        message: { role: "assistant", content: "Hi" },
        done_reason: "stop",
        done: true,
        ...FIGURES
      })
    )
    for (const chunks of splits(body)) {
      const m = meter("native", JSON_TYPE, chunks)
      expectNativeFigures(m)
      expect(m.stream).toBe(false)
    }
  })

  it("counts figures Ollama left out (zero) as 0", () => {
    const m = meter("native", NDJSON, [
      Buffer.from(`{"model":"m","created_at":"t","response":"","done":true,"done_reason":"length","total_duration":7,"eval_count":2}\n`)
    ])
    expect(m.usage).toMatchObject({ totalDuration: 7, loadDuration: 0, promptEvalCount: 0, evalCount: 2, doneReason: "length" })
  })

  it("reads /api/embed and leaves /api/embeddings without figures", () => {
    const embed = meter("native", JSON_TYPE, [
      Buffer.from(
        `{"model":"nomic-embed-text","embeddings":[[0.1,-0.2]],"total_duration":14143917,"load_duration":1019500,"prompt_eval_count":8}`
      )
    ])
    expect(embed.measured).toBe(true)
    expect(embed.usage).toMatchObject({
      model: "nomic-embed-text",
      promptEvalCount: 8,
      totalDuration: 14143917,
      evalCount: 0,
      doneReason: null
    })
    const legacy = meter("native", JSON_TYPE, [Buffer.from(`{"embedding":[0.1,0.2]}`)])
    expect(legacy.measured).toBe(false)
    expect(legacy.usage.promptEvalCount).toBeNull()
  })

  it("marks load and unload answers", () => {
    const load = meter("native", JSON_TYPE, [Buffer.from(`{"model":"m","created_at":"t","response":"","done":true,"done_reason":"load"}`)])
    expect(load.loadOnly).toBe(true)
    const unload = meter("native", JSON_TYPE, [
      Buffer.from(`{"model":"m","created_at":"t","response":"","done":true,"done_reason":"unload"}`)
    ])
    expect(unload.loadOnly).toBe(true)
    expect(meter("native", NDJSON, [chatStream(1)]).loadOnly).toBe(false)
  })

  it("notices a stream that ends in an error object", () => {
    const body = Buffer.from(
      `{"model":"m","created_at":"t","response":"a","done":false}\n{"error":"llama runner process has terminated"}\n`
    )
    const m = meter("native", NDJSON, [body])
    expect(m.failed).toBe(true)
    expect(m.measured).toBe(false)
    expect(m.firstModel).toBe("m")
  })

  it("names the model of a stream cut off before its figures", () => {
    const m = meter("native", NDJSON, [chatStream(5).subarray(0, 150)])
    expect(m.measured).toBe(false)
    expect(m.firstModel).toBe("llama3.2")
    expect(m.firstChunkAt).not.toBeNull()
  })

  it("reads the figures of a done line of many MB (a long context)", () => {
    const context = Array.from({ length: 700_000 }, (_, i) => (i * 7919) % 128000)
    const done = JSON.stringify({ model: "llama3.2", created_at: "t", response: "", done: true, done_reason: "stop", context, ...FIGURES })
    expect(done.length).toBeGreaterThan(4 * LINE_LIMIT)
    const body = Buffer.from(`{"model":"llama3.2","response":"a","done":false}\n${done}\n`)
    for (const size of [1000, 65536, 1_000_003]) expectNativeFigures(meter("native", NDJSON, chunked(body, [size])))
  })

  it("skips a huge line that is not the last and reads the done line after it", () => {
    const image = JSON.stringify({ model: "llama3.2", created_at: "t", response: "x".repeat(3 * LINE_LIMIT), done: false })
    const body = Buffer.concat([Buffer.from(`${image}\n`), chatStream(1)])
    const m = meter("native", NDJSON, chunked(body, [65536]))
    expectNativeFigures(m)
  })

  it("reads the figures of a huge single object (a batch of embeddings)", () => {
    const vectors = Array.from({ length: 200 }, (_, i) => Array.from({ length: 768 }, (_, j) => Math.sin(i * 768 + j)))
    const body = Buffer.from(
      JSON.stringify({ model: "nomic-embed-text", embeddings: vectors, total_duration: 5, load_duration: 1, prompt_eval_count: 1600 })
    )
    expect(body.length).toBeGreaterThan(LINE_LIMIT)
    const m = meter("native", JSON_TYPE, chunked(body, [65536]))
    expect(m.measured).toBe(true)
    expect(m.usage).toMatchObject({ model: "nomic-embed-text", promptEvalCount: 1600, totalDuration: 5 })
  })

  it("is not fooled by figure-like text inside a huge answer", () => {
    const fake = `"eval_count":999999,"done":true,"usage":{"prompt_tokens":5}`
    const answer = JSON.stringify({ model: "m", created_at: "t", response: fake.repeat(50_000), done: false })
    const m = meter("native", NDJSON, chunked(Buffer.from(`${answer}\n`), [65536]))
    expect(m.measured).toBe(false)
    // Not Ollama's figures: the one chunk the client received, as an estimate.
    expect(m.usage.evalCount).toBe(1)
    expect(m.estimated).toBe(true)
  })
})

const sse = (events: ReadonlyArray<unknown>) =>
  Buffer.from(events.map((e) => (typeof e === "string" ? e : `data: ${JSON.stringify(e)}\n\n`)).join(""))

const chunk = (content: string, finish: string | null = null, extra: Record<string, unknown> = {}) => ({
  id: "chatcmpl-417",
  object: "chat.completion.chunk",
  created: 1755600000,
  model: "llama3.2",
  system_fingerprint: "fp_ollama",
  choices: [{ index: 0, delta: { role: "assistant", content }, finish_reason: finish }],
  ...extra
})

const USAGE_EVENT = {
  id: "chatcmpl-417",
  object: "chat.completion.chunk",
  created: 1755600000,
  model: "llama3.2",
  system_fingerprint: "fp_ollama",
  choices: [],
  usage: { prompt_tokens: 26, completion_tokens: 2, total_tokens: 28 }
}

const chatSse = (withUsage: boolean) =>
  sse([chunk("Hel"), chunk("lo"), chunk("", "stop"), ...(withUsage ? [USAGE_EVENT] : []), "data: [DONE]\n\n"])

/** /v1/completions as Ollama streams it with include_usage: a zero usage on every chunk. */
const completionSse = (withUsage: boolean) => {
  const zero = withUsage ? { usage: { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 } } : {}
  const text = (t: string, finish: string | null) => ({
    id: "cmpl-1",
    object: "text_completion",
    created: 1755600000,
    choices: [{ text: t, index: 0, finish_reason: finish }],
    model: "llama3.2",
    system_fingerprint: "fp_ollama",
    ...zero
  })
  const final = {
    id: "cmpl-1",
    object: "text_completion",
    created: 1755600000,
    choices: [],
    model: "llama3.2",
    system_fingerprint: "fp_ollama",
    usage: { prompt_tokens: 4, completion_tokens: 2, total_tokens: 6 }
  }
  return sse([text("Hi", null), text("!", "stop"), ...(withUsage ? [final] : []), "data: [DONE]\n\n"])
}

describe("reading usage, OpenAI", () => {
  it("reads the usage event of a chat stream at every chunk boundary", () => {
    for (const chunks of splits(chatSse(true))) {
      const m = meter("openai", SSE, chunks)
      expect(m.measured).toBe(true)
      expect(m.stream).toBe(true)
      expect(m.usage).toMatchObject({ model: "llama3.2", promptEvalCount: 26, evalCount: 2, doneReason: "stop", totalDuration: null })
    }
  })

  it("takes the last usage of a /v1/completions stream, not the zero ones", () => {
    const m = meter("openai", SSE, [completionSse(true)])
    expect(m.usage).toMatchObject({ promptEvalCount: 4, evalCount: 2, doneReason: "stop" })
  })

  it("has no figures for a stream without usage", () => {
    const m = meter("openai", SSE, [chatSse(false)])
    expect(m.measured).toBe(false)
    expect(m.firstModel).toBe("llama3.2")
  })

  it("reads a single chat.completion and /v1/embeddings", () => {
    const completion = meter("openai", { "content-type": "application/json" }, [
      Buffer.from(
        JSON.stringify({
          id: "c",
          object: "chat.completion",
          model: "llama3.2",
          choices: [{ index: 0, message: { role: "assistant", content: "Hi" }, finish_reason: "length" }],
          usage: { prompt_tokens: 3, completion_tokens: 9, total_tokens: 12 }
        }) + "\n"
      )
    ])
    expect(completion.usage).toMatchObject({ model: "llama3.2", promptEvalCount: 3, evalCount: 9, doneReason: "length" })
    expect(completion.stream).toBe(false)
    const embeddings = meter("openai", { "content-type": "application/json" }, [
      Buffer.from(
        `{"object":"list","data":[{"object":"embedding","embedding":[0.1],"index":0}],"model":"all-minilm","usage":{"prompt_tokens":5,"total_tokens":5}}\n`
      )
    ])
    expect(embeddings.usage).toMatchObject({ model: "all-minilm", promptEvalCount: 5, evalCount: 0 })
  })

  it("reads the usage of huge embeddings from the end of the body", () => {
    const data = Array.from(
      { length: 100 },
      (_, i) => ({ object: "embedding", embedding: Array.from({ length: 768 }, (_, j) => Math.cos(i + j)), index: i })
    )
    const body = Buffer.from(
      JSON.stringify({ object: "list", data, model: "all-minilm", usage: { prompt_tokens: 700, total_tokens: 700 } }) + "\n"
    )
    expect(body.length).toBeGreaterThan(LINE_LIMIT)
    const m = meter("openai", { "content-type": "application/json" }, chunked(body, [65536]))
    expect(m.usage).toMatchObject({ model: "all-minilm", promptEvalCount: 700 })
  })

  it("notices a stream that stops short of [DONE]", () => {
    const m = meter("openai", SSE, [sse([chunk("a"), chunk("b")])])
    expect(m.failed).toBe(true)
    expect(meter("openai", SSE, [chatSse(false)]).failed).toBe(false)
  })

  it("notices an error event", () => {
    const m = meter("openai", SSE, [sse([chunk("a"), { error: { message: "boom", type: "api_error" } }])])
    expect(m.failed).toBe(true)
  })
})

describe("reading usage, Anthropic and Responses", () => {
  it("adds the input tokens of message_start to the output tokens of message_delta", () => {
    const body = Buffer.from([
      `event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"llama3.2","content":[],"stop_reason":null,"usage":{"input_tokens":21,"output_tokens":0}}}\n\n`,
      `event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}\n\n`,
      `event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":12}}\n\n`,
      `event: message_stop\ndata: {"type":"message_stop"}\n\n`
    ].join(""))
    for (const chunks of splits(body)) {
      const m = meter("anthropic", SSE, chunks)
      expect(m.usage).toMatchObject({ model: "llama3.2", promptEvalCount: 21, evalCount: 12, doneReason: "end_turn" })
    }
  })

  it("notices an Anthropic stream that stops short of message_stop", () => {
    const m = meter("anthropic", SSE, [
      Buffer.from(
        `event: message_start\ndata: {"type":"message_start","message":{"model":"m","usage":{"input_tokens":2,"output_tokens":0}}}\n\n`
      )
    ])
    expect(m.failed).toBe(true)
    expect(m.usage.promptEvalCount).toBe(2)
  })

  it("reads a single Anthropic message", () => {
    const m = meter("anthropic", JSON_TYPE, [
      Buffer.from(
        `{"id":"msg_1","type":"message","role":"assistant","model":"llama3.2","content":[{"type":"text","text":"Hi"}],"stop_reason":"max_tokens","usage":{"input_tokens":4,"output_tokens":8}}`
      )
    ])
    expect(m.usage).toMatchObject({ model: "llama3.2", promptEvalCount: 4, evalCount: 8, doneReason: "max_tokens" })
  })

  it("reads response.completed of a Responses stream", () => {
    const body = Buffer.from([
      `event: response.created\ndata: {"type":"response.created","response":{"id":"r","object":"response","status":"in_progress","model":"llama3.2","usage":null}}\n\n`,
      `event: response.completed\ndata: {"type":"response.completed","response":{"id":"r","object":"response","status":"completed","model":"llama3.2","usage":{"input_tokens":9,"output_tokens":3,"total_tokens":12}}}\n\n`
    ].join(""))
    const m = meter("responses", SSE, [body])
    expect(m.usage).toMatchObject({ model: "llama3.2", promptEvalCount: 9, evalCount: 3, doneReason: "completed" })
  })
})

describe("a stream cut short is billed for the chunks the client received, as an estimate", () => {
  it("native: every NDJSON line before the cut is one token; Ollama's figures when they came", () => {
    const whole = chatStream(7)
    const cut = whole.subarray(0, whole.indexOf("\n", whole.indexOf("tok4")) + 1)
    for (const chunks of [[cut], chunked(cut, [5]), chunked(cut, [64])]) {
      expect(meter("native", NDJSON, chunks)).toMatchObject({
        measured: false,
        estimated: true,
        countedBy: "received_chunks",
        usage: { evalCount: 5, promptEvalCount: null, evalDuration: null }
      })
    }
    // Half a line is not a token the client could read.
    expect(meter("native", NDJSON, [cut, Buffer.from(`{"model":"llama3.2","mes`)]).usage.evalCount).toBe(5)
    expect(meter("native", NDJSON, [whole])).toMatchObject({ estimated: false, countedBy: "ollama" })
  })

  it("OpenAI: each data event is one token; the finish event and [DONE] are not", () => {
    const cut = sse([chunk("a"), chunk("b"), chunk("c")])
    for (const chunks of splits(cut)) {
      expect(meter("openai", SSE, chunks)).toMatchObject({ estimated: true, usage: { evalCount: 3, promptEvalCount: null } })
    }
    // A whole stream without the usage event (the proxy could not ask for it): its tokens, counted.
    expect(meter("openai", SSE, [chatSse(false)])).toMatchObject({ estimated: true, usage: { evalCount: 2 } })
    expect(meter("openai", SSE, [chatSse(true)])).toMatchObject({ estimated: false, countedBy: "ollama", usage: { evalCount: 2 } })
  })

  it("Anthropic: the deltas received; the input is message_start's, an estimate, never a count", () => {
    const body = Buffer.from([
      `event: message_start\ndata: {"type":"message_start","message":{"model":"llama3.2","usage":{"input_tokens":21,"output_tokens":0}}}\n\n`,
      `event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n`,
      `event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}\n\n`,
      `event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" there"}}\n\n`
    ].join(""))
    for (const chunks of splits(body)) {
      expect(meter("anthropic", SSE, chunks)).toMatchObject({
        measured: false,
        estimated: true,
        countedBy: "received_chunks",
        usage: { promptEvalCount: 21, evalCount: 2 }
      })
    }
  })

  it("Responses: the delta events received", () => {
    const event = (type: string, data: Record<string, unknown>) => `event: ${type}\ndata: ${JSON.stringify({ ...data, type })}\n\n`
    const body = Buffer.from([
      event("response.created", { response: { model: "m", status: "in_progress", usage: null } }),
      event("response.output_item.added", { output_index: 0 }),
      event("response.output_text.delta", { delta: "a" }),
      event("response.output_text.delta", { delta: "b" }),
      event("response.output_text.delta", { delta: "c" })
    ].join(""))
    expect(meter("responses", SSE, chunked(body, [17]))).toMatchObject({ estimated: true, usage: { evalCount: 3 } })
  })

  it("an answer that delivered no token, or did not stream, estimates nothing", () => {
    expect(meter("native", NDJSON, [Buffer.from(`{"error":"model runner has unexpectedly stopped"}\n`)])).toMatchObject({
      estimated: false,
      countedBy: null,
      usage: { evalCount: null }
    })
    expect(meter("native", JSON_TYPE, [Buffer.from(`{"model":"m","response":"par`)])).toMatchObject({ estimated: false })
  })
})

describe("transcriptions", () => {
  it("carry no counts: the text's tokens are estimated, and said to be", () => {
    const answer = meter("transcription", JSON_TYPE, [Buffer.from(`{"text":"Hello from the fake Ollama"}\n`)])
    expect(answer).toMatchObject({ estimated: true, countedBy: "response_estimate", usage: { evalCount: 7, promptEvalCount: null } })
    expect(meter("transcription", JSON_TYPE, [Buffer.from(`{"error":{"message":"no"}}`)], 400)).toMatchObject({ estimated: false })
  })
})

describe("UsageEventFilter", () => {
  const filtered = (chunks: Iterable<Buffer>, stripZeroUsage: boolean) => {
    const filter = new UsageEventFilter(stripZeroUsage)
    const out: Array<Buffer> = []
    for (const c of chunks) out.push(filter.push(c))
    out.push(filter.end())
    return Buffer.concat(out).toString()
  }

  it("removes the usage event of a chat stream at every chunk boundary", () => {
    const expected = chatSse(false).toString()
    for (const chunks of splits(chatSse(true))) expect(filtered(chunks, false)).toBe(expected)
  })

  it("removes the usage event and the zero usages of a /v1/completions stream", () => {
    const expected = completionSse(false).toString()
    for (const chunks of splits(completionSse(true))) expect(filtered(chunks, true)).toBe(expected)
  })

  it("relays whole events at once, and the very chunk when nothing changes", () => {
    const filter = new UsageEventFilter(false)
    const event = sse([chunk("Hel")])
    expect(filter.push(event)).toBe(event)
    expect(filter.push(event.subarray(0, 10)).length).toBe(0)
    expect(filter.push(event.subarray(10)).toString()).toBe(event.toString())
  })

  it("relays an event too long to hold as it comes", () => {
    const big = sse([chunk("x".repeat(3 * 1024 * 1024))])
    const body = Buffer.concat([big, chatSse(true)])
    const filter = new UsageEventFilter(false)
    const parts = chunked(body, [65536]).map((c) => filter.push(c))
    parts.push(filter.end())
    expect(Buffer.concat(parts).toString()).toBe(Buffer.concat([big, chatSse(false)]).toString())
    expect(Math.max(...parts.map((p) => p.length))).toBeLessThan(2 * 1024 * 1024)
  })
})
