/**
 * The whole service as one layer, from an environment: what main runs and what tests start.
 *
 * Layers are released in the reverse order of their building, which gives the shutdown order:
 * the Server stops accepting and drains in-flight responses, then the usage webhook flushes the
 * records those responses produced.
 */
import { Effect, Layer } from "effect"
import { AppConfig, Environment } from "./Config.js"
import { ExchangeTaps } from "./http/Exchange.js"
import { Server } from "./http/Server.js"
import { LoggingLive } from "./telemetry/Logging.js"
import { UsageTap } from "./usage/Tap.js"

const TapsLive = Layer.effect(
  ExchangeTaps,
  Effect.gen(function*() {
    const usage = yield* UsageTap
    return [usage.tap].filter((tap) => tap !== undefined)
  })
).pipe(Layer.provide(UsageTap.Default))

export const AppLive = Server.Default.pipe(
  Layer.provide(TapsLive),
  Layer.provide(LoggingLive),
  Layer.provide(AppConfig.layer)
)

export const appFromEnv = (env: Record<string, string | undefined>) => AppLive.pipe(Layer.provide(Environment.layer(env)))
