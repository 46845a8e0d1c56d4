/**
 * ApiKeys: who is calling, and what their key lets them do. Keys come from AUTHORIZATION_APIKEY*
 * (with the scopes of AUTHORIZATION_DEFAULT_SCOPES and every local model) and from the key file
 * (AUTHORIZATION_KEYS_FILE, see KeyFile.ts), side by side. The file is read again when it changes
 * (watched, and polled, since a Kubernetes Secret mount swaps a symlink and a network volume may
 * deliver no file events) and on SIGHUP; a file that does not parse leaves the keys in force.
 *
 * A presented key is hashed (SHA-256) and looked up by its digest. The lookup's timing depends only
 * on the digest of what the caller sent, which tells nothing about any configured key, and the
 * cost does not grow with the number of keys.
 */
import { Effect, Either, Metric, MetricLabel, Option, Redacted, Schedule, Stream } from "effect"
import { createHash } from "node:crypto"
import { watch } from "node:fs"
import { readFile } from "node:fs/promises"
import type { IncomingHttpHeaders } from "node:http"
import { dirname } from "node:path"
import { AppConfigError } from "../config/Read.js"
import { type KeyLimits, sameLimits, someLimits } from "../limits/Table.js"
import type { KeyRequestPolicy } from "../policy/RequestPolicy.js"
import { type Scope, scopesOf } from "../Scopes.js"
import { type KeyEntry, KeyFileError, parseKeyFile, requestPolicyOf } from "./KeyFile.js"
import { type ApiKeyConfig, KeysConfig } from "./KeysConfig.js"
import { ModelRule } from "./Models.js"

export type KeyMetadata = Readonly<Record<string, string | number | boolean | null>>

/** What one key may do. */
export interface KeyPolicy {
  /** The key's name in records, logs and metrics; two keys may share one (a rotation). */
  readonly name: string
  readonly scopes: ReadonlySet<Scope>
  readonly models: ModelRule
  /** Epoch milliseconds; undefined for a key that does not expire. */
  readonly expiresAt: number | undefined
  readonly disabled: boolean
  readonly metadata: KeyMetadata | undefined
  readonly source: "environment" | "file"
  /** What the key may use (src/limits/); undefined = no limits. Counted per name. */
  readonly limits: KeyLimits | undefined
  /** The key's own rules for what its requests may ask of Ollama, over the operator's (src/policy/). */
  readonly requestPolicy?: KeyRequestPolicy | undefined
  /** Its share of Ollama's slots when keys wait for them (src/schedule/); 1 unless the key file says. Per name. */
  readonly weight: number
}

export type AuthResult =
  | { readonly ok: true; /** null when no keys are configured (an open proxy). */ readonly key: KeyPolicy | null }
  | { readonly ok: false; readonly reason: string }

const BEARER = /^bearer[ \t]+(\S+)[ \t]*$/i
const MALFORMED = "malformed Authorization header, expected Bearer <key>"

const digestOf = (key: string) => createHash("sha256").update(key, "utf8").digest("base64")
const digestOfHex = (hex: string) => Buffer.from(hex, "hex").toString("base64")

/**
 * The keys a request presents: the bearer of `Authorization` and `x-api-key`, either or both. On
 * RunPod the platform's own key rides in `Authorization` and the proxy key in `x-api-key`, so
 * neither header alone decides; undefined where a header is absent, empty or not a bearer.
 */
