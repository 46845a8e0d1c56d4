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

/**
 * A refusal: the proxy's answer in Ollama's place before Ollama sees the request (401, and any
 * 403 or 429). It closes the connection once the answer is flushed, without reading the body the
 * client may still be sending: a client without a key could otherwise hold the socket for ever by
 * trickling a body. Clients read the answer first: node:http, fetch and curl all report the
 * status even in the middle of a 20 MB upload.
 */
export const writeRefusal = (res: ServerResponse, status: number, message: string, headers: OutgoingHttpHeaders) =>
  writeJsonError(res, status, message, { ...headers, connection: "close" })

export const writeUnauthorized = (res: ServerResponse, reason: string, requestId: string) => {
  const answer = unauthorized(reason)
  writeRefusal(res, answer.status, answer.message, { ...answer.headers, "x-request-id": requestId })
}

/** The request body stopped arriving for REQUEST_BODY_TIMEOUT; the connection is closed after it. */
export const writeBodyTimeout = (res: ServerResponse, requestId: string) =>
  writeJsonError(res, 408, "request body timeout: the body stopped arriving", { connection: "close", "x-request-id": requestId })

const OLLAMA_UNAVAILABLE = "ollama is not available"
/** Seconds a client should wait before retrying while Ollama is down. */
const RETRY_AFTER_SECONDS = "5"

export const writeOllamaUnavailable = (res: ServerResponse, requestId: string) =>
  writeJsonError(res, 503, OLLAMA_UNAVAILABLE, { "retry-after": RETRY_AFTER_SECONDS, "x-request-id": requestId })
