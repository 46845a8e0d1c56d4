/**
 * Server: the listeners. Control routes (/ping, /metrics) are an Effect HttpRouter; every other
 * request enters the exchange boundary (src/exchange/). With PORT_HEALTH != PORT a second listener
 * answers the control routes only.
 */
import { HttpMiddleware, HttpRouter, HttpServerResponse } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { Data, Duration, Effect, Layer } from "effect"
import { createServer, type IncomingMessage, type Server as NodeServer, type ServerResponse } from "node:http"
import type { AddressInfo } from "node:net"
import { ShutdownConfig } from "../config/Shared.js"
import { ExchangeBoundary } from "../exchange/Boundary.js"
import { TrustedProxiesConfig } from "../exchange/ExchangeConfig.js"
import { hasBody } from "../exchange/Headers.js"
import { trustedPeers } from "../exchange/Headers.js"
import { UpstreamHealth } from "../exchange/Relay.js"
import { ApiKeys } from "../keys/ApiKeys.js"
import { GpuCheck } from "../ollama/Gpu.js"
import { OllamaHealth } from "../ollama/Health.js"
import { Preloader } from "../ollama/Preloader.js"
import { OllamaProcess } from "../ollama/Process.js"
import { RemoteModelsLive } from "../ollama/RemoteModels.js"
import { OllamaHostConfig } from "../OllamaHost.js"
import { RequestPolicyConfig } from "../policy/PolicyConfig.js"
import { metricsRoute, PrometheusMetrics } from "../telemetry/MetricsExport.js"
import { capConnections, forwardedClientCap } from "./Connections.js"
import { ping } from "./Ping.js"
import { ServerConfig, type ServerConfigShape } from "./ServerConfig.js"

export class ListenError extends Data.TaggedError("ListenError")<{
  readonly address: string
  readonly cause: Error
}> {
  override get message() {
    return `cannot listen on ${this.address}: ${this.cause.message}`
  }
}

/** The health check on each of its paths (`/ping`, HEALTH_CHECK_PATH), and /metrics. */
const controlRoutes = (healthPaths: ReadonlyArray<`/${string}`>) =>
  HttpRouter.fromIterable([
    // The router treats `/ping/` as `/ping`.
    ...healthPaths.flatMap((path) => [HttpRouter.makeRoute("GET", path, ping), HttpRouter.makeRoute("HEAD", path, ping)]),
    HttpRouter.makeRoute("GET", "/metrics", metricsRoute)
  ])

const controlPaths = (healthPaths: ReadonlyArray<string>) =>
  new Set([...healthPaths.flatMap((path) => [path, `${path}/`]), "/metrics", "/metrics/"])

const listen = (server: NodeServer, port: number, host: string) =>
  Effect.async<number, ListenError>((resume) => {
    const onError = (cause: Error) => resume(Effect.fail(new ListenError({ address: `${host}:${port}`, cause })))
    server.once("error", onError)
    server.listen(port, host, () => {
      server.off("error", onError)
      resume(Effect.succeed((server.address() as AddressInfo).port))
    })
  })

/** Stop accepting, let in-flight exchanges finish within the deadline, then cut what is left. */
const close = (server: NodeServer, deadline: Duration.Duration) =>
  Effect.async<void>((resume) => {
    // A finished exchange leaves its kept-alive connection open, and server.close waits for it:
    // close connections as they fall idle, not only those idle now.
    const timer = setInterval(() => server.closeIdleConnections(), 100)
    server.close(() => {
      clearInterval(timer)
      resume(Effect.void)
    })
    server.closeIdleConnections()
    return Effect.sync(() => clearInterval(timer))
  }).pipe(
    // This runs as a finalizer, where everything is uninterruptible: without this the timeout
    // could not cut the wait and a kept-alive client would hold shutdown for ever.
    Effect.interruptible,
    Effect.timeoutTo({ duration: deadline, onSuccess: () => true, onTimeout: () => false }),
    Effect.tap((drained) =>
      drained
        ? Effect.logDebug("listener closed")
        : Effect.logWarning("shutdown deadline reached, closing open connections")
    ),
    Effect.ensuring(Effect.sync(() => server.closeAllConnections()))
  )

type Handler = (req: IncomingMessage, res: ServerResponse) => void

