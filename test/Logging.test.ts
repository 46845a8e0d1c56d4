import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Logger, LogLevel, Tracer } from "effect"
import { createServer } from "node:net"
import type { AddressInfo } from "node:net"
import { configFromEnv } from "../src/Config.js"
import type { ExchangeConsumer } from "../src/exchange/Exchange.js"
import { makeLineLogger, makeLogger } from "../src/telemetry/Logging.js"
import { makeTelemetryConsumer } from "../src/telemetry/Telemetry.js"
import { Tracing } from "../src/telemetry/Tracing.js"
import { chatStream, play } from "./support/exchange.js"
import { FAKE_OLLAMA_BIN, spawnProxy, untilReady } from "./support/proxy.js"
import { startReceiver } from "./support/receiver.js"
import { spanRecorder } from "./support/spans.js"

const capture = (json = true) => {
  const lines: Array<string> = []
  const layer = Logger.replace(Logger.defaultLogger, makeLogger(json, (line) => lines.push(line)))
  return { lines, layer, records: () => lines.map((l) => JSON.parse(l) as Record<string, unknown>) }
}

const tracingWith = (recorder: ReturnType<typeof spanRecorder>) =>
  Tracing.layer.pipe(Layer.provide(configFromEnv({})), Layer.provide(recorder.layer), Layer.orDie)

describe("log lines", () => {
  it.live("JSON: time, level, msg, request_id first, then the fields; nothing undefined", () => {
    const { layer, lines } = capture()
    return Effect.logWarning("upstream slow").pipe(
      Effect.annotateLogs({ zeta: 1, request_id: "r-1", model: "llama3.2", gone: undefined }),
      Effect.provide(layer),
      Effect.map(() => {
        expect(lines).toHaveLength(1)
        const record = JSON.parse(lines[0]!)
        expect(Object.keys(record)).toEqual(["time", "level", "msg", "request_id", "model", "zeta"])
        expect(record).toMatchObject({ level: "warn", msg: "upstream slow", request_id: "r-1", zeta: 1 })
        expect(new Date(record.time).getTime()).toBeGreaterThan(0)
      })
    )
  })

  it.live("every line names the RunPod worker, when there is one", () => {
    const lines: Array<string> = []
    const worker = { runpod_pod_id: "pod-7x2k", runpod_endpoint_id: "ep-91" }
    const layer = Logger.replace(Logger.defaultLogger, makeLogger(true, (line) => lines.push(line), worker))
    return Effect.all([Effect.logInfo("one"), Effect.logError("two").pipe(Effect.annotateLogs({ model: "m" }))]).pipe(
      Effect.provide(layer),
      Effect.map(() => {
        expect(lines.map((l) => JSON.parse(l))).toEqual([
          expect.objectContaining({ msg: "one", ...worker }),
          expect.objectContaining({ msg: "two", model: "m", ...worker })
        ])
      })
    )
  })

  it.live("logfmt quotes what needs quoting", () => {
    const { layer, lines } = capture(false)
    return Effect.logInfo("ollama line").pipe(
      Effect.annotateLogs({ source: "ollama", text: `level=INFO msg="Listening"` }),
      Effect.provide(layer),
      Effect.map(() => {
        expect(lines[0]).toMatch(/^time=\S+ level=info msg="ollama line" source=ollama text="level=INFO msg=\\"Listening\\""$/)
      })
    )
  })

  it.live("carries trace_id and span_id inside an exported span or a client's trace, not Effect's own spans", () => {
    const { layer, records } = capture()
    const recorder = spanRecorder()
    const client = Tracer.externalSpan({ traceId: "0af7651916cd43dd8448eb211c80319c", spanId: "b7ad6b7169203331", sampled: true })
    const inOtel = Effect.logInfo("in otel span").pipe(Effect.withSpan("work"), Effect.provide(tracingWith(recorder)))
    const inNative = Effect.logInfo("in native span").pipe(Effect.withSpan("work"))
    const inClient = Effect.logInfo("in client trace").pipe(Effect.withParentSpan(client))
    // The OpenTelemetry tracer a provided layer installs outlives Effect.provide: that one runs last.
    return Effect.all([inNative, inClient, inOtel]).pipe(
      Effect.provide(layer),
      Effect.map(() => {
        const [native, fromClient, otel] = records()
        const span = recorder.spans()[0]!
        expect(otel).toMatchObject({ trace_id: span.spanContext().traceId, span_id: span.spanContext().spanId })
        expect(Object.keys(otel!).slice(0, 5)).toEqual(["time", "level", "msg", "trace_id", "span_id"])
        expect(native).not.toHaveProperty("trace_id")
        expect(fromClient).toMatchObject({ trace_id: client.traceId, span_id: client.spanId })
      })
    )
  })
})

