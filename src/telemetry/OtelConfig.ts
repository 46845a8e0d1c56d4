/**
 * OpenTelemetry's own slice of the environment (OTEL_*), read by the standard variables' rules:
 * where traces and metrics go, how, and how they are sampled.
 */
import { Context, Duration, Effect, Either, Layer, Option, Redacted } from "effect"
import {
  all,
  optional,
  type Parse,
  parseBoolean,
  parseDuration,
  parseHttpUrl,
  quoted,
  type Read,
  readSlice,
  text,
  withDefault
} from "../config/Read.js"

export type OtlpProtocol = "http/protobuf" | "http/json"

export type SamplerConfig =
  | { readonly kind: "always_on" | "always_off" | "parentbased_always_on" | "parentbased_always_off" }
  | { readonly kind: "traceidratio" | "parentbased_traceidratio"; readonly ratio: number }

/** Where one signal (traces, metrics) is exported over OTLP/HTTP. */
export interface OtlpTarget {
  readonly url: URL
  readonly protocol: OtlpProtocol
  /** Often carries a collector's API key: Redacted until the exporter is built. */
  readonly headers: Redacted.Redacted<Readonly<Record<string, string>>>
}

/** The standard OpenTelemetry variables the service honours. */
export interface OtelConfigShape {
  readonly serviceName: string
  readonly resourceAttributes: Readonly<Record<string, string>>
  /** None: no trace export, and no tracing cost on the hot path. */
  readonly traces: Option.Option<OtlpTarget>
  readonly metrics: Option.Option<OtlpTarget>
  readonly metricExportInterval: Duration.Duration
  readonly sampler: SamplerConfig
}

/** `key=value` pairs separated by commas, values percent-encoded (OTEL_RESOURCE_ATTRIBUTES, *_HEADERS). */
const parseKeyValues = (what: string, echo: boolean): Parse<Record<string, string>> => (raw) => {
  const out: Record<string, string> = {}
  for (const item of raw.split(",")) {
    if (item.trim() === "") continue
    const eq = item.indexOf("=")
    const key = eq > 0 ? item.slice(0, eq).trim() : ""
    let value: string | undefined
    try {
      value = eq > 0 ? decodeURIComponent(item.slice(eq + 1).trim()) : undefined
    } catch {
      value = undefined
    }
    // Header values may be credentials: the reason names the shape, never the text.
    if (key === "" || value === undefined) {
      return Either.left(`${echo ? `${quoted(item)} in ` : ""}not a list of ${what} (key=value,key=value)`)
    }
    out[key] = value
  }
  return Either.right(out)
}

const OTLP_PROTOCOLS: ReadonlyArray<OtlpProtocol> = ["http/protobuf", "http/json"]

const parseOtlpProtocol: Parse<OtlpProtocol> = (raw) => {
  const v = raw.trim().toLowerCase()
  return OTLP_PROTOCOLS.includes(v as OtlpProtocol)
    ? Either.right(v as OtlpProtocol)
    : Either.left(`${quoted(raw)} is not supported (http/protobuf or http/json; grpc is not built in)`)
}

/** OTEL_TRACES_EXPORTER / OTEL_METRICS_EXPORTER: OTLP, or none to switch one signal off. */
const parseExporter: Parse<"otlp" | "none"> = (raw) => {
  const v = raw.trim().toLowerCase()
  return v === "otlp" || v === "none" ? Either.right(v) : Either.left(`${quoted(raw)} is not supported (otlp or none)`)
}

const SAMPLERS = [
  "always_on",
  "always_off",
  "traceidratio",
  "parentbased_always_on",
  "parentbased_always_off",
  "parentbased_traceidratio"
] as const

const parseSamplerName: Parse<(typeof SAMPLERS)[number]> = (raw) => {
  const v = raw.trim().toLowerCase()
  const found = SAMPLERS.find((s) => s === v)
  return found ? Either.right(found) : Either.left(`${quoted(raw)} is not a sampler (${SAMPLERS.join(", ")})`)
}

const parseRatio: Parse<number> = (raw) => {
  const n = raw.trim() === "" ? NaN : Number(raw)
  return n >= 0 && n <= 1 ? Either.right(n) : Either.left(`${quoted(raw)} is not a ratio between 0 and 1`)
}

