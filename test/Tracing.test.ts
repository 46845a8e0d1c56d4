import { HttpClient, HttpClientRequest } from "@effect/platform"
import { NodeHttpClient } from "@effect/platform-node"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { SpanKind, SpanStatusCode } from "@opentelemetry/api"
import type { ReadableSpan } from "@opentelemetry/sdk-trace-base"
import { Effect, Layer, Logger, type Tracer } from "effect"
import { createServer } from "node:net"
import type { AddressInfo } from "node:net"
import { Ollama } from "ollama"
import OpenAI from "openai"
import { configFromEnv } from "../src/Config.js"
import type { ExchangeConsumer } from "../src/exchange/Exchange.js"
import { makeTelemetryConsumer } from "../src/telemetry/Telemetry.js"
import { Tracing } from "../src/telemetry/Tracing.js"
import { startFakeOllama } from "./fake-ollama/server.mjs"
import { chatStream, play } from "./support/exchange.js"
import { scrape } from "./support/metrics.js"
import { FAKE_OLLAMA_BIN, type RunningProxy, spawnProxy, startProxy } from "./support/proxy.js"
import { attributesOf, otlpJsonSpans, startReceiver } from "./support/receiver.js"
import { spanRecorder } from "./support/spans.js"

const TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
const CLIENT_SPAN = "b7ad6b7169203331"
const TRACEPARENT = `00-${TRACE_ID}-${CLIENT_SPAN}-01`

/** A telemetry tap with tracing on, exporting to memory; `run` plays exchanges through it. */
const withTap = async <A>(env: Record<string, string>, run: (tap: ExchangeConsumer) => A) => {
  const recorder = spanRecorder()
  const tracing = Tracing.layer.pipe(Layer.provide(configFromEnv(env)), Layer.provide(recorder.layer), Layer.orDie)
  const result = await Effect.runPromise(Effect.map(makeTelemetryConsumer, run).pipe(Effect.provide(Layer.merge(tracing, quiet))))
  return { result, recorder }
}

/** The taps' access lines are tested in Logging.test.ts; here they would only fill the output. */
const quiet = Logger.remove(Logger.defaultLogger)

const byKind = (spans: ReadonlyArray<ReadableSpan>, kind: SpanKind) => spans.filter((s) => s.kind === kind)

