/**
 * AppConfig: every environment variable the service reads, parsed and validated once at start,
 * composed from the parts' own slices (OpenTelemetry's in src/telemetry/OtelConfig.ts, the request
 * policy's in src/policy/PolicyConfig.ts) and the variables read here. The parsers and the reading
 * helpers every slice uses are in src/config/Read.ts. A bad value fails start-up with an
 * AppConfigError naming the variable; secrets stay Redacted.
 */
import { Context, Duration, Effect, Either, Layer, Option, Redacted } from "effect"
import { isIP } from "node:net"
import { Webhook } from "standardwebhooks"
import {
  all,
  AppConfigError,
  Environment,
  family,
  firstOf,
  optional,
  type Parse,
  parseBoolean,
  parseDuration,
  parseHttpUrl,
  parsePort,
  parsePositiveDuration,
  parsePositiveInt,
  quoted,
  readSlice,
  text,
  withDefault
} from "./config/Read.js"
import { type KeyLimits, parseLimits } from "./limits/Table.js"
import { didYouMean } from "./NearMiss.js"
import { type OllamaHost, parseOllamaHost } from "./OllamaHost.js"
import { parseGoDuration } from "./policy/GoDuration.js"
import { type QueueConfig, readQueueConfig } from "./schedule/QueueConfig.js"
import { type Scope, type ScopeName, SCOPES, scopesOf } from "./Scopes.js"
import { type OtelConfig, readOtelConfig } from "./telemetry/OtelConfig.js"

export { AppConfigError, Environment, type Parse, parseBoolean, parseDuration, parsePort, parsePositiveInt } from "./config/Read.js"
export type { QueueConfig } from "./schedule/QueueConfig.js"
export type { OtelConfig, OtlpProtocol, OtlpTarget, SamplerConfig } from "./telemetry/OtelConfig.js"

export type LogLevelName = "error" | "warn" | "info" | "debug"

export interface ApiKeyConfig {
  /** `default` for AUTHORIZATION_APIKEY, else the lower-cased suffix (`_BOB` -> `bob`). */
  readonly name: string
  /** The variable it came from, for errors. */
  readonly variable: string
  /** The key, or its SHA-256 when given as `sha256:<hex>`. */
  readonly secret: Redacted.Redacted<string>
  readonly hashed: boolean
}

/**
 * Who this worker is, as RunPod's environment tells it (RUNPOD_POD_ID, RUNPOD_ENDPOINT_ID,
 * RUNPOD_DC_ID), under the names the usage record gives them; a variable that is not set is left
 * out, so elsewhere this is `{}`.
 */
export type WorkerIdentity = {
  readonly runpod_pod_id?: string
  readonly runpod_endpoint_id?: string
  readonly runpod_dc_id?: string
}

