/**
 * The OpenTelemetry SDK set-up, imported by Tracing only when something is exported: tracer
 * provider, OTLP/HTTP exporters (protobuf or JSON), sampler, the Effect tracer, OTLP metrics,
 * and the tracer the proxy's hot path uses directly.
 *
 * Bundling: esbuild keeps this module lazy by wrapping it and everything it imports. Importing
 * a project module or the `effect` index from here would wrap those too and pull every Effect
 * module into start-up, so this file imports Effect by module path and gets the rest as
 * arguments (types only from the project).
 */
import * as EffectOtelMetrics from "@effect/opentelemetry/Metrics"
import * as NodeSdk from "@effect/opentelemetry/NodeSdk"
import * as Resource from "@effect/opentelemetry/Resource"
import * as EffectOtelTracer from "@effect/opentelemetry/Tracer"
import {
  type Attributes,
  type Context as OtelContext,
  defaultTextMapGetter,
  defaultTextMapSetter,
  ROOT_CONTEXT,
  type Span,
  SpanKind,
  SpanStatusCode,
  trace,
  type Tracer as OtelTracer
} from "@opentelemetry/api"
import { W3CTraceContextPropagator } from "@opentelemetry/core"
import { OTLPMetricExporter as JsonMetricExporter } from "@opentelemetry/exporter-metrics-otlp-http"
import { OTLPMetricExporter as ProtoMetricExporter } from "@opentelemetry/exporter-metrics-otlp-proto"
import { OTLPTraceExporter as JsonTraceExporter } from "@opentelemetry/exporter-trace-otlp-http"
import { OTLPTraceExporter as ProtoTraceExporter } from "@opentelemetry/exporter-trace-otlp-proto"
import { PeriodicExportingMetricReader } from "@opentelemetry/sdk-metrics"
import {
  AlwaysOffSampler,
  AlwaysOnSampler,
  BatchSpanProcessor,
  ParentBasedSampler,
  type Sampler,
  type SpanProcessor,
  TraceIdRatioBasedSampler
} from "@opentelemetry/sdk-trace-base"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import type { Caller } from "../exchange/Caller.js"
import type { Exchange } from "../exchange/Exchange.js"
import type { OllamaHost } from "../OllamaHost.js"
import { makeProducer } from "./MetricsBridge.js"
import type { OtelConfigShape, OtlpTarget, SamplerConfig } from "./OtelConfig.js"
import type { ExchangeSummary, ExchangeTrace, ExchangeTracer, Tracing, TracingShape } from "./Tracing.js"

const samplerOf = (config: SamplerConfig): Sampler => {
  switch (config.kind) {
    case "always_on":
      return new AlwaysOnSampler()
    case "always_off":
      return new AlwaysOffSampler()
    case "traceidratio":
      return new TraceIdRatioBasedSampler(config.ratio)
    case "parentbased_always_on":
      return new ParentBasedSampler({ root: new AlwaysOnSampler() })
    case "parentbased_always_off":
      return new ParentBasedSampler({ root: new AlwaysOffSampler() })
    case "parentbased_traceidratio":
      return new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(config.ratio) })
  }
}

const exporterOptions = (target: OtlpTarget) => ({ url: target.url.href, headers: { ...Redacted.value(target.headers) } })

const traceExporter = (target: OtlpTarget) =>
  target.protocol === "http/json" ? new JsonTraceExporter(exporterOptions(target)) : new ProtoTraceExporter(exporterOptions(target))

const metricExporter = (target: OtlpTarget) =>
  target.protocol === "http/json" ? new JsonMetricExporter(exporterOptions(target)) : new ProtoMetricExporter(exporterOptions(target))

/**
 * The last batch goes out in milliseconds when the collector is there; when it is not, the
 * exporter retries, and this bounds how long it may hold up the exit (OTLP metrics: 3 s too).
 */
const SHUTDOWN_TIMEOUT = Duration.seconds(3)

export interface SdkOptions {
  readonly tag: typeof Tracing
  readonly off: TracingShape
  readonly otel: OtelConfigShape
  readonly ollama: OllamaHost
  readonly resource: Parameters<typeof Resource.layer>[0]
  readonly extraProcessors: ReadonlyArray<SpanProcessor>
}

export const layer = ({ extraProcessors, off, ollama, otel, resource, tag }: SdkOptions): Layer.Layer<Tracing> => {
  const processors: Array<SpanProcessor> = [...extraProcessors]
  if (Option.isSome(otel.traces)) processors.push(new BatchSpanProcessor(traceExporter(otel.traces.value)))

  const ResourceLive = Resource.layer(resource)

  const OtlpMetricsLive = Option.match(otel.metrics, {
    onNone: () => Layer.empty,
    onSome: (target) =>
      Layer.scopedDiscard(
        EffectOtelMetrics.registerProducer(makeProducer(resource), () =>
          new PeriodicExportingMetricReader({
            exporter: metricExporter(target),
            exportIntervalMillis: Duration.toMillis(otel.metricExportInterval)
          }))
      )
  })

  const [first, ...rest] = processors
  const TracingLive = first === undefined
    ? Layer.succeed(tag, off)
    : Layer.effect(
      tag,
      Effect.map(EffectOtelTracer.OtelTracer, (tracer) => ({
        exchanges: makeExchangeTracer(tracer, ollama.connectHost, ollama.port)
      }))
    ).pipe(
      Layer.provideMerge(EffectOtelTracer.layer),
      Layer.provide(NodeSdk.layerTracerProvider([first, ...rest], { sampler: samplerOf(otel.sampler), shutdownTimeout: SHUTDOWN_TIMEOUT }))
    )

  return Layer.merge(TracingLive, OtlpMetricsLive).pipe(Layer.provide(ResourceLive))
}