describe("exchange spans", () => {
  it("a server span continuing the client's trace, a GenAI span inside it, traceparent on to Ollama", async () => {
    const { result: upstream, recorder } = await withTap(
      { OTEL_SERVICE_NAME: "edge", OTEL_RESOURCE_ATTRIBUTES: "region=eu" },
      (tap) =>
        play(tap, {
          url: "/api/chat",
          keyName: "bob",
          headers: {
            traceparent: TRACEPARENT,
            "user-agent": "ollama-js/0.6",
            "x-openwebui-user-id": "u-42",
            "x-openwebui-user-name": "Ada%20L."
          },
          body: JSON.stringify({ model: "llama3.2", messages: [{ role: "user", content: "hi" }] }),
          response: { status: 200, headers: { "content-type": "application/x-ndjson" }, chunks: chatStream("llama3.2", 26, 259) }
        }).upstreamHeaders
    )
    const [server] = byKind(recorder.spans(), SpanKind.SERVER)
    const [genAi] = byKind(recorder.spans(), SpanKind.CLIENT)
    expect(server!.name).toBe("POST /api/chat")
    expect(genAi!.name).toBe("chat llama3.2")

    expect(server!.spanContext().traceId).toBe(TRACE_ID)
    expect(server!.parentSpanContext?.spanId).toBe(CLIENT_SPAN)
    expect(genAi!.spanContext().traceId).toBe(TRACE_ID)
    expect(genAi!.parentSpanContext?.spanId).toBe(server!.spanContext().spanId)
    expect(upstream.traceparent).toBe(`00-${TRACE_ID}-${genAi!.spanContext().spanId}-01`)

    expect(server!.attributes).toMatchObject({
      "http.request.method": "POST",
      "http.route": "/api/chat",
      "url.path": "/api/chat",
      "http.response.status_code": 200,
      "user_agent.original": "ollama-js/0.6",
      "api_key.name": "bob",
      "ollama_proxy.outcome": "completed"
    })
    expect(server!.status.code).toBe(SpanStatusCode.UNSET)
    expect(genAi!.attributes).toMatchObject({
      "gen_ai.operation.name": "chat",
      "gen_ai.provider.name": "ollama",
      "gen_ai.request.model": "llama3.2",
      "gen_ai.request.stream": true,
      "gen_ai.response.model": "llama3.2",
      "gen_ai.response.finish_reasons": ["stop"],
      "gen_ai.usage.input_tokens": 26,
      "gen_ai.usage.output_tokens": 259,
      "server.address": "127.0.0.1",
      "server.port": 11434,
      "user.id": "u-42",
      "user.name": "Ada L.",
      "api_key.name": "bob"
    })
    expect(genAi!.attributes["gen_ai.response.time_to_first_chunk"]).toBeTypeOf("number")
    expect(genAi!.attributes).not.toHaveProperty("error.type")
    expect(server!.resource.attributes).toMatchObject({ "service.name": "edge", region: "eu" })
  })

  it("the resource names the RunPod worker, its pod id as service.instance.id; OTEL_RESOURCE_ATTRIBUTES wins", async () => {
    const { recorder } = await withTap(
      {
        RUNPOD_POD_ID: "pod-7x2k",
        RUNPOD_ENDPOINT_ID: "ep-91",
        RUNPOD_DC_ID: "EU-RO-1",
        OTEL_RESOURCE_ATTRIBUTES: "runpod.dc_id=override,region=eu"
      },
      (tap) =>
        play(tap, {
          url: "/api/tags",
          keyName: "bob",
          response: { status: 200, headers: { "content-type": "application/json" }, chunks: ["{}"] }
        })
    )
    const [server] = byKind(recorder.spans(), SpanKind.SERVER)
    expect(server!.resource.attributes).toMatchObject({
      "service.instance.id": "pod-7x2k",
      "runpod.pod_id": "pod-7x2k",
      "runpod.endpoint_id": "ep-91",
      "runpod.dc_id": "override",
      region: "eu"
    })
  })

  it("no GenAI span for other endpoints; Ollama gets the server span as parent", async () => {
    const { result: upstream, recorder } = await withTap(
      {},
      (tap) =>
        play(tap, {
          method: "GET",
          url: "/api/tags",
          response: { status: 200, headers: { "content-type": "application/json" }, chunks: [`{"models":[]}`] }
        })
          .upstreamHeaders
    )
    expect(recorder.spans().map((s) => s.name)).toEqual(["GET /api/tags"])
    const server = recorder.spans()[0]!
    expect(server.parentSpanContext).toBeUndefined()
    expect(upstream.traceparent).toBe(`00-${server.spanContext().traceId}-${server.spanContext().spanId}-01`)
  })

  it("failures: error.type on the GenAI span for 4xx and stream errors, the server span only for 5xx", async () => {
    const { recorder } = await withTap({}, (tap) => {
      play(tap, {
        url: "/api/chat",
        body: `{"model":"nope"}`,
        response: {
          status: 404,
          headers: { "content-type": "application/json; charset=utf-8" },
          chunks: [`{"error":"model 'nope' not found"}`]
        }
      })
      play(tap, {
        url: "/api/generate",
        body: `{"model":"m","prompt":"x"}`,
        response: {
          status: 200,
          headers: { "content-type": "application/x-ndjson" },
          chunks: [`{"model":"m","response":"a","done":false}\n{"error":"model runner has unexpectedly stopped"}\n`]
        }
      })
      play(tap, { url: "/api/chat", proxyStatus: 503, outcome: "unavailable", error: new Error("connect ECONNREFUSED") })
      play(tap, { url: "/api/chat", proxyStatus: 401, outcome: "rejected" })
    })
    const genAi = byKind(recorder.spans(), SpanKind.CLIENT)
    expect(genAi.map((s) => [s.name, s.attributes["error.type"], s.status.code])).toEqual([
      ["chat nope", "404", SpanStatusCode.ERROR],
      ["text_completion m", "ollama_error", SpanStatusCode.ERROR]
    ])
    expect(genAi[1]!.status.message).toBe("model runner has unexpectedly stopped")
    const server = byKind(recorder.spans(), SpanKind.SERVER)
    expect(server.map((s) => [s.attributes["http.response.status_code"], s.attributes["error.type"], s.status.code])).toEqual([
      [404, undefined, SpanStatusCode.UNSET],
      [200, undefined, SpanStatusCode.UNSET],
      [503, "503", SpanStatusCode.ERROR],
      [401, undefined, SpanStatusCode.UNSET]
    ])
  })

  it("an always_off sampler records nothing and still hands Ollama the trace, marked not sampled", async () => {
    const { result: upstream, recorder } = await withTap(
      { OTEL_TRACES_SAMPLER: "always_off" },
      (tap) => play(tap, { method: "GET", url: "/api/version", headers: { traceparent: TRACEPARENT } }).upstreamHeaders
    )
    expect(recorder.spans()).toHaveLength(0)
    expect(upstream.traceparent).toMatch(new RegExp(`^00-${TRACE_ID}-[0-9a-f]{16}-00$`))
  })
})

