/**
 * Raw node:http requests for the edge cases the client libraries hide.
 */
import { once } from "node:events"
import { type IncomingHttpHeaders, type IncomingMessage, request as httpRequest } from "node:http"
import { createServer as createNetServer } from "node:net"

export interface RawResponse {
  readonly status: number
  readonly headers: IncomingHttpHeaders
  readonly body: Buffer
  readonly text: string
}

export interface RawRequest {
  readonly method?: string
  readonly headers?: Record<string, string | number>
  readonly body?: string | Buffer
}

/** Sends one request and reads the whole answer; rejects when the connection breaks mid-body. */
export const raw = (url: string, options: RawRequest = {}): Promise<RawResponse> =>
  new Promise((resolve, reject) => {
    const req = httpRequest(url, { method: options.method ?? "GET", headers: options.headers ?? {} }, (res) => {
      const chunks: Array<Buffer> = []
      res.on("data", (c: Buffer) => chunks.push(c))
      res.on("error", reject)
      res.on("end", () => {
        const body = Buffer.concat(chunks)
        resolve({ status: res.statusCode!, headers: res.headers, body, text: body.toString("utf8") })
      })
    })
    req.on("error", reject)
    req.end(options.body)
  })

/** Opens a request and resolves with the response as soon as its headers arrive. */
export const open = async (url: string, options: RawRequest = {}) => {
  const req = httpRequest(url, { method: options.method ?? "GET", headers: options.headers ?? {} })
  req.end(options.body)
  const [res] = (await once(req, "response")) as [IncomingMessage]
  return { req, res }
}

/** Reads a response to its end, or to the break that ends it. */
export const readToEnd = (res: IncomingMessage) =>
  new Promise<{ body: string; complete: boolean }>((resolve) => {
    let body = ""
    res.setEncoding("utf8")
    res.on("data", (c: string) => (body += c))
    res.on("end", () => resolve({ body, complete: res.complete }))
    res.on("error", () => resolve({ body, complete: false }))
    res.on("aborted", () => resolve({ body, complete: false }))
  })

/** The lines of an NDJSON body, parsed. */
export const ndjson = (body: string) => body.split("\n").filter((l) => l !== "").map((l) => JSON.parse(l) as Record<string, unknown>)

/** A loopback port nothing listens on (just closed: free to bind, refused to connect). */
export const freePort = () =>
  new Promise<number>((resolve) => {
    const server = createNetServer()
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as { port: number }
      server.close(() => resolve(port))
    })
  })

/**
 * What clients made Ollama see: the requests the proxy relayed (it sets X-Forwarded-For on every
 * one), not its own calls (health probes, the model list it reads for the key rules).
 */
export const relayed = <R extends { readonly headers: Record<string, string> }>(requests: ReadonlyArray<R>): Array<R> =>
  requests.filter((r) => r.headers["x-forwarded-for"] !== undefined)
