/**
 * What a request is, decided once when it arrives, from its method and path: its API family, its
 * operation, whether it is an inference (metered, traced as GenAI), its low-cardinality route, and
 * how its answer reports usage. Every consumer of the exchange reads this; nothing classifies again.
 *
 * The table follows Ollama's own router (server/routes.go in ollama/ollama): the same methods and
 * paths. Ollama's router (gin) is exact about paths: `/api/chat/` is answered with a redirect to
 * `/api/chat` (307 for a POST), not with a chat, so it is not an inference here either; the client
 * that follows the redirect makes the inference request.
 */

/** The API family: which error shape its clients parse, which wire format its answers use. */
export type Family = "native" | "openai" | "anthropic" | "other"

export type Operation =
  // inference
  | "chat"
  | "generate"
  | "embed"
  | "completions"
  | "responses"
  | "messages"
  | "transcription"
  // reading the server's state
  | "list"
  | "show"
  | "running"
  | "version"
  | "status"
  | "root"
  // changing it
  | "pull"
  | "push"
  | "create"
  | "copy"
  | "delete"
  | "blobs"
  | "account"
  | "experimental"
  // the proxy's own: the calling key's usage (GET /v1/usage), never sent to Ollama
  | "own_usage"
  | "unknown"

import type { Scope } from "../Scopes.js"

/** `gen_ai.operation.name` of the OpenTelemetry GenAI conventions. */
export type GenAiOperation = "chat" | "text_completion" | "embeddings"

/** Where an answer carries its usage (see ApiUsage.ts); `none` when it carries none. */
export type UsageFormat = "native" | "openai" | "anthropic" | "responses" | "transcription" | "none"

export interface Route {
  /** Low-cardinality route: `http.route`, the `endpoint` metric label; `other` for unknown paths. */
  readonly route: string
  readonly family: Family
  readonly operation: Operation
  /** What a key must be allowed to do for it; `manage` for all that is not known to be less. */
  readonly scope: Scope
  /** A model generates or embeds: the exchange is metered and gets a GenAI span. */
  readonly inference: boolean
  readonly genAi: GenAiOperation | undefined
  readonly usage: UsageFormat
  /** The request body is JSON that names a model at its top level (transcriptions: a multipart form). */
  readonly jsonBody: boolean
  /** Whether the endpoint streams when the request does not say (`"stream"` absent). */
  readonly streamsByDefault: boolean
  /** The request carries `keep_alive` and runner `options` (Ollama's native inference requests). */
  readonly runnerFields: boolean
  /** The field that caps the tokens generated, where Ollama turns one into `num_predict` (/v1). */
  readonly maxTokensField: string | undefined
  /** Ollama answers without any count (/api/embeddings): the proxy estimates the prompt's tokens. */
  readonly uncounted: boolean
}

const familyOf = (path: string): Family =>
  path === "/v1/messages" ? "anthropic" : path.startsWith("/v1/") ? "openai" : path.startsWith("/api/") ? "native" : "other"

const route = (path: string, operation: Operation, scope: Scope = "manage"): Route => ({
  route: path,
  family: familyOf(path),
  operation,
  scope,
  inference: false,
  genAi: undefined,
  usage: "none",
  jsonBody: false,
  streamsByDefault: false,
  runnerFields: false,
  maxTokensField: undefined,
  uncounted: false
})

const inference = (
  path: string,
  operation: Operation,
  genAi: GenAiOperation | undefined,
  usage: UsageFormat,
  streamsByDefault = false
): Route => ({
  ...route(path, operation, "inference"),
  inference: true,
  genAi,
  usage,
  jsonBody: operation !== "transcription",
  streamsByDefault,
  runnerFields: path.startsWith("/api/"),
  // openai.go and anthropic.go turn max_tokens into num_predict; responses.go max_output_tokens.
  maxTokensField: path === "/v1/responses"
    ? "max_output_tokens"
    : usage === "openai" && genAi !== "embeddings" || usage === "anthropic"
    ? "max_tokens"
    : undefined,
  uncounted: path === "/api/embeddings"
})