describe("work that outlives the request (the usage webhook)", () => {
  let receiver: Awaited<ReturnType<typeof startReceiver>>
  beforeAll(async () => {
    receiver = await startReceiver()
  })
  afterAll(() => receiver.close())

  /** A POST made the way the webhook makes it: Effect HttpClient, parented by the exchange's parent span. */
  const post = (parent: Tracer.ExternalSpan | undefined, marker: string) =>
    Effect.gen(function*() {
      const client = yield* HttpClient.HttpClient
      yield* client.execute(HttpClientRequest.post(`${receiver.url}/usage/${marker}`)).pipe(Effect.scoped)
    }).pipe(
      Effect.withSpan("usage.webhook.deliver"),
      parent === undefined ? (e) => e : Effect.withParentSpan(parent),
      Effect.provide(NodeHttpClient.layerUndici)
    )

  it.live("carries the trace of the request that produced the record, tracing on", () => {
    const recorder = spanRecorder()
    const tracing = Tracing.layer.pipe(Layer.provide(configFromEnv({})), Layer.provide(recorder.layer), Layer.orDie)
    return Effect.gen(function*() {
      const tap = yield* makeTelemetryConsumer
      const { exchange } = play(tap, { method: "GET", url: "/api/ps", headers: { traceparent: TRACEPARENT } })
      yield* post(exchange.parentSpan(), "on")
      const sent = yield* Effect.promise(() => receiver.waitFor((r) => r.path === "/usage/on"))
      const server = recorder.spans().find((s) => s.kind === SpanKind.SERVER)!
      const delivery = recorder.named("usage.webhook.deliver")[0]
      expect(String(sent.headers.traceparent)).toMatch(new RegExp(`^00-${TRACE_ID}-`))
      // the delivery span is exported through the same provider, as a child of the server span
      expect(delivery?.spanContext().traceId).toBe(TRACE_ID)
      expect(delivery?.parentSpanContext?.spanId).toBe(server.spanContext().spanId)
    }).pipe(Effect.provide(Layer.merge(tracing, quiet)))
  })

  it.live("carries the client's trace id when tracing is off", () =>
    Effect.gen(function*() {
      const tap = yield* makeTelemetryConsumer
      const { exchange } = play(tap, { method: "GET", url: "/api/ps", headers: { traceparent: TRACEPARENT } })
      yield* post(exchange.parentSpan(), "off")
      const sent = yield* Effect.promise(() => receiver.waitFor((r) => r.path === "/usage/off"))
      expect(String(sent.headers.traceparent)).toMatch(new RegExp(`^00-${TRACE_ID}-`))
    }).pipe(Effect.provide(Layer.merge(Layer.succeed(Tracing, Tracing.off), quiet))))
})

