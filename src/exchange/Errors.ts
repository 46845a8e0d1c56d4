/**
 * Answers the proxy writes itself (400, 401, 403, 408, 413, 429, 502, 503), each in the error shape of the
 * caller's API family, so every client parses them as it parses the server it thinks it talks to
 * and raises its own typed error (the `openai` and `@anthropic-ai/sdk` clients pick the class by
 * status, `ollama` reads `error`):
 * - native paths (and anything else): Ollama's `{"error":"..."}`;
 * - `/v1/*`: OpenAI's `{"error":{"message","type","param","code"}}`, as Ollama's OpenAI layer writes it;
 * - `/v1/messages`: Anthropic's `{"type":"error","error":{"type","message"}}`.
 */
import type { OutgoingHttpHeaders, ServerResponse } from "node:http"
import type { Family } from "./Classify.js"

/** An answer the proxy gives instead of Ollama's. */
export interface Refusal {
  readonly status: number
  readonly message: string
  readonly headers?: OutgoingHttpHeaders | undefined
  /** OpenAI's `type` where the status alone does not say it (429: `requests` or `tokens`). */
  readonly openAiType?: string | undefined
}

const OPENAI: Record<number, { type: string; code: string | null }> = {
  400: { type: "invalid_request_error", code: null },
  408: { type: "invalid_request_error", code: "request_timeout" },
  401: { type: "invalid_request_error", code: "invalid_api_key" },
  403: { type: "invalid_request_error", code: "permission_denied" },
  429: { type: "requests", code: "rate_limit_exceeded" },
  502: { type: "server_error", code: null },
  503: { type: "server_error", code: null }
}

const ANTHROPIC: Record<number, string> = {
  400: "invalid_request_error",
  408: "timeout_error",
  401: "authentication_error",
  403: "permission_error",
  413: "request_too_large",
  429: "rate_limit_error",
  502: "api_error",
  503: "api_error"
}

/** The body of a refusal, in the family's shape. */
export const refusalBody = (family: Family, refusal: Refusal): string => {
  const { message, status } = refusal
  switch (family) {
    case "openai": {
      const known = OPENAI[status] ?? { type: status >= 500 ? "server_error" : "invalid_request_error", code: null }
      return JSON.stringify({ error: { message, type: refusal.openAiType ?? known.type, param: null, code: known.code } })
    }
    case "anthropic":
      return JSON.stringify({
        type: "error",
        error: { type: ANTHROPIC[status] ?? (status >= 500 ? "api_error" : "invalid_request_error"), message }
      })
    default:
      return JSON.stringify({ error: message })
  }
}

/**
 * Writes an answer in Ollama's place, and closes the connection once it is flushed, without
 * reading a body the client may still be sending: a client without a key could otherwise hold the
 * socket for ever by trickling a body. Clients read the answer first: node:http, fetch and curl all
 * report the status even in the middle of a 20 MB upload.
 */
export const writeRefusal = (res: ServerResponse, family: Family, refusal: Refusal, requestId: string) => {
  const body = refusalBody(family, refusal)
  res.writeHead(refusal.status, {
    ...refusal.headers,
    connection: "close",
    "x-request-id": requestId,
    "content-type": "application/json; charset=utf-8",
    "content-length": Buffer.byteLength(body)
  })
  res.end(body)
}

/** A request without a valid key, wherever it is refused (the proxy, `/metrics`). */
export const unauthorized = (reason: string): Refusal => ({
  status: 401,
  message: `unauthorized: ${reason}`,
  headers: { "www-authenticate": "Bearer" }
})

/** A key that may not do this: which scope or model it lacks is said. */
export const forbidden = (reason: string): Refusal => ({ status: 403, message: `forbidden: ${reason}` })

/** A request target the proxy will not interpret (see Target.ts); nothing reaches Ollama. */
export const badTarget = (reason: string): Refusal => ({ status: 400, message: `bad request target: ${reason}` })

/** Ollama could not be reached: try again shortly. */
export const ollamaUnavailable: Refusal = {
  status: 503,
  message: "ollama is not available",
  headers: { "retry-after": "5" }
}

export const badGateway = (reason: string): Refusal => ({ status: 502, message: `bad gateway: ${reason}` })

/** The request body stopped arriving for REQUEST_BODY_TIMEOUT. */
export const bodyTimeout: Refusal = { status: 408, message: "request body timeout: the body stopped arriving" }
