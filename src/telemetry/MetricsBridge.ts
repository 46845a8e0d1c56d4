/**
 * The Effect metrics as an OpenTelemetry MetricProducer, for the Prometheus exporter and the OTLP
 * reader alike. Loaded lazily, like OtelSdk.ts: Effect by module path, no project imports.
 */
import * as OtelMetrics from "@effect/opentelemetry/Metrics"
import * as Resource from "@effect/opentelemetry/Resource"
import type { CollectionResult, MetricCollectOptions, MetricProducer } from "@opentelemetry/sdk-metrics"
import * as Effect from "effect/Effect"

export type ResourceConfig = Parameters<typeof Resource.layer>[0]

/** Effect's own per-fiber runtime metrics are internals with misleading names (fiber "failures"). */
const isExported = (name: string) => !name.startsWith("effect_fiber_")

export const makeProducer = (resource: ResourceConfig): MetricProducer => {
  const effectMetrics = Effect.runSync(Effect.provide(OtelMetrics.makeProducer, Resource.layer(resource)))
  return {
    collect: async (options?: MetricCollectOptions): Promise<CollectionResult> => {
      const result = await effectMetrics.collect(options)
      return {
        ...result,
        resourceMetrics: {
          ...result.resourceMetrics,
          scopeMetrics: result.resourceMetrics.scopeMetrics.map((scope) => ({
            ...scope,
            metrics: scope.metrics.filter((m) => isExported(m.descriptor.name))
          }))
        }
      }
    }
  }
}