describe("in the running service", () => {
  it("no span for /ping or /metrics; a server span for a proxied request, a client span for its attempt on Ollama", async () => {
    const recorder = spanRecorder()
    const proxy = await startProxy({ OLLAMA_HOST: "127.0.0.1:9" }, recorder.layer)
    try {
      await (await fetch(`${proxy.url}/ping`)).arrayBuffer()
      await (await fetch(`${proxy.url}/metrics`)).arrayBuffer()
      const res = await fetch(`${proxy.url}/api/chat`, { method: "POST", body: `{"model":"m"}`, headers: { traceparent: TRACEPARENT } })
      await res.arrayBuffer()
      expect(res.status).toBe(503)
    } finally {
      await proxy.close()
    }
    // Ollama has never answered here, so it is not known to be down: the request is tried (and refused).
    expect(recorder.spans().map((s) => [s.name, s.spanContext().traceId, s.attributes["http.response.status_code"]])).toEqual([
      ["chat", TRACE_ID, undefined],
      ["POST /api/chat", TRACE_ID, 503]
    ])
  })

  it.each(["http/json", "http/protobuf"])("exports to a real OTLP/HTTP receiver (%s), flushing on SIGTERM", async (protocol) => {
    const receiver = await startReceiver()
    const proxy = await spawnProxy({
      OLLAMA_MANAGED: "false",
      OLLAMA_HOST: "127.0.0.1:9",
      AUTHORIZATION_APIKEY: "key-for-otlp-test",
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
      OTEL_EXPORTER_OTLP_PROTOCOL: protocol,
      OTEL_EXPORTER_OTLP_HEADERS: "x-collector-key=collector-secret",
      OTEL_SERVICE_NAME: "otlp-test"
    })
    try {
      const res = await fetch(`${proxy.url}/api/chat`, {
        method: "POST",
        body: `{"model":"m"}`,
        headers: { authorization: "Bearer key-for-otlp-test", traceparent: TRACEPARENT }
      })
      await res.arrayBuffer()
      expect(res.status).toBe(503)
      // SIGTERM: the batch is flushed before the process exits; no waiting for the 5 s batch timer.
      expect((await proxy.kill("SIGTERM")).code).toBe(0)
      const traces = await receiver.waitFor((r) => r.path === "/v1/traces")
      expect(traces.headers["x-collector-key"]).toBe("collector-secret")
      if (protocol === "http/json") {
        expect(traces.headers["content-type"]).toBe("application/json")
        const spans = otlpJsonSpans(traces.body)
        const server = spans.find((s) => s.name === "POST /api/chat")!
        expect(server.traceId).toBe(TRACE_ID)
        expect(server.parentSpanId).toBe(CLIENT_SPAN)
        expect(attributesOf(server.attributes)).toMatchObject({ "http.route": "/api/chat", "ollama_proxy.outcome": "unavailable" })
        expect(server.resource).toMatchObject({ "service.name": "otlp-test" })
      } else {
        expect(traces.headers["content-type"]).toBe("application/x-protobuf")
        // protobuf keeps strings as UTF-8 and ids as raw bytes
        expect(traces.body.includes("POST /api/chat")).toBe(true)
        expect(traces.body.includes(Buffer.from(TRACE_ID, "hex"))).toBe(true)
      }
      await receiver.waitFor((r) => r.path === "/v1/metrics")
    } finally {
      await proxy.kill("SIGKILL")
      await receiver.close()
    }
  })
})

describe("through the service, with the fake Ollama", () => {
  const KEY = "tracing-e2e-key"
  let fake: Awaited<ReturnType<typeof startFakeOllama>>
  let proxy: RunningProxy
  const recorder = spanRecorder()

  beforeAll(async () => {
    fake = await startFakeOllama({ tokens: 7 })
    proxy = await startProxy({ OLLAMA_HOST: fake.url, AUTHORIZATION_APIKEY_CAROL: KEY }, recorder.layer)
    await waitUntil(async () => (await fetch(`${proxy.url}/ping`)).status === 200)
  })
  afterAll(async () => {
    await proxy?.close()
    await fake?.close()
  })

  const spansOfTrace = (traceId: string) => recorder.spans().filter((s) => s.spanContext().traceId === traceId)
  /** The GenAI span inside the last server span of that name. */
  const genAiUnder = (serverName: string) => {
    const server = recorder.named(serverName).at(-1)!
    return recorder.spans().find((s) => s.parentSpanContext?.spanId === server.spanContext().spanId)!
  }

  it("a chat: the trace goes on to Ollama, the GenAI span has the fake's figures", async () => {
    const body = { model: "llama3.2", messages: [{ role: "user" as const, content: "Why is the sky blue?" }] }
    const client = new Ollama({ host: proxy.url, headers: { authorization: `Bearer ${KEY}`, traceparent: TRACEPARENT } })
    for await (const _ of await client.chat({ ...body, stream: true })) void _
    const figures = fake.expected("/api/chat", { ...body, stream: true })
    const received = await fake.waitFor((r) => r.path === "/api/chat")

    const spans = spansOfTrace(TRACE_ID)
    const server = spans.find((s) => s.kind === SpanKind.SERVER)!
    const genAi = spans.find((s) => s.kind === SpanKind.CLIENT)!
    expect([server.name, genAi.name]).toEqual(["POST /api/chat", "chat llama3.2"])
    expect(server.parentSpanContext?.spanId).toBe(CLIENT_SPAN)
    expect(genAi.parentSpanContext?.spanId).toBe(server.spanContext().spanId)
    expect(received.headers.traceparent).toBe(`00-${TRACE_ID}-${genAi.spanContext().spanId}-01`)
    expect(genAi.attributes).toMatchObject({
      "gen_ai.request.model": "llama3.2",
      "gen_ai.response.model": "llama3.2",
      "gen_ai.request.stream": true,
      "gen_ai.usage.input_tokens": figures.promptEvalCount,
      "gen_ai.usage.output_tokens": figures.evalCount,
      "gen_ai.response.finish_reasons": [figures.doneReason],
      "server.port": fake.port,
      "api_key.name": "carol"
    })
    expect(server.attributes["http.response.body.size"]).toBeGreaterThan(0)
  })

  it("OpenAI chat with usage, and embeddings: operation names and token figures", async () => {
    const openai = new OpenAI({ baseURL: `${proxy.url}/v1`, apiKey: KEY })
    const chat = { model: "llama3.2", messages: [{ role: "user" as const, content: "Count to three" }] }
    const stream = await openai.chat.completions.create({ ...chat, stream: true, stream_options: { include_usage: true } })
    for await (const _ of stream) void _
    await openai.embeddings.create({ model: "nomic-embed-text", input: "an embedded sentence" })
    const figures = fake.expected("/v1/chat/completions", { ...chat, stream: true, stream_options: { include_usage: true } })
    const embedFigures = fake.expected("/v1/embeddings", { model: "nomic-embed-text", input: "an embedded sentence" })

    const openaiChat = genAiUnder("POST /v1/chat/completions")
    expect(openaiChat.name).toBe("chat llama3.2")
    expect(openaiChat.attributes).toMatchObject({
      "gen_ai.usage.input_tokens": figures.promptEvalCount,
      "gen_ai.usage.output_tokens": figures.evalCount,
      "gen_ai.response.finish_reasons": ["stop"]
    })
    const embed = genAiUnder("POST /v1/embeddings")
    expect(embed.name).toBe("embeddings nomic-embed-text")
    expect(embed.attributes).toMatchObject({
      "gen_ai.operation.name": "embeddings",
      "gen_ai.usage.input_tokens": embedFigures.promptEvalCount
    })
    expect(embed.attributes).not.toHaveProperty("gen_ai.usage.output_tokens")
  })
})