describe("LineLogger (logging from callbacks)", () => {
  it.live("writes through the installed logger and honours the minimum level", () => {
    const { layer, records } = capture()
    return Effect.gen(function*() {
      const line = yield* makeLineLogger
      expect(line.enabled(LogLevel.Info)).toBe(false)
      expect(line.enabled(LogLevel.Warning)).toBe(true)
      line.log(LogLevel.Info, "dropped", {})
      line.log(LogLevel.Error, "kept", { request_id: "r", n: 2 })
      expect(records()).toEqual([expect.objectContaining({ level: "error", msg: "kept", request_id: "r", n: 2 })])
    }).pipe(Effect.provide(Layer.merge(layer, Logger.minimumLogLevel(LogLevel.Warning))))
  })
})

describe("access line", () => {
  const accessLines = (tracing: Layer.Layer<Tracing>, run: (tap: ExchangeConsumer) => void) => {
    const { layer, records } = capture()
    return Effect.gen(function*() {
      run(yield* makeTelemetryConsumer)
      return records().filter((r) => r.msg === "access")
    }).pipe(Effect.provide(Layer.merge(layer, tracing)))
  }

  it.live("one line per exchange with the documented fields, and the client's trace id when tracing is off", () =>
    accessLines(Layer.succeed(Tracing, Tracing.off), (tap) => {
      play(tap, {
        url: "/api/chat?x=1",
        keyName: "bob",
        headers: { "x-openwebui-user-id": "u-42", traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" },
        body: JSON.stringify({ model: "llama3.2", messages: [{ role: "user", content: "a secret prompt" }] }),
        response: { status: 200, headers: { "content-type": "application/x-ndjson" }, chunks: chatStream("llama3.2", 26, 259) }
      })
    }).pipe(Effect.map((lines) => {
      expect(lines).toHaveLength(1)
      const line = lines[0]!
      expect(Object.keys(line)).toEqual([
        "time",
        "level",
        "msg",
        "request_id",
        "trace_id",
        "method",
        "path",
        "status",
        "duration_ms",
        "bytes_in",
        "bytes_out",
        "api_key_name",
        "scope",
        "user_id",
        "model",
        "outcome",
        "input_tokens",
        "output_tokens"
      ])
      expect(line).toMatchObject({
        level: "info",
        request_id: "req-1",
        trace_id: "0af7651916cd43dd8448eb211c80319c",
        method: "POST",
        path: "/api/chat",
        status: 200,
        api_key_name: "bob",
        user_id: "u-42",
        model: "llama3.2",
        outcome: "completed",
        input_tokens: 26,
        output_tokens: 259
      })
      expect(line.bytes_in).toBeGreaterThan(0)
      expect(line.bytes_out).toBe(chatStream("llama3.2", 26, 259).join("").length)
      expect(typeof line.duration_ms).toBe("number")
      expect(JSON.stringify(line)).not.toContain("secret prompt")
    })))

  it.live("has the server span's ids when tracing is on; rejected and failed exchanges get a line too", () => {
    const recorder = spanRecorder()
    return accessLines(tracingWith(recorder), (tap) => {
      play(tap, { url: "/api/tags", method: "GET", proxyStatus: 401, outcome: "rejected" })
      play(tap, { url: "/api/chat", proxyStatus: 503, outcome: "unavailable", error: new Error("connect ECONNREFUSED 127.0.0.1:11434") })
    }).pipe(Effect.map((lines) => {
      const spans = recorder.spans().filter((s) => s.kind === 1)
      expect(lines.map((l) => [l.status, l.outcome, l.span_id])).toEqual([
        [401, "rejected", spans[0]!.spanContext().spanId],
        [503, "unavailable", spans[1]!.spanContext().spanId]
      ])
      expect(lines[1]).toMatchObject({ error: "connect ECONNREFUSED 127.0.0.1:11434", trace_id: spans[1]!.spanContext().traceId })
    }))
  })
})

describe("the built service's output", () => {
  it("JSON lines with stable keys, an access line per request, Ollama's lines marked, no secret anywhere", async () => {
    const secrets = {
      key: "sk-live-0a1b2c3d4e5f",
      otherKey: "sk-team-9f8e7d6c5b4a",
      webhookKey: "whk-7c6b5a4d3e2f",
      collectorKey: "otlp-3e4d5c6b7a8f",
      prompt: "my confidential prompt about project nightingale"
    }
    const receiver = await startReceiver()
    const port = await new Promise<number>((resolve) => {
      const s = createServer().listen(0, "127.0.0.1", () => {
        const p = (s.address() as AddressInfo).port
        s.close(() => resolve(p))
      })
    })
    const proxy = await spawnProxy({
      OLLAMA_BIN: FAKE_OLLAMA_BIN,
      OLLAMA_HOST: `127.0.0.1:${port}`,
      AUTHORIZATION_APIKEY_ERIN: secrets.key,
      AUTHORIZATION_APIKEY_TEAM: secrets.otherKey,
      USER_MODEL_METRICS_WEBHOOK_URL: `${receiver.url}/usage`,
      USER_MODEL_METRICS_WEBHOOK_API_KEY: secrets.webhookKey,
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
      OTEL_EXPORTER_OTLP_HEADERS: `authorization=Bearer%20${secrets.collectorKey}`,
      AUTHORIZATION_LOG_LEVEL: "debug"
    })
    try {
      await untilReady(proxy.url)
      const chat = await fetch(`${proxy.url}/api/chat`, {
        method: "POST",
        headers: { authorization: `Bearer ${secrets.key}`, "x-request-id": "req-log-test", "x-openwebui-user-id": "u-7" },
        body: JSON.stringify({ model: "llama3.2", messages: [{ role: "user", content: secrets.prompt }] })
      })
      await chat.text()
      const refused = await fetch(`${proxy.url}/api/tags`, { headers: { authorization: `Bearer ${secrets.otherKey}x` } })
      await refused.text()
      await proxy.waitForLine((l) => l.msg === "access" && l.status === 401)
      expect((await proxy.kill("SIGTERM")).code).toBe(0)
    } finally {
      await proxy.kill("SIGKILL")
      await receiver.close()
    }

    const lines = proxy.lines
    expect(lines.filter((l) => "text" in l)).toEqual([])
    for (const line of lines) {
      expect(Object.keys(line).slice(0, 3)).toEqual(["time", "level", "msg"])
      expect(["error", "warn", "info", "debug"]).toContain(line.level)
    }
    const access = lines.filter((l) => l.msg === "access")
    expect(access.map((l) => [l.path, l.status, l.outcome])).toEqual([["/api/chat", 200, "completed"], ["/api/tags", 401, "rejected"]])
    expect(access[0]).toMatchObject({
      request_id: "req-log-test",
      method: "POST",
      api_key_name: "erin",
      user_id: "u-7",
      model: "llama3.2",
      input_tokens: expect.any(Number),
      output_tokens: 5
    })
    expect(access[0]!.trace_id).toMatch(/^[0-9a-f]{32}$/)
    expect(Object.keys(access[0]!).slice(3, 6)).toEqual(["request_id", "trace_id", "span_id"])
    expect(lines.some((l) => l.source === "ollama" && String(l.msg).includes("Listening"))).toBe(true)

    const output = JSON.stringify(lines) + proxy.stderr()
    for (const [name, secret] of Object.entries(secrets)) {
      expect(output.includes(secret), `${name} appears in the output`).toBe(false)
    }
  })
})
