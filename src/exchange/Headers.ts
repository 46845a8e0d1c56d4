/**
 * Header rules at the proxy boundary: hop-by-hop names never cross it (undici rejects them too),
 * the client's credentials stay here, Ollama gets its own Host and the forwarding headers.
 */
import { randomUUID } from "node:crypto"
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from "node:http"
import { BlockList, isIP } from "node:net"
import type { AddressBlock } from "./ExchangeConfig.js"

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

/** Whether a request carries a body (a declared length above 0, or chunks). */
export const hasBody = (headers: IncomingHttpHeaders) => {
  const length = headers["content-length"]
  return headers["transfer-encoding"] !== undefined || (length !== undefined && length !== "0")
}

/**
 * A CORS preflight carries no credentials by design; Ollama's CORS layer answers it. It carries no
 * body either: one that does needs a key, or a keyless client could trickle a body through it.
 */
export const isPreflight = (method: string | undefined, headers: IncomingHttpHeaders) =>
  method === "OPTIONS" && headers.origin !== undefined && headers["access-control-request-method"] !== undefined && !hasBody(headers)

const SANE_REQUEST_ID = /^[\w.:@/+=-]{1,128}$/

/** The client's `X-Request-Id` when it is a reasonable token, else a new one. */
export const requestIdOf = (headers: IncomingHttpHeaders): string => {
  const given = headers["x-request-id"]
  return typeof given === "string" && SANE_REQUEST_ID.test(given) ? given : randomUUID()
}

/**
 * Where a request came from, as told by the proxies before us. Any client can write these: from
 * a peer not in TRUSTED_PROXIES they are claims, and Ollama (and whatever reads its logs) gets
 * what this proxy saw instead.
 */
const FORWARDING = new Set(["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-real-ip"])

/**
 * Whether a peer address is one of the trusted proxies. A listener on `::` sees IPv4 peers as
 * `::ffff:a.b.c.d`; BlockList matches those against IPv4 blocks too.
 */
export const trustedPeers = (blocks: ReadonlyArray<AddressBlock>): (address: string | undefined) => boolean => {
  if (blocks.length === 0) return () => false
  const list = new BlockList()
  for (const block of blocks) list.addSubnet(block.address, block.prefix, block.family)
  return (address) => address !== undefined && list.check(address, isIP(address) === 4 ? "ipv4" : "ipv6")
}

export interface ForwardInfo {
  readonly ollamaHost: string
  readonly remoteAddress: string | undefined
  /** The peer is a trusted proxy: its forwarding headers are kept, and X-Forwarded-For extended. */
  readonly trustedPeer: boolean
  readonly requestId: string
}

/** The first element of a list header (the one the first proxy wrote). */
const firstOf = (value: string | Array<string> | undefined) => typeof value === "string" ? value.split(",")[0]!.trim() : ""

export const upstreamRequestHeaders = (headers: IncomingHttpHeaders, info: ForwardInfo): Record<string, string | Array<string>> => {
  const listed = connectionListed(headers)
  const trusted = info.trustedPeer
  const out: Record<string, string | Array<string>> = {}
  for (const name in headers) {
    if (HOP_BY_HOP.has(name) || CREDENTIALS.has(name) || name === "host" || listed?.has(name)) continue
    if (!trusted && FORWARDING.has(name)) continue
    const value = headers[name]
    if (value !== undefined) out[name] = value
  }
  out.host = info.ollamaHost
  if (info.remoteAddress !== undefined) {
    const prior = out["x-forwarded-for"]
    out["x-forwarded-for"] = prior ? `${prior}, ${info.remoteAddress}` : info.remoteAddress
  }
  // This listener speaks plain HTTP: only a trusted proxy in front can say the client used TLS.
  out["x-forwarded-proto"] = trusted && firstOf(headers["x-forwarded-proto"]).toLowerCase() === "https" ? "https" : "http"
  const host = (trusted && firstOf(headers["x-forwarded-host"])) || headers.host
  if (host) out["x-forwarded-host"] = host
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
  extra?: OutgoingHttpHeaders,
  queueWaitMs: number | null = null
): OutgoingHttpHeaders => {
  const listed = connectionListed(headers)
  const out: OutgoingHttpHeaders = {}
  for (const name in headers) {
    if (HOP_BY_HOP.has(name) || listed?.has(name)) continue
    out[name] = headers[name]
  }
  out["x-request-id"] = requestId
  if (extra !== undefined) { for (const name in extra) out[name] = extra[name] }
  // Set on every request that asked for one of Ollama's slots (src/schedule/), 0 when none waited.
  if (queueWaitMs !== null) out["x-queue-wait-ms"] = String(queueWaitMs)
  // Tells nginx-like front proxies not to buffer token streams.
  if (isStreaming(headers)) out["x-accel-buffering"] = "no"
  return out
}
