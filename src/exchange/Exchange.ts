/**
 * One client request and its response as it passes the proxy, and the taps that watch it
 * (usage metering, telemetry). Taps are called synchronously on the hot path: keep them cheap.
 */
import { Context, Layer } from "effect"
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from "node:http"

export type Outcome =
  /** The whole response reached the client. */
  | "completed"
  /** The client went away first; the upstream request was aborted. */
  | "client_aborted"
  /** Ollama failed or vanished mid-response; the client's connection was cut. */
  | "upstream_error"
  /** Ollama could not be reached; the client got a 503. */
  | "unavailable"
  /** The proxy refused the request (no or invalid API key, a 401); Ollama never saw it. */
  | "rejected"

export interface ExchangeContext {
  readonly requestId: string
  /** The API key's name; null on an open proxy. */
  readonly keyName: string | null
  readonly req: IncomingMessage
  /** Read-only for taps: the status of answers the proxy writes itself (401, 502, 503) is here. */
  readonly res: ServerResponse
  /** performance.now() when the request arrived. */
  readonly startedAt: number
}

export interface ExchangeObserver {
  /** The request to Ollama is about to go; a tap may add headers (`traceparent`). */
  onUpstreamRequest?(headers: Record<string, string | Array<string>>): void
  /** A chunk of the request body, as it is sent to Ollama. */
  onRequestData?(chunk: Buffer): void
  onResponseStart?(status: number, headers: IncomingHttpHeaders): void
  /** Every body chunk as Ollama sent it, before any rewrite. */
  onData?(chunk: Buffer): void
  onEnd?(outcome: Outcome, error?: Error): void
  /** Set by the rare observer that must also change the bytes of its exchange. */
  readonly rewrite?: ExchangeRewrite | undefined
}

/**
 * A change to the bytes of one exchange (e.g. asking Ollama for usage the client did not ask for,
 * and hiding it again). Exchanges without one take the plain pass-through path.
 */
export interface ExchangeRewrite {
  /** Largest request body buffered for `request`; a larger one streams through unchanged. */
  readonly maxRequestBody: number
  /** The whole request body; returns the body to send instead, or undefined to send it unchanged. */
  request(body: Buffer): Buffer | undefined
  /** Called at the response head; a filter for the body, or undefined to relay it unchanged. */
  response(status: number, headers: IncomingHttpHeaders): ChunkFilter | undefined
}

/** Turns the response body into what the client receives, chunk by chunk. */
export interface ChunkFilter {
  /** The bytes to relay now for this chunk; empty to relay nothing yet. */
  push(chunk: Buffer): Buffer
  /** The bytes still held back when the body ends. */
  end(): Buffer
}

/** Makes the observer of one exchange, or undefined when it has nothing to watch there. */
export type ExchangeTap = (context: ExchangeContext) => ExchangeObserver | undefined

/** The taps in force; each part that watches traffic adds its own. */
export class ExchangeTaps extends Context.Tag("app/ExchangeTaps")<ExchangeTaps, ReadonlyArray<ExchangeTap>>() {
  static readonly none = Layer.succeed(ExchangeTaps, [])
}

/** One observer standing for several, or undefined when there are none. */
export const observe = (taps: ReadonlyArray<ExchangeTap>, context: ExchangeContext): ExchangeObserver | undefined => {
  if (taps.length === 0) return undefined
  const observers: Array<ExchangeObserver> = []
  for (const tap of taps) {
    const observer = tap(context)
    if (observer !== undefined) observers.push(observer)
  }
  if (observers.length <= 1) return observers[0]
  const merged: Record<string, unknown> = {
    // Two rewrites of one exchange would have to agree on the bytes: the first one wins.
    rewrite: observers.find((o) => o.rewrite !== undefined)?.rewrite
  }
  for (const hook of HOOKS) {
    const fn = everyOne(observers, hook)
    if (fn !== undefined) merged[hook] = fn
  }
  return merged as ExchangeObserver
}

const HOOKS = ["onUpstreamRequest", "onRequestData", "onResponseStart", "onData", "onEnd"] as const
type Hook = (typeof HOOKS)[number]

/**
 * The observers' `hook`, called in order: undefined when none has it (the proxy then skips the
 * work, a body listener, nobody asked for), the one function itself when only one has it (onData
 * runs per chunk: no loop around a single call).
 */
const everyOne = (observers: ReadonlyArray<ExchangeObserver>, hook: Hook) => {
  const fns = observers.flatMap((o) => (o[hook] === undefined ? [] : [o[hook] as (a?: unknown, b?: unknown) => void]))
  if (fns.length <= 1) return fns[0]
  return (a?: unknown, b?: unknown) => {
    for (const fn of fns) fn(a, b)
  }
}
