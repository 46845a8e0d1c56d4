/**
 * The whole service as one layer, from an environment: what main runs and what tests start.
 */
import { Effect, Layer } from "effect"
import { AppConfig, Environment } from "./Config.js"
import { ExchangeTaps } from "./http/Exchange.js"
import { Server } from "./http/Server.js"
import { OllamaHealth } from "./ollama/Health.js"
import { OllamaProcess } from "./ollama/Process.js"
import { LoggingLive } from "./telemetry/Logging.js"
import { MetricsLive } from "./telemetry/MetricsExport.js"
import { makeTelemetryTap } from "./telemetry/Telemetry.js"
import { Tracing } from "./telemetry/Tracing.js"
import { UsageTap } from "./usage/Tap.js"

/**
 * The service, with the taps that watch its traffic (usage metering, telemetry).
 *
 * Layers are released in the reverse order of their construction, and that order is the shutdown
 * sequence: the Server drains first, then the taps flush (the usage webhook delivers the records
 * of the exchanges just drained), and Ollama, built before them all (the Server's own dependency
 * on it reuses this instance), is stopped last. Tracing is built before Ollama, so the process's
 * spans are exported, and flushed after it stopped.
 */
export const appWith = <E, R>(taps: Layer.Layer<ExchangeTaps, E, R>) =>
  Layer.merge(Server.Default, MetricsLive.pipe(Layer.provide(OllamaHealth.Default))).pipe(
    Layer.provide(taps),
    Layer.provide(OllamaProcess.Default),
    Layer.provide(Tracing.layer),
    Layer.provide(LoggingLive),
    Layer.provide(AppConfig.layer)
  )

/**
 * The taps in force, in the order they see an exchange: telemetry, then usage metering (present
 * only with a webhook URL: nothing would receive its records otherwise).
 */
export const TapsLive = Layer.effect(
  ExchangeTaps,
  Effect.gen(function*() {
    const telemetry = yield* makeTelemetryTap
    const usage = yield* UsageTap
    return [telemetry, usage.tap].filter((tap) => tap !== undefined)
  })
).pipe(Layer.provide(UsageTap.Default))

export const AppLive = appWith(TapsLive)

export const appFromEnv = (env: Record<string, string | undefined>) => AppLive.pipe(Layer.provide(Environment.layer(env)))
