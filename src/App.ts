/**
 * The whole service as one layer, from an environment: what main runs and what tests start.
 */
import { Layer } from "effect"
import { AppConfig, Environment } from "./Config.js"
import { ExchangeTaps } from "./http/Exchange.js"
import { Server } from "./http/Server.js"
import { OllamaProcess } from "./ollama/Process.js"
import { LoggingLive } from "./telemetry/Logging.js"

/**
 * The service, with the taps that watch its traffic (usage metering, telemetry).
 *
 * Layers are released in the reverse order of their construction, and that order is the shutdown
 * sequence: the Server drains first, then the taps flush, and Ollama, built before them all (the
 * Server's own dependency on it reuses this instance), is stopped last.
 */
export const appWith = <E, R>(taps: Layer.Layer<ExchangeTaps, E, R>) =>
  Server.Default.pipe(
    Layer.provide(taps),
    Layer.provide(OllamaProcess.Default),
    Layer.provide(LoggingLive),
    Layer.provide(AppConfig.layer)
  )

export const AppLive = appWith(ExchangeTaps.none)

export const appFromEnv = (env: Record<string, string | undefined>) => AppLive.pipe(Layer.provide(Environment.layer(env)))
