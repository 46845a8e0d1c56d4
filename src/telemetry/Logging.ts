/**
 * Logging: Effect's logger writing one line per event to stdout, JSON (AUTHORIZATION_LOG_JSON)
 * or logfmt, with stable keys: time, level, msg, request_id, trace_id, span_id, then the fields
 * (the RunPod worker's identity among them, on every line).
 *
 * What is never logged: API keys, the webhook key, OTLP headers, request or response bodies
 * (prompts). Callers pass names and figures only.
 */
import { Cause, Context, Effect, FiberId, FiberRef, FiberRefs, HashMap, Layer, List, Logger, LogLevel, Option, Tracer } from "effect"
import { WorkerConfig } from "../config/Shared.js"
import { LoggingConfig, type LogLevelName } from "./TelemetryConfig.js"

export const levels: Record<LogLevelName, LogLevel.LogLevel> = {
  error: LogLevel.Error,
  warn: LogLevel.Warning,
  info: LogLevel.Info,
  debug: LogLevel.Debug
}

const levelName = (level: LogLevel.LogLevel) => (level._tag === "Warning" ? "warn" : level.label.toLowerCase())

const messageText = (message: unknown): string => {
  const parts = Array.isArray(message) ? message : [message]
  return parts.map((p) => (typeof p === "string" ? p : JSON.stringify(p))).join(" ")
}

const logfmtValue = (value: unknown): string => {
  const s = typeof value === "string" ? value : JSON.stringify(value) ?? String(value)
  return s === "" || /[\s"=]/.test(s) ? JSON.stringify(s) : s
}

export const formatRecord = (record: Record<string, unknown>, json: boolean): string =>
  json
    ? JSON.stringify(record)
    : Object.entries(record).map(([k, v]) => `${k}=${logfmtValue(v)}`).join(" ")

/** Keys that come first, in this order, whenever present; the rest follow alphabetically. */
const KEY_ORDER = [
  "request_id",
  "trace_id",
  "span_id",
  "source",
  // the access line
  "method",
  "path",
  "status",
  "duration_ms",
  "bytes_in",
  "bytes_out",
  "api_key_name",
  "scope",
  "refusal",
  "rate_limit",
  "user_id",
  "model",
  "outcome"
]
const rank = new Map(KEY_ORDER.map((k, i) => [k, i]))
const byRank = (a: string, b: string) =>
  (rank.get(a) ?? KEY_ORDER.length) - (rank.get(b) ?? KEY_ORDER.length) || (a < b ? -1 : a > b ? 1 : 0)

const OTEL_SPAN = Symbol.for("@effect/opentelemetry/Tracer/OtelSpan")

/**
 * The trace the logging fiber is in, when that trace means something outside this process: an
 * exported OpenTelemetry span, or a span context that came from a client. Effect's own in-process
 * spans (tracing off) have ids nobody else knows, so they are left out.
 */
const traceOf = (context: FiberRefs.FiberRefs): { trace_id: string; span_id: string } | undefined => {
  const span = Context.getOption(FiberRefs.getOrDefault(context, FiberRef.currentContext), Tracer.ParentSpan)
  if (Option.isNone(span)) return undefined
  const s = span.value
  return s._tag === "ExternalSpan" || OTEL_SPAN in s ? { trace_id: s.traceId, span_id: s.spanId } : undefined
}

/** `resource`: fields every line carries (the RunPod worker's identity), so each line says which worker wrote it. */
export const makeLogger = (json: boolean, write: (line: string) => void, resource: Readonly<Record<string, string | undefined>> = {}) =>
  Logger.make(({ annotations, cause, context, date, logLevel, message }) => {
    const record: Record<string, unknown> = {
      time: date.toISOString(),
      level: levelName(logLevel),
      msg: messageText(message)
    }
    const fields: Record<string, unknown> = { ...resource }
    const trace = traceOf(context)
    if (trace !== undefined) Object.assign(fields, trace)
    for (const [key, value] of HashMap.toEntries(annotations)) {
      if (value !== undefined && value !== null) fields[key] = value
    }
    for (const key of Object.keys(fields).sort(byRank)) record[key] = fields[key]
    if (!Cause.isEmpty(cause)) record.error = Cause.pretty(cause, { renderErrorCause: true })
    write(formatRecord(record, json))
  })

const stdout = (line: string) => {
  process.stdout.write(`${line}\n`)
}

export const LoggingLive = Layer.unwrapEffect(
  Effect.gen(function*() {
    const config = yield* LoggingConfig
    const worker = yield* WorkerConfig
    return Layer.merge(
      Logger.replace(Logger.defaultLogger, makeLogger(config.logJson, stdout, worker)),
      Logger.minimumLogLevel(levels[config.logLevel])
    )
  })
)

/**
 * Logging from plain callbacks (the proxy's hot path) through the same Effect loggers, without
 * a fiber per line: the loggers and level are read once from the fiber that builds this.
 */
export interface LineLogger {
  /** Whether a line at this level would be written; check it before building the fields. */
  readonly enabled: (level: LogLevel.LogLevel) => boolean
  readonly log: (level: LogLevel.LogLevel, message: string, fields: Readonly<Record<string, unknown>>) => void
}

export const makeLineLogger: Effect.Effect<LineLogger> = Effect.map(Effect.getFiberRefs, (refs) => {
  const loggers = [...FiberRefs.getOrDefault(refs, FiberRef.currentLoggers)]
  const minimum = FiberRefs.getOrDefault(refs, FiberRef.currentMinimumLogLevel)
  const enabled = (level: LogLevel.LogLevel) => loggers.length > 0 && LogLevel.greaterThanEqual(level, minimum)
  return {
    enabled,
    log: (logLevel, message, fields) => {
      if (!enabled(logLevel)) return
      const options = {
        fiberId: FiberId.none,
        logLevel,
        message,
        cause: Cause.empty,
        context: refs,
        spans: List.empty(),
        annotations: HashMap.fromIterable(Object.entries(fields)),
        date: new Date()
      }
      for (const logger of loggers) logger.log(options)
    }
  }
})
