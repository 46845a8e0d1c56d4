/**
 * Ollama's part of the environment, in two slices: how the proxy runs `ollama serve` (the process
 * supervisor; the client waits as long as a model load may stall), and what it preloads (the
 * preloader, the GPU check, and the request policy, which holds preloaded models' keep_alive).
 */
import { Context, Duration, Effect, Either, Layer, Option } from "effect"
import {
  all,
  family,
  optional,
  type Parse,
  parseBoolean,
  parseDuration,
  parsePositiveInt,
  quoted,
  readSlice,
  text,
  withDefault
} from "../config/Read.js"
import { parseGoDuration } from "../policy/GoDuration.js"

/** What `ollama serve` is given for OLLAMA_LOAD_TIMEOUT when it is unset, as RunPod's own Ollama worker does. */
export const DEFAULT_LOAD_TIMEOUT = "60m"

/**
 * OLLAMA_LOAD_TIMEOUT as Ollama reads it (envconfig.LoadTimeout): a Go duration (`10m`, `1h30m`,
 * time.ParseDuration's rules, as the request policy reads keep_alive) or whole seconds; 0 or less
 * means no limit.
 */
export const parseLoadTimeout: Parse<Duration.Duration> = (raw) => {
  const v = raw.trim()
  const ns = /^[-+]?\d+$/.test(v) ? Number(v) * 1e9 : parseGoDuration(v)
  if (ns === undefined) return Either.left(`${quoted(raw)} is not a duration (like 10m, 1h30m, or seconds)`)
  return Either.right(ns > 0 ? Duration.millis(ns / 1e6) : Duration.infinity)
}

export interface OllamaConfigShape {
  readonly ollamaBin: string
  readonly ollamaManaged: boolean
  readonly ollamaStopTimeout: Duration.Duration
  /**
   * How long a model load may stall before Ollama gives up (OLLAMA_LOAD_TIMEOUT, by Ollama's rules;
   * infinite for 0 or less). Unset, `ollama serve` is started with DEFAULT_LOAD_TIMEOUT instead of
   * its own 5 minutes.
   */
  readonly ollamaLoadTimeout: { readonly duration: Duration.Duration; readonly fromUser: boolean }
}

const ollama = all({
  ollamaBin: withDefault("OLLAMA_BIN", text, "ollama"),
  ollamaManaged: withDefault("OLLAMA_MANAGED", parseBoolean, true),
  ollamaStopTimeout: withDefault("OLLAMA_STOP_TIMEOUT", parseDuration, Duration.seconds(10)),
  ollamaLoadTimeout: optional("OLLAMA_LOAD_TIMEOUT", parseLoadTimeout)
})

export class OllamaConfig extends Context.Tag("app/OllamaConfig")<OllamaConfig, OllamaConfigShape>() {
  static readonly variables = ollama.variables
  static readonly layer = Layer.effect(
    OllamaConfig,
    readSlice(ollama).pipe(Effect.map((raw): OllamaConfigShape => ({
      ...raw,
      ollamaLoadTimeout: Option.match(raw.ollamaLoadTimeout, {
        onNone: () => ({ duration: Either.getOrThrow(parseLoadTimeout(DEFAULT_LOAD_TIMEOUT)), fromUser: false }),
        onSome: (duration) => ({ duration, fromUser: true })
      })
    })))
  )
}

/** Ollama's keep_alive: a number of seconds (negative = forever) or a duration string like `5m`. */
const parseKeepAlive: Parse<string | number> = (raw) => {
  const v = raw.trim()
  if (/^-?\d+(\.\d+)?$/.test(v)) return Either.right(Number(v))
  if (/^(-?\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$/.test(v)) return Either.right(v)
  return Either.left(`${quoted(raw)} is not a keep-alive (seconds, -1, or a duration like 5m)`)
}

const MODEL_PREFIX = "PRELOAD_MODEL"

/** PRELOAD_MODEL, PRELOAD_MODEL_<X>: model names, each once, in the variables' natural order. */
const preloadModels = family(MODEL_PREFIX, (variables) => {
  const models: Array<string> = []
  for (const [variable, value] of variables) {
    if (variable !== MODEL_PREFIX && !variable.startsWith(`${MODEL_PREFIX}_`) && !/^\d/.test(variable.slice(MODEL_PREFIX.length))) {
      continue // PRELOAD_MODELS_DIR and the like are not model names
    }
    for (const model of (value ?? "").split(/[\s,]+/)) {
      if (model !== "" && !models.includes(model)) models.push(model)
    }
  }
  return Either.right<ReadonlyArray<string>>(models)
})

export interface PreloadConfigShape {
  readonly preloadModels: ReadonlyArray<string>
  readonly preloadKeepAlive: string | number
  readonly preloadConcurrency: number
  /** REQUIRE_GPU: a preloaded model not entirely in GPU memory makes the worker unhealthy. */
  readonly requireGpu: boolean
}

const preload = all({
  preloadModels,
  preloadKeepAlive: withDefault<string | number>("PRELOAD_KEEP_ALIVE", parseKeepAlive, -1),
  preloadConcurrency: withDefault("PRELOAD_CONCURRENCY", parsePositiveInt, 2),
  requireGpu: withDefault("REQUIRE_GPU", parseBoolean, false)
})

export class PreloadConfig extends Context.Tag("app/PreloadConfig")<PreloadConfig, PreloadConfigShape>() {
  static readonly variables = preload.variables
  static readonly layer = Layer.effect(PreloadConfig, readSlice(preload))
}
