/**
 * ApiKeys: who is calling. Keys come from AUTHORIZATION_APIKEY*; every key a request presents
 * (`Authorization: Bearer`, `x-api-key`) is hashed and compared with every configured digest in
 * constant time, so neither timing nor the position of a key in the list says anything about it.
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

const MALFORMED = "malformed Authorization header, expected Bearer <key>"

/**
 * The keys a request presents: the bearer of `Authorization` and `x-api-key`, either or both. On
 * RunPod the platform's own key rides in `Authorization` and the proxy key in `x-api-key`, so
 * neither header alone decides; undefined where a header is absent, empty or not a bearer.
 */
interface Presented {
  readonly bearer: string | undefined
  readonly apiKey: string | undefined
  /** Why nothing usable was presented, when that is so. */
  readonly reason: string
}

const presentedKeys = (headers: IncomingHttpHeaders): Presented => {
  const authorization = headers.authorization
  const match = authorization === undefined ? null : BEARER.exec(authorization)
  const header = headers["x-api-key"]
  const apiKey = typeof header === "string" ? header.trim() : undefined
  return {
    bearer: match === null ? undefined : match[1],
    apiKey: apiKey === "" ? undefined : apiKey,
    reason: authorization !== undefined ? MALFORMED : apiKey === "" ? "empty x-api-key header" : "missing API key"
  }
}

/** A CORS preflight carries no credentials by design; Ollama's CORS layer answers it. */
export const isPreflight = (method: string | undefined, headers: IncomingHttpHeaders) =>
  method === "OPTIONS" && headers.origin !== undefined && headers["access-control-request-method"] !== undefined

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

    /** `found` if an earlier key matched, else the index of the configured key this one is, or -1. */
    const match = (key: string, found: number) => {
      const candidate = digest(key)
      for (let i = 0; i < digests.length; i++) {
        // No early exit: every digest is compared whatever matched before.
        if (timingSafeEqual(candidate, digests[i]!) && found < 0) found = i
      }
      return found
    }

    /**
     * Lets the request in when any key it presents is a configured one (the bearer's name wins
     * when both are). A refusal gives one reason for the request as a whole, never which header
     * held what.
     */
    const authenticate = (headers: IncomingHttpHeaders): AuthResult => {
      if (open) return { ok: true, keyName: null }
      const { apiKey, bearer, reason } = presentedKeys(headers)
      if (bearer === undefined && apiKey === undefined) return { ok: false, reason }
      let found = bearer === undefined ? -1 : match(bearer, -1)
      if (apiKey !== undefined) found = match(apiKey, found)
      return found < 0 ? { ok: false, reason: "invalid API key" } : { ok: true, keyName: names[found]! }
    }

    return { open, authenticate } as const
  })
}) {}
