/**
 * The Effect metrics as an OpenTelemetry MetricProducer, for the Prometheus exporter and the OTLP
 * reader alike. Loaded lazily, like OtelSdk.ts: Effect by module path, no project imports.
 */
import * as OtelMetrics from "@effect/opentelemetry/Metrics"
import * as Resource from "@effect/opentelemetry/Resource"
import type { Attributes } from "@opentelemetry/api"
import {
  type CollectionResult,
  type DataPoint,
  DataPointType,
  type Histogram,
  type MetricCollectOptions,
  type MetricData,
  type MetricProducer,
  type ResourceMetrics
} from "@opentelemetry/sdk-metrics"
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

/** The attributes that name an API key: one customer's usage, for operators only. */
const KEY_ATTRIBUTES = ["api_key_name", "api_key.name"]

const hasKey = (attributes: Attributes) => KEY_ATTRIBUTES.some((name) => name in attributes)

const withoutKey = (attributes: Attributes): Attributes =>
  Object.fromEntries(Object.entries(attributes).filter(([name]) => !KEY_ATTRIBUTES.includes(name)))

const sumHistograms = (a: Histogram, b: Histogram): Histogram => ({
  buckets: { boundaries: a.buckets.boundaries, counts: a.buckets.counts.map((count, i) => count + (b.buckets.counts[i] ?? 0)) },
  count: a.count + b.count,
  sum: (a.sum ?? 0) + (b.sum ?? 0),
  ...(a.min === undefined && b.min === undefined ? {} : { min: Math.min(a.min ?? Infinity, b.min ?? Infinity) }),
  ...(a.max === undefined && b.max === undefined ? {} : { max: Math.max(a.max ?? -Infinity, b.max ?? -Infinity) })
})

/** Adds up the points that differ only in their key attribute. */
const merged = <T>(points: ReadonlyArray<DataPoint<T>>, add: (a: T, b: T) => T): Array<DataPoint<T>> => {
  const byAttributes = new Map<string, DataPoint<T>>()
  for (const point of points) {
    const attributes = withoutKey(point.attributes)
    const id = JSON.stringify(Object.entries(attributes).sort(([a], [b]) => (a < b ? -1 : 1)))
    const seen = byAttributes.get(id)
    byAttributes.set(id, seen === undefined ? { ...point, attributes } : { ...seen, value: add(seen.value, point.value) })
  }
  return [...byAttributes.values()]
}

/**
 * The metrics without any per-key series, for a scrape by someone who may not see them: counters
 * and histograms are summed over keys; gauges per key (a key's remaining budget) are left out.
 */
export const withoutKeys = (resourceMetrics: ResourceMetrics): ResourceMetrics => ({
  ...resourceMetrics,
  scopeMetrics: resourceMetrics.scopeMetrics.map((scope) => ({
    ...scope,
    metrics: scope.metrics.map((metric): MetricData => {
      switch (metric.dataPointType) {
        case DataPointType.SUM:
          return { ...metric, dataPoints: merged(metric.dataPoints, (a, b) => a + b) }
        case DataPointType.HISTOGRAM:
          return { ...metric, dataPoints: merged(metric.dataPoints, sumHistograms) }
        case DataPointType.GAUGE:
          return { ...metric, dataPoints: metric.dataPoints.filter((p) => !hasKey(p.attributes)) }
        default:
          return { ...metric, dataPoints: metric.dataPoints.filter((p) => !hasKey(p.attributes)) } as MetricData
      }
    })
  }))
})
