/**
 * AppConfig: every environment variable the service reads, parsed and validated once at start.
 * A bad value fails start-up with an AppConfigError naming the variable; secrets stay Redacted.
 */
import { Config, ConfigError, ConfigProvider, Context, Data, Duration, Effect, Either, Layer, Option, Redacted } from "effect"
import { type OllamaHost, parseOllamaHost } from "./ollama/Host.js"

export class AppConfigError extends Data.TaggedError("AppConfigError")<{
  readonly variable: string
  readonly reason: string
}> {
  override get message() {
    return `invalid configuration: ${this.variable}: ${this.reason}`
  }
}

export type LogLevelName = "error" | "warn" | "info" | "debug"

export interface ApiKeyConfig {
  /** `default` for AUTHORIZATION_APIKEY, else the lower-cased suffix (`_BOB` -> `bob`). */
  readonly name: string
  /** The key, or its SHA-256 when given as `sha256:<hex>`. */
  readonly secret: Redacted.Redacted<string>
  readonly hashed: boolean
}

export interface AppConfigShape {
  readonly port: number
  readonly healthPort: number
  readonly host: string
  readonly ollama: OllamaHost
  readonly ollamaBin: string
  readonly ollamaManaged: boolean
  readonly ollamaStopTimeout: Duration.Duration
  readonly shutdownTimeout: Duration.Duration
  readonly apiKeys: ReadonlyArray<ApiKeyConfig>
  readonly preloadModels: ReadonlyArray<string>
  readonly preloadKeepAlive: string | number
  readonly preloadConcurrency: number
  readonly logLevel: LogLevelName
  readonly logJson: boolean
  readonly webhookUrl: Option.Option<URL>
  readonly webhookApiKey: Option.Option<Redacted.Redacted<string>>
  readonly webhookQueueSize: number
  readonly webhookMaxRetryTime: Duration.Duration
  /** The first retry's delay; each later one doubles it, up to a minute. */
  readonly webhookRetryDelay: Duration.Duration
  readonly metricsPublic: boolean
}

/** The raw environment the config is read from; tests supply their own. */
export class Environment extends Context.Tag("app/Environment")<
  Environment,
  Readonly<Record<string, string | undefined>>
>() {
  static readonly process = Layer.sync(Environment, () => ({ ...process.env }))
  static readonly layer = (env: Record<string, string | undefined>) => Layer.succeed(Environment, env)
}

// ---------------------------------------------------------------------------------------------
// Value parsers: each returns the value or the reason it is wrong.

type Parse<A> = (raw: string) => Either.Either<A, string>

const quoted = (raw: string) => JSON.stringify(raw.length > 60 ? `${raw.slice(0, 60)}...` : raw)

export const parsePort: Parse<number> = (raw) => {
  const n = /^\d+$/.test(raw.trim()) ? Number(raw.trim()) : NaN
  return Number.isInteger(n) && n >= 0 && n <= 65535
    ? Either.right(n)
    : Either.left(`${quoted(raw)} is not a port number (0-65535)`)
}

export const parseBoolean: Parse<boolean> = (raw) => {
  const v = raw.trim().toLowerCase()
  if (["true", "1", "yes", "on"].includes(v)) return Either.right(true)
  if (["false", "0", "no", "off"].includes(v)) return Either.right(false)
  return Either.left(`${quoted(raw)} is not a boolean (true or false)`)
}

const durationUnits: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }

/** `500ms`, `10s`, `2m`, `1h`, or a plain number of seconds. */
export const parseDuration: Parse<Duration.Duration> = (raw) => {
  const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/i.exec(raw)
  if (!match) return Either.left(`${quoted(raw)} is not a duration (like 500ms, 10s, 2m, or seconds)`)
  const unit = (match[2] ?? "s").toLowerCase()
  return Either.right(Duration.millis(Number(match[1]) * durationUnits[unit]!))
}

const parsePositiveInt: Parse<number> = (raw) => {
  const n = /^\d+$/.test(raw.trim()) ? Number(raw.trim()) : NaN
  return Number.isSafeInteger(n) && n > 0 ? Either.right(n) : Either.left(`${quoted(raw)} is not a positive integer`)
}

const parseLogLevel: Parse<LogLevelName> = (raw) => {
  const v = raw.trim().toLowerCase()
  const level = v === "warning" ? "warn" : v
  return level === "error" || level === "warn" || level === "info" || level === "debug"
    ? Either.right(level)
    : Either.left(`${quoted(raw)} is not a log level (error, warn, info, debug)`)
}

