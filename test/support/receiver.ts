/**
 * A real HTTP receiver for what the service sends out (OTLP/HTTP exports, webhook POSTs):
 * records every request and lets a test wait for the one it expects instead of sleeping.
 */
import { createServer, type IncomingHttpHeaders } from "node:http"
import type { AddressInfo } from "node:net"
import { makeSignal } from "./signal.js"

export interface Received {
  readonly method: string
  readonly path: string
  readonly headers: IncomingHttpHeaders
  readonly body: Buffer
}

export const startReceiver = async () => {
  const received: Array<Received> = []
  const signal = makeSignal()
  const server = createServer((req, res) => {
    const chunks: Array<Buffer> = []
    req.on("data", (c: Buffer) => chunks.push(c))
    req.on("end", () => {
      received.push({ method: req.method ?? "", path: req.url ?? "", headers: req.headers, body: Buffer.concat(chunks) })
      // An empty OTLP success answer is valid in JSON and protobuf alike.
      res.writeHead(200, { "content-type": req.headers["content-type"] ?? "application/json" })
      res.end()
      signal.notify()
    })
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const port = (server.address() as AddressInfo).port

  const waitFor = (predicate: (r: Received) => boolean, timeoutMs = 15_000) =>
    signal.until(
      () => received.find(predicate),
      timeoutMs,
      () => `nothing matching arrived; got ${received.map((r) => `${r.method} ${r.path}`).join(", ") || "nothing"}`
    )

  return {
    url: `http://127.0.0.1:${port}`,
    port,
    received,
    waitFor,
    close: () => new Promise<void>((resolve) => server.close(() => resolve()))
  }
}

/** The spans of an OTLP/HTTP JSON trace export, flattened. */
export const otlpJsonSpans = (body: Buffer) => {
  const doc = JSON.parse(body.toString("utf8")) as {
    resourceSpans: Array<{
      resource: { attributes: Array<{ key: string; value: Record<string, unknown> }> }
      scopeSpans: Array<{ spans: Array<OtlpSpan> }>
    }>
  }
  return doc.resourceSpans.flatMap((rs) =>
    rs.scopeSpans.flatMap((ss) => ss.spans.map((span) => ({ ...span, resource: attributesOf(rs.resource.attributes) })))
  )
}

export interface OtlpSpan {
  readonly name: string
  readonly traceId: string
  readonly spanId: string
  readonly parentSpanId?: string
  readonly kind: number
  readonly attributes: Array<{ key: string; value: Record<string, unknown> }>
  readonly status?: { code?: number; message?: string }
}

export const attributesOf = (attributes: Array<{ key: string; value: Record<string, unknown> }>) =>
  Object.fromEntries(attributes.map(({ key, value }) => [key, Object.values(value)[0]]))
