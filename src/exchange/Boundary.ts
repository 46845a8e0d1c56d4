/**
 * The exchange boundary: the one place a client request enters the proxy's request path. What
 * happens to one request, in order:
 *
 *   1. Target.ts    the path Ollama will route it by, read once (a spelling that could route
 *                   otherwise is refused with 400);
 *   2. Classify.ts  what it is (family, operation, inference?, route), decided once;
 *   3. ApiKeys      who is calling (Caller.ts adds the forwarded user headers), and Policy.ts
 *                   what the key may do: its scope now, the model it names once the body is read;
 *   4. consumers    open their watch of the exchange (telemetry, usage records, ...);
 *   5. limits       a key with limits is let in or refused (429) by src/limits/, after one
 *                   round trip to Redis when its counters are shared;
 *   6. Relay.ts     the bytes go to Ollama and back, feeding the exchange's one Reading;
 *   7. finish       the reading is final; each consumer's watch ends, reading the same figures.
 *
 * Why this folder is plain callbacks inside an Effect-built service, and the rest of the program
 * is Effect: measured on a 2-core machine, wrk, API key checked (one run; the relay figures are
 * from the stream benchmark in bench/):
 *
 *   proxy                                               GET /api/tags   1000-line stream
 *                                                        requests/s     responses/s
 *   direct to the upstream (the ceiling)                   72,800          709
 *   nginx, proxy_buffering off                             34,700          599
 *   raw Node http + undici, 40 lines                        9,800          444
 *   Effect HttpClient + HttpServerResponse.stream           1,200          343
 *   Effect HttpServer, undici body as .raw             2,500-3,000         331
 *
 * Effect's server answering text with no upstream at all made 8,000-8,700 requests/s with its
 * router and tracer middleware, 12,300 without the tracer and 17,000 as a bare interruptible app,
 * against 65,000 for raw Node. The costs are per request and per chunk: a span from the tracer
 * middleware (~40 us), the router (~20 us), a fiber and a Stream per body, against ~85 us for the
 * whole upstream call in raw Node. So a request here is callbacks, with no fiber, Stream or Effect
 * per request or per chunk; everything around it (configuration, the pool's lifecycle, health,
 * consumers, shutdown) is built as Effect layers, and this service captures the runtime once and
 * hands the listener a plain Node callback, the shape of @effect/platform-node's `makeHandler`.
 * Effect runs here only on rare paths (logging a failure), through that runtime.
 *
 * Rules that keep the path fast, each measured when it was made:
 * - The relay writes the chunks of one read of Ollama's socket in one write: per-line writes cost
 *   it half its CPU (stream relay 0.96x the baseline proxy before, 1.33x after).
 * - Only one object literal of the relay handler's shape is handed to undici; other undici
 *   handlers are classes (a second literal made V8 generalise their map and cost the stream relay
 *   a quarter of its throughput).
 * - Consumers get no per-chunk calls: the Reading is fed once, and they read it at the end.
 * - The readers only search Buffers with indexOf per chunk and parse the few lines that carry
 *   usage, once, at the end (UsageReader.ts).
 * - Limits (src/limits/) decide in this callback when their counters are in the process, with a
 *   count, not a map entry per request; their headers go into the relay's one writeHead object,
 *   made anew only when their figures change (bench tags with every limit on: 0.87x of limits off
 *   with res.setHeader and fresh headers per request, 1.0x like this). With Redis the request waits
 *   for one round trip, unread, on a promise: no fiber.
 */
import { Context, Effect, Metric, MetricLabel, Runtime } from "effect"
import type { IncomingMessage, ServerResponse } from "node:http"
import { ApiKeys } from "../keys/ApiKeys.js"
import { ExchangeDispatch } from "../schedule/Dispatch.js"
import { callerOf } from "./Caller.js"
import { asksForUsage, classify, unknownRoute } from "./Classify.js"
import { orderConsumers } from "./Consumers.js"
import { badTarget, unauthorized } from "./Errors.js"
import {
  type ConsumerFailed,
  endWatches,
  Exchange,
  ExchangeAdmission,
  ExchangeConsumers,
  openWatches,
  RemoteModelList,
  writerOf
} from "./Exchange.js"
import { isPreflight, requestIdOf } from "./Headers.js"
import { includeUsageRewrite } from "./IncludeUsage.js"
import { listsModels, modelListFilter, pathModelRefusal, readsModelInBody, scopeRefusal } from "./Policy.js"
import { Relay } from "./Relay.js"
import { pathOf, type Target, targetOf } from "./Target.js"
import { makeUsageReader, type UsageReaderFactory } from "./UsageReader.js"

/** How usage readers are made; a test supplies one that fails, to see failures reported. */
export class UsageReaders extends Context.Reference<UsageReaders>()("app/UsageReaders", {
  defaultValue: (): UsageReaderFactory => makeUsageReader
}) {}

/** Labels: part = reading (the figures of an exchange) or the name of the consumer that failed. */
const exchangeFailures = Metric.counter("ollama_proxy.exchange.failures", {
  description: "Failures inside the request path's reading or its consumers; each is also logged with the request id",
  incremental: true
})

