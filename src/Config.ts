/**
 * The configuration: every environment variable the service reads, as the composition of the
 * parts' own slices. Each part reads its slice next to its code (src/http/ServerConfig.ts,
 * src/ollama/OllamaConfig.ts, src/keys/KeysConfig.ts...; those more than one part reads are in
 * src/config/Shared.ts), and each service asks only for the slices whose values it uses, so none
 * is handed the whole environment. The slices are read here, together, before anything else is
 * built: a bad value stops start-up with one line naming the variable (an AppConfigError), before
 * Ollama is started and before a key is used. Each slice lists the variables it reads (made from
 * its readers, src/config/Read.ts); their union is what the README's table is checked against.
 */
import { Layer } from "effect"
import { Environment } from "./config/Read.js"
import { RedisConfig, ShutdownConfig, WorkerConfig } from "./config/Shared.js"
import { RelayConfig, TrustedProxiesConfig } from "./exchange/ExchangeConfig.js"
import { ServerConfig } from "./http/ServerConfig.js"
import { KeysConfig } from "./keys/KeysConfig.js"
import { LimitsConfig } from "./limits/LimitsConfig.js"
import { OllamaConfig, PreloadConfig } from "./ollama/OllamaConfig.js"
import { OllamaHostConfig } from "./OllamaHost.js"
import { RequestPolicyConfig } from "./policy/PolicyConfig.js"
import { QueueConfig } from "./schedule/QueueConfig.js"
import { OtelConfig } from "./telemetry/OtelConfig.js"
import { LoggingConfig, MetricsConfig } from "./telemetry/TelemetryConfig.js"
import { WebhookConfig } from "./usage/WebhookConfig.js"

export { AppConfigError, Environment } from "./config/Read.js"

/** Every slice: its tag, the variables it reads (a family by prefix as `PREFIX*`), and its layer. */
export const CONFIG_SLICES = [
  ServerConfig,
  TrustedProxiesConfig,
  RelayConfig,
  ShutdownConfig,
  OllamaHostConfig,
  OllamaConfig,
  PreloadConfig,
  RequestPolicyConfig,
  QueueConfig,
  KeysConfig,
  LimitsConfig,
  RedisConfig,
  WebhookConfig,
  WorkerConfig,
  LoggingConfig,
  MetricsConfig,
  OtelConfig
] as const

/** Every variable the service reads. */
export const CONFIG_VARIABLES: ReadonlyArray<string> = CONFIG_SLICES.flatMap((slice) => slice.variables)

/**
 * Every slice, read from the Environment in context. The request policy holds preloaded models'
 * keep_alive, so it is given the preload slice (built once: the same layer).
 */
export const ConfigLive = Layer.mergeAll(
  ServerConfig.layer,
  TrustedProxiesConfig.layer,
  RelayConfig.layer,
  ShutdownConfig.layer,
  OllamaHostConfig.layer,
  OllamaConfig.layer,
  RequestPolicyConfig.layer,
  QueueConfig.layer,
  KeysConfig.layer,
  LimitsConfig.layer,
  RedisConfig.layer,
  WebhookConfig.layer,
  WorkerConfig.layer,
  LoggingConfig.layer,
  MetricsConfig.layer,
  OtelConfig.layer
).pipe(Layer.provideMerge(PreloadConfig.layer))

/** For tests: every slice as a given environment makes it. */
export const configFromEnv = (env: Record<string, string | undefined>) => ConfigLive.pipe(Layer.provide(Environment.layer(env)))