describe("the Ollama process and the preload", () => {
  it("spans for start, ready, exit, restart, pull and warm; up, restarts and preload state as metrics", async () => {
    const recorder = spanRecorder()
    const port = await new Promise<number>((resolve) => {
      const s = createServer().listen(0, "127.0.0.1", () => {
        const p = (s.address() as AddressInfo).port
        s.close(() => resolve(p))
      })
    })
    const proxy = await startProxy({
      OLLAMA_MANAGED: "true",
      OLLAMA_BIN: FAKE_OLLAMA_BIN,
      OLLAMA_HOST: `127.0.0.1:${port}`,
      PRELOAD_MODEL: "qwen3:0.6b",
      METRICS_PUBLIC: "true",
      // the first child exits after a while: a restart to see
      FAKE_OLLAMA_EXIT_AFTER_MS: "1500"
    }, recorder.layer)
    try {
      await waitUntil(async () => (await fetch(`${proxy.url}/ping`)).status === 200)
      const up = await scrape(proxy.url)
      expect(up.value("ollama_up")).toBe(1)
      expect(up.value("ollama_preload_state", { model: "qwen3:0.6b", state: "ready" })).toBe(1)
      expect(up.value("ollama_preload_state", { model: "qwen3:0.6b", state: "pulling" })).toBe(0)
      await waitUntil(() => recorder.named("OllamaProcess.restart").length > 0, 15_000)
      expect((await scrape(proxy.url)).value("ollama_restarts_total")).toBeGreaterThanOrEqual(1)
    } finally {
      await proxy.close()
    }
    const names = new Set(recorder.spans().map((s) => s.name))
    for (
      const name of [
        "OllamaProcess.start",
        "OllamaProcess.ready",
        "OllamaProcess.exit",
        "OllamaProcess.restart",
        "Preloader.pull",
        "Preloader.warm"
      ]
    ) {
      expect(names).toContain(name)
    }
    expect(recorder.named("Preloader.pull")[0]!.attributes).toMatchObject({ model: "qwen3:0.6b" })
    expect(recorder.named("OllamaProcess.exit")[0]!.attributes).toMatchObject({ code: 1 })
    expect(recorder.named("OllamaProcess.start")[0]!.attributes.pid).toBeTypeOf("number")
  })
})

/** Polls a condition that state outside the test's reach will make true. */
const waitUntil = async (condition: () => boolean | Promise<boolean>, timeoutMs = 10_000) => {
  const deadline = Date.now() + timeoutMs
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error("condition not met in time")
    await new Promise((r) => setTimeout(r, 20))
  }
}
