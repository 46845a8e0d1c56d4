/**
 * Relay: one client request becomes one Ollama request; bytes flow both ways as they arrive, with
 * backpressure, through undici's dispatcher without an intermediate stream. It feeds the
 * exchange's reading as the bytes pass (see Boundary.ts for why all of this is plain callbacks).
 */
import { Context, Duration, Effect } from "effect"
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from "node:http"
import type { Socket } from "node:net"
import { type Readable } from "node:stream"
import { type Dispatcher, Pool } from "undici"
import { OllamaHostConfig } from "../OllamaHost.js"
import { type BodyChecks, checkBody } from "../policy/BodyCheck.js"
import { RequestPolicyConfig } from "../policy/PolicyConfig.js"
import { badGateway, bodyTimeout as bodyTimedOut, ollamaUnavailable, writeRefusal } from "./Errors.js"
import { type ChunkFilter, type Exchange, filterOf, RemoteModelList, replacementOf } from "./Exchange.js"
import { RelayConfig, TrustedProxiesConfig } from "./ExchangeConfig.js"
import { clientResponseHeaders, hasBody, trustedPeers, upstreamRequestHeaders } from "./Headers.js"

/**
 * What the relay needs of Ollama's health: whether Ollama is known to be down (answer 503 at once
 * instead of waiting on a connect), and a way to say it did not answer. Ollama's supervisor
 * (src/ollama/Health.ts) provides it; src/http/Server.ts wires the two, so the request path knows
 * nothing of the supervisor.
 */
export class UpstreamHealth extends Context.Tag("app/UpstreamHealth")<UpstreamHealth, {
  readonly isDown: () => boolean
  readonly reportUnreachable: () => void
}>() {}

class ClientAborted extends Error {
  constructor(message = "client closed the connection") {
    super(message)
  }
}

/** The client stopped sending its request body: cut as if it had gone. */
class BodyTimeout extends ClientAborted {
  constructor() {
    super("the request body stopped arriving")
  }
}

/** Errors that mean Ollama is not there (refused, reset before answering, unreachable). */
const UNREACHABLE = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EPIPE",
  "UND_ERR_CONNECT_TIMEOUT",
  "UND_ERR_SOCKET",
  "UND_ERR_CLOSED"
])

const errorCode = (error: Error): string | undefined => {
  const code = (error as { code?: unknown }).code
  if (typeof code === "string") return code
  const cause = (error as { cause?: unknown }).cause
  return cause instanceof Error ? errorCode(cause) : undefined
}

type UpstreamBody = Buffer | Readable | null

/**
 * An answer that ends before its request body has all arrived closes the connection. Keeping it
 * would mean reading the rest of the body only to discard it, for as long as the client cares to
 * send it: trickled, for ever.
 */
const closeIfBodyUnread = (req: IncomingMessage, res: ServerResponse) => {
  if (!req.complete && hasBody(req.headers)) res.setHeader("connection", "close")
}

/** Reads a request body of at most `limit` bytes whole; a larger one is refused, unread. */
const readBody = (
  req: IncomingMessage,
  limit: number,
  seen: (chunk: Buffer) => void,
  done: (body: { readonly whole: Buffer } | { readonly tooLarge: true }) => void
) => {
  const chunks: Array<Buffer> = []
  let size = 0
  const onData = (chunk: Buffer) => {
    seen(chunk)
    chunks.push(chunk)
    size += chunk.length
    if (size > limit) {
      stop()
      req.pause()
      done({ tooLarge: true })
    }
  }
  const onEnd = () => {
    stop()
    done({ whole: Buffer.concat(chunks, size) })
  }
  // A client that goes away mid-body is noticed by the response's close handler.
  const stop = () => {
    req.off("data", onData)
    req.off("end", onEnd)
  }
  req.on("data", onData)
  req.on("end", onEnd)
}