// ---------------------------------------------------------------------------------------------
// The hot path's spans, made with the OpenTelemetry API: no fiber, no Effect per request.

const PROVIDER = "ollama"

const setUser = (attributes: Attributes, caller: Caller) => {
  if (caller.keyName !== null) attributes["api_key.name"] = caller.keyName
  if (caller.user_id !== null) attributes["user.id"] = caller.user_id
  if (caller.user_name !== null) attributes["user.name"] = caller.user_name
}

export const makeExchangeTracer = (tracer: OtelTracer, ollamaHost: string, ollamaPort: number): ExchangeTracer => {
  const propagator = new W3CTraceContextPropagator()

  const start = (exchange: Exchange): ExchangeTrace => {
    const { caller, req, route } = exchange
    /** A route the proxy knows: `http.route` is then set. */
    const knownRoute = route.route !== "other"
    const parent: OtelContext = req.headers.traceparent === undefined
      ? ROOT_CONTEXT
      : propagator.extract(ROOT_CONTEXT, req.headers, defaultTextMapGetter)
    const method = req.method ?? "GET"
    const attributes: Attributes = {
      "http.request.method": method,
      "url.path": exchange.path,
      "url.scheme": "http",
      "http.request.header.x-request-id": [exchange.requestId]
    }
    if (knownRoute) attributes["http.route"] = route.route
    attributes["ollama_proxy.scope"] = route.scope
    const host = req.headers.host
    if (host !== undefined) attributes["server.address"] = host.replace(/:\d+$/, "")
    if (req.socket.localPort !== undefined) attributes["server.port"] = req.socket.localPort
    if (req.socket.remoteAddress !== undefined) attributes["client.address"] = req.socket.remoteAddress
    const agent = req.headers["user-agent"]
    if (agent !== undefined) attributes["user_agent.original"] = agent
    setUser(attributes, caller)

    const server = tracer.startSpan(
      knownRoute ? `${method} ${route.route}` : method,
      { kind: SpanKind.SERVER, startTime: exchange.startedAt, attributes },
      parent
    )
    const serverContext = trace.setSpan(parent, server)
    const { traceId, spanId, traceFlags } = server.spanContext()
    let genAi: Span | undefined
    let operation: string | undefined

    return {
      traceId,
      spanId,
      sampled: (traceFlags & 1) === 1,
      upstream: (headers, op) => {
        if (op !== undefined) {
          operation = op
          const genAiAttributes: Attributes = {
            "gen_ai.operation.name": op,
            "gen_ai.provider.name": PROVIDER,
            "server.address": ollamaHost,
            "server.port": ollamaPort
          }
          setUser(genAiAttributes, caller)
          genAi = tracer.startSpan(op, { kind: SpanKind.CLIENT, attributes: genAiAttributes }, serverContext)
        }
        propagator.inject(genAi === undefined ? serverContext : trace.setSpan(parent, genAi), headers, defaultTextMapSetter)
      },
      end: (summary) => {
        const now = performance.now()
        if (genAi !== undefined) endGenAi(genAi, operation!, summary, now)
        server.setAttribute("http.response.status_code", summary.status)
        server.setAttribute("http.request.body.size", summary.bytesIn)
        server.setAttribute("http.response.body.size", summary.bytesOut)
        server.setAttribute("ollama_proxy.outcome", summary.outcome)
        if (summary.refusal !== undefined) server.setAttribute("ollama_proxy.refusal", summary.refusal)
        if (summary.rateLimit !== undefined) server.setAttribute("ollama_proxy.rate_limit", summary.rateLimit)
        if (summary.queueWaitMs !== null) server.setAttribute("ollama_proxy.queue_wait_ms", summary.queueWaitMs)
        // A server span is an error for 5xx only; a client's 4xx is the client's doing.
        if (summary.status >= 500 || summary.outcome === "upstream_error" || summary.outcome === "unavailable") {
          server.setAttribute("error.type", summary.status >= 500 ? String(summary.status) : summary.outcome)
          server.setStatus({ code: SpanStatusCode.ERROR, ...(summary.error ? { message: summary.error.message } : {}) })
        }
        server.end(now)
      }
    }
  }

  return { start }
}

const endGenAi = (span: Span, operation: string, summary: ExchangeSummary, now: number) => {
  const usage = summary.usage
  const model = summary.requestModel ?? usage?.model
  if (model !== undefined) span.updateName(`${operation} ${model}`)
  if (summary.requestModel !== undefined) span.setAttribute("gen_ai.request.model", summary.requestModel)
  if (summary.requestStream !== undefined) span.setAttribute("gen_ai.request.stream", summary.requestStream)
  if (usage?.model !== undefined) span.setAttribute("gen_ai.response.model", usage.model)
  if (usage?.finishReasons !== undefined) span.setAttribute("gen_ai.response.finish_reasons", usage.finishReasons)
  if (usage?.inputTokens !== undefined) span.setAttribute("gen_ai.usage.input_tokens", usage.inputTokens)
  if (usage?.outputTokens !== undefined) span.setAttribute("gen_ai.usage.output_tokens", usage.outputTokens)
  if (usage?.estimated === true) span.setAttribute("ollama_proxy.usage_estimated", true)
  if (summary.timeToFirstChunk !== undefined) span.setAttribute("gen_ai.response.time_to_first_chunk", summary.timeToFirstChunk)
  if (summary.errorType !== undefined) {
    span.setAttribute("error.type", summary.errorType)
    const message = usage?.error ?? summary.error?.message
    span.setStatus({ code: SpanStatusCode.ERROR, ...(message !== undefined ? { message } : {}) })
  }
  span.end(now)
}
