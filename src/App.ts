/**
 * The whole service as one layer, from an environment: what main runs and what tests start.
 */
import { Layer } from "effect"
import { AppConfig, Environment } from "./Config.js"
import { ExchangeTaps } from "./http/Exchange.js"
import { Server } from "./http/Server.js"
import { LoggingLive } from "./telemetry/Logging.js"

export const AppLive = Server.Default.pipe(
  Layer.provide(ExchangeTaps.none),
  Layer.provide(LoggingLive),
  Layer.provide(AppConfig.layer)
)

export const appFromEnv = (env: Record<string, string | undefined>) => AppLive.pipe(Layer.provide(Environment.layer(env)))
