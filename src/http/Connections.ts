/**
 * Connection caps: how many connections one listener holds open at once, in all and per client
 * address. Past either, a new connection is refused the moment it is accepted, before a byte of
 * it is parsed, so a flood of idle or slow connections costs a bounded number of sockets.
 *
 * The refusal is a short HTTP answer, then the connection closes: 429 when the client's address
 * holds too many, 503 when the listener is full, in Ollama's error shape with `Retry-After`. A
 * client reads it as the answer to the request it sent (node:http, fetch and curl all do, even
 * while still uploading): the ollama client reports the message, the openai client retries after
 * `Retry-After`, a person sees why. A bare reset tells none of them anything but "connection reset".
 */
import { Metric, MetricLabel } from "effect"
import type { IncomingMessage, Server, ServerResponse } from "node:http"
import { isIP, type Socket } from "node:net"

export interface ConnectionCaps {
  readonly total: number
  readonly perAddress: number
}

/** Labels: limit = per_address or total. */
const refusals = Metric.counter("ollama_proxy.connections.refused", {
  description: "Connections refused as they were accepted, because a connection cap was reached, by limit (per_address, total)",
  incremental: true
})

const answer = (status: string, message: string) => {
  const body = JSON.stringify({ error: message })
  return Buffer.from(
    `HTTP/1.1 ${status}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\n` +
      `retry-after: 1\r\nconnection: close\r\n\r\n${body}`
  )
}

interface Limit {
  readonly labels: ReadonlyArray<MetricLabel.MetricLabel>
  readonly answer: Buffer
}

const PER_ADDRESS: Limit = {
  labels: [MetricLabel.make("limit", "per_address")],
  answer: answer("429 Too Many Requests", "too many connections from this address, please try again")
}
const TOTAL: Limit = {
  labels: [MetricLabel.make("limit", "total")],
  answer: answer("503 Service Unavailable", "server busy, please try again.  maximum connections reached")
}

/**
 * What a per-address cap counts by: an IPv4 address, or the /64 an IPv6 address is in. One host
 * (or one customer's network) usually holds a whole /64: counted per address, it could open as
 * many connections as it likes. A listener on `::` sees IPv4 clients as `::ffff:a.b.c.d`.
 */
export const addressKey = (address: string): string => {
  if (!address.includes(":")) return address
  if (address.startsWith("::ffff:") && address.includes(".")) return address.slice(7)
  const [head = "", tail] = address.split("%")[0]!.split("::")
  const first = head === "" ? [] : head.split(":")
  const last = tail === undefined || tail === "" ? [] : tail.split(":")
  const groups = tail === undefined ? first : [...first, ...Array<string>(Math.max(0, 8 - first.length - last.length)).fill("0"), ...last]
  return `${groups.slice(0, 4).map((group) => parseInt(group, 16).toString(16)).join(":")}::/64`
}

const refuse = (socket: Socket, limit: Limit) => {
  refusals.unsafeUpdate(1, limit.labels)
  // A client that resets its side first is no concern of ours.
  socket.on("error", () => {})
  socket.end(limit.answer)
  socket.once("finish", () => socket.destroy())
}

/**
 * Counts the listener's connections and refuses those over a cap. Node's HTTP server starts
 * parsing a connection in its own 'connection' listener: this one takes its place and hands it
 * only the connections within the caps.
 */
export const capConnections = (server: Server, caps: ConnectionCaps, trusted: (address: string | undefined) => boolean): void => {
  const listeners = server.listeners("connection")
  if (listeners.length !== 1) throw new Error(`the HTTP server has ${listeners.length} connection listeners, expected its own alone`)
  const parse = listeners[0] as (this: Server, socket: Socket) => void
  server.removeAllListeners("connection")
  for (const limit of [PER_ADDRESS, TOTAL]) refusals.unsafeUpdate(0, limit.labels)

  let open = 0
  const perAddress = new Map<string, number>()
  server.on("connection", (socket: Socket) => {
    // A trusted proxy's clients are counted by request, in forwardedClientCap.
    const key = trusted(socket.remoteAddress) ? "" : addressKey(socket.remoteAddress ?? "")
    const held = perAddress.get(key) ?? 0
    if (key !== "" && held >= caps.perAddress) return refuse(socket, PER_ADDRESS)
    if (open >= caps.total) return refuse(socket, TOTAL)
    open++
    perAddress.set(key, held + 1)
    socket.once("close", () => {
      open--
      const left = perAddress.get(key)! - 1
      if (left === 0) perAddress.delete(key)
      else perAddress.set(key, left)
    })
    parse.call(server, socket)
  })
}

/** The client a trusted proxy speaks for: the last X-Forwarded-For address that is not a trusted proxy. */
export const forwardedClient = (header: string | Array<string> | undefined, trusted: (address: string) => boolean): string | undefined => {
  const hops = (Array.isArray(header) ? header.join(",") : header ?? "").split(",").map((h) => h.trim()).filter((h) => isIP(h) !== 0)
  for (let i = hops.length - 1; i >= 0; i--) if (!trusted(hops[i]!)) return hops[i]
  return hops[0]
}

/**
 * The per-address cap for the requests of a trusted proxy's clients: wraps the listener's request
 * callback. Requests from other peers pass as they are (their connections were capped).
 */
export const forwardedClientCap = (
  perAddress: number,
  trusted: (address: string | undefined) => boolean,
  next: (req: IncomingMessage, res: ServerResponse) => void
) => {
  const inFlight = new Map<string, number>()
  return (req: IncomingMessage, res: ServerResponse): void => {
    if (!trusted(req.socket.remoteAddress)) return next(req, res)
    const client = forwardedClient(req.headers["x-forwarded-for"], trusted)
    if (client === undefined) return next(req, res)
    const key = addressKey(client)
    const held = inFlight.get(key) ?? 0
    if (held >= perAddress) {
      refusals.unsafeUpdate(1, PER_ADDRESS.labels)
      // The balancer's connection carries other clients' requests: it stays open.
      const body = JSON.stringify({ error: "too many requests from this address, please try again" })
      res.writeHead(429, {
        "content-type": "application/json; charset=utf-8",
        "content-length": Buffer.byteLength(body),
        "retry-after": "1"
      })
      res.end(body)
      return
    }
    inFlight.set(key, held + 1)
    res.once("close", () => {
      const left = inFlight.get(key)! - 1
      if (left === 0) inFlight.delete(key)
      else inFlight.set(key, left)
    })
    next(req, res)
  }
}
