import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Logger, LogLevel, Tracer } from "effect"
import { makeLineLogger, makeLogger } from "../src/telemetry/Logging.js"

const capture = (json = true) => {
  const lines: Array<string> = []
  const layer = Logger.replace(Logger.defaultLogger, makeLogger(json, (line) => lines.push(line)))
  return { lines, layer, records: () => lines.map((l) => JSON.parse(l) as Record<string, unknown>) }
}

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

  it.live("carries trace_id and span_id of a client's trace, not of Effect's own spans", () => {
    const { layer, records } = capture()
    const client = Tracer.externalSpan({ traceId: "0af7651916cd43dd8448eb211c80319c", spanId: "b7ad6b7169203331", sampled: true })
    const inNative = Effect.logInfo("in native span").pipe(Effect.withSpan("work"))
    const inClient = Effect.logInfo("in client trace").pipe(Effect.withParentSpan(client))
    return Effect.all([inNative, inClient]).pipe(
      Effect.provide(layer),
      Effect.map(() => {
        const [native, fromClient] = records()
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
