/**
 * OllamaClient: the typed calls the proxy itself makes to Ollama (health, version, models).
 * Client traffic does not go through here; it takes the Proxy's byte path.
 */
import { HttpClient, HttpClientRequest, HttpClientResponse } from "@effect/platform"
import { NodeHttpClient } from "@effect/platform-node"
import { Data, Duration, Effect, Schema } from "effect"
import { AppConfig } from "../Config.js"

/** Ollama did not answer, or answered something we cannot use. */
export class OllamaUnavailable extends Data.TaggedError("OllamaUnavailable")<{
  readonly operation: string
  readonly cause: unknown
}> {
  override get message() {
    const cause = this.cause instanceof Error ? this.cause.message : String(this.cause)
    return `${this.operation}: ${cause}`
  }
}

const Version = Schema.Struct({ version: Schema.String })

export class OllamaClient extends Effect.Service<OllamaClient>()("app/OllamaClient", {
  effect: Effect.gen(function*() {
    const config = yield* AppConfig
    const http = (yield* HttpClient.HttpClient).pipe(
      HttpClient.mapRequest(HttpClientRequest.prependUrl(config.ollama.origin)),
      HttpClient.mapRequest(HttpClientRequest.setHeader("host", config.ollama.hostHeader))
    )

    /** `GET /` answers 200 once `ollama serve` can take requests (it logs "Listening" earlier). */
    const ping = (timeout: Duration.DurationInput) =>
      http.get("/").pipe(
        Effect.flatMap(HttpClientResponse.filterStatusOk),
        Effect.asVoid,
        Effect.scoped,
        Effect.timeout(timeout),
        Effect.mapError((cause) => new OllamaUnavailable({ operation: "GET /", cause }))
      )

    const version = http.get("/api/version").pipe(
      Effect.flatMap(HttpClientResponse.filterStatusOk),
      Effect.flatMap(HttpClientResponse.schemaBodyJson(Version)),
      Effect.map((v) => v.version),
      Effect.scoped,
      Effect.timeout("5 seconds"),
      Effect.mapError((cause) => new OllamaUnavailable({ operation: "GET /api/version", cause })),
      Effect.withSpan("OllamaClient.version")
    )

    return { http, ping, version } as const
  }),
  dependencies: [NodeHttpClient.layerUndici]
}) {}