const parseHttpUrl: Parse<URL> = (raw) => {
  try {
    const url = new URL(raw.trim())
    if (url.protocol === "http:" || url.protocol === "https:") return Either.right(url)
  } catch {
    // reported below
  }
  return Either.left(`${quoted(raw)} is not an http(s) URL`)
}

/** Ollama's keep_alive: a number of seconds (negative = forever) or a duration string like `5m`. */
const parseKeepAlive: Parse<string | number> = (raw) => {
  const v = raw.trim()
  if (/^-?\d+(\.\d+)?$/.test(v)) return Either.right(Number(v))
  if (/^(-?\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$/.test(v)) return Either.right(v)
  return Either.left(`${quoted(raw)} is not a keep-alive (seconds, -1, or a duration like 5m)`)
}

// ---------------------------------------------------------------------------------------------
// Reading variables through Effect Config, so the provider decides where values come from.

const invalid = (variable: string, reason: string) => ConfigError.InvalidData([variable], reason)

/** An optional variable; empty counts as unset (templates often set empty values). */
const optional = <A>(name: string, parse: Parse<A>): Config.Config<Option.Option<A>> =>
  Config.option(Config.string(name)).pipe(
    Config.mapOrFail((raw) => {
      if (Option.isNone(raw) || raw.value.trim() === "") return Either.right(Option.none())
      return Either.match(parse(raw.value), {
        onLeft: (reason) => Either.left(invalid(name, reason)),
        onRight: (a) => Either.right(Option.some(a))
      })
    })
  )

const withDefault = <A>(name: string, parse: Parse<A>, fallback: A) =>
  optional(name, parse).pipe(Config.map(Option.getOrElse(() => fallback)))

/** The first of several names that is set (`PORT`, then the older `AUTHORIZATION_PORT`). */
const firstOf = <A>(names: ReadonlyArray<string>, parse: Parse<A>) =>
  Config.all(names.map((name) => optional(name, parse))).pipe(Config.map((values) => Option.firstSomeOf(values)))

const text: Parse<string> = (raw) => Either.right(raw.trim())

const KEY_PREFIX = "AUTHORIZATION_APIKEY"
const MODEL_PREFIX = "PRELOAD_MODEL"

/** Natural order for suffixes, so PRELOAD_MODEL_2 comes before PRELOAD_MODEL_10. */
const byName = (a: string, b: string) => a.localeCompare(b, "en", { numeric: true })

const readApiKeys = (env: Readonly<Record<string, string | undefined>>) => {
  const keys: Array<ApiKeyConfig> = []
  for (const variable of Object.keys(env).filter((k) => k.startsWith(KEY_PREFIX)).sort(byName)) {
    const value = (env[variable] ?? "").trim()
    const suffix = variable.slice(KEY_PREFIX.length).replace(/^_+/, "").toLowerCase()
    const name = suffix === "" ? "default" : suffix
    if (value === "") return Either.left(new AppConfigError({ variable, reason: "the API key is empty" }))
    if (/\s/.test(value)) return Either.left(new AppConfigError({ variable, reason: "the API key contains white space" }))
    if (keys.some((k) => k.name === name)) {
      return Either.left(new AppConfigError({ variable, reason: `a second key named "${name}"` }))
    }
    const hashed = value.toLowerCase().startsWith("sha256:")
    if (hashed && !/^[0-9a-f]{64}$/i.test(value.slice(7))) {
      return Either.left(new AppConfigError({ variable, reason: "sha256: must be followed by 64 hex digits" }))
    }
    keys.push({ name, hashed, secret: Redacted.make(hashed ? value.slice(7).toLowerCase() : value) })
  }
  return Either.right(keys)
}

const readPreloadModels = (env: Readonly<Record<string, string | undefined>>) => {
  const models: Array<string> = []
  for (const variable of Object.keys(env).filter((k) => k.startsWith(MODEL_PREFIX)).sort(byName)) {
    if (variable !== MODEL_PREFIX && !variable.startsWith(`${MODEL_PREFIX}_`) && !/^\d/.test(variable.slice(MODEL_PREFIX.length))) {
      continue // PRELOAD_MODELS_DIR and the like are not model names
    }
    for (const model of (env[variable] ?? "").split(/[\s,]+/)) {
      if (model !== "" && !models.includes(model)) models.push(model)
    }
  }
  return models
}

const fromConfig = Config.all({
  port: firstOf(["PORT", "AUTHORIZATION_PORT"], parsePort),
  healthPort: optional("PORT_HEALTH", parsePort),
  host: firstOf(["HOST", "AUTHORIZATION_HOST"], text),
  ollamaHost: Config.option(Config.string("OLLAMA_HOST")),
  ollamaBin: withDefault("OLLAMA_BIN", text, "ollama"),
  ollamaManaged: withDefault("OLLAMA_MANAGED", parseBoolean, true),
  ollamaStopTimeout: withDefault("OLLAMA_STOP_TIMEOUT", parseDuration, Duration.seconds(10)),
  shutdownTimeout: withDefault("SHUTDOWN_TIMEOUT", parseDuration, Duration.seconds(25)),
  preloadKeepAlive: withDefault<string | number>("PRELOAD_KEEP_ALIVE", parseKeepAlive, -1),
  preloadConcurrency: withDefault("PRELOAD_CONCURRENCY", parsePositiveInt, 2),
  logLevel: withDefault("AUTHORIZATION_LOG_LEVEL", parseLogLevel, "info" as LogLevelName),
  logJson: withDefault("AUTHORIZATION_LOG_JSON", parseBoolean, false),
  webhookUrl: optional("USER_MODEL_METRICS_WEBHOOK_URL", parseHttpUrl),
  webhookApiKey: optional("USER_MODEL_METRICS_WEBHOOK_API_KEY", (raw) => Either.right(Redacted.make(raw.trim()))),
  webhookQueueSize: withDefault("WEBHOOK_QUEUE_SIZE", parsePositiveInt, 10_000),
  webhookMaxRetryTime: withDefault("WEBHOOK_MAX_RETRY_TIME", parseDuration, Duration.minutes(10)),
  webhookRetryDelay: withDefault("WEBHOOK_RETRY_DELAY", parseDuration, Duration.seconds(1)),
  metricsPublic: withDefault("METRICS_PUBLIC", parseBoolean, false)
})

/** The first invalid variable named in a ConfigError, as one line. */
const toAppConfigError = (error: ConfigError.ConfigError): AppConfigError => {
  const find = (e: ConfigError.ConfigError): AppConfigError | undefined => {
    switch (e._op) {
      case "And":
      case "Or":
        return find(e.left) ?? find(e.right)
      case "InvalidData":
      case "MissingData":
      case "SourceUnavailable":
      case "Unsupported":
        return new AppConfigError({ variable: e.path.join("_") || "environment", reason: e.message })
    }
  }
  return find(error) ?? new AppConfigError({ variable: "environment", reason: String(error) })
}

export const loadAppConfig = Effect.gen(function*() {
  const env = yield* Environment
  const provider = ConfigProvider.fromMap(
    new Map(Object.entries(env).filter((e): e is [string, string] => e[1] !== undefined))
  )
  const raw = yield* Effect.withConfigProvider(fromConfig, provider).pipe(Effect.mapError(toAppConfigError))
  const apiKeys = yield* readApiKeys(env)
  const port = Option.getOrElse(raw.port, () => 80)
  const config: AppConfigShape = {
    port,
    healthPort: Option.getOrElse(raw.healthPort, () => port),
    host: Option.getOrElse(raw.host, () => "0.0.0.0"),
    ollama: parseOllamaHost(Option.getOrUndefined(raw.ollamaHost)),
    ollamaBin: raw.ollamaBin,
    ollamaManaged: raw.ollamaManaged,
    ollamaStopTimeout: raw.ollamaStopTimeout,
    shutdownTimeout: raw.shutdownTimeout,
    apiKeys,
    preloadModels: readPreloadModels(env),
    preloadKeepAlive: raw.preloadKeepAlive,
    preloadConcurrency: raw.preloadConcurrency,
    logLevel: raw.logLevel,
    logJson: raw.logJson,
    webhookUrl: raw.webhookUrl,
    webhookApiKey: raw.webhookApiKey,
    webhookQueueSize: raw.webhookQueueSize,
    webhookMaxRetryTime: raw.webhookMaxRetryTime,
    webhookRetryDelay: raw.webhookRetryDelay,
    metricsPublic: raw.metricsPublic
  }
  return config
})

export class AppConfig extends Context.Tag("app/AppConfig")<AppConfig, AppConfigShape>() {
  /** Reads the Environment in context. */
  static readonly layer = Layer.effect(AppConfig, loadAppConfig)
  /** For tests: the config a given environment produces. */
  static readonly fromEnv = (env: Record<string, string | undefined>) =>
    AppConfig.layer.pipe(Layer.provide(Environment.layer(env)))
}
