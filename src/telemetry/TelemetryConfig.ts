/**
 * The logs' and the metrics endpoint's slices of the environment (OpenTelemetry's own variables
 * are OtelConfig.ts's): how much is logged and in which form, and whether `/metrics` answers
 * without a key.
 */
import { Context, Either, Layer } from "effect"
import { all, type Parse, parseBoolean, quoted, readSlice, withDefault } from "../config/Read.js"

export type LogLevelName = "error" | "warn" | "info" | "debug"

const parseLogLevel: Parse<LogLevelName> = (raw) => {
  const v = raw.trim().toLowerCase()
  const level = v === "warning" ? "warn" : v
  return level === "error" || level === "warn" || level === "info" || level === "debug"
    ? Either.right(level)
    : Either.left(`${quoted(raw)} is not a log level (error, warn, info, debug)`)
}

export interface LoggingConfigShape {
  readonly logLevel: LogLevelName
  readonly logJson: boolean
}

const logging = all({
  logLevel: withDefault<LogLevelName>("AUTHORIZATION_LOG_LEVEL", parseLogLevel, "info"),
  logJson: withDefault("AUTHORIZATION_LOG_JSON", parseBoolean, false)
})

export class LoggingConfig extends Context.Tag("app/LoggingConfig")<LoggingConfig, LoggingConfigShape>() {
  static readonly variables = logging.variables
  static readonly layer = Layer.effect(LoggingConfig, readSlice(logging))
}

export interface MetricsConfigShape {
  /** METRICS_PUBLIC: `/metrics` answers without a key, summed over keys. */
  readonly metricsPublic: boolean
}

const metrics = all({ metricsPublic: withDefault("METRICS_PUBLIC", parseBoolean, false) })

export class MetricsConfig extends Context.Tag("app/MetricsConfig")<MetricsConfig, MetricsConfigShape>() {
  static readonly variables = metrics.variables
  static readonly layer = Layer.effect(MetricsConfig, readSlice(metrics))
}
