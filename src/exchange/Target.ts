/**
 * The request target, normalised once at the boundary: the path Ollama will route the request by,
 * which the classification, the metering, the logs and the policy all see, and the target the
 * proxy sends on, which spells that same path. A spelling that could route differently at Ollama
 * than here is refused with 400, so no spelling of an inference path reaches Ollama unmetered.
 *
 * How Ollama routes (server/routes.go in ollama/ollama: gin with its defaults, behind Go's
 * net/http): gin matches the path Go has already percent-decoded (`URL.Path`; gin's UseRawPath is
 * off), so `/api/%63hat` and `/api%2Fchat` are `/api/chat`; an absolute-form target
 * (`POST http://host/api/chat`) is routed by its path; Go refuses a malformed escape with 400;
 * neither Go nor gin removes dot segments or repeated slashes (no route matches them: 404), and a
 * trailing slash gets a redirect to the path without it. Here:
 * - absolute-form (http or https) becomes origin-form: its path and query;
 * - percent-escapes are decoded as Go decodes them, and the path is sent on re-encoded from that
 *   decoding, so what Ollama routes is exactly what was classified;
 * - dot segments, empty segments, control characters, a fragment, a malformed escape, and any
 *   other form of target (`*`, a bare authority) are refused: Ollama would answer none of them with
 *   a model, and refusing them leaves nothing to interpret differently;
 * - the query is sent on as it came (routing ignores it).
 */

export type Target =
  | {
    readonly ok: true
    /** The decoded path, as Ollama routes it. */
    readonly path: string
    /** What to send Ollama: the path re-encoded, and the query as it came. */
    readonly forward: string
  }
  | { readonly ok: false; readonly reason: string }

const ABSOLUTE = /^https?:\/\/[^/?#]*/i

/** Bytes a path may carry as they are (RFC 3986 pchar, and "/"); the rest are percent-encoded. */
const PLAIN = new Uint8Array(128)
for (const c of "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@/") PLAIN[c.charCodeAt(0)] = 1

const hex = (code: number) =>
  code >= 48 && code <= 57 ? code - 48 : code >= 65 && code <= 70 ? code - 55 : code >= 97 && code <= 102 ? code - 87 : -1

const refuse = (reason: string): Target => ({ ok: false, reason })

/**
 * The plain common case, `/api/chat`: segments of plain characters, none empty or made of dots,
 * no escapes: nothing to decode or re-encode.
 */
const SIMPLE = /^(?:\/[A-Za-z0-9\-_~:@]+(?:\.[A-Za-z0-9\-_~:@]+)*)+\/?$|^\/$/

export const targetOf = (url: string | undefined): Target => {
  let target = url ?? "/"
  if (target.charCodeAt(0) !== 47) {
    const absolute = ABSOLUTE.exec(target)
    if (absolute === null) return refuse("the request target must be a path (or an absolute http URL)")
    target = target.slice(absolute[0].length)
    if (target === "" || target.charCodeAt(0) === 63) target = `/${target}`
    if (target.charCodeAt(0) !== 47) return refuse("the request target must be a path (or an absolute http URL)")
  }
  const q = target.indexOf("?")
  const rawPath = q < 0 ? target : target.slice(0, q)
  const query = q < 0 ? "" : target.slice(q)
  if (query.includes("#")) return refuse("a request target cannot carry a fragment (#)")
  return SIMPLE.test(rawPath) ? { ok: true, path: rawPath, forward: target } : checked(rawPath, query)
}

/** Decodes, checks and re-encodes a path that is not of the plain common kind. */
const checked = (rawPath: string, query: string): Target => {
  const bytes: Array<number> = []
  for (let i = 0; i < rawPath.length; i++) {
    const c = rawPath.charCodeAt(i)
    if (c === 37) {
      const high = hex(rawPath.charCodeAt(i + 1))
      const low = hex(rawPath.charCodeAt(i + 2))
      if (high < 0 || low < 0) return refuse("malformed percent-encoding in the path")
      bytes.push(high * 16 + low)
      i += 2
    } else if (c === 35) {
      return refuse("a request target cannot carry a fragment (#)")
    } else if (c > 127) {
      // Node hands the target over as latin1: each char is one byte of the line.
      bytes.push(c & 0xff)
    } else {
      bytes.push(c)
    }
  }
  let forward = ""
  for (const b of bytes) {
    if (b < 32 || b === 127) return refuse("control characters in the path")
    forward += b < 128 && PLAIN[b] === 1 ? String.fromCharCode(b) : `%${b.toString(16).toUpperCase().padStart(2, "0")}`
  }
  const path = Buffer.from(bytes).toString("utf8")
  const segments = path.split("/")
  for (let i = 1; i < segments.length; i++) {
    const segment = segments[i]
    if (segment === "." || segment === "..") return refuse("dot segments (. or ..) in the path")
    if (segment === "" && i < segments.length - 1) return refuse("an empty segment (//) in the path")
  }
  return { ok: true, path, forward: forward + query }
}

/** The path of a request URL as it came, without its query: for a target that was refused. */
export const pathOf = (url: string | undefined) => {
  const u = url ?? "/"
  const q = u.indexOf("?")
  return q < 0 ? u : u.slice(0, q)
}
