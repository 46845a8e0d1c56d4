// @ts-check
/**
 * Ollama's address rules, ported from Go: how `OLLAMA_HOST` is read (envconfig.Host), which
 * `Host` headers a loopback-bound server accepts (allowedHostsMiddleware), and which `Origin`s
 * its CORS layer lets through (gin-contrib/cors with envconfig.AllowedOrigins).
 */
import net from "node:net"
import os from "node:os"

/**
 * Go's net.SplitHostPort.
 * @param {string} hostport
 * @returns {{ host: string, port: string } | { error: string }}
 */
export function splitHostPort(hostport) {
  const i = hostport.lastIndexOf(":")
  if (i < 0) return { error: "missing port in address" }
  let host
  let j = 0
  let k = 0
  if (hostport.startsWith("[")) {
    const end = hostport.indexOf("]")
    if (end < 0) return { error: "missing ']' in address" }
    if (end + 1 === hostport.length) return { error: "missing port in address" }
    if (end + 1 !== i) return { error: hostport[end + 1] === ":" ? "too many colons in address" : "missing port in address" }
    host = hostport.slice(1, end)
    j = 1
    k = end + 1
  } else {
    host = hostport.slice(0, i)
    if (host.includes(":")) return { error: "too many colons in address" }
  }
  if (hostport.slice(j).includes("[")) return { error: "unexpected '[' in address" }
  if (hostport.slice(k).includes("]")) return { error: "unexpected ']' in address" }
  return { host, port: hostport.slice(i + 1) }
}