/**
 * `/ping` and `/metrics` take no body. One sent anyway would be read and thrown away to keep the
 * connection alive, for as long as the client trickles it (no key needed): its connection closes
 * after the answer instead.
 */
const closingOnBody = (control: Handler): Handler => (req, res) => {
  if (hasBody(req.headers)) res.setHeader("connection", "close")
  control(req, res)
}

const makeServer = (handler: Handler, config: ServerConfigShape, trusted: (address: string | undefined) => boolean) => {
  const headersTimeout = Duration.toMillis(config.requestHeadersTimeout)
  const capped = forwardedClientCap(config.maxConnectionsPerAddress, trusted, handler)
  const server = createServer({
    keepAliveTimeout: 65_000,
    // Uploads of hundreds of MB may take longer than Node's default 5-minute request timeout; a
    // body that stops arriving is cut by the relay instead (REQUEST_BODY_TIMEOUT).
    requestTimeout: 0,
    // From a connection's opening, or a kept-alive one's next request's first byte, to the end of
    // the head. Given explicitly: with requestTimeout 0 Node's default would be none at all.
    headersTimeout,
    // Node checks that deadline on an interval, 30 s by default (a 60 s timeout then cut slow
    // heads after 60-90 s): check every tenth of it, at most every second.
    connectionsCheckingInterval: Math.min(1000, Math.max(10, Math.round(headersTimeout / 10)))
  }, (req, res) => {
    // A request on a kept-alive connection still arrives after server.close(): serve it, and
    // have the client close that connection after it.
    if (!server.listening) res.setHeader("connection", "close")
    capped(req, res)
  })
  capConnections(server, { total: config.maxConnections, perAddress: config.maxConnectionsPerAddress }, trusted)
  return server
}

export class Server extends Effect.Service<Server>()("app/Server", {
  scoped: Effect.gen(function*() {
    const config = yield* ServerConfig
    const trusted = trustedPeers((yield* TrustedProxiesConfig).trustedProxies)
    const { shutdownTimeout } = yield* ShutdownConfig
    const ollama = yield* OllamaHostConfig
    const boundary = yield* ExchangeBoundary
    // No span per health check or scrape: the handler's runtime has the tracer middleware off.
    const control = yield* NodeHttpServer.makeHandler(
      controlRoutes(config.healthPaths).pipe(
        Effect.catchTag("RouteNotFound", () => HttpServerResponse.text("404 page not found", { status: 404 }))
      )
    ).pipe(HttpMiddleware.withTracerDisabledWhenEffect(() => true))

    const main = makeServer(boundary.handler(controlPaths(config.healthPaths), closingOnBody(control)), config, trusted)
    const port = yield* listen(main, config.port, config.host)
    yield* Effect.addFinalizer(() =>
      Effect.logInfo("shutting down: no new connections, finishing the requests in flight").pipe(
        Effect.annotateLogs({ timeout_ms: Duration.toMillis(shutdownTimeout) }),
        Effect.zipRight(close(main, shutdownTimeout))
      )
    )

    let healthPort = port
    if (config.healthPort !== config.port) {
      const health = makeServer(closingOnBody(control), config, trusted)
      healthPort = yield* listen(health, config.healthPort, config.host)
      yield* Effect.addFinalizer(() => close(health, shutdownTimeout))
    }

    yield* Effect.logInfo("listening").pipe(
      Effect.annotateLogs({ host: config.host, port, health_port: healthPort, ollama: ollama.origin })
    )
    return { port, healthPort } as const
  }),
  dependencies: [
    // The relay reads Ollama's health from the one OllamaHealth of the service.
    // The relay reads Ollama's health from the one OllamaHealth of the service, and the models that
    // run on ollama.com from Ollama's list.
    ExchangeBoundary.Default.pipe(
      Layer.provide(Layer.effect(UpstreamHealth, OllamaHealth).pipe(Layer.provide(OllamaHealth.Default))),
      Layer.provide(RemoteModelsLive),
      Layer.provide(RequestPolicyConfig.layer)
    ),
    ApiKeys.Default,
    OllamaHealth.Default,
    Preloader.Default,
    GpuCheck.Default,
    OllamaProcess.Default,
    PrometheusMetrics.Default
  ]
}) {}