const presentedKeys = (headers: IncomingHttpHeaders) => {
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

/** The keys in force: every digest with its policy. */
interface Keyring {
  readonly byDigest: ReadonlyMap<string, KeyPolicy>
  readonly size: number
}

const fromEnvironment = (keys: ReadonlyArray<ApiKeyConfig>, scopes: ReadonlySet<Scope>, limits: KeyLimits | undefined) =>
  keys.map((k) => ({
    variable: k.variable,
    digest: k.hashed ? digestOfHex(Redacted.value(k.secret)) : digestOf(Redacted.value(k.secret)),
    policy: {
      name: k.name,
      scopes,
      models: ModelRule.all,
      expiresAt: undefined,
      disabled: false,
      metadata: undefined,
      source: "environment",
      limits,
      weight: 1
    } satisfies KeyPolicy
  }))

const fromFile = (entries: ReadonlyArray<KeyEntry>, defaultScopes: ReadonlySet<Scope>, defaultLimits: KeyLimits | undefined) =>
  entries.map((e) => ({
    digest: e.key.toLowerCase().startsWith("sha256:") ? digestOfHex(e.key.slice(7)) : digestOf(e.key),
    policy: {
      name: e.name,
      scopes: e.scopes === undefined ? defaultScopes : scopesOf(e.scopes),
      models: new ModelRule(e.models ?? ["*"]),
      expiresAt: e.expires_at === undefined ? undefined : Date.parse(e.expires_at),
      disabled: e.disabled === true,
      metadata: e.metadata,
      source: "file",
      limits: e.limits === undefined ? defaultLimits : someLimits(e.limits),
      requestPolicy: e.request_policy === undefined ? undefined : requestPolicyOf(e.request_policy),
      weight: e.weight ?? 1
    } satisfies KeyPolicy
  }))

/**
 * Two AUTHORIZATION_APIKEY* variables holding one key (as it is, or one as the other's sha256:):
 * a configuration error naming both, since the key could only ever name one of them.
 */
const sameKeyTwice = (env: ReadonlyArray<{ variable: string; digest: string }>) => {
  const seen = new Map<string, string>()
  for (const { digest, variable } of env) {
    const first = seen.get(digest)
    if (first !== undefined) return Option.some(new AppConfigError({ variable, reason: `the same key as ${first}: give each key once` }))
    seen.set(digest, variable)
  }
  return Option.none()
}

/** The keyring, or why these keys cannot stand together. */
const keyringOf = (
  env: ReadonlyArray<{ digest: string; policy: KeyPolicy }>,
  file: ReadonlyArray<{ digest: string; policy: KeyPolicy }>
): Either.Either<Keyring, string> => {
  const envNames = new Set(env.map((k) => k.policy.name))
  const byDigest = new Map<string, KeyPolicy>()
  const byName = new Map<string, KeyPolicy>()
  for (const { digest, policy } of [...env, ...file]) {
    if (policy.source === "file" && envNames.has(policy.name)) {
      return Either.left(`the key name "${policy.name}" is also an AUTHORIZATION_APIKEY* name: a name belongs to one place`)
    }
    // The counters of limits are the name's: two limits for one set of counters would be a guess.
    const named = byName.get(policy.name)
    if (named !== undefined && !sameLimits(named.limits, policy.limits)) {
      return Either.left(
        `the keys named "${policy.name}" carry different limits: keys that share a name share their limits, give them the same`
      )
    }
    // One queue per name (src/schedule/): it has one weight.
    if (named !== undefined && named.weight !== policy.weight) {
      return Either.left(
        `the keys named "${policy.name}" carry different weights: keys that share a name share one queue, give them the same`
      )
    }
    byName.set(policy.name, policy)
    const other = byDigest.get(digest)
    if (other !== undefined) return Either.left(`the same key is given twice (as "${other.name}" and as "${policy.name}")`)
    byDigest.set(digest, policy)
  }
  return Either.right({ byDigest, size: byDigest.size })
}

/** Keys loaded now (the environment's and the file's). */
export const keysLoaded = Metric.gauge("ollama_proxy.keys.loaded", { description: "API keys in force (environment and key file)" })
/** Labels: outcome = loaded | failed (the file did not parse: the previous keys stay). */
export const keyReloads = Metric.counter("ollama_proxy.keys.reloads", {
  description: "Reads of the key file after start-up, by outcome",
  incremental: true
})
const reloadLabels = {
  loaded: [MetricLabel.make("outcome", "loaded")],
  failed: [MetricLabel.make("outcome", "failed")]
}

export class ApiKeys extends Effect.Service<ApiKeys>()("app/ApiKeys", {
  scoped: Effect.gen(function*() {
    const config = yield* KeysConfig
    const env = fromEnvironment(config.apiKeys, config.defaultScopes, config.defaultLimits)
    const file = Option.getOrUndefined(config.keysFile)
    /** No key anywhere: every caller is let in (a warning says so at start). */
    const open = env.length === 0 && file === undefined

    const load = (text: string): Either.Either<Keyring, string> =>
      Either.flatMap(parseKeyFile(text), (entries) => keyringOf(env, fromFile(entries, config.defaultScopes, config.defaultLimits)))

    const readText = (path: string) =>
      Effect.tryPromise({
        try: () => readFile(path, "utf8"),
        catch: (error) => `cannot read it: ${(error as NodeJS.ErrnoException).code ?? String(error)}`
      })

    let current: Keyring
    /**
     * What the last read of the file gave: its text, or why it could not be read. The same again is
     * no change, good or bad: a broken file is reported once, not at every poll, until it changes.
     */
    let lastRead: Either.Either<string, string> | undefined
    const twice = sameKeyTwice(env)
    if (Option.isSome(twice)) return yield* twice.value
    if (file === undefined) {
      current = { byDigest: new Map(env.map((k) => [k.digest, k.policy])), size: env.length }
    } else {
      const text = yield* readText(file).pipe(Effect.mapError((reason) => new KeyFileError({ file, reason })))
      current = yield* Either.match(load(text), {
        onLeft: (reason) => Effect.fail(new KeyFileError({ file, reason })),
        onRight: Effect.succeed
      })
      lastRead = Either.right(text)
    }
    keysLoaded.unsafeUpdate(current.size, [])

    const names = (ring: Keyring) => [...new Set([...ring.byDigest.values()].map((k) => k.name))].sort().join(",")
    if (open) {
      yield* Effect.logWarning("no AUTHORIZATION_APIKEY* or AUTHORIZATION_KEYS_FILE is set: the proxy lets every caller in")
    } else {
      yield* Effect.logInfo("API keys loaded").pipe(
        Effect.annotateLogs({ keys: current.size, names: names(current), ...(file === undefined ? {} : { file }) })
      )
    }

    /** Reads the file again; keeps the keys in force when it does not parse. `force`: even if unchanged. */
    const reload = (path: string, force: boolean) =>
      Effect.gen(function*() {
        const text = yield* Effect.either(readText(path))
        const same = lastRead !== undefined && Either.isRight(lastRead) === Either.isRight(text) &&
          Either.merge(lastRead) === Either.merge(text)
        if (same && !force) return
        lastRead = text
        const ring = Either.flatMap(text, load)
        if (Either.isLeft(ring)) {
          keyReloads.unsafeUpdate(1, reloadLabels.failed)
          return yield* Effect.logError("key file not reloaded: the keys in force stay").pipe(
            Effect.annotateLogs({ file: path, reason: ring.left, keys: current.size })
          )
        }
        current = ring.right
        keysLoaded.unsafeUpdate(current.size, [])
        keyReloads.unsafeUpdate(1, reloadLabels.loaded)
        yield* Effect.logInfo("key file reloaded").pipe(Effect.annotateLogs({ file: path, keys: current.size, names: names(current) }))
      }).pipe(Effect.withSpan("ApiKeys.reload"))

    if (file !== undefined) {
      // Three ways to notice a change, each cheap: file events on the directory (a Secret mount
      // replaces a symlink there), a poll for volumes that send no events, and SIGHUP.
      const changes = Stream.async<boolean>((emit) => {
        const onSignal = () => void emit.single(true)
        process.on("SIGHUP", onSignal)
        let watcher: ReturnType<typeof watch> | undefined
        try {
          watcher = watch(dirname(file), () => void emit.single(false))
          watcher.on("error", () => watcher?.close())
        } catch {
          // No file events here: the poll still sees every change.
        }
        return Effect.sync(() => {
          process.off("SIGHUP", onSignal)
          watcher?.close()
        })
      })
      const polls = Stream.fromSchedule(Schedule.spaced(config.keysFilePoll)).pipe(Stream.as(false))
      yield* Stream.merge(changes, polls).pipe(
        Stream.runForEach((force) => reload(file, force)),
        Effect.forkScoped
      )
    }

    const find = (key: string | undefined) => (key === undefined ? undefined : current.byDigest.get(digestOf(key)))

    /**
     * Lets the request in when a key it presents is one of ours (the bearer's, when both are),
     * and the key is neither disabled nor expired. A refusal gives one reason for the request as
     * a whole, never which header held what.
     */
    const authenticate = (headers: IncomingHttpHeaders): AuthResult => {
      if (open) return { ok: true, key: null }
      const { apiKey, bearer, reason } = presentedKeys(headers)
      if (bearer === undefined && apiKey === undefined) return { ok: false, reason }
      const key = find(bearer) ?? find(apiKey)
      if (key === undefined) return { ok: false, reason: "invalid API key" }
      if (key.disabled) return { ok: false, reason: "this API key is disabled" }
      if (key.expiresAt !== undefined && key.expiresAt <= Date.now()) {
        return { ok: false, reason: `this API key expired at ${new Date(key.expiresAt).toISOString()}` }
      }
      return { ok: true, key }
    }

    return {
      open,
      authenticate,
      /** The names of the keys in force that have limits, with their limits (one per name). */
      limited: (): ReadonlyMap<string, KeyLimits> =>
        new Map([...current.byDigest.values()].flatMap((k) => (k.limits === undefined ? [] : [[k.name, k.limits] as const])))
    } as const
  })
}) {}