/** Go's net.JoinHostPort. */
export function joinHostPort(/** @type {string} */ host, /** @type {string | number} */ port) {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`
}

/**
 * Go's net.ParseIP(s).String(): the canonical text of an IP literal, or undefined.
 * (IPv4-mapped IPv6 addresses print as IPv4, as Go does.)
 */
export function canonicalIP(/** @type {string} */ s) {
  if (net.isIPv4(s)) return s
  if (!net.isIPv6(s) || s.includes("%")) return undefined
  const text = new URL(`http://[${s}]`).hostname.slice(1, -1)
  const mapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(text)
  if (mapped) {
    const hi = parseInt(mapped[1] ?? "0", 16)
    const lo = parseInt(mapped[2] ?? "0", 16)
    return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`
  }
  return text
}

/**
 * @typedef {object} OllamaHost
 * @property {string} scheme `http` or `https`
 * @property {string} host host part, "" for all interfaces
 * @property {string} port port as text
 * @property {string} address `host:port` as Go's net.Listen gets it (`:1234`, `[::1]:11434`)
 * @property {string} url `scheme://address`
 * @property {string | undefined} invalidPort the rejected port text, when the default was used instead
 */

/**
 * envconfig.Host(): where `ollama serve` listens for a given OLLAMA_HOST value.
 * @param {string | undefined} value
 * @returns {OllamaHost}
 */
export function parseOllamaHost(value) {
  const s = (value ?? "").trim().replace(/^["']+|["']+$/g, "").trim()
  let defaultPort = "11434"
  let scheme = "http"
  let hostport = s
  const sep = s.indexOf("://")
  if (sep < 0) {
    if (s === "ollama.com") {
      scheme = "https"
      hostport = "ollama.com:443"
    }
  } else {
    scheme = s.slice(0, sep)
    hostport = s.slice(sep + 3)
    if (scheme === "http") defaultPort = "80"
    else if (scheme === "https") defaultPort = "443"
  }
  const slash = hostport.indexOf("/")
  if (slash >= 0) hostport = hostport.slice(0, slash)

  let host
  let port
  const split = splitHostPort(hostport)
  if ("error" in split) {
    host = "127.0.0.1"
    port = defaultPort
    const ip = canonicalIP(hostport.replace(/^\[+|\]+$/g, ""))
    if (ip !== undefined) host = ip
    else if (hostport !== "") host = hostport
  } else {
    ;({ host, port } = split)
  }

  let invalidPort
  const n = /^[+-]?\d+$/.test(port) ? Number(port) : NaN
  if (!Number.isInteger(n) || n < 0 || n > 65535 || Math.abs(n) > 2 ** 31 - 1) {
    invalidPort = port
    port = defaultPort
  }
  const address = joinHostPort(host, port)
  return { scheme, host, port: String(Number(port)), address, url: `${scheme}://${address}`, invalidPort }
}

/**
 * @typedef {object} IPClass
 * @property {boolean} loopback
 * @property {boolean} private
 * @property {boolean} unspecified
 */

/**
 * What Go's netip.Addr methods say of an IP literal (no brackets, zone allowed), or undefined
 * when netip.ParseAddr would refuse it.
 * @param {string} text
 * @returns {IPClass | undefined}
 */
export function classifyIP(text) {
  const bare = text.split("%")[0] ?? ""
  if (text.includes("%") && !net.isIPv6(bare)) return undefined
  const ip = canonicalIP(bare)
  if (ip === undefined) return undefined
  if (net.isIPv4(ip)) {
    const [a = 0, b = 0] = ip.split(".").map(Number)
    return {
      loopback: a === 127,
      private: a === 10 || (a === 172 && b >= 16 && b < 32) || (a === 192 && b === 168),
      unspecified: ip === "0.0.0.0"
    }
  }
  const first = parseInt(ip.split(":")[0] || "0", 16)
  return { loopback: ip === "::1", private: (first & 0xfe00) === 0xfc00, unspecified: ip === "::" }
}

/** Is this (bound) address a loopback one? `localhost` counts. */
export function isLoopbackAddress(/** @type {string} */ address) {
  if (address.toLowerCase() === "localhost") return true
  return classifyIP(address)?.loopback ?? false
}

function localInterfaceIPs() {
  /** @type {Set<string>} */
  const ips = new Set()
  for (const list of Object.values(os.networkInterfaces())) {
    for (const a of list ?? []) ips.add(canonicalIP(a.address.split("%")[0] ?? "") ?? a.address)
  }
  return ips
}

/**
 * allowedHostsMiddleware for a server bound to a loopback address: what a request with this
 * `Host` header gets. `next` = served; `no-content` = an OPTIONS answered 204 right there;
 * `forbidden` = 403 with an empty body.
 * @param {string | undefined} hostHeader
 * @param {string} method
 * @returns {"next" | "no-content" | "forbidden"}
 */
export function checkHostHeader(hostHeader, method) {
  const raw = hostHeader ?? ""
  const split = splitHostPort(raw)
  const host = "error" in split ? raw : split.host
  const ip = classifyIP(host)
  if (ip) {
    if (ip.loopback || ip.private || ip.unspecified) return "next"
    const canonical = canonicalIP(host.split("%")[0] ?? "")
    if (canonical !== undefined && localInterfaceIPs().has(canonical)) return "next"
  }
  if (allowedHostName(host)) return method === "OPTIONS" ? "no-content" : "next"
  return "forbidden"
}

/** server.allowedHost: localhost, the machine's hostname, *.localhost, *.local, *.internal. */
export function allowedHostName(/** @type {string} */ name) {
  const host = name.toLowerCase()
  if (host === "" || host === "localhost") return true
  if (host === os.hostname().toLowerCase()) return true
  return [".localhost", ".local", ".internal"].some((tld) => host.endsWith(tld))
}

/** envconfig.AllowedOrigins(): OLLAMA_ORIGINS entries first, then the built-in local ones. */
export function allowedOrigins(/** @type {readonly string[]} */ extra = []) {
  const origins = [...extra]
  for (const origin of ["localhost", "127.0.0.1", "0.0.0.0"]) {
    origins.push(`http://${origin}`, `https://${origin}`, `http://${joinHostPort(origin, "*")}`, `https://${joinHostPort(origin, "*")}`)
  }
  origins.push("app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*")
  return origins
}

/**
 * gin-contrib/cors origin check with AllowWildcard: one `*` matches any run of characters.
 * `*` alone allows every origin.
 */
export function originAllowed(/** @type {string} */ origin, /** @type {readonly string[]} */ patterns) {
  for (const pattern of patterns) {
    if (pattern === "*" || pattern === origin) return true
    const star = pattern.indexOf("*")
    if (star < 0) continue
    const prefix = pattern.slice(0, star)
    const suffix = pattern.slice(star + 1)
    if (origin.length >= prefix.length + suffix.length && origin.startsWith(prefix) && origin.endsWith(suffix)) return true
  }
  return false
}

/** The headers gin-contrib/cors is configured with in Ollama (routes.go). */
export const CORS_ALLOW_HEADERS = [
  "Authorization",
  "Content-Type",
  "User-Agent",
  "Accept",
  "X-Requested-With",
  "OpenAI-Beta",
  "x-stainless-arch",
  "x-stainless-async",
  "x-stainless-custom-poll-interval",
  "x-stainless-helper-method",
  "x-stainless-lang",
  "x-stainless-os",
  "x-stainless-package-version",
  "x-stainless-poll-helper",
  "x-stainless-retry-count",
  "x-stainless-runtime",
  "x-stainless-runtime-version",
  "x-stainless-timeout"
]