/** Ollama's routes by `METHOD path`. */
const ROUTES = new Map<string, Route>([
  ["POST /api/chat", inference("/api/chat", "chat", "chat", "native", true)],
  ["POST /api/generate", inference("/api/generate", "generate", "text_completion", "native", true)],
  ["POST /api/embed", inference("/api/embed", "embed", "embeddings", "native")],
  ["POST /api/embeddings", inference("/api/embeddings", "embed", "embeddings", "native")],
  ["POST /v1/chat/completions", inference("/v1/chat/completions", "chat", "chat", "openai")],
  ["POST /v1/completions", inference("/v1/completions", "completions", "text_completion", "openai")],
  ["POST /v1/embeddings", inference("/v1/embeddings", "embed", "embeddings", "openai")],
  ["POST /v1/responses", inference("/v1/responses", "responses", "chat", "responses")],
  ["POST /v1/messages", inference("/v1/messages", "messages", "chat", "anthropic")],
  // Answered through the chat handler with only the text (middleware/openai.go TranscriptionWriter):
  // no counts, the text's tokens are estimated.
  ["POST /v1/audio/transcriptions", inference("/v1/audio/transcriptions", "transcription", undefined, "transcription")],
  ["GET /", route("/", "root", "read")],
  ["HEAD /", route("/", "root", "read")],
  ["GET /api/version", route("/api/version", "version", "read")],
  ["HEAD /api/version", route("/api/version", "version", "read")],
  ["GET /api/tags", route("/api/tags", "list", "read")],
  ["HEAD /api/tags", route("/api/tags", "list", "read")],
  ["POST /api/show", { ...route("/api/show", "show", "read"), jsonBody: true }],
  ["GET /api/ps", route("/api/ps", "running", "read")],
  ["GET /v1/models", route("/v1/models", "list", "read")],
  // Not Ollama's: answered by the proxy for any valid key (the boundary hands it to src/limits/).
  ["GET /v1/usage", route("/v1/usage", "own_usage", "read")]
])

/** The operation of a path with any other method (Ollama answers 405): `manage`, as unknown. */
const PATHS = new Map<string, Operation>([
  ["/", "root"],
  ["/api/version", "version"],
  ["/api/status", "status"],
  ["/api/tags", "list"],
  ["/api/show", "show"],
  ["/api/ps", "running"],
  ["/v1/models", "list"],
  ["/api/pull", "pull"],
  ["/api/push", "push"],
  ["/api/create", "create"],
  ["/api/copy", "copy"],
  ["/api/delete", "delete"],
  ["/api/me", "account"],
  ["/api/signout", "account"],
  ["/api/chat", "chat"],
  ["/api/generate", "generate"],
  ["/api/embed", "embed"],
  ["/api/embeddings", "embed"],
  ["/v1/chat/completions", "chat"],
  ["/v1/completions", "completions"],
  ["/v1/embeddings", "embed"],
  ["/v1/responses", "responses"],
  ["/v1/messages", "messages"],
  ["/v1/audio/transcriptions", "transcription"]
])

/** Routes with a parameter: one route each, so the metric labels stay few. */
const PREFIXES: ReadonlyArray<readonly [prefix: string, methods: ReadonlyArray<string>, route: Route]> = [
  ["/api/blobs/", [], route("/api/blobs/:digest", "blobs")],
  ["/v1/models/", ["GET"], route("/v1/models/:model", "show", "read")],
  ["/v1/models/", [], route("/v1/models/:model", "show")],
  ["/api/experimental/", [], route("/api/experimental/*", "experimental")],
  ["/api/user/keys/", [], route("/api/user/keys/:encodedKey", "account")]
]

const known = new Map<string, Route>()
for (const [path, operation] of PATHS) known.set(path, route(path, operation))
const OTHER: Record<Family, Route> = {
  native: { ...route("other", "unknown"), family: "native" },
  openai: { ...route("other", "unknown"), family: "openai" },
  anthropic: { ...route("other", "unknown"), family: "anthropic" },
  other: route("other", "unknown")
}

/** A request whose target was refused: nothing is known of it but its family, for the error's shape. */
export const unknownRoute = (rawPath: string): Route => OTHER[familyOf(rawPath)]

/**
 * The two endpoints whose streams report usage only when the request asks for it
 * (`stream_options.include_usage`): the proxy asks on the client's behalf (IncludeUsage.ts).
 */
export const asksForUsage = (route: Route): boolean =>
  route.inference && route.usage === "openai" && (route.operation === "chat" || route.operation === "completions")

/** The route of a request; `path` is the path Ollama will route (see Target.ts). */
export const classify = (method: string | undefined, path: string): Route => {
  const exact = ROUTES.get(`${method} ${path}`) ?? known.get(path)
  if (exact !== undefined) return exact
  for (const [prefix, methods, route] of PREFIXES) {
    if (path.startsWith(prefix) && path.length > prefix.length && (methods.length === 0 || methods.includes(method ?? ""))) return route
  }
  return OTHER[familyOf(path)]
}