/** The boundary alone decides whether a body is read whole and checked. */
const writeChecked = writerOf("checked", "the boundary")

/** A CORS preflight carries no key by design: Ollama's CORS layer answers it. */
const PREFLIGHT = { ok: true, key: null } as const

const describe = (cause: unknown) => (cause instanceof Error ? cause.message : String(cause))

export class ExchangeBoundary extends Effect.Service<ExchangeBoundary>()("app/ExchangeBoundary", {
  scoped: Effect.gen(function*() {
    const keys = yield* ApiKeys
    const relay = yield* Relay
    const consumers = orderConsumers(yield* ExchangeConsumers)
    const readers = yield* UsageReaders
    const admission = yield* ExchangeAdmission
    const remote = yield* RemoteModelList
    const dispatch = yield* ExchangeDispatch
    // Through the schedule of Ollama's slots (src/schedule/) when there is one.
    const forward = dispatch === undefined ? relay.forward : (exchange: Exchange) => dispatch(exchange, relay.forward)
    const runFork = Runtime.runFork(yield* Effect.runtime<never>())

    const partLabels = new Map<string, ReadonlyArray<MetricLabel.MetricLabel>>()
    const labelsOf = (part: string) => {
      let labels = partLabels.get(part)
      if (labels === undefined) partLabels.set(part, labels = [MetricLabel.make("part", part)])
      return labels
    }
    // Every part reads 0 before anything failed, rather than missing.
    for (const part of ["reading", ...consumers.map((c) => c.name)]) exchangeFailures.unsafeUpdate(0, labelsOf(part))

    /** Counted and logged once, with what identifies the exchange; never thrown back into the relay. */
    const failed = (exchange: Exchange, part: string, message: string, error: string) => {
      exchangeFailures.unsafeUpdate(1, labelsOf(part))
      runFork(
        Effect.logError(message).pipe(Effect.annotateLogs({
          request_id: exchange.requestId,
          part,
          path: exchange.path,
          api_key_name: exchange.caller.keyName,
          error
        }))
      )
    }

    const consumerFailed: ConsumerFailed = (exchange, consumer, stage, cause) =>
      failed(exchange, consumer.name, `${consumer.name}: the ${stage} of an exchange failed`, describe(cause))

    const finished = (exchange: Exchange) => {
      const meteringError = exchange.reading.meteringError
      if (meteringError !== null) {
        failed(exchange, "reading", "exchange reading failed: its figures are incomplete", meteringError)
      }
      endWatches(exchange, consumerFailed)
      // A model made, copied, pulled or deleted may have changed which names run on ollama.com.
      if (exchange.route.scope === "manage" && exchange.reading.upstreamAt !== null) remote.changed()
    }

    const handle = (req: IncomingMessage, res: ServerResponse, target: Target): void => {
      const startedAt = performance.now()
      const requestId = requestIdOf(req.headers)
      // A refused target is still seen (logged, counted) under the path it came with.
      const path = target.ok ? target.path : pathOf(req.url)
      const route = target.ok ? classify(req.method, path) : unknownRoute(path)
      const auth = isPreflight(req.method, req.headers) ? PREFLIGHT : keys.authenticate(req.headers)
      const key = auth.ok ? auth.key : null
      const exchange = new Exchange({
        requestId,
        req,
        res,
        startedAt,
        path,
        target: target.ok ? target.forward : path,
        route,
        caller: callerOf(key, req.headers),
        readers,
        onFinish: finished
      })
      openWatches(exchange, consumers, consumerFailed)
      if (!auth.ok) return exchange.refuse(unauthorized(auth.reason), "rejected")
      if (!target.ok) return exchange.refuse(badTarget(target.reason), "rejected")
      // The proxy's own answer, for any valid key whatever its scopes (src/limits/OwnUsage.ts).
      if (route.operation === "own_usage") return admission.ownUsage(exchange)
      if (key !== null) {
        const refusal = scopeRefusal(key, route) ?? pathModelRefusal(key.models, route, path, remote.isRemote)
        if (refusal !== undefined) return exchange.refuse(refusal, "forbidden")
        if (req.method === "GET" && listsModels(route)) exchange.rewrites.push(modelListFilter(key.models, route, remote.isRemote))
      }
      // A key's rules and the request policy read the body whole; so does metering that must ask for usage.
      writeChecked(exchange, readsModelInBody(route) && (key !== null || asksForUsage(route)))
      if (asksForUsage(route)) exchange.rewrites.push(includeUsageRewrite(route, exchange.reading))
      if (key?.limits !== undefined) return admission.admit(exchange, key.limits, forward)
      forward(exchange)
    }

    return {
      /**
       * The listener's callback: the paths the proxy answers itself (`/ping`, `/metrics`) go to
       * `control`, every other request through the exchange to Ollama.
       */
      handler:
        (controlPaths: ReadonlySet<string>, control: (req: IncomingMessage, res: ServerResponse) => void) =>
        (req: IncomingMessage, res: ServerResponse): void => {
          const target = targetOf(req.url)
          if (target.ok && controlPaths.has(target.path)) control(req, res)
          else handle(req, res, target)
        }
    } as const
  }),
  dependencies: [ApiKeys.Default, Relay.Default]
}) {}
