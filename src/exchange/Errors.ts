/**
 * Answers the proxy writes itself, in Ollama's error shape, so clients parse them as they parse
 * Ollama's own.
 */
import type { OutgoingHttpHeaders, ServerResponse } from "node:http"

export const writeJsonError = (
  res: ServerResponse,
  status: number,
  message: string,
  headers: OutgoingHttpHeaders = {}
) => {
  const body = JSON.stringify({ error: message })
  res.writeHead(status, {
    ...headers,
    "content-type": "application/json; charset=utf-8",
    "content-length": Buffer.byteLength(body)
  })
  res.end(body)
}

/** A request without a valid key, wherever it is refused (the proxy, `/metrics`). */
export const unauthorized = (reason: string) => ({
  status: 401,
  message: `unauthorized: ${reason}`,
  headers: { "www-authenticate": "Bearer" }
})

export const writeUnauthorized = (res: ServerResponse, reason: string, requestId: string) => {
  const answer = unauthorized(reason)
  writeJsonError(res, answer.status, answer.message, { ...answer.headers, "x-request-id": requestId })
}

/** A request target the proxy will not interpret (see Target.ts); nothing reaches Ollama. */
export const writeBadTarget = (res: ServerResponse, reason: string, requestId: string) =>
  writeJsonError(res, 400, `bad request target: ${reason}`, { "x-request-id": requestId })

const OLLAMA_UNAVAILABLE = "ollama is not available"
/** Seconds a client should wait before retrying while Ollama is down. */
const RETRY_AFTER_SECONDS = "5"

export const writeOllamaUnavailable = (res: ServerResponse, requestId: string) =>
  writeJsonError(res, 503, OLLAMA_UNAVAILABLE, { "retry-after": RETRY_AFTER_SECONDS, "x-request-id": requestId })