export class Relay extends Effect.Service<Relay>()("app/Relay", {
  scoped: Effect.gen(function*() {
    const ollama = yield* OllamaHostConfig
    const { trustedProxies } = yield* TrustedProxiesConfig
    const { requestBodyTimeout } = yield* RelayConfig
    const health = yield* UpstreamHealth
    const remote = yield* RemoteModelList
    const checks: BodyChecks = { operator: yield* RequestPolicyConfig, isRemote: remote.isRemote }
    const pool = yield* Effect.acquireRelease(
      Effect.sync(() =>
        new Pool(ollama.origin, {
          // A model load can hold the first byte for minutes; the client decides when to give up.
          headersTimeout: 0,
          bodyTimeout: 0,
          connectTimeout: 1000,
          keepAliveTimeout: 30_000
        })
      ),
      (pool) => Effect.promise(() => pool.destroy())
    )
    const ollamaHost = ollama.hostHeader
    const trusted = trustedPeers(trustedProxies)
    const bodyTimeout = Duration.toMillis(requestBodyTimeout)

    const forward = (exchange: Exchange): void => {
      const { checked, reading, req, requestId, res, rewrites, route } = exchange
      if (health.isDown()) {
        writeRefusal(res, route.family, ollamaUnavailable, requestId)
        exchange.finish("unavailable")
        return
      }

      let controller: Dispatcher.DispatchController | undefined
      let filter: ChunkFilter | undefined
      /** An answer changed as a whole: held until its end. */
      let whole: { status: number; headers: IncomingHttpHeaders; replace: (body: Buffer) => Buffer; chunks: Array<Buffer> } | undefined
      /** The body was read ahead, and the reading saw it then. */
      let fed = false
      let waitingForDrain = false
      const resume = () => {
        waitingForDrain = false
        controller?.resume()
      }

      res.once("close", () => {
        if (res.writableFinished) return
        if (controller !== undefined && !controller.aborted) controller.abort(new ClientAborted())
        exchange.finish("client_aborted")
      })

      const remoteAddress = req.socket.remoteAddress
      const headers = upstreamRequestHeaders(req.headers, { ollamaHost, remoteAddress, trustedPeer: trusted(remoteAddress), requestId })
      exchange.upstream(headers)
      let body: UpstreamBody = hasBody(req.headers) ? req : null

      // A body that stops arriving would hold the connection and Ollama's request open for ever:
      // after REQUEST_BODY_TIMEOUT of silence it is cut with a 408. The socket's idle timer keeps
      // the time (Node refreshes it on every read), so an upload that keeps flowing is never cut.
      // The response's 'timeout' event carries it: unanswered, Node would destroy the socket
      // itself. The timer stops with the body, before the answer: the answer's writes would
      // refresh it too, one more piece of work per chunk.
      if (body !== null) {
        const stillIdle = (socket: Socket, read: number) => {
          if (exchange.finished || req.complete) return
          if (socket.bytesRead !== read || socket.isPaused()) return void res.setTimeout(bodyTimeout)
          const error = new BodyTimeout()
          if (res.headersSent) res.destroy()
          else writeRefusal(res, route.family, bodyTimedOut, requestId)
          if (controller !== undefined && !controller.aborted) controller.abort(error)
          exchange.finish("client_aborted", error)
        }
        res.setTimeout(bodyTimeout, () => {
          const socket = res.socket
          // The body is all here: the silence is Ollama's (a model load may take minutes).
          if (req.complete || socket === null) return void res.setTimeout(0)
          // Ollama is not taking the body yet, so neither are we: the client is not the idle one.
          if (socket.isPaused()) return void res.setTimeout(bodyTimeout)
          // Timers run before pending reads: bytes that came while this process was busy are read
          // before setImmediate, and only a body still silent then has stopped.
          setImmediate(stillIdle, socket, socket.bytesRead)
        })
        // Once the response is over it no longer has the socket, and this leaves the socket alone.
        req.once("end", () => res.setTimeout(0))
      }

      // Chunks parsed from one read of Ollama's socket go to the client in one write, at the end of
      // that read (process.nextTick): the same bytes, no later, in far fewer, larger writes. Ollama
      // writes a line per token, so under load one read holds many lines; per-line writes cost the
      // relay half its CPU (bench: stream relay 1.33x the baseline with this, 0.96x without).
      let batch: Array<Buffer> | undefined
      const flush = () => {
        const chunks = batch
        batch = undefined
        if (chunks === undefined || res.destroyed) return
        if (!res.write(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks)) && !waitingForDrain) {
          waitingForDrain = true
          controller?.pause()
          res.once("drain", resume)
        }
      }
      // The only object literal of this shape handed to undici: another one with these five
      // methods would make V8 share and generalise its map and slow the per-chunk path (other
      // handlers are classes, see PostHandler in src/usage/Webhook.ts).
      const handler: Dispatcher.DispatchHandler = {
        onRequestStart(c) {
          controller = c
          if (res.destroyed || exchange.finished) {
            c.abort(new ClientAborted())
            return
          }
          // undici attaches its own 'data' listener synchronously after this call, so both see
          // every chunk and its pause() still holds the body back for backpressure.
          if (body === null || fed) return
          if (Buffer.isBuffer(body)) reading.requestData(body)
          else body.on("data", (chunk: Buffer) => reading.requestData(chunk))
        },
        onResponseStart(_c, status, headers) {
          if (status < 200) return // 1xx interim answers stay between us and Ollama
          closeIfBodyUnread(req, res)
          const replace = rewrites.length === 0 ? undefined : replacementOf(rewrites, status, headers)
          if (replace !== undefined) {
            reading.responseStart(status, headers)
            whole = { status, headers, replace, chunks: [] }
            return
          }
          res.writeHead(status, clientResponseHeaders(headers, requestId, exchange.limitHeaders, exchange.queueWaitMs))
          // A filter may change the body's length: only a body without a declared one is filtered.
          if (rewrites.length > 0 && headers["content-length"] === undefined) filter = filterOf(rewrites, status, headers)
          reading.responseStart(status, headers)
          if (headers["content-length"] === undefined) res.flushHeaders()
        },
        onResponseData(_c, chunk) {
          reading.responseData(chunk)
          if (whole !== undefined) return void whole.chunks.push(chunk)
          const out = filter === undefined ? chunk : filter.push(chunk)
          if (out.length === 0) return
          if (batch === undefined) {
            batch = [out]
            process.nextTick(flush)
          } else batch.push(out)
        },
        onResponseEnd() {
          if (whole !== undefined) {
            const out = whole.replace(Buffer.concat(whole.chunks))
            res.writeHead(whole.status, {
              ...clientResponseHeaders(whole.headers, requestId, exchange.limitHeaders, exchange.queueWaitMs),
              "content-length": out.length
            })
            exchange.finish("completed")
            res.end(out)
            return
          }
          flush()
          const held = filter?.end()
          if (held !== undefined && held.length > 0) res.write(held)
          // The exchange is over before the client can see its end: its usage record is in the
          // outbox (a synchronous write) before the last bytes are written, so a worker killed in
          // between never leaves a completed answer without its record.
          exchange.finish("completed")
          res.end()
        },
        onResponseError(_c, error) {
          // What Ollama sent before failing still reaches the client, as it would unbatched.
          flush()
          if (error instanceof ClientAborted || res.destroyed) {
            exchange.finish("client_aborted", error)
            return
          }
          if (res.headersSent) {
            // Ending normally would pass a truncated body off as complete: cut the connection.
            res.destroy(error)
            exchange.finish("upstream_error", error)
            return
          }
          const code = errorCode(error)
          if (code !== undefined && UNREACHABLE.has(code)) {
            health.reportUnreachable()
            writeRefusal(res, route.family, ollamaUnavailable, requestId)
            exchange.finish("unavailable", error)
          } else {
            writeRefusal(res, route.family, badGateway(error.message), requestId)
            exchange.finish("upstream_error", error)
          }
        }
      }

      const dispatch = () => pool.dispatch({ method: req.method ?? "GET", path: exchange.target, headers, body }, handler)
      if (body === null || !checked) return void dispatch()
      const check = (whole: Buffer) => {
        if (exchange.finished) return
        const result = checkBody(exchange, whole, req.headers, checks)
        if ("refusal" in result) {
          const { refusal } = result
          return exchange.refuse(refusal, refusal.status === 403 ? "forbidden" : "rejected")
        }
        body = result.body
        // What Ollama gets is what was checked: decoded (no Content-Encoding), maybe rewritten, with its own length.
        delete headers["content-encoding"]
        headers["content-length"] = String(result.body.length)
        dispatch()
      }
      // Checked bodies are read whole, up to MAX_REQUEST_BODY (32 MB, above RunPod's 30 MB payload
      // limit): the decision rests on the last of two keys, so a body can only be checked once it
      // has all been seen.
      readBody(req, checks.operator.maxRequestBody, (chunk) => reading.requestBytes(chunk.length), (read) => {
        if (exchange.finished) return
        fed = true
        // The rest of a body too large to check is not read: the refusal closes the connection.
        if ("tooLarge" in read) {
          const limit = checks.operator.maxRequestBody
          const message = `the request body is larger than the proxy checks (MAX_REQUEST_BODY, ${limit} bytes)`
          return exchange.refuse({ status: 413, message }, "rejected")
        }
        // A read of the remote models under way (after a create or a copy) decides first.
        const pending = remote.pending()
        if (pending === undefined) check(read.whole)
        else void pending.then(() => check(read.whole))
      })
    }

    return { forward } as const
  })
}) {}
