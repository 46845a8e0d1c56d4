/**
 * OllamaClient: the typed calls the proxy itself makes to Ollama (health, version, models, pull,
 * warm, what is in memory). Client traffic does not go through here; it takes the exchange's relay (src/exchange/Relay.ts).
 */
import { HttpClient, HttpClientRequest, HttpClientResponse } from "@effect/platform"
import { NodeHttpClient } from "@effect/platform-node"
import { Data, Duration, Effect, Option, Schema, Stream } from "effect"
import { OllamaHostConfig } from "../OllamaHost.js"
import { OllamaConfig } from "./OllamaConfig.js"

/** Ollama did not answer, or the connection broke: worth trying again later. */
export class OllamaUnavailable extends Data.TaggedError("OllamaUnavailable")<{
  readonly operation: string
  readonly cause: unknown
}> {
  override get message() {
    const cause = this.cause instanceof Error ? this.cause.message : String(this.cause)
    return `${this.operation}: ${cause}`
  }
}

/** Ollama answered with an error. */
export class OllamaError extends Data.TaggedError("OllamaError")<{
  readonly operation: string
  /** The HTTP status; 200 for an error line inside a streamed answer. */
  readonly status: number
  readonly error: string
  /** A server-side or passing failure (5xx, 429, an error in mid-stream), not a bad request. */
  readonly retryable: boolean
}> {
  override get message() {
    return `${this.operation}: ${this.status}: ${this.error}`
  }
}

/** The model does not exist, locally or in the registry. Trying again will not help. */
export class ModelNotFound extends Data.TaggedError("ModelNotFound")<{
  readonly model: string
  readonly error: string
}> {
  override get message() {
    return `model "${this.model}" not found: ${this.error}`
  }
}

const Version = Schema.Struct({ version: Schema.String })

export const PullProgress = Schema.Struct({
  status: Schema.optional(Schema.String),
  digest: Schema.optional(Schema.String),
  total: Schema.optional(Schema.Number),
  completed: Schema.optional(Schema.Number),
  error: Schema.optional(Schema.String)
})
export type PullProgress = typeof PullProgress.Type

export const LocalModel = Schema.Struct({
  name: Schema.String,
  /** Set for a model that runs on ollama.com (a cloud model, or one created or copied from one). */
  remote_host: Schema.optional(Schema.String),
  size: Schema.Number,
  digest: Schema.optional(Schema.String),
  modified_at: Schema.optional(Schema.String)
})
export type LocalModel = typeof LocalModel.Type

const Tags = Schema.Struct({ models: Schema.NullOr(Schema.Array(LocalModel)) })

/**
 * A model in memory, from `GET /api/ps` (api.ProcessModelResponse): `size` is its whole footprint,
 * `size_vram` the part in GPU memory; less than `size` means the rest runs on the CPU.
 */
export const RunningModel = Schema.Struct({
  name: Schema.String,
  model: Schema.String,
  size: Schema.Number,
  size_vram: Schema.Number
})
export type RunningModel = typeof RunningModel.Type

const Running = Schema.Struct({ models: Schema.NullOr(Schema.Array(RunningModel)) })

const decodeProgress = Schema.decodeUnknownOption(Schema.parseJson(PullProgress))

/** Ollama's words for a model that is neither local nor in the registry. */
const NOT_FOUND = /file does not exist|not found|invalid model name|no such model/i
/** What /api/generate answers for a model that only embeds. */
const NO_GENERATE = /does not support generate/i

/** How the model was loaded into memory. */
export type WarmedWith = "generate" | "embed"

/**
 * Beyond Ollama's own load timeout (a stall limit: a load that makes progress may take longer),
 * how long a warm-up waits before counting as failed and being retried.
 */
const WARM_GRACE = Duration.minutes(1)
/** A pull sends progress several times a second; this long without a line is a stuck pull. */
const PULL_IDLE_TIMEOUT = Duration.minutes(5)

