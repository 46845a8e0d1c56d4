/**
 * Exporting the metrics: `GET /metrics`, Prometheus text made by OpenTelemetry's Prometheus
 * exporter from the Effect metrics bridge, and the series shown at 0 from the start.
 */
import { HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { Effect, Layer } from "effect"
import type { IncomingHttpHeaders } from "node:http"
import { WorkerConfig, type WorkerIdentity } from "../config/Shared.js"
import { forbidden, refusalBody, unauthorized } from "../exchange/Errors.js"
import { ApiKeys } from "../keys/ApiKeys.js"
import { NO_LABELS, preregistered } from "./Metrics.js"
import { OtelConfig, type OtelConfigShape } from "./OtelConfig.js"
import { MetricsConfig } from "./TelemetryConfig.js"
import { resourceOf } from "./Tracing.js"

/** The unlabelled series a scrape shows from the start, at 0, before anything has set them. */
export const MetricsLive = Layer.effectDiscard(
  Effect.sync(() => {
    for (const metric of preregistered) metric.unsafeValue(NO_LABELS)
  })
)

// ---------------------------------------------------------------------------------------------
// Prometheus text, made by OpenTelemetry's exporter from the Effect metrics

interface Scraper {
  /** `perKey`: with the series that name an API key (only for callers allowed to see them). */
  readonly scrape: (perKey: boolean) => Promise<string>
  readonly shutdown: () => Promise<void>
}

/** Loaded on the first scrape: nothing of the exporter runs at start-up. */
const loadScraper = async (otel: OtelConfigShape, worker: WorkerIdentity): Promise<Scraper> => {
  const [{ PrometheusExporter, PrometheusSerializer }, Bridge] = await Promise.all([
    import("@opentelemetry/exporter-prometheus"),
    import("./MetricsBridge.js")
  ])
  const reader = new PrometheusExporter({ preventServerStart: true })
  reader.setMetricProducer(Bridge.makeProducer(resourceOf(otel, worker)))
  // No otel_scope_name on every series: all of them come from the one Effect bridge.
  const serializer = new PrometheusSerializer(undefined, false, undefined, false, true)
  return {
    scrape: async (perKey) => {
      const { resourceMetrics } = await reader.collect()
      return serializer.serialize(perKey ? resourceMetrics : Bridge.withoutKeys(resourceMetrics))
    },
    shutdown: () => reader.shutdown()
  }
}

export const PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

export class PrometheusMetrics extends Effect.Service<PrometheusMetrics>()("app/PrometheusMetrics", {
  scoped: Effect.gen(function*() {
    const otel = yield* OtelConfig
    const worker = yield* WorkerConfig
    let scraper: Promise<Scraper> | undefined
    yield* Effect.addFinalizer(() => scraper === undefined ? Effect.void : Effect.promise(() => scraper!.then((s) => s.shutdown())))
    return {
      /** The Prometheus text exposition of every metric now; per-key series only with `perKey`. */
      scrape: (perKey: boolean) =>
        Effect.promise(() => {
          scraper ??= loadScraper(otel, worker)
          return scraper.then((s) => s.scrape(perKey))
        })
    } as const
  })
}) {}

/**
 * `GET /metrics`. Series per API key tell one customer the others' names, models and tokens, so a
 * caller sees them only with a key that holds the `metrics` scope. Without such a key the answer is
 * 401 or 403, unless METRICS_PUBLIC=true: then it is every metric summed over keys. An open proxy
 * (no keys at all) shows everything.
 */
export const metricsRoute = Effect.gen(function*() {
  const { metricsPublic } = yield* MetricsConfig
  const keys = yield* ApiKeys
  const request = yield* HttpServerRequest.HttpServerRequest
  const auth = keys.open ? undefined : keys.authenticate(request.headers as IncomingHttpHeaders)
  const perKey = auth === undefined || (auth.ok && auth.key?.scopes.has("metrics") === true)
  if (!perKey && !metricsPublic) {
    const refusal = auth?.ok === false ? unauthorized(auth.reason) : forbidden("this API key lacks the metrics scope")
    return HttpServerResponse.text(refusalBody("native", refusal), {
      status: refusal.status,
      contentType: "application/json; charset=utf-8",
      headers: refusal.headers as Record<string, string> | undefined ?? {}
    })
  }
  const text = yield* (yield* PrometheusMetrics).scrape(perKey)
  return HttpServerResponse.text(text, { contentType: PROMETHEUS_CONTENT_TYPE })
})
