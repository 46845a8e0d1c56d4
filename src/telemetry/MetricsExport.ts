/**
 * Exporting the metrics: `ollama.up` fed from OllamaHealth, and `GET /metrics`, Prometheus text
 * made by OpenTelemetry's Prometheus exporter from the Effect metrics bridge.
 */
import { HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { Effect, Layer, Metric, Stream } from "effect"
import type { IncomingHttpHeaders } from "node:http"
import { AppConfig, type AppConfigShape } from "../Config.js"
import { unauthorized } from "../exchange/Errors.js"
import { ApiKeys } from "../keys/ApiKeys.js"
import { OllamaHealth } from "../ollama/Health.js"
import { NO_LABELS, ollamaUp, preregistered } from "./Metrics.js"
import { resourceOf } from "./Tracing.js"

/** Keeps `ollama.up` in step with OllamaHealth for as long as the service runs. */
export const MetricsLive = Layer.scopedDiscard(
  Effect.gen(function*() {
    for (const metric of preregistered) metric.unsafeValue(NO_LABELS)
    const health = yield* OllamaHealth
    yield* health.changes.changes.pipe(
      Stream.runForEach((s) => Metric.set(ollamaUp, s.state === "up" ? 1 : 0)),
      Effect.forkScoped
    )
  })
)

// ---------------------------------------------------------------------------------------------
// Prometheus text, made by OpenTelemetry's exporter from the Effect metrics

interface Scraper {
  readonly scrape: () => Promise<string>
  readonly shutdown: () => Promise<void>
}

/** Loaded on the first scrape: nothing of the exporter runs at start-up. */
const loadScraper = async (config: AppConfigShape): Promise<Scraper> => {
  const [{ PrometheusExporter, PrometheusSerializer }, Bridge] = await Promise.all([
    import("@opentelemetry/exporter-prometheus"),
    import("./MetricsBridge.js")
  ])
  const reader = new PrometheusExporter({ preventServerStart: true })
  reader.setMetricProducer(Bridge.makeProducer(resourceOf(config)))
  // No otel_scope_name on every series: all of them come from the one Effect bridge.
  const serializer = new PrometheusSerializer(undefined, false, undefined, false, true)
  return {
    scrape: async () => {
      const { resourceMetrics } = await reader.collect()
      return serializer.serialize(resourceMetrics)
    },
    shutdown: () => reader.shutdown()
  }
}

export const PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

export class PrometheusMetrics extends Effect.Service<PrometheusMetrics>()("app/PrometheusMetrics", {
  scoped: Effect.gen(function*() {
    const config = yield* AppConfig
    let scraper: Promise<Scraper> | undefined
    yield* Effect.addFinalizer(() => scraper === undefined ? Effect.void : Effect.promise(() => scraper!.then((s) => s.shutdown())))
    return {
      /** The Prometheus text exposition of every metric now. */
      scrape: Effect.promise(() => {
        scraper ??= loadScraper(config)
        return scraper.then((s) => s.scrape())
      })
    } as const
  })
}) {}

/** `GET /metrics`: needs a valid API key when keys are configured, unless METRICS_PUBLIC=true. */
export const metricsRoute = Effect.gen(function*() {
  const config = yield* AppConfig
  const keys = yield* ApiKeys
  if (!config.metricsPublic && !keys.open) {
    const request = yield* HttpServerRequest.HttpServerRequest
    const auth = keys.authenticate(request.headers as IncomingHttpHeaders)
    if (!auth.ok) {
      const answer = unauthorized(auth.reason)
      return HttpServerResponse.unsafeJson({ error: answer.message }, { status: answer.status, headers: answer.headers })
    }
  }
  const text = yield* (yield* PrometheusMetrics).scrape
  return HttpServerResponse.text(text, { contentType: PROMETHEUS_CONTENT_TYPE })
})