export class OllamaClient extends Effect.Service<OllamaClient>()("app/OllamaClient", {
  effect: Effect.gen(function*() {
    const ollama = yield* OllamaHostConfig
    const { ollamaLoadTimeout } = yield* OllamaConfig
    const http = (yield* HttpClient.HttpClient).pipe(
      HttpClient.mapRequest(HttpClientRequest.prependUrl(ollama.origin)),
      HttpClient.mapRequest(HttpClientRequest.setHeader("host", ollama.hostHeader))
    )

    const warmTimeout = Duration.sum(ollamaLoadTimeout.duration, WARM_GRACE)

    /** `GET /` answers 200 once `ollama serve` can take requests (it logs "Listening" earlier). */
    const ping = (timeout: Duration.DurationInput) =>
      http.get("/").pipe(
        Effect.flatMap(HttpClientResponse.filterStatusOk),
        Effect.asVoid,
        Effect.scoped,
        Effect.timeout(timeout),
        Effect.mapError((cause) => new OllamaUnavailable({ operation: "GET /", cause }))
      )

    /** `GET path`, its JSON body checked by `schema`; within `timeout`, else OllamaUnavailable. */
    const getJson = <A, I>(path: string, schema: Schema.Schema<A, I>, timeout: Duration.DurationInput, span: string) =>
      http.get(path).pipe(
        Effect.flatMap(HttpClientResponse.filterStatusOk),
        Effect.flatMap(HttpClientResponse.schemaBodyJson(schema)),
        Effect.scoped,
        Effect.timeout(timeout),
        Effect.mapError((cause) => new OllamaUnavailable({ operation: `GET ${path}`, cause })),
        Effect.withSpan(span)
      )

    const version = getJson("/api/version", Version, "5 seconds", "OllamaClient.version").pipe(Effect.map((v) => v.version))

    /** The `error` of an error answer, or its text when it is not Ollama's JSON shape. */
    const errorText = (res: HttpClientResponse.HttpClientResponse) =>
      res.text.pipe(
        Effect.map((text) => {
          try {
            const body = JSON.parse(text) as { error?: unknown }
            if (typeof body.error === "string") return body.error
          } catch {
            // not JSON: the text itself says what happened
          }
          return text.trim() || `HTTP ${res.status}`
        }),
        Effect.orElseSucceed(() => `HTTP ${res.status}`)
      )

    const failWith = (operation: string, model: string, status: number, error: string) =>
      NOT_FOUND.test(error)
        ? new ModelNotFound({ model, error })
        : new OllamaError({ operation, status, error, retryable: status >= 500 || status === 429 || status === 200 })

    /** POST a JSON body; non-2xx answers become typed errors, transport failures OllamaUnavailable. */
    const postJson = (operation: string, model: string, path: string, body: unknown) =>
      http.execute(HttpClientRequest.post(path).pipe(HttpClientRequest.bodyUnsafeJson(body))).pipe(
        Effect.mapError((cause) => new OllamaUnavailable({ operation, cause })),
        Effect.flatMap((res) =>
          res.status >= 200 && res.status < 300
            ? Effect.succeed(res)
            : Effect.flatMap(errorText(res), (error) => Effect.fail(failWith(operation, model, res.status, error)))
        )
      )

    /**
     * `POST /api/pull`, streamed: the progress lines as they come. Fails on an error line, and
     * when the stream ends without `success` (Ollama went away mid-pull).
     */
    const pull = (model: string): Stream.Stream<PullProgress, OllamaUnavailable | OllamaError | ModelNotFound> =>
      Stream.suspend(() => {
        const operation = "POST /api/pull"
        let succeeded = false
        return Stream.unwrapScoped(
          postJson(operation, model, "/api/pull", { model, stream: true }).pipe(Effect.map((res) => res.stream))
        ).pipe(
          Stream.mapError((e) => e._tag === "ResponseError" ? new OllamaUnavailable({ operation, cause: e }) : e),
          Stream.decodeText(),
          Stream.splitLines,
          Stream.filter((line) => line.trim() !== ""),
          Stream.timeoutFail(
            () => new OllamaUnavailable({ operation, cause: "no progress from ollama for 5 minutes" }),
            PULL_IDLE_TIMEOUT
          ),
          Stream.mapEffect((line) => {
            const progress = decodeProgress(line)
            if (Option.isNone(progress)) {
              return Effect.fail(
                new OllamaError({ operation, status: 200, error: `not a progress line: ${line.slice(0, 200)}`, retryable: true })
              )
            }
            if (progress.value.error !== undefined) return Effect.fail(failWith(operation, model, 200, progress.value.error))
            if (progress.value.status === "success") succeeded = true
            return Effect.succeed(progress.value)
          }),
          Stream.concat(Stream.suspend(() =>
            succeeded ? Stream.empty : Stream.fail(new OllamaUnavailable({ operation, cause: "the pull ended before success" }))
          ))
        )
      }).pipe(Stream.withSpan("OllamaClient.pull", { attributes: { model } }))

    /**
     * Loads the model into memory for `keepAlive`: an empty generate, or for a model that cannot
     * generate (an embedding model) an empty embed.
     */
    const warm = (model: string, keepAlive: string | number) =>
      postJson("POST /api/generate", model, "/api/generate", { model, keep_alive: keepAlive, stream: false }).pipe(
        Effect.as<WarmedWith>("generate"),
        Effect.catchIf(
          (e): e is OllamaError => e._tag === "OllamaError" && e.status === 400 && NO_GENERATE.test(e.error),
          () =>
            postJson("POST /api/embed", model, "/api/embed", { model, input: [], keep_alive: keepAlive }).pipe(
              Effect.as<WarmedWith>("embed")
            )
        ),
        Effect.scoped,
        Effect.timeoutFail({
          duration: warmTimeout,
          onTimeout: () =>
            new OllamaUnavailable({ operation: "warm", cause: `the model did not load within ${Duration.format(warmTimeout)}` })
        }),
        Effect.withSpan("OllamaClient.warm", { attributes: { model } })
      )

    /** `GET /api/tags`: the models on disk. */
    const tags = getJson("/api/tags", Tags, "10 seconds", "OllamaClient.tags").pipe(
      Effect.map((tags): ReadonlyArray<LocalModel> => tags.models ?? [])
    )

    /** `GET /api/ps`: the models in memory, and how much of each is in GPU memory. */
    const ps = getJson("/api/ps", Running, "10 seconds", "OllamaClient.ps").pipe(
      Effect.map((running): ReadonlyArray<RunningModel> => running.models ?? [])
    )

    return {
      /** Where Ollama is looked for: OLLAMA_HOST's origin, as Ollama's own rules read it. */
      origin: ollama.origin,
      ping,
      version,
      pull,
      warm,
      tags,
      ps
    } as const
  }),
  dependencies: [NodeHttpClient.layerUndici]
}) {}
