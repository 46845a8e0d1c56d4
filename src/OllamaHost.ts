/**
 * OLLAMA_HOST, read by Ollama's own rules, so the proxy connects where `ollama serve` listens. Its
 * slice is one of its own: the listeners, the relay, the client and the traces all need where
 * Ollama is, and nothing else of how it is run.
 */
import { Context, Effect, Layer, Option } from "effect"
import { all, optional, readSlice, text } from "./config/Read.js"

export interface OllamaHost {
  /** Address `ollama serve` binds ("" = all interfaces). */
  readonly bindHost: string
  /** Address the proxy connects to: a wildcard bind is reached on loopback. */
  readonly connectHost: string
  readonly port: number
  readonly scheme: "http" | "https"
  /** `http://127.0.0.1:11434`, what the upstream client dials. */
  readonly origin: string
  /** The `Host` header Ollama expects from a local client (see its Host check). */
  readonly hostHeader: string
}

const bracket = (host: string) => (host.includes(":") ? `[${host}]` : host)

/** Go's net.SplitHostPort for the shapes OLLAMA_HOST takes; undefined when there is no port. */
const splitHostPort = (hostport: string): { host: string; port: string } | undefined => {
  if (hostport.startsWith("[")) {
    const end = hostport.indexOf("]")
    if (end < 0 || hostport[end + 1] !== ":") return undefined
    return { host: hostport.slice(1, end), port: hostport.slice(end + 2) }
  }
  const colon = hostport.lastIndexOf(":")
  if (colon < 0 || hostport.indexOf(":") !== colon) return undefined
  return { host: hostport.slice(0, colon), port: hostport.slice(colon + 1) }
}

export const parseOllamaHost = (raw: string | undefined): OllamaHost => {
  const s = (raw ?? "").trim()
  let scheme: "http" | "https" = "http"
  let defaultPort = 11434
  let hostport = s
  const sep = s.indexOf("://")
  if (sep >= 0) {
    const given = s.slice(0, sep).toLowerCase()
    hostport = s.slice(sep + 3)
    if (given === "https") {
      scheme = "https"
      defaultPort = 443
    } else if (given === "http") {
      defaultPort = 80
    }
  }
  hostport = hostport.split("/")[0] ?? ""

  let host: string
  let portText: string
  const split = splitHostPort(hostport)
  if (split) {
    host = split.host
    portText = split.port
  } else {
    host = hostport === "" ? "127.0.0.1" : hostport.replace(/^\[|\]$/g, "")
    portText = String(defaultPort)
  }
  const n = /^\d+$/.test(portText) ? Number(portText) : NaN
  const port = Number.isInteger(n) && n >= 0 && n <= 65535 ? n : defaultPort

  const connectHost = host === "" || host === "0.0.0.0" ? "127.0.0.1" : host === "::" ? "::1" : host
  const authority = `${bracket(connectHost)}:${port}`
  return {
    bindHost: host,
    connectHost,
    port,
    scheme,
    origin: `${scheme}://${authority}`,
    hostHeader: authority
  }
}

const ollamaHost = all({ raw: optional("OLLAMA_HOST", text) })

export class OllamaHostConfig extends Context.Tag("app/OllamaHostConfig")<OllamaHostConfig, OllamaHost>() {
  static readonly variables = ollamaHost.variables
  static readonly layer = Layer.effect(
    OllamaHostConfig,
    readSlice(ollamaHost).pipe(Effect.map(({ raw }) => parseOllamaHost(Option.getOrUndefined(raw))))
  )
}
