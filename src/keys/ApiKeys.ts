/**
 * ApiKeys: who is calling. Keys come from AUTHORIZATION_APIKEY*; a presented key is hashed and
 * compared with every configured digest in constant time, so neither timing nor the position of
 * a key in the list says anything about it.
 */
import { Effect, Redacted } from "effect"
import { createHash, timingSafeEqual } from "node:crypto"
import type { IncomingHttpHeaders } from "node:http"
import { AppConfig } from "../Config.js"

export type AuthResult =
  | { readonly ok: true; /** null when no keys are configured (open proxy). */ readonly keyName: string | null }
  | { readonly ok: false; readonly reason: string }

const BEARER = /^bearer[ \t]+(\S+)[ \t]*$/i

const digest = (key: string) => createHash("sha256").update(key, "utf8").digest()

/** The key the request presents: `Authorization: Bearer <key>`, else `x-api-key: <key>`. */
const presentedKey = (headers: IncomingHttpHeaders): { key: string } | { reason: string } => {
  const authorization = headers.authorization
  if (authorization !== undefined) {
    const match = BEARER.exec(authorization)
    return match ? { key: match[1]! } : { reason: "malformed Authorization header, expected Bearer <key>" }
  }
  const apiKey = headers["x-api-key"]
  if (typeof apiKey === "string") {
    const key = apiKey.trim()
    return key === "" ? { reason: "empty x-api-key header" } : { key }
  }
  return { reason: "missing API key" }
}

/**
 * A CORS preflight carries no credentials by design; Ollama's CORS layer answers it. It carries no
 * body either: one that does needs a key, or a keyless client could trickle a body through it.
 */
export const isPreflight = (method: string | undefined, headers: IncomingHttpHeaders) =>
  method === "OPTIONS" && headers.origin !== undefined && headers["access-control-request-method"] !== undefined &&
  (headers["content-length"] ?? "0") === "0" && headers["transfer-encoding"] === undefined

export class ApiKeys extends Effect.Service<ApiKeys>()("app/ApiKeys", {
  effect: Effect.gen(function*() {
    const config = yield* AppConfig
    const names = config.apiKeys.map((k) => k.name)
    const digests = config.apiKeys.map((k) => k.hashed ? Buffer.from(Redacted.value(k.secret), "hex") : digest(Redacted.value(k.secret)))
    const open = digests.length === 0
    if (open) {
      yield* Effect.logWarning("no AUTHORIZATION_APIKEY* is set: the proxy lets every caller in")
    } else {
      yield* Effect.logInfo("API keys loaded").pipe(Effect.annotateLogs({ keys: names.join(",") }))
    }

    const authenticate = (headers: IncomingHttpHeaders): AuthResult => {
      if (open) return { ok: true, keyName: null }
      const presented = presentedKey(headers)
      if ("reason" in presented) return { ok: false, reason: presented.reason }
      const candidate = digest(presented.key)
      let found = -1
      for (let i = 0; i < digests.length; i++) {
        // No early exit: every digest is compared whatever matched before.
        if (timingSafeEqual(candidate, digests[i]!) && found < 0) found = i
      }
      return found < 0 ? { ok: false, reason: "invalid API key" } : { ok: true, keyName: names[found]! }
    }

    return { open, authenticate } as const
  })
}) {}