export interface AppConfigShape {
  readonly port: number
  readonly healthPort: number
  /** Where the health check is answered: `/ping`, and HEALTH_CHECK_PATH when it names another path. */
  readonly healthPaths: ReadonlyArray<`/${string}`>
  readonly host: string
  readonly ollama: OllamaHost
  readonly ollamaBin: string
  readonly ollamaManaged: boolean
  readonly ollamaStopTimeout: Duration.Duration
  /**
   * How long a model load may stall before Ollama gives up (OLLAMA_LOAD_TIMEOUT, by Ollama's rules;
   * infinite for 0 or less). Unset, `ollama serve` is started with DEFAULT_LOAD_TIMEOUT instead of
   * its own 5 minutes.
   */
  readonly ollamaLoadTimeout: { readonly duration: Duration.Duration; readonly fromUser: boolean }
  /** REQUIRE_GPU: a preloaded model not entirely in GPU memory makes the worker unhealthy. */
  readonly requireGpu: boolean
  readonly worker: WorkerIdentity
  readonly shutdownTimeout: Duration.Duration
  readonly apiKeys: ReadonlyArray<ApiKeyConfig>
  /** The scopes of AUTHORIZATION_APIKEY* keys, and of key file entries that name none. */
  readonly defaultScopes: ReadonlySet<Scope>
  /** AUTHORIZATION_KEYS_FILE: keys with their rules, read again when it changes. */
  readonly keysFile: Option.Option<string>
  /** How often the key file is read to see whether it changed. */
  readonly keysFilePoll: Duration.Duration
  /** AUTHORIZATION_DEFAULT_LIMITS: the limits of keys that name none; undefined = no limits. */
  readonly defaultLimits: KeyLimits | undefined
  readonly limitsStore: LimitsStoreConfig
  readonly preloadModels: ReadonlyArray<string>
  readonly preloadKeepAlive: string | number
  readonly preloadConcurrency: number
  readonly logLevel: LogLevelName
  readonly logJson: boolean
  readonly webhookUrl: Option.Option<URL>
  readonly webhookApiKey: Option.Option<Redacted.Redacted<string>>
  readonly webhookQueueSize: number
  /** Records per POST: 1 posts each record alone (a JSON object); above 1, JSON arrays of up to that many. */
  readonly webhookBatchSize: number
  /** How long a batch waits for more records after its first one before it is sent anyway. */
  readonly webhookBatchWait: Duration.Duration
  /** POSTs under way at once (connections to the webhook). */
  readonly webhookConcurrency: number
  readonly webhookMaxRetryTime: Duration.Duration
  /** The first retry's delay; each later one doubles it, up to a minute. */
  readonly webhookRetryDelay: Duration.Duration
  /** How long one POST may go unanswered before it counts as failed (and is retried). */
  readonly webhookTimeout: Duration.Duration
  /** USER_MODEL_METRICS_WEBHOOK_SECRET: Standard Webhooks secrets (whsec_...), each signing every POST. */
  readonly webhookSecrets: ReadonlyArray<Redacted.Redacted<string>>
  /** USAGE_SPOOL_DIR: the usage outbox on disk, without Redis (or when Redis fails). */
  readonly usageSpoolDir: Option.Option<string>
  /** How long a record may wait in another worker's Redis pending list before this one delivers it. */
  readonly usageOutboxClaimIdle: Duration.Duration
  readonly metricsPublic: boolean
  /** How long a request's head may take to arrive, from its first byte (or the connection's opening). */
  readonly requestHeadersTimeout: Duration.Duration
  /** How long a request body may stop arriving before the request is cut with 408. */
  readonly requestBodyTimeout: Duration.Duration
  /** Open connections per listener at most; past it a new one is refused at once. */
  readonly maxConnections: number
  /** The same, per client address (per /64 for IPv6). */
  readonly maxConnectionsPerAddress: number
  /** Peers whose X-Forwarded-* headers are believed: addresses and CIDR blocks. */
  readonly trustedProxies: ReadonlyArray<AddressBlock>
  readonly otel: OtelConfig
  readonly queue: QueueConfig
}

/** An address (prefix = its full length) or a CIDR block. */
export interface AddressBlock {
  readonly address: string
  readonly prefix: number
  readonly family: "ipv4" | "ipv6"
}

/** Where the counters of limits live, and what happens when that place does not answer. */
export interface LimitsStoreConfig {
  /** REDIS_URL: counters shared by every worker; none = in this process. May carry a password. */
  readonly redisUrl: Option.Option<Redacted.Redacted<string>>
  /** How long a request waits for Redis before LIMITS_ON_STORE_FAILURE decides. */
  readonly timeout: Duration.Duration
  readonly onFailure: "open" | "closed"
}

// ---------------------------------------------------------------------------------------------
// Value parsers: each returns the value or the reason it is wrong.

