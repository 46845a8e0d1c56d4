/**
 * Header rules at the proxy boundary: hop-by-hop names never cross it (undici rejects them too),
 * the client's credentials stay here, Ollama gets its own Host and the forwarding headers.
 */
import { randomUUID } from "node:crypto"
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from "node:http"

const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "te",
  "trailer",
  "upgrade",
  "proxy-authenticate",
  "proxy-authorization",
  // undici refuses `expect`; Node already answered any 100-continue.
  "expect"
])

/** Headers that are ours and never reach Ollama. */
const CREDENTIALS = new Set(["authorization", "x-api-key"])

/** Names listed in `Connection` are hop-by-hop for this message only. */
const connectionListed = (headers: IncomingHttpHeaders): ReadonlySet<string> | undefined => {
  const value = headers.connection
  if (value === undefined || value === "close" || value === "keep-alive") return undefined
  return new Set(value.split(",").map((s) => s.trim().toLowerCase()))
}

const SANE_REQUEST_ID = /^[\w.:@/+=-]{1,128}$/

/** The client's `X-Request-Id` when it is a reasonable token, else a new one. */
export const requestIdOf = (headers: IncomingHttpHeaders): string => {
  const given = headers["x-request-id"]
  return typeof given === "string" && SANE_REQUEST_ID.test(given) ? given : randomUUID()
}

export interface ForwardInfo {
  readonly ollamaHost: string
  readonly remoteAddress: string | undefined
  readonly requestId: string
}

export const upstreamRequestHeaders = (headers: IncomingHttpHeaders, info: ForwardInfo): Record<string, string | Array<string>> => {
  const listed = connectionListed(headers)
  const out: Record<string, string | Array<string>> = {}
  for (const name in headers) {
    if (HOP_BY_HOP.has(name) || CREDENTIALS.has(name) || name === "host" || listed?.has(name)) continue
    const value = headers[name]
    if (value !== undefined) out[name] = value
  }
  out.host = info.ollamaHost
  const priorFor = headers["x-forwarded-for"]
  if (info.remoteAddress !== undefined) {
    out["x-forwarded-for"] = priorFor ? `${priorFor}, ${info.remoteAddress}` : info.remoteAddress
  }
  const proto = headers["x-forwarded-proto"]
  out["x-forwarded-proto"] = proto === "https" || proto === "http" ? proto : "http"
  if (headers.host !== undefined) out["x-forwarded-host"] = headers.host
  out["x-request-id"] = info.requestId
  return out
}

const isStreaming = (headers: IncomingHttpHeaders) => {
  const type = headers["content-type"]
  return (
    headers["content-length"] === undefined ||
    (type !== undefined && (type.startsWith("application/x-ndjson") || type.startsWith("text/event-stream")))
  )
}

/** `extra`: the proxy's own headers for this answer (a key's rate limits). */
export const clientResponseHeaders = (
  headers: IncomingHttpHeaders,
  requestId: string,
  extra?: OutgoingHttpHeaders
): OutgoingHttpHeaders => {
  const listed = connectionListed(headers)
  const out: OutgoingHttpHeaders = {}
  for (const name in headers) {
    if (HOP_BY_HOP.has(name) || listed?.has(name)) continue
    out[name] = headers[name]
  }
  out["x-request-id"] = requestId
  if (extra !== undefined) { for (const name in extra) out[name] = extra[name] }
  // Tells nginx-like front proxies not to buffer token streams.
  if (isStreaming(headers)) out["x-accel-buffering"] = "no"
  return out
}
