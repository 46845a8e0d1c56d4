/**
 * The whole service as one layer, from an environment: what main runs and what tests start.
 */
import { Effect, Layer } from "effect"
import { AppConfig, Environment } from "./Config.js"
import { ExchangeTaps } from "./http/Exchange.js"
import { Server } from "./http/Server.js"
import { OllamaHealth } from "./ollama/Health.js"
import { LoggingLive } from "./telemetry/Logging.js"
import { MetricsLive } from "./telemetry/Metrics.js"
import { makeTelemetryTap } from "./telemetry/Telemetry.js"
import { Tracing } from "./telemetry/Tracing.js"

/** Every tap that watches proxied traffic, in the order they see it. */
const TapsLive = Layer.effect(ExchangeTaps, Effect.all([makeTelemetryTap]))

export const AppLive = Layer.merge(Server.Default, MetricsLive.pipe(Layer.provide(OllamaHealth.Default))).pipe(
  Layer.provide(TapsLive),
  // Tracing before everything that makes spans: it installs the OpenTelemetry tracer when enabled.
  Layer.provide(Tracing.layer),
  Layer.provide(LoggingLive),
  Layer.provide(AppConfig.layer)
)

export const appFromEnv = (env: Record<string, string | undefined>) => AppLive.pipe(Layer.provide(Environment.layer(env)))
