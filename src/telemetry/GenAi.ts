/**
 * What an exchange means in GenAI terms: which endpoint it is, the model and stream flag the
 * client asked for, and what Ollama reported at the end (model, finish reason, token counts).
 *
 * The bytes are read by the exchange's shared ExchangeMeter (src/usage/Meter.ts), the one reader
 * the usage tap uses too; this module only classifies routes and turns the meter's figures into
 * GenAI terms.
 */
import { type ApiKind, type ExchangeMeter, INFERENCE_ENDPOINTS, type OperationName } from "../usage/Meter.js"

export type { OperationName }

export interface Endpoint {
  /** Low-cardinality route, the `http.route` attribute and the `endpoint` metric label. */
  readonly route: string
  /** Set for inference endpoints. */
  readonly operation?: OperationName
  /** Set for inference endpoints: the API family, for the meter. */
  readonly kind?: ApiKind
  /** Whether the endpoint streams when the request does not say (`"stream"` absent). */
  readonly streamsByDefault: boolean
}

const endpoint = (route: string): Endpoint => ({ route, streamsByDefault: false })

const INFERENCE = new Map<string, Endpoint>(
  [...INFERENCE_ENDPOINTS].map(([route, { kind, operation, streamsByDefault }]) => [route, { route, operation, kind, streamsByDefault }])
)

const ROUTES = new Map<string, Endpoint>(
  [
    "/",
    "/api/version",
    "/api/tags",
    "/api/ps",
    "/api/show",
    "/api/pull",
    "/api/push",
    "/api/create",
    "/api/copy",
    "/api/delete",
    "/v1/models"
  ].map((route) => [route, endpoint(route)])
)

const BLOBS = endpoint("/api/blobs/:digest")
const MODEL = endpoint("/v1/models/:model")
const OTHER = endpoint("other")

/** The endpoint of a request; inference only for POST, as Ollama answers other methods with 405. */
export const classify = (method: string | undefined, path: string): Endpoint => {
  const p = path.length > 1 && path.endsWith("/") ? path.slice(0, -1) : path
  if (method === "POST") {
    const inference = INFERENCE.get(p)
    if (inference !== undefined) return inference
  }
  const known = ROUTES.get(p)
  if (known !== undefined) return known
  if (p.startsWith("/api/blobs/")) return BLOBS
  if (p.startsWith("/v1/models/")) return MODEL
  return INFERENCE.has(p) ? endpoint(p) : OTHER
}

// ---------------------------------------------------------------------------------------------
// The response: the usage figures Ollama reports at the end.

export interface ResponseUsage {
  model?: string
  finishReasons?: Array<string>
  inputTokens?: number
  outputTokens?: number
  /** An `{"error": ...}` object, mid-stream or as the whole body. */
  error?: string
}

/**
 * The GenAI view of a meter's figures, once it has ended; undefined for an answer that was not a
 * 2xx (its error is the status). Embeddings have no output tokens.
 */
export const responseUsage = (meter: ExchangeMeter, operation: OperationName): ResponseUsage | undefined => {
  if (meter.status === null || meter.status < 200 || meter.status >= 300) return undefined
  const u = meter.usage
  const usage: ResponseUsage = {}
  const model = u.model ?? meter.firstModel
  if (model !== null) usage.model = model
  if (u.doneReason !== null) usage.finishReasons = [u.doneReason]
  if (meter.measured) {
    usage.inputTokens = u.promptEvalCount ?? 0
    if (operation !== "embeddings") usage.outputTokens = u.evalCount ?? 0
  }
  if (meter.error !== null) usage.error = meter.error
  return usage
}
