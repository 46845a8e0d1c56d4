/**
 * The whole service as one layer, from an environment: what main runs and what tests start.
 */
import { Effect, Layer } from "effect"
import { AppConfig, Environment } from "./Config.js"
import { ExchangeTaps } from "./http/Exchange.js"
import { Server } from "./http/Server.js"
import { OllamaProcess } from "./ollama/Process.js"
import { LoggingLive } from "./telemetry/Logging.js"
import { UsageTap } from "./usage/Tap.js"

/**
 * The service, with the taps that watch its traffic (usage metering, telemetry).
 *
 * Layers are released in the reverse order of their construction, and that order is the shutdown
 * sequence: the Server drains first, then the taps flush (the usage webhook delivers the records
 * of the exchanges just drained), and Ollama, built before them all (the Server's own dependency
 * on it reuses this instance), is stopped last.
 */
export const appWith = <E, R>(taps: Layer.Layer<ExchangeTaps, E, R>) =>
  Server.Default.pipe(
    Layer.provide(taps),
    Layer.provide(OllamaProcess.Default),
    Layer.provide(LoggingLive),
    Layer.provide(AppConfig.layer)
  )

/** Usage metering; without a webhook URL there is no tap (nothing would receive the records). */
export const TapsLive = Layer.effect(
  ExchangeTaps,
  Effect.gen(function*() {
    const usage = yield* UsageTap
    return [usage.tap].filter((tap) => tap !== undefined)
  })
).pipe(Layer.provide(UsageTap.Default))

export const AppLive = appWith(TapsLive)

export const appFromEnv = (env: Record<string, string | undefined>) => AppLive.pipe(Layer.provide(Environment.layer(env)))
