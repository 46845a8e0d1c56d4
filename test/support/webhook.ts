/**
 * A real usage webhook for tests: a node:http server that records every POST it receives and
 * answers as the test tells it to (fail, hang, be slow, accept).
 */
import { createServer, type IncomingHttpHeaders } from "node:http"
import type { AddressInfo } from "node:net"
import { makeSignal } from "./signal.js"

export interface Received {
  readonly headers: IncomingHttpHeaders
  readonly body: string
  /** The JSON body: one record, or a batch's array (then this is its first record). */
  readonly record: Record<string, unknown>
  /** The records the POST carried: one, or a batch's. */
  readonly records: Array<Record<string, unknown>>
  /** Whether the receiver answered 2xx to this one. */
  accepted: boolean
}

export type Answer =
  | {
    readonly status: number
    readonly headers?: Record<string, string>
    readonly delayMs?: number
    /** Sends the status line and headers, then never ends the body. */
    readonly holdBody?: boolean
  }
  /** Never answers (until the receiver closes). */
  | "hang"

export interface WebhookReceiver {
  readonly url: string
  /** Every POST, in arrival order, accepted or not. */
  readonly received: Array<Received>
  /** The records answered with 2xx (a batch's one by one). */
  readonly accepted: () => Array<Record<string, unknown>>
  /** The most POSTs that were waiting for their answer at the same time. */
  readonly maxInFlight: () => number
  /** Decides the answer to the n-th request (0-based); 204 by default. */
  answer: (n: number, received: Received) => Answer
  /** Resolves once `predicate` holds for what was received. */
  readonly until: (predicate: (received: ReadonlyArray<Received>) => boolean, timeoutMs?: number) => Promise<void>
  readonly close: () => Promise<void>
}

export const startWebhook = async (answer: WebhookReceiver["answer"] = () => ({ status: 204 })): Promise<WebhookReceiver> => {
  const received: Array<Received> = []
  let inFlight = 0
  let maxInFlight = 0
  const signal = makeSignal()
  const notify = signal.notify
  const server = createServer((req, res) => {
    const chunks: Array<Buffer> = []
    req.on("data", (c: Buffer) => chunks.push(c))
    req.on("end", () => {
      const body = Buffer.concat(chunks).toString()
      let records: Array<Record<string, unknown>> = [{}]
      try {
        const parsed = JSON.parse(body)
        records = Array.isArray(parsed) ? parsed : [parsed]
      } catch {
        // kept as received; the test will see an empty record
      }
      const entry: Received = { headers: req.headers, body, record: records[0] ?? {}, records, accepted: false }
      const n = received.length
      received.push(entry)
      const reply = receiver.answer(n, entry)
      maxInFlight = Math.max(maxInFlight, ++inFlight)
      notify()
      if (reply === "hang") return
      const send = () => {
        inFlight--
        entry.accepted = reply.status >= 200 && reply.status < 300
        res.writeHead(reply.status, { "content-type": "text/plain", ...reply.headers })
        if (reply.holdBody) res.flushHeaders()
        else res.end(entry.accepted ? "" : "no")
        notify()
      }
      if (reply.delayMs) setTimeout(send, reply.delayMs)
      else send()
    })
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const port = (server.address() as AddressInfo).port
  const receiver: WebhookReceiver = {
    url: `http://127.0.0.1:${port}/usage`,
    received,
    accepted: () => received.filter((r) => r.accepted).flatMap((r) => r.records),
    maxInFlight: () => maxInFlight,
    answer,
    until: (predicate, timeoutMs = 10_000) =>
      signal.until(
        () => (predicate(received) ? true : undefined),
        timeoutMs,
        () => `webhook: condition not met in ${timeoutMs} ms; received ${JSON.stringify(received.map((r) => r.record))}`
      ).then(() => undefined),
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      })
  }
  return receiver
}
