/**
 * Logging: Effect's logger writing one line per event to stdout, JSON (AUTHORIZATION_LOG_JSON)
 * or logfmt, with stable keys: time, level, msg, then the annotations.
 */
import { Cause, HashMap, Layer, Logger, LogLevel, Effect } from "effect"
import { AppConfig, type LogLevelName } from "../Config.js"

const levels: Record<LogLevelName, LogLevel.LogLevel> = {
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

export const makeLogger = (json: boolean, write: (line: string) => void) =>
  Logger.make(({ annotations, cause, date, logLevel, message }) => {
    const record: Record<string, unknown> = {
      time: date.toISOString(),
      level: levelName(logLevel),
      msg: messageText(message)
    }
    for (const [key, value] of HashMap.toEntries(annotations)) record[key] = value
    if (!Cause.isEmpty(cause)) record.error = Cause.pretty(cause, { renderErrorCause: true })
    write(formatRecord(record, json))
  })

const stdout = (line: string) => {
  process.stdout.write(`${line}\n`)
}

export const LoggingLive = Layer.unwrapEffect(
  Effect.map(AppConfig, (config) =>
    Layer.merge(
      Logger.replace(Logger.defaultLogger, makeLogger(config.logJson, stdout)),
      Logger.minimumLogLevel(levels[config.logLevel])
    )
  )
)
