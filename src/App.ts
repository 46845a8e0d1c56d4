/**
 * The whole service as one layer, from an environment: what main runs and what tests start.
 */
import { Context, Effect, Layer } from "effect"
import { ConfigLive, Environment } from "./Config.js"
import { ExchangeAdmission, ExchangeConsumers } from "./exchange/Exchange.js"
import { Server } from "./http/Server.js"
import { ApiKeys } from "./keys/ApiKeys.js"
import { Limits } from "./limits/Limits.js"
import { OllamaProcess } from "./ollama/Process.js"
import { ExchangeDispatch } from "./schedule/Dispatch.js"
import { Scheduler } from "./schedule/Scheduler.js"
import { LoggingLive } from "./telemetry/Logging.js"
import { MetricsLive } from "./telemetry/MetricsExport.js"
import { makeTelemetryConsumer } from "./telemetry/Telemetry.js"
import { Tracing } from "./telemetry/Tracing.js"
import { UsageRecords } from "./usage/Records.js"

/**
 * The service, with the consumers that read its exchanges (telemetry, usage records) and the
 * admission of keys with limits (required: without it they would pass unlimited).
 *
 * Layers are released in the reverse order of their construction, and that order is the shutdown
 * sequence: the Server drains first, then the consumers flush (the usage webhook delivers the
 * records of the exchanges just drained), and Ollama, built before them all (the Server's own
 * dependency on it reuses this instance), is stopped last. Tracing is built before Ollama, so the
 * process's spans are exported, and flushed after it stopped. The configuration (every slice,
 * ConfigLive) is read first, and the keys (environment and key file) are checked before Ollama is
 * started: a bad variable or key file is then the one line start-up ends with, not a line after
 * Ollama's start and stop.
 */
export const appWith = <E, R>(consumers: Layer.Layer<ExchangeConsumers | ExchangeAdmission, E, R>) =>
  Layer.merge(Server.Default, MetricsLive).pipe(
    Layer.provide(consumers),
    Layer.provide(OllamaProcess.Default),
    Layer.provide(ApiKeys.Default),
    Layer.provide(Tracing.layer),
    Layer.provide(LoggingLive),
    Layer.provide(ConfigLive)
  )

/**
 * The consumers in force: usage records (present only with a webhook URL: nothing would receive
 * them otherwise), limits, telemetry and the schedule of Ollama's slots, in any order (each declares
 * what it provides and reads, and the boundary derives the order from that); the admission of keys
 * with limits, and the dispatch of inference requests to Ollama's slots. Limits are built
 * after the usage records, so at shutdown they finish their last charges while the webhook still
 * takes the records that wait for them.
 */
export const ConsumersLive = Layer.effectContext(
  Effect.gen(function*() {
    const telemetry = yield* makeTelemetryConsumer
    const usage = yield* UsageRecords
    const limits = yield* Limits
    const schedule = yield* Scheduler
    const consumers = [usage.consumer, limits.consumer, telemetry, schedule.consumer].filter((c) => c !== undefined)
    return Context.make(ExchangeConsumers, consumers).pipe(
      Context.add(ExchangeAdmission, { admit: limits.admit, ownUsage: limits.ownUsage }),
      Context.add(ExchangeDispatch, schedule.dispatch)
    )
  })
).pipe(Layer.provide(Scheduler.Default), Layer.provide(Limits.Default), Layer.provide(UsageRecords.Default))

export const AppLive = appWith(ConsumersLive)

export const appFromEnv = (env: Record<string, string | undefined>) => AppLive.pipe(Layer.provide(Environment.layer(env)))
