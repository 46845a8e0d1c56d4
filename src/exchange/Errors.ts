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

export const OLLAMA_UNAVAILABLE = "ollama is not available"
/** Seconds a client should wait before retrying while Ollama is down. */
export const RETRY_AFTER_SECONDS = "5"

export const writeOllamaUnavailable = (res: ServerResponse, requestId: string) =>
  writeJsonError(res, 503, OLLAMA_UNAVAILABLE, { "retry-after": RETRY_AFTER_SECONDS, "x-request-id": requestId })
