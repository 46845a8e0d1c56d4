/**
 * The keys' slice of the environment: the keys given as AUTHORIZATION_APIKEY*, the key file, and
 * the scopes and limits of keys that name none. Read and checked at start, before Ollama is: a
 * bad key is the one line start-up ends with.
 */
import { Context, Duration, Either, Layer, type Option, Redacted } from "effect"
import {
  all,
  AppConfigError,
  family,
  optional,
  type Parse,
  parsePositiveDuration,
  quoted,
  readSlice,
  text,
  withDefault
} from "../config/Read.js"
import { type KeyLimits, parseLimits } from "../limits/Table.js"
import { didYouMean } from "../NearMiss.js"
import { type Scope, type ScopeName, SCOPES, scopesOf } from "../Scopes.js"

export interface ApiKeyConfig {
  /** `default` for AUTHORIZATION_APIKEY, else the lower-cased suffix (`_BOB` -> `bob`). */
  readonly name: string
  /** The variable it came from, for errors. */
  readonly variable: string
  /** The key, or its SHA-256 when given as `sha256:<hex>`. */
  readonly secret: Redacted.Redacted<string>
  readonly hashed: boolean
}

/** A comma-separated list of scopes; `all` is every scope. */
const parseScopes: Parse<ReadonlySet<Scope>> = (raw) => {
  const names = raw.split(",").map((s) => s.trim().toLowerCase()).filter((s) => s !== "")
  const wrong = names.filter((n) => n !== "all" && !SCOPES.includes(n as Scope))
  if (wrong.length > 0) {
    return Either.left(`${quoted(wrong[0]!)} is not a scope (${SCOPES.join(", ")}, or all)${didYouMean(wrong[0]!, [...SCOPES, "all"])}`)
  }
  if (names.length === 0) return Either.left(`no scope given (${SCOPES.join(", ")}, or all)`)
  return Either.right(scopesOf(names as ReadonlyArray<ScopeName>))
}

const KEY_PREFIX = "AUTHORIZATION_APIKEY"

const apiKeys = family(KEY_PREFIX, (variables) => {
  const keys: Array<ApiKeyConfig> = []
  for (const [variable, raw] of variables) {
    const value = (raw ?? "").trim()
    const suffix = variable.slice(KEY_PREFIX.length).replace(/^_+/, "").toLowerCase()
    const name = suffix === "" ? "default" : suffix
    if (value === "") return Either.left(new AppConfigError({ variable, reason: "the API key is empty" }))
    if (/\s/.test(value)) return Either.left(new AppConfigError({ variable, reason: "the API key contains white space" }))
    if (keys.some((k) => k.name === name)) {
      return Either.left(new AppConfigError({ variable, reason: `a second key named "${name}"` }))
    }
    const hashed = value.toLowerCase().startsWith("sha256:")
    if (hashed && !/^[0-9a-f]{64}$/i.test(value.slice(7))) {
      return Either.left(new AppConfigError({ variable, reason: "sha256: must be followed by 64 hex digits" }))
    }
    keys.push({ name, variable, hashed, secret: Redacted.make(hashed ? value.slice(7).toLowerCase() : value) })
  }
  return Either.right<ReadonlyArray<ApiKeyConfig>>(keys)
})

export interface KeysConfigShape {
  readonly apiKeys: ReadonlyArray<ApiKeyConfig>
  /** The scopes of AUTHORIZATION_APIKEY* keys, and of key file entries that name none. */
  readonly defaultScopes: ReadonlySet<Scope>
  /** AUTHORIZATION_DEFAULT_LIMITS: the limits of keys that name none; undefined = no limits. */
  readonly defaultLimits: KeyLimits | undefined
  /** AUTHORIZATION_KEYS_FILE: keys with their rules, read again when it changes. */
  readonly keysFile: Option.Option<string>
  /** How often the key file is read to see whether it changed. */
  readonly keysFilePoll: Duration.Duration
}

const keys = all({
  apiKeys,
  defaultScopes: withDefault("AUTHORIZATION_DEFAULT_SCOPES", parseScopes, new Set<Scope>(["inference", "read"]) as ReadonlySet<Scope>),
  defaultLimits: withDefault<KeyLimits | undefined>("AUTHORIZATION_DEFAULT_LIMITS", parseLimits, undefined),
  keysFile: optional("AUTHORIZATION_KEYS_FILE", text),
  keysFilePoll: withDefault("AUTHORIZATION_KEYS_FILE_POLL", parsePositiveDuration, Duration.seconds(2))
})

export class KeysConfig extends Context.Tag("app/KeysConfig")<KeysConfig, KeysConfigShape>() {
  static readonly variables = keys.variables
  static readonly layer = Layer.effect(KeysConfig, readSlice(keys))
}
