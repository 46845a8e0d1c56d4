/**
 * Tracing: OpenTelemetry traces exported over OTLP/HTTP when OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT
 * is set. Nothing set: the SDK is never loaded, no span is made, and the proxy's hot path pays
 * one `undefined` check per request.
 *
 * Two kinds of spans share one tracer provider:
 * - Effect code (process supervision, preload, webhook) uses `Effect.withSpan` / `Effect.fn`;
 *   the layer installs @effect/opentelemetry's tracer so those spans are exported. Names follow
 *   `Service.operation`: OllamaProcess.start / .ready / .exit / .restart / .stop, Preloader.pull /
 *   .warm (attribute `model`); the usage webhook's delivery attempts continue the trace of the
 *   request that produced the record (`Exchange.parentSpan()`, with `Effect.withParentSpan`).
 * - The proxy's hot path is plain callbacks without fibers, so its spans (one server span per
 *   request, one GenAI client span per inference call) are made with the OpenTelemetry API
 *   directly, through the `ExchangeTracer` below.
 */
import type { SpanProcessor } from "@opentelemetry/sdk-trace-base"
import { Context, Effect, Layer, Option } from "effect"
import { WorkerConfig, type WorkerIdentity } from "../config/Shared.js"
import type { GenAiOperation } from "../exchange/Classify.js"
import type { Exchange } from "../exchange/Exchange.js"
import type { Outcome } from "../exchange/Reading.js"
import { OllamaHostConfig } from "../OllamaHost.js"
import type { ResponseUsage } from "./GenAi.js"
import { OtelConfig, type OtelConfigShape } from "./OtelConfig.js"

/** Extra span processors, beside the OTLP exporter; tests add an in-memory one. */
export class SpanProcessors extends Context.Reference<SpanProcessors>()("app/SpanProcessors", {
  defaultValue: (): ReadonlyArray<SpanProcessor> => []
}) {}

declare const __APP_VERSION__: string | undefined

/**
 * service.name, service.version, the RunPod worker (its pod id is also `service.instance.id`,
 * so each worker's telemetry stands apart) and OTEL_RESOURCE_ATTRIBUTES, which win, for traces
 * and metrics alike.
 */
export const resourceOf = (otel: OtelConfigShape, worker: WorkerIdentity) => {
  const { runpod_dc_id, runpod_endpoint_id, runpod_pod_id } = worker
  return {
    serviceName: otel.serviceName,
    ...(typeof __APP_VERSION__ === "string" ? { serviceVersion: __APP_VERSION__ } : {}),
    attributes: {
      ...(runpod_pod_id === undefined ? {} : { "service.instance.id": runpod_pod_id, "runpod.pod_id": runpod_pod_id }),
      ...(runpod_endpoint_id === undefined ? {} : { "runpod.endpoint_id": runpod_endpoint_id }),
      ...(runpod_dc_id === undefined ? {} : { "runpod.dc_id": runpod_dc_id }),
      ...otel.resourceAttributes
    }
  }
}

/** What the proxy knows of one exchange when it ends, for its spans. */
export interface ExchangeSummary {
  readonly status: number
  readonly outcome: Outcome
  readonly error: Error | undefined
  readonly bytesIn: number
  readonly bytesOut: number
  readonly requestModel: string | undefined
  readonly requestStream: boolean | undefined
  readonly usage: ResponseUsage | undefined
  /** Seconds from the upstream call to the first response byte. */
  readonly timeToFirstChunk: number | undefined
  /** Low-cardinality failure class, or undefined when the exchange succeeded. */
  readonly errorType: string | undefined
  /** Why the proxy refused the request (401, 403, 400...), when it did. */
  readonly refusal: string | undefined
  /** The key's limit that refused it (a 429): `requests_per_minute`, `tokens_per_day`, ... */
  readonly rateLimit: string | undefined
  /** Milliseconds it waited for a slot of Ollama's (src/schedule/); null when it did not ask for one. */
  readonly queueWaitMs: number | null
}

/** The spans of one exchange. */
export interface ExchangeTrace {
  readonly traceId: string
  /** The server span. */
  readonly spanId: string
  readonly sampled: boolean
  /** The upstream call starts: opens the GenAI span for inference, sets `traceparent` for Ollama. */
  readonly upstream: (headers: Record<string, string | Array<string>>, operation: GenAiOperation | undefined) => void
  readonly end: (summary: ExchangeSummary) => void
}

export interface ExchangeTracer {
  readonly start: (exchange: Exchange) => ExchangeTrace
}

export interface TracingShape {
  /** undefined when traces are not exported: the hot path makes no spans. */
  readonly exchanges: ExchangeTracer | undefined
}

export class Tracing extends Context.Tag("app/Tracing")<Tracing, TracingShape>() {
  static readonly off: TracingShape = { exchanges: undefined }

  /**
   * From the OTEL_* variables. The OpenTelemetry SDK is imported only when something is exported, so an
   * unconfigured service neither loads nor initialises it.
   */
  static readonly layer = Layer.unwrapEffect(
    Effect.gen(function*() {
      const otel = yield* OtelConfig
      const processors = yield* SpanProcessors
      if (Option.isNone(otel.traces) && Option.isNone(otel.metrics) && processors.length === 0) {
        return Layer.succeed(Tracing, Tracing.off)
      }
      const sdk = yield* Effect.promise(() => import("./OtelSdk.js"))
      return sdk.layer({
        tag: Tracing,
        off: Tracing.off,
        otel,
        ollama: yield* OllamaHostConfig,
        resource: resourceOf(otel, yield* WorkerConfig),
        extraProcessors: processors
      })
    })
  )
}
