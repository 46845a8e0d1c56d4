/**
 * One exchange played through the taps by hand, without sockets: the calls the Proxy makes, in
 * its order, with Node's own request and response objects.
 */
import { type IncomingHttpHeaders, IncomingMessage, ServerResponse } from "node:http"
import { Socket } from "node:net"
import type { ExchangeContext, ExchangeTap, Outcome } from "../../src/http/Exchange.js"

export interface PlayedExchange {
  readonly method?: string
  readonly url: string
  readonly headers?: IncomingHttpHeaders
  readonly keyName?: string | null
  readonly body?: string
  /** The answer from Ollama; leave out for exchanges that never got one. */
  readonly response?: { readonly status: number; readonly headers?: IncomingHttpHeaders; readonly chunks: ReadonlyArray<string> }
  readonly outcome?: Outcome
  readonly error?: Error
  /** For answers the proxy writes itself (401, 503), the status it wrote. */
  readonly proxyStatus?: number
}

export const play = (tap: ExchangeTap, exchange: PlayedExchange) => {
  const req = new IncomingMessage(new Socket())
  req.method = exchange.method ?? "POST"
  req.url = exchange.url
  req.headers = { host: "proxy.test", ...exchange.headers }
  const res = new ServerResponse(req)
  const context: ExchangeContext = { requestId: "req-1", keyName: exchange.keyName ?? null, req, res, startedAt: performance.now() }
  const observer = tap(context)
  const upstreamHeaders: Record<string, string | Array<string>> = {}
  if (exchange.proxyStatus !== undefined) {
    res.statusCode = exchange.proxyStatus
    // what writeJsonError leaves behind: the status is on the response, the headers went out
    Object.defineProperty(res, "headersSent", { value: true })
  } else {
    observer?.onUpstreamRequest?.(upstreamHeaders)
    if (exchange.body !== undefined) observer?.onRequestData?.(Buffer.from(exchange.body))
    if (exchange.response !== undefined) {
      observer?.onResponseStart?.(exchange.response.status, exchange.response.headers ?? {})
      for (const chunk of exchange.response.chunks) observer?.onData?.(Buffer.from(chunk))
    }
  }
  observer?.onEnd?.(exchange.outcome ?? "completed", exchange.error)
  return { req, upstreamHeaders }
}

export const ndjson = (lines: ReadonlyArray<object>) => lines.map((l) => `${JSON.stringify(l)}\n`)

/** An Ollama /api/chat stream with the given figures. */
export const chatStream = (model: string, input: number, output: number) =>
  ndjson([
    { model, created_at: "2026-08-20T10:00:00Z", message: { role: "assistant", content: "Hi" }, done: false },
    {
      model,
      created_at: "2026-08-20T10:00:00Z",
      message: { role: "assistant", content: "" },
      done: true,
      done_reason: "stop",
      prompt_eval_count: input,
      eval_count: output
    }
  ])
