/**
 * Metrics: the instruments, Effect `Metric`s. They are exported through @effect/opentelemetry's
 * metrics bridge, as Prometheus text on `GET /metrics` (MetricsExport.ts, with the official
 * OpenTelemetry serializer) and over OTLP when an endpoint is set (OtelSdk.ts). This module
 * imports nothing of the project, so any part can use it.
 *
 * The proxy's hot path updates them from plain callbacks with `unsafeUpdate`, no fiber. Label
 * sets are cached as arrays, because Effect finds a tagged metric's state by the identity of
 * its label array. Names follow OpenTelemetry (dots); Prometheus shows dots as underscores and
 * counters with `_total`.
 *
 * Other parts update their own instruments here: Ollama's health (`ollamaUp`) and process
 * (`ollamaRestarts`), the preloader (`setPreloadState`), the GPU check (`setModelVramRatio`). The
 * usage webhook and the limits define theirs beside their code, with `labelCache` from here: this
 * module imports nothing of the project, so no consumer of exchanges imports another through it.
 * From Effect code use the Effect API (`Metric.increment(ollamaRestarts)`), from callbacks the
 * `unsafe*` methods.
 */
import { Effect, Metric, MetricBoundaries, MetricLabel } from "effect"

type Labels = ReadonlyArray<MetricLabel.MetricLabel>

/**
 * One array per distinct label set, built once. Empty values are left out, so an open proxy's
 * requests carry no `api_key_name` label rather than an empty one.
 */
export const labelCache = (keys: ReadonlyArray<string>) => {
  const cache = new Map<string, Labels>()
  return (...values: ReadonlyArray<string>): Labels => {
    const id = values.join("\u0001")
    let labels = cache.get(id)
    if (labels === undefined) {
      labels = keys.flatMap((key, i) => (values[i] ? [MetricLabel.make(key, values[i]!)] : []))
      cache.set(id, labels)
    }
    return labels
  }
}

export const NO_LABELS: Labels = []

/** Model names come from clients; past this many distinct ones, new names count as `_other`. */
const MAX_MODELS = 100
const models = new Set<string>()

export const modelLabel = (model: string | undefined): string => {
  if (model === undefined) return ""
  if (models.has(model)) return model
  if (models.size >= MAX_MODELS) return "_other"
  models.add(model)
  return model
}

// Boundaries: HTTP durations up to RunPod's 5.5-minute limit; GenAI ones as OpenTelemetry advises.
const REQUEST_SECONDS = MetricBoundaries.fromIterable([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300])
const GENAI_SECONDS = MetricBoundaries.fromIterable([
  0.01,
  0.02,
  0.04,
  0.08,
  0.16,
  0.32,
  0.64,
  1.28,
  2.56,
  5.12,
  10.24,
  20.48,
  40.96,
  81.92
])
const TOKENS = MetricBoundaries.fromIterable([1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864])

// ---------------------------------------------------------------------------------------------
// Proxied requests

/** Labels: endpoint (route), method, status, outcome, api_key_name. */
export const requests = Metric.counter("ollama_proxy.requests", {
  description: "Proxied requests, by endpoint, method, status, outcome and API key name",
  incremental: true
})
export const requestLabels = labelCache(["endpoint", "method", "status", "outcome", "api_key_name"])

/** Labels: http.request.method, http.route, http.response.status_code. */
export const requestDuration = Metric.histogram(
  "http.server.request.duration",
  REQUEST_SECONDS,
  "Duration of proxied requests until the last byte, in seconds"
)
export const requestDurationLabels = labelCache(["http.request.method", "http.route", "http.response.status_code"])

export const activeRequests = Metric.gauge("http.server.active_requests", { description: "Proxied requests in flight" })

// ---------------------------------------------------------------------------------------------
// GenAI (OpenTelemetry semantic conventions)

/** Labels: gen_ai.operation.name, gen_ai.provider.name, gen_ai.request.model, gen_ai.token.type, api_key.name. */
export const tokenUsage = Metric.histogram("gen_ai.client.token.usage", TOKENS, "Tokens used per operation (input and output)")
export const tokenUsageLabels = labelCache([
  "gen_ai.operation.name",
  "gen_ai.provider.name",
  "gen_ai.request.model",
  "gen_ai.token.type",
  "api_key.name"
])

/** Labels: api_key_name. Web searches Ollama ran on the operator's ollama.com account. */
export const webSearches = Metric.counter("ollama_proxy.web_searches", {
  description: "Web searches Ollama ran on the operator's ollama.com account for permitted requests",
  incremental: true
})
export const webSearchLabels = labelCache(["api_key_name"])

/** Labels: gen_ai.operation.name, gen_ai.provider.name, gen_ai.request.model, error.type. */
export const operationDuration = Metric.histogram(
  "gen_ai.client.operation.duration",
  GENAI_SECONDS,
  "Duration of GenAI operations through Ollama, in seconds"
)
export const operationLabels = labelCache(["gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model", "error.type"])

/** Labels: gen_ai.operation.name, gen_ai.provider.name, gen_ai.request.model. */
export const timeToFirstChunk = Metric.histogram(
  "gen_ai.client.operation.time_to_first_chunk",
  GENAI_SECONDS,
  "Time from the request to Ollama to the first response chunk, in seconds"
)

// ---------------------------------------------------------------------------------------------
// The Ollama process, preload, GPU

export const ollamaUp = Metric.gauge("ollama.up", { description: "1 when Ollama answers, else 0" })
export const ollamaRestarts = Metric.counter("ollama.restarts", { description: "Restarts of ollama serve", incremental: true })

/** Labels: model, state; 1 for the model's current state, 0 for the others. */
export const preloadState = Metric.gauge("ollama.preload.state", { description: "Preload state of each PRELOAD_MODEL (1 = current)" })
export const PRELOAD_STATES = ["pending", "pulling", "warming", "ready", "failed"] as const
export type PreloadState = (typeof PRELOAD_STATES)[number]
const preloadLabels = labelCache(["model", "state"])

/** Sets a model's preload state; every state of the model is exported, one of them as 1. */
export const setPreloadState = (model: string, state: PreloadState): Effect.Effect<void> =>
  Effect.sync(() => {
    for (const s of PRELOAD_STATES) preloadState.unsafeUpdate(s === state ? 1 : 0, preloadLabels(model, s))
  })

/**
 * Labels: model (as PRELOAD_MODEL names it). size_vram / size from Ollama's /api/ps at the last
 * check (after the preload, after each restart): 1 = all in GPU memory, 0 = all on the CPU.
 */
export const modelVramRatio = Metric.gauge("ollama.model.vram_ratio", {
  description: "Share of each preloaded model in GPU memory (size_vram / size) at the last check"
})
const modelLabels = labelCache(["model"])

export const setModelVramRatio = (model: string, ratio: number): Effect.Effect<void> =>
  Effect.sync(() => modelVramRatio.unsafeUpdate(ratio, modelLabels(model)))

/** Metrics that should read 0 before anything happened, not be missing. */
export const preregistered = [activeRequests, ollamaUp, ollamaRestarts] as const