/** The OpenTelemetry spec gives export intervals in milliseconds; `10s` and the like are accepted too. */
const parseMillis: Parse<Duration.Duration> = (raw) =>
  /^\s*\d+\s*$/.test(raw)
    ? Number(raw) > 0 ? Either.right(Duration.millis(Number(raw))) : Either.left(`${quoted(raw)} must be more than 0`)
    : parseDuration(raw)

/** A base endpoint gets the signal's path; a signal endpoint is used as given. */
const signalUrl = (base: URL, path: string) => new URL(`${base.href.replace(/\/+$/, "")}/${path}`)

const fromEnvironment = all({
  otelSdkDisabled: withDefault("OTEL_SDK_DISABLED", parseBoolean, false),
  otelServiceName: withDefault("OTEL_SERVICE_NAME", text, "ollama-authentication-proxy"),
  otelResourceAttributes: withDefault("OTEL_RESOURCE_ATTRIBUTES", parseKeyValues("attributes", true), {}),
  otelEndpoint: optional("OTEL_EXPORTER_OTLP_ENDPOINT", parseHttpUrl),
  otelTracesEndpoint: optional("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", parseHttpUrl),
  otelMetricsEndpoint: optional("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", parseHttpUrl),
  otelHeaders: withDefault("OTEL_EXPORTER_OTLP_HEADERS", parseKeyValues("headers", false), {}),
  otelTracesHeaders: withDefault("OTEL_EXPORTER_OTLP_TRACES_HEADERS", parseKeyValues("headers", false), {}),
  otelMetricsHeaders: withDefault("OTEL_EXPORTER_OTLP_METRICS_HEADERS", parseKeyValues("headers", false), {}),
  otelProtocol: withDefault<OtlpProtocol>("OTEL_EXPORTER_OTLP_PROTOCOL", parseOtlpProtocol, "http/protobuf"),
  otelTracesProtocol: optional("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", parseOtlpProtocol),
  otelMetricsProtocol: optional("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", parseOtlpProtocol),
  otelTracesExporter: withDefault("OTEL_TRACES_EXPORTER", parseExporter, "otlp"),
  otelMetricsExporter: withDefault("OTEL_METRICS_EXPORTER", parseExporter, "otlp"),
  otelSampler: withDefault("OTEL_TRACES_SAMPLER", parseSamplerName, "parentbased_always_on"),
  otelSamplerArg: optional("OTEL_TRACES_SAMPLER_ARG", parseRatio),
  otelMetricExportInterval: withDefault("OTEL_METRIC_EXPORT_INTERVAL", parseMillis, Duration.seconds(60))
})

const otelConfigOf = (raw: Read.Success<typeof fromEnvironment>): OtelConfigShape => {
  const target = (
    signal: "traces" | "metrics",
    exporter: "otlp" | "none",
    endpoint: Option.Option<URL>,
    headers: Record<string, string>,
    protocol: Option.Option<OtlpProtocol>
  ): Option.Option<OtlpTarget> => {
    if (raw.otelSdkDisabled || exporter === "none") return Option.none()
    const url = Option.orElse(endpoint, () => Option.map(raw.otelEndpoint, (base) => signalUrl(base, `v1/${signal}`)))
    return Option.map(url, (url) => ({
      url,
      protocol: Option.getOrElse(protocol, () => raw.otelProtocol),
      headers: Redacted.make({ ...raw.otelHeaders, ...headers })
    }))
  }
  const ratio = Option.getOrElse(raw.otelSamplerArg, () => 1)
  return {
    serviceName: raw.otelServiceName,
    resourceAttributes: raw.otelResourceAttributes,
    traces: target("traces", raw.otelTracesExporter, raw.otelTracesEndpoint, raw.otelTracesHeaders, raw.otelTracesProtocol),
    metrics: target("metrics", raw.otelMetricsExporter, raw.otelMetricsEndpoint, raw.otelMetricsHeaders, raw.otelMetricsProtocol),
    metricExportInterval: raw.otelMetricExportInterval,
    sampler: raw.otelSampler === "traceidratio" || raw.otelSampler === "parentbased_traceidratio"
      ? { kind: raw.otelSampler, ratio }
      : { kind: raw.otelSampler }
  }
}

/** The OTEL_* variables, read and checked: the traces' and metrics' export (Tracing), the resource (Tracing, /metrics). */
export class OtelConfig extends Context.Tag("app/OtelConfig")<OtelConfig, OtelConfigShape>() {
  static readonly variables = fromEnvironment.variables
  static readonly layer = Layer.effect(OtelConfig, readSlice(fromEnvironment).pipe(Effect.map(otelConfigOf)))
}