/** Addresses and CIDR blocks, IPv4 or IPv6, separated by commas or spaces. */
export const parseAddressBlocks: Parse<ReadonlyArray<AddressBlock>> = (raw) => {
  const blocks: Array<AddressBlock> = []
  for (const item of raw.split(/[\s,]+/)) {
    if (item === "") continue
    const slash = item.indexOf("/")
    const address = slash < 0 ? item : item.slice(0, slash)
    const version = isIP(address)
    const bits = version === 4 ? 32 : 128
    const prefixText = slash < 0 ? String(bits) : item.slice(slash + 1)
    const prefix = /^\d{1,3}$/.test(prefixText) ? Number(prefixText) : NaN
    if (version === 0 || address.includes("%") || !(prefix <= bits)) {
      return Either.left(`${quoted(item)} is not an IP address or CIDR block (like 10.0.0.0/8 or fd00::/8)`)
    }
    blocks.push({ address, prefix, family: version === 4 ? "ipv4" : "ipv6" })
  }
  return Either.right(blocks)
}

/** redis:// or rediss:// (TLS); the text is never echoed, since it may carry a password. */
const parseRedisUrl: Parse<Redacted.Redacted<string>> = (raw) => {
  try {
    const url = new URL(raw.trim())
    if ((url.protocol === "redis:" || url.protocol === "rediss:") && url.hostname !== "") return Either.right(Redacted.make(raw.trim()))
  } catch {
    // reported below
  }
  return Either.left("not a redis:// or rediss:// URL (like redis://:password@redis:6379/0)")
}

/** Standard Webhooks secrets, separated by spaces (two while one is rotated); never echoed. */
const parseWebhookSecrets: Parse<ReadonlyArray<Redacted.Redacted<string>>> = (raw) => {
  const secrets = raw.split(/\s+/).filter((s) => s !== "")
  for (const secret of secrets) {
    if (!secret.startsWith("whsec_")) return Either.left("each secret starts with whsec_ (Standard Webhooks)")
    try {
      new Webhook(secret)
    } catch {
      return Either.left("a secret is whsec_ followed by base64")
    }
  }
  return Either.right(secrets.map((s) => Redacted.make(s)))
}

const parseStoreFailure: Parse<"open" | "closed"> = (raw) => {
  const v = raw.trim().toLowerCase()
  return v === "open" || v === "closed" ? Either.right(v) : Either.left(`${quoted(raw)} is not open or closed`)
}

const parseLogLevel: Parse<LogLevelName> = (raw) => {
  const v = raw.trim().toLowerCase()
  const level = v === "warning" ? "warn" : v
  return level === "error" || level === "warn" || level === "info" || level === "debug"
    ? Either.right(level)
    : Either.left(`${quoted(raw)} is not a log level (error, warn, info, debug)`)
}

/**
 * HEALTH_CHECK_PATH, the path RunPod's load balancer polls instead of `/ping` when set (its
 * load-balancing overview, "Health checks": https://docs.runpod.io/serverless/load-balancing/overview).
 * Ollama's own API paths and `/metrics` cannot be taken over.
 */
