/**
 * The listeners' own slice of the environment: where they listen, where the health check is
 * answered, how long a request's head may take, how many connections they hold.
 */
import { Context, Duration, Effect, Either, Layer, Option } from "effect"
import {
  all,
  firstOf,
  optional,
  type Parse,
  parsePort,
  parsePositiveDuration,
  parsePositiveInt,
  quoted,
  readSlice,
  text,
  withDefault
} from "../config/Read.js"

/**
 * HEALTH_CHECK_PATH, the path RunPod's load balancer polls instead of `/ping` when set (its
 * load-balancing overview, "Health checks": https://docs.runpod.io/serverless/load-balancing/overview).
 * Ollama's own API paths and `/metrics` cannot be taken over.
 */
export const parseHealthPath: Parse<`/${string}`> = (raw) => {
  const v = raw.trim()
  if (!v.startsWith("/") || /[\s?#%]/.test(v)) return Either.left(`${quoted(raw)} is not a path (like /health)`)
  const path = (v.replace(/\/+$/, "") || "/") as `/${string}`
  if (path === "/metrics" || /^\/(api|v1)(\/|$)/.test(path)) {
    return Either.left(`${quoted(raw)} is taken: /metrics is the proxy's, /api/... and /v1/... are Ollama's`)
  }
  return Either.right(path)
}

export interface ServerConfigShape {
  readonly port: number
  readonly healthPort: number
  /** Where the health check is answered: `/ping`, and HEALTH_CHECK_PATH when it names another path. */
  readonly healthPaths: ReadonlyArray<`/${string}`>
  readonly host: string
  /** How long a request's head may take to arrive, from its first byte (or the connection's opening). */
  readonly requestHeadersTimeout: Duration.Duration
  /** Open connections per listener at most; past it a new one is refused at once. */
  readonly maxConnections: number
  /** The same, per client address (per /64 for IPv6). */
  readonly maxConnectionsPerAddress: number
}

const server = all({
  port: firstOf(["PORT", "AUTHORIZATION_PORT"], parsePort),
  healthPort: optional("PORT_HEALTH", parsePort),
  healthPath: optional("HEALTH_CHECK_PATH", parseHealthPath),
  host: firstOf(["HOST", "AUTHORIZATION_HOST"], text),
  requestHeadersTimeout: withDefault("REQUEST_HEADERS_TIMEOUT", parsePositiveDuration, Duration.seconds(10)),
  maxConnections: withDefault("MAX_CONNECTIONS", parsePositiveInt, 4096),
  maxConnectionsPerAddress: withDefault("MAX_CONNECTIONS_PER_ADDRESS", parsePositiveInt, 512)
})

export class ServerConfig extends Context.Tag("app/ServerConfig")<ServerConfig, ServerConfigShape>() {
  static readonly variables = server.variables
  static readonly layer = Layer.effect(
    ServerConfig,
    readSlice(server).pipe(Effect.map((raw): ServerConfigShape => {
      const port = Option.getOrElse(raw.port, () => 80)
      return {
        port,
        healthPort: Option.getOrElse(raw.healthPort, () => port),
        healthPaths: Option.match(raw.healthPath, {
          onNone: () => ["/ping"],
          onSome: (path) => path === "/ping" ? ["/ping"] : ["/ping", path]
        }),
        host: Option.getOrElse(raw.host, () => "0.0.0.0"),
        requestHeadersTimeout: raw.requestHeadersTimeout,
        maxConnections: raw.maxConnections,
        maxConnectionsPerAddress: raw.maxConnectionsPerAddress
      }
    }))
  )
}
