/**
 * One exchange played through consumers by hand, without sockets: the calls the boundary and the
 * relay make, in their order, with Node's own request and response objects and the real
 * classification and reading.
 */
import { type IncomingHttpHeaders, IncomingMessage, ServerResponse } from "node:http"
import { Socket } from "node:net"
import { callerOf } from "../../src/exchange/Caller.js"
import { classify } from "../../src/exchange/Classify.js"
import { endWatches, Exchange, type ExchangeConsumer, openWatches } from "../../src/exchange/Exchange.js"
import { type Outcome, Reading } from "../../src/exchange/Reading.js"
import { targetOf } from "../../src/exchange/Target.js"
import { makeUsageReader, type UsageReaderFactory } from "../../src/exchange/UsageReader.js"
import type { KeyPolicy } from "../../src/keys/ApiKeys.js"
import { ModelRule } from "../../src/keys/Models.js"
import { SCOPES } from "../../src/Scopes.js"

export interface PlayedExchange {
  readonly method?: string
  readonly url: string
  readonly headers?: IncomingHttpHeaders
  /** The name of the caller's key (one that may do anything), or null on an open proxy. */
  readonly keyName?: string | null
  readonly body?: string
  /** The answer from Ollama; leave out for exchanges that never got one. */
  readonly response?: { readonly status: number; readonly headers?: IncomingHttpHeaders; readonly chunks: ReadonlyArray<string> }
  readonly outcome?: Outcome
  readonly error?: Error
  /** For answers the proxy writes itself (401, 503), the status it wrote. */
  readonly proxyStatus?: number
}

const keyNamed = (name: string): KeyPolicy => ({
  name,
  scopes: new Set(SCOPES),
  models: ModelRule.all,
  expiresAt: undefined,
  disabled: false,
  metadata: undefined,
  source: "environment",
  limits: undefined,
  weight: 1
})

const rethrow = (_exchange: Exchange, _consumer: ExchangeConsumer, _stage: string, cause: unknown) => {
  throw cause
}

export const play = (
  consumers: ExchangeConsumer | ReadonlyArray<ExchangeConsumer>,
  played: PlayedExchange,
  readers: UsageReaderFactory = makeUsageReader
) => {
  const req = new IncomingMessage(new Socket())
  req.method = played.method ?? "POST"
  req.url = played.url
  req.headers = { host: "proxy.test", ...played.headers }
  const res = new ServerResponse(req)
  const target = targetOf(req.url)
  if (!target.ok) throw new Error(target.reason)
  const { path } = target
  const exchange = new Exchange({
    requestId: "req-1",
    req,
    res,
    startedAt: performance.now(),
    path,
    target: target.forward,
    route: classify(req.method, path),
    caller: callerOf(played.keyName ? keyNamed(played.keyName) : null, req.headers),
    readers,
    onFinish: (e) => endWatches(e, rethrow)
  })
  openWatches(exchange, Array.isArray(consumers) ? consumers : [consumers as ExchangeConsumer], rethrow)
  const upstreamHeaders: Record<string, string | Array<string>> = {}
  if (played.proxyStatus !== undefined) {
    res.statusCode = played.proxyStatus
    // what writeJsonError leaves behind: the status is on the response, the headers went out
    Object.defineProperty(res, "headersSent", { value: true })
  } else {
    exchange.upstream(upstreamHeaders)
    if (played.body !== undefined) exchange.reading.requestData(Buffer.from(played.body))
    if (played.response !== undefined) {
      exchange.reading.responseStart(played.response.status, played.response.headers ?? {})
      for (const chunk of played.response.chunks) exchange.reading.responseData(Buffer.from(chunk))
    }
  }
  exchange.finish(played.outcome ?? "completed", played.error)
  return { exchange, req, upstreamHeaders }
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

/** The reading of one answer on `path`, fed as the relay feeds it. */
export const readAnswer = (
  path: string,
  headers: IncomingHttpHeaders,
  chunks: Iterable<Buffer | string>,
  status = 200,
  readers: UsageReaderFactory = makeUsageReader
) => {
  const reading = new Reading(classify("POST", path), readers)
  reading.responseStart(status, headers)
  for (const chunk of chunks) reading.responseData(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk))
  reading.finish("completed", undefined)
  return reading
}