export const parseHealthPath: Parse<`/${string}`> = (raw) => {
  const v = raw.trim()
  if (!v.startsWith("/") || /[\s?#%]/.test(v)) return Either.left(`${quoted(raw)} is not a path (like /health)`)
  const path = (v.replace(/\/+$/, "") || "/") as `/${string}`
  if (path === "/metrics" || /^\/(api|v1)(\/|$)/.test(path)) {
    return Either.left(`${quoted(raw)} is taken: /metrics is the proxy's, /api/... and /v1/... are Ollama's`)
  }
  return Either.right(path)
}

/** What `ollama serve` is given for OLLAMA_LOAD_TIMEOUT when it is unset, as RunPod's own Ollama worker does. */
export const DEFAULT_LOAD_TIMEOUT = "60m"

/**
 * OLLAMA_LOAD_TIMEOUT as Ollama reads it (envconfig.LoadTimeout): a Go duration (`10m`, `1h30m`,
 * time.ParseDuration's rules, as the request policy reads keep_alive) or whole seconds; 0 or less
 * means no limit.
 */
export const parseLoadTimeout: Parse<Duration.Duration> = (raw) => {
  const v = raw.trim()
  const ns = /^[-+]?\d+$/.test(v) ? Number(v) * 1e9 : parseGoDuration(v)
  if (ns === undefined) return Either.left(`${quoted(raw)} is not a duration (like 10m, 1h30m, or seconds)`)
  return Either.right(ns > 0 ? Duration.millis(ns / 1e6) : Duration.infinity)
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

/** A comma-separated list of scopes; `all` is every scope. */
const parseScopes: Parse<ReadonlySet<Scope>> = (raw) => {
  const names = raw.split(",").map((s) => s.trim().toLowerCase()).filter((s) => s !== "")
  const wrong = names.filter((n) => n !== "all" && !SCOPES.includes(n as Scope))
  if (wrong.length > 0) {
    return Either.left(`${quoted(wrong[0]!)} is not a scope (${SCOPES.join(", ")}, or all)${didYouMean(wrong[0]!, [...SCOPES, "all"])}`)
  }
  if (names.length === 0) return Either.left(`no scope given (${SCOPES.join(", ")}, or all)`)
  return Either.right(scopesOf(names as ReadonlyArray<ScopeName>))
}

const KEY_PREFIX = "AUTHORIZATION_APIKEY"
const MODEL_PREFIX = "PRELOAD_MODEL"

const readApiKeys = family(KEY_PREFIX, (variables) => {
  const keys: Array<ApiKeyConfig> = []
  for (const [variable, raw] of variables) {
    const value = (raw ?? "").trim()
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
    keys.push({ name, variable, hashed, secret: Redacted.make(hashed ? value.slice(7).toLowerCase() : value) })
  }
  return Either.right(keys)
})

const readPreloadModels = family(MODEL_PREFIX, (variables) => {
  const models: Array<string> = []
  for (const [variable, value] of variables) {
    if (variable !== MODEL_PREFIX && !variable.startsWith(`${MODEL_PREFIX}_`) && !/^\d/.test(variable.slice(MODEL_PREFIX.length))) {
      continue // PRELOAD_MODELS_DIR and the like are not model names
    }
    for (const model of (value ?? "").split(/[\s,]+/)) {
      if (model !== "" && !models.includes(model)) models.push(model)
    }
  }
  return Either.right(models)
})

const fromEnvironment = all({
  port: firstOf(["PORT", "AUTHORIZATION_PORT"], parsePort),
  healthPort: optional("PORT_HEALTH", parsePort),
  healthPath: optional("HEALTH_CHECK_PATH", parseHealthPath),
  host: firstOf(["HOST", "AUTHORIZATION_HOST"], text),
  ollamaHost: optional("OLLAMA_HOST", text),
  ollamaBin: withDefault("OLLAMA_BIN", text, "ollama"),
  ollamaManaged: withDefault("OLLAMA_MANAGED", parseBoolean, true),
  ollamaStopTimeout: withDefault("OLLAMA_STOP_TIMEOUT", parseDuration, Duration.seconds(10)),
  ollamaLoadTimeout: optional("OLLAMA_LOAD_TIMEOUT", parseLoadTimeout),
  requireGpu: withDefault("REQUIRE_GPU", parseBoolean, false),
  runpodPodId: optional("RUNPOD_POD_ID", text),
  runpodEndpointId: optional("RUNPOD_ENDPOINT_ID", text),
  runpodDcId: optional("RUNPOD_DC_ID", text),
  shutdownTimeout: withDefault("SHUTDOWN_TIMEOUT", parseDuration, Duration.seconds(25)),
  preloadKeepAlive: withDefault<string | number>("PRELOAD_KEEP_ALIVE", parseKeepAlive, -1),
  preloadConcurrency: withDefault("PRELOAD_CONCURRENCY", parsePositiveInt, 2),
  logLevel: withDefault("AUTHORIZATION_LOG_LEVEL", parseLogLevel, "info" as LogLevelName),
  logJson: withDefault("AUTHORIZATION_LOG_JSON", parseBoolean, false),
  webhookUrl: optional("USER_MODEL_METRICS_WEBHOOK_URL", parseHttpUrl),
  webhookApiKey: optional("USER_MODEL_METRICS_WEBHOOK_API_KEY", (raw) => Either.right(Redacted.make(raw.trim()))),
  webhookQueueSize: withDefault("WEBHOOK_QUEUE_SIZE", parsePositiveInt, 10_000),
  webhookBatchSize: withDefault("USER_MODEL_METRICS_WEBHOOK_BATCH_SIZE", parsePositiveInt, 1),
  webhookBatchWait: withDefault("USER_MODEL_METRICS_WEBHOOK_BATCH_WAIT", parsePositiveDuration, Duration.seconds(1)),
  webhookConcurrency: withDefault("WEBHOOK_CONCURRENCY", parsePositiveInt, 4),
  webhookMaxRetryTime: withDefault("WEBHOOK_MAX_RETRY_TIME", parseDuration, Duration.minutes(10)),
  webhookRetryDelay: withDefault("WEBHOOK_RETRY_DELAY", parseDuration, Duration.seconds(1)),
  webhookTimeout: withDefault("WEBHOOK_TIMEOUT", parsePositiveDuration, Duration.seconds(10)),
  webhookSecrets: withDefault("USER_MODEL_METRICS_WEBHOOK_SECRET", parseWebhookSecrets, []),
  usageSpoolDir: optional("USAGE_SPOOL_DIR", text),
  usageOutboxClaimIdle: withDefault("USAGE_OUTBOX_CLAIM_IDLE", parsePositiveDuration, Duration.minutes(1)),
  metricsPublic: withDefault("METRICS_PUBLIC", parseBoolean, false),
  defaultScopes: withDefault("AUTHORIZATION_DEFAULT_SCOPES", parseScopes, new Set<Scope>(["inference", "read"])),
  keysFile: optional("AUTHORIZATION_KEYS_FILE", text),
  keysFilePoll: withDefault("AUTHORIZATION_KEYS_FILE_POLL", parsePositiveDuration, Duration.seconds(2)),
  requestHeadersTimeout: withDefault("REQUEST_HEADERS_TIMEOUT", parsePositiveDuration, Duration.seconds(10)),
  requestBodyTimeout: withDefault("REQUEST_BODY_TIMEOUT", parsePositiveDuration, Duration.seconds(60)),
  maxConnections: withDefault("MAX_CONNECTIONS", parsePositiveInt, 4096),
  maxConnectionsPerAddress: withDefault("MAX_CONNECTIONS_PER_ADDRESS", parsePositiveInt, 512),
  trustedProxies: withDefault("TRUSTED_PROXIES", parseAddressBlocks, []),
  defaultLimits: withDefault<KeyLimits | undefined>("AUTHORIZATION_DEFAULT_LIMITS", parseLimits, undefined),
  redisUrl: optional("REDIS_URL", parseRedisUrl),
  limitsStoreTimeout: withDefault("LIMITS_STORE_TIMEOUT", parsePositiveDuration, Duration.millis(200)),
  limitsOnStoreFailure: withDefault<"open" | "closed">("LIMITS_ON_STORE_FAILURE", parseStoreFailure, "open")
})

export const loadAppConfig = Effect.gen(function*() {
  const raw = yield* readSlice(fromEnvironment)
  const apiKeys = yield* readSlice(readApiKeys)
  if (raw.webhookBatchSize > raw.webhookQueueSize) {
    return yield* new AppConfigError({
      variable: "USER_MODEL_METRICS_WEBHOOK_BATCH_SIZE",
      reason: `${raw.webhookBatchSize} is more than WEBHOOK_QUEUE_SIZE (${raw.webhookQueueSize}): a batch could never fill`
    })
  }
  const port = Option.getOrElse(raw.port, () => 80)
  const config: AppConfigShape = {
    port,
    healthPort: Option.getOrElse(raw.healthPort, () => port),
    healthPaths: Option.match(raw.healthPath, {
      onNone: () => ["/ping"],
      onSome: (path) => path === "/ping" ? ["/ping"] : ["/ping", path]
    }),
    host: Option.getOrElse(raw.host, () => "0.0.0.0"),
    ollama: parseOllamaHost(Option.getOrUndefined(raw.ollamaHost)),
    ollamaBin: raw.ollamaBin,
    ollamaManaged: raw.ollamaManaged,
    ollamaStopTimeout: raw.ollamaStopTimeout,
    ollamaLoadTimeout: Option.match(raw.ollamaLoadTimeout, {
      onNone: () => ({ duration: Either.getOrThrow(parseLoadTimeout(DEFAULT_LOAD_TIMEOUT)), fromUser: false }),
      onSome: (duration) => ({ duration, fromUser: true })
    }),
    requireGpu: raw.requireGpu,
    worker: {
      ...Option.match(raw.runpodPodId, { onNone: () => ({}), onSome: (id) => ({ runpod_pod_id: id }) }),
      ...Option.match(raw.runpodEndpointId, { onNone: () => ({}), onSome: (id) => ({ runpod_endpoint_id: id }) }),
      ...Option.match(raw.runpodDcId, { onNone: () => ({}), onSome: (id) => ({ runpod_dc_id: id }) })
    },
    shutdownTimeout: raw.shutdownTimeout,
    apiKeys,
    defaultScopes: raw.defaultScopes,
    keysFile: raw.keysFile,
    keysFilePoll: raw.keysFilePoll,
    defaultLimits: raw.defaultLimits,
    limitsStore: { redisUrl: raw.redisUrl, timeout: raw.limitsStoreTimeout, onFailure: raw.limitsOnStoreFailure },
    preloadModels: yield* readSlice(readPreloadModels),
    preloadKeepAlive: raw.preloadKeepAlive,
    preloadConcurrency: raw.preloadConcurrency,
    logLevel: raw.logLevel,
    logJson: raw.logJson,
    webhookUrl: raw.webhookUrl,
    webhookApiKey: raw.webhookApiKey,
    webhookQueueSize: raw.webhookQueueSize,
    webhookBatchSize: raw.webhookBatchSize,
    webhookBatchWait: raw.webhookBatchWait,
    webhookConcurrency: raw.webhookConcurrency,
    webhookMaxRetryTime: raw.webhookMaxRetryTime,
    webhookRetryDelay: raw.webhookRetryDelay,
    webhookTimeout: raw.webhookTimeout,
    webhookSecrets: raw.webhookSecrets,
    usageSpoolDir: raw.usageSpoolDir,
    usageOutboxClaimIdle: raw.usageOutboxClaimIdle,
    metricsPublic: raw.metricsPublic,
    requestHeadersTimeout: raw.requestHeadersTimeout,
    requestBodyTimeout: raw.requestBodyTimeout,
    maxConnections: raw.maxConnections,
    maxConnectionsPerAddress: raw.maxConnectionsPerAddress,
    trustedProxies: raw.trustedProxies,
    otel: yield* readOtelConfig,
    queue: yield* readQueueConfig
  }
  return config
})

export class AppConfig extends Context.Tag("app/AppConfig")<AppConfig, AppConfigShape>() {
  /** Reads the Environment in context. */
  static readonly layer = Layer.effect(AppConfig, loadAppConfig)
  /** For tests: the config a given environment produces. */
  static readonly fromEnv = (env: Record<string, string | undefined>) => AppConfig.layer.pipe(Layer.provide(Environment.layer(env)))
}
