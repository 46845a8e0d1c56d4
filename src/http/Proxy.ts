/**
 * Proxy: the hot path. One client request becomes one Ollama request; bytes flow both ways as
 * they arrive, with backpressure, through undici's dispatcher without an intermediate stream.
 *
 * The service is built as an Effect layer (config, pool lifecycle, health), but a request is
 * plain callbacks: per-request fibers and Streams cost several times the upstream call itself
 * (DESIGN.md, "What speed costs here").
 */
import type { IncomingMessage, ServerResponse } from "node:http"
import { Effect } from "effect"
import { Pool, type Dispatcher } from "undici"
import { AppConfig } from "../Config.js"
import { OllamaHealth } from "../ollama/Health.js"
import { writeJsonError, writeOllamaUnavailable } from "./Errors.js"
import type { ExchangeObserver, Outcome } from "./Exchange.js"
import { clientResponseHeaders, upstreamRequestHeaders } from "./Headers.js"

export interface Exchange {
  readonly requestId: string
  readonly observer?: ExchangeObserver | undefined
}

class ClientAborted extends Error {
  constructor() {
    super("client closed the connection")
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

/** Whether the request carries a body worth streaming upstream. */
const hasBody = (req: IncomingMessage) => {
  const length = req.headers["content-length"]
  return req.headers["transfer-encoding"] !== undefined || (length !== undefined && length !== "0")
}

export class Proxy extends Effect.Service<Proxy>()("app/Proxy", {
  scoped: Effect.gen(function*() {
    const config = yield* AppConfig
    const health = yield* OllamaHealth
    const pool = yield* Effect.acquireRelease(
      Effect.sync(() =>
        new Pool(config.ollama.origin, {
          // A model load can hold the first byte for minutes; the client decides when to give up.
          headersTimeout: 0,
          bodyTimeout: 0,
          connectTimeout: 1000,
          keepAliveTimeout: 30_000
        })
      ),
      (pool) => Effect.promise(() => pool.destroy())
    )
    const ollamaHost = config.ollama.hostHeader

    const forward = (req: IncomingMessage, res: ServerResponse, exchange: Exchange): void => {
      const { requestId, observer } = exchange
      if (!health.isUp()) {
        writeOllamaUnavailable(res, requestId)
        observer?.onEnd?.("unavailable")
        return
      }

      let controller: Dispatcher.DispatchController | undefined
      let finished = false
      let waitingForDrain = false
      const finish = (outcome: Outcome, error?: Error) => {
        if (finished) return
        finished = true
        observer?.onEnd?.(outcome, error)
      }
      const resume = () => {
        waitingForDrain = false
        controller?.resume()
      }

      res.once("close", () => {
        if (res.writableFinished) return
        if (controller !== undefined && !controller.aborted) controller.abort(new ClientAborted())
        finish("client_aborted")
      })

      const headers = upstreamRequestHeaders(req.headers, { ollamaHost, remoteAddress: req.socket.remoteAddress, requestId })
      observer?.onUpstreamRequest?.(headers)
      const body = hasBody(req) ? req : null

      const handler: Dispatcher.DispatchHandler = {
        onRequestStart(c) {
          controller = c
          if (res.destroyed) {
            c.abort(new ClientAborted())
            return
          }
          // undici attaches its own 'data' listener synchronously after this call, so both see
          // every chunk and its pause() still holds the body back for backpressure.
          if (body !== null && observer?.onRequestData !== undefined) {
            const onRequestData = observer.onRequestData
            body.on("data", (chunk: Buffer) => onRequestData(chunk))
          }
        },
        onResponseStart(_c, status, headers) {
          if (status < 200) return // 1xx interim answers stay between us and Ollama
          res.writeHead(status, clientResponseHeaders(headers, requestId))
          observer?.onResponseStart?.(status, headers)
          if (headers["content-length"] === undefined) res.flushHeaders()
        },
        onResponseData(c, chunk) {
          observer?.onData?.(chunk)
          if (!res.write(chunk) && !waitingForDrain) {
            waitingForDrain = true
            c.pause()
            res.once("drain", resume)
          }
        },
        onResponseEnd() {
          res.end()
          finish("completed")
        },
        onResponseError(_c, error) {
          if (error instanceof ClientAborted || res.destroyed) {
            finish("client_aborted", error)
            return
          }
          if (res.headersSent) {
            // Ending normally would pass a truncated body off as complete: cut the connection.
            res.destroy(error)
            finish("upstream_error", error)
            return
          }
          const code = errorCode(error)
          if (code !== undefined && UNREACHABLE.has(code)) {
            health.reportUnreachable()
            writeOllamaUnavailable(res, requestId)
            finish("unavailable", error)
          } else {
            writeJsonError(res, 502, `bad gateway: ${error.message}`, { "x-request-id": requestId })
            finish("upstream_error", error)
          }
        }
      }

      pool.dispatch({ method: req.method ?? "GET", path: req.url ?? "/", headers, body }, handler)
    }

    return { forward } as const
  }),
  dependencies: [OllamaHealth.Default]
}) {}
