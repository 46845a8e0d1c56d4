/**
 * The key file (AUTHORIZATION_KEYS_FILE): YAML (so JSON too), checked against a schema in which an
 * unknown field is an error, since a typo (`model:` for `models:`) must never silently grant or
 * drop a rule. Other tools and tests write this shape:
 *
 *   keys:
 *     - name: alice                        # required: the key's name in records, logs, metrics
 *       key: "sk-alice-..."                # required: the key, or "sha256:<64 hex>" of it
 *       scopes: [inference, read]          # default AUTHORIZATION_DEFAULT_SCOPES; `all` = every scope
 *       models: ["llama3.2", "qwen3:*"]    # default ["*"]: every local model
 *       expires_at: "2027-01-01T00:00:00Z" # RFC 3339
 *       disabled: false
 *       metadata: { team: blue }           # copied into each usage record as key_metadata
 *       limits:                            # default AUTHORIZATION_DEFAULT_LIMITS; {} = none
 *         requests_per_minute: 60          # every field optional (src/limits/Table.ts)
 *         tokens_per_day: 200000
 *       request_policy:                    # over REQUEST_POLICY_* (src/policy/), for keys without manage
 *         keep_alive_min: 1s               # a Go duration or seconds
 *         keep_alive_max: 30m
 *         keep_alive_unbounded: refuse     # keep_alive 0 or negative: rewrite (to min, max) or refuse
 *         num_ctx_max: 8192                # num_ctx up to this; without it num_ctx is dropped
 *         num_predict_max: 2048            # tokens a request may generate
 *       weight: 3                          # its share of Ollama's slots against other waiting keys (src/schedule/); default 1
 */
import { Data, Either, ParseResult, Schema } from "effect"
import { parse as parseYaml } from "yaml"
import { KeyLimitsSchema, LIMIT_NAMES } from "../limits/Table.js"
import { didYouMean, nearMiss } from "../NearMiss.js"
import { parseKeepAliveBound } from "../policy/GoDuration.js"
import type { KeyRequestPolicy } from "../policy/RequestPolicy.js"
import { type ScopeName, SCOPES } from "../Scopes.js"

export class KeyFileError extends Data.TaggedError("KeyFileError")<{
  readonly file: string
  readonly reason: string
}> {
  override get message() {
    return `key file ${this.file}: ${this.reason}`
  }
}

/** A scope, or `all` for every one. */
const SCOPE_NAMES: ReadonlyArray<ScopeName> = [...SCOPES, "all"]

const ScopeNameSchema = Schema.String.pipe(
  Schema.filter((s): s is ScopeName => SCOPE_NAMES.includes(s as ScopeName), {
    message: (issue) =>
      `${JSON.stringify(issue.actual)} is not a scope (${SCOPE_NAMES.join(", ")})${didYouMean(String(issue.actual), SCOPE_NAMES)}`
  })
)

/** RFC 3339 with a time zone, as `expires_at` must be: a date alone or a local time is ambiguous. */
const Rfc3339 = Schema.String.pipe(
  Schema.filter((s) => /^\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)$/.test(s) && !Number.isNaN(Date.parse(s)), {
    message: () => "an RFC 3339 date and time with a zone, like 2027-01-01T00:00:00Z"
  })
)

const KeyText = Schema.String.pipe(
  Schema.filter((s) => s.trim() !== "" && !/\s/.test(s), { message: () => "a key without white space" }),
  Schema.filter((s) => !s.toLowerCase().startsWith("sha256:") || /^[0-9a-f]{64}$/i.test(s.slice(7)), {
    message: () => "sha256: followed by 64 hex digits"
  })
)

const MetadataValue = Schema.Union(Schema.String, Schema.Number, Schema.Boolean, Schema.Null)

const KeepAliveBound = Schema.Union(Schema.String, Schema.Number).pipe(
  Schema.filter((v) => Either.isRight(parseKeepAliveBound(String(v))), {
    message: () => "a duration like 1s or 30m, or seconds (negative: for ever)"
  })
)
const PositiveInt = Schema.Int.pipe(Schema.positive({ message: () => "a positive integer" }))

const RequestPolicySchema = Schema.Struct({
  keep_alive_min: Schema.optional(KeepAliveBound),
  keep_alive_max: Schema.optional(KeepAliveBound),
  keep_alive_unbounded: Schema.optional(Schema.Literal("rewrite", "refuse")),
  num_ctx_max: Schema.optional(PositiveInt),
  num_predict_max: Schema.optional(PositiveInt)
})

/** A key's `request_policy` as the policy reads it; what it leaves out, the operator's settings decide. */
export const requestPolicyOf = (p: typeof RequestPolicySchema.Type): KeyRequestPolicy => {
  const bound = (v: string | number | undefined) => (v === undefined ? undefined : Either.getOrThrow(parseKeepAliveBound(String(v))))
  const out: { -readonly [K in keyof KeyRequestPolicy]: KeyRequestPolicy[K] } = {}
  if (p.keep_alive_min !== undefined) out.keepAliveMin = bound(p.keep_alive_min)!
  if (p.keep_alive_max !== undefined) out.keepAliveMax = bound(p.keep_alive_max)!
  if (p.keep_alive_unbounded !== undefined) out.keepAliveUnbounded = p.keep_alive_unbounded
  if (p.num_ctx_max !== undefined) out.numCtxMax = p.num_ctx_max
  if (p.num_predict_max !== undefined) out.numPredictMax = p.num_predict_max
  return out
}

export const KeyEntry = Schema.Struct({
  name: Schema.Trim.pipe(Schema.nonEmptyString({ message: () => "a non-empty name" })),
  key: KeyText,
  scopes: Schema.optional(Schema.Array(ScopeNameSchema)),
  models: Schema.optional(Schema.Array(Schema.String.pipe(Schema.nonEmptyString({ message: () => "a model name, not empty" })))),
  expires_at: Schema.optional(Rfc3339),
  disabled: Schema.optional(Schema.Boolean),
  metadata: Schema.optional(Schema.Record({ key: Schema.String, value: MetadataValue })),
  limits: Schema.optional(KeyLimitsSchema),
  request_policy: Schema.optional(RequestPolicySchema),
  weight: Schema.optional(
    Schema.Number.pipe(Schema.filter((n) => Number.isFinite(n) && n > 0 && n <= 1000, { message: () => "a number above 0, at most 1000" }))
  )
})
export type KeyEntry = typeof KeyEntry.Type

export const KeyFileSchema = Schema.Struct({ keys: Schema.Array(KeyEntry) })

const decode = Schema.decodeUnknownEither(KeyFileSchema, { onExcessProperty: "error", errors: "all" })

const pathText = (path: ReadonlyArray<PropertyKey>) =>
  path.map((p, i) => (typeof p === "number" ? `[${p}]` : i === 0 ? String(p) : `.${String(p)}`)).join("")

/** A path as the shape it points into: `keys[].limits.*` for keys[2].limits.tokens_per_day. */
const shapeOf = (path: ReadonlyArray<PropertyKey>) =>
  path.reduce<string>((shape, p) =>
    typeof p === "number"
      ? `${shape}[]`
      : shape === "keys[].metadata" || shape === "keys[].limits"
      ? `${shape}.*`
      : shape === ""
      ? String(p)
      : `${shape}.${String(p)}`, "")

/** The fields a map of each shape may have, for "did you mean". */
const FIELDS: Readonly<Record<string, ReadonlyArray<string>>> = {
  "": Object.keys(KeyFileSchema.fields),
  "keys[]": Object.keys(KeyEntry.fields),
  "keys[].limits": LIMIT_NAMES,
  "keys[].request_policy": Object.keys(RequestPolicySchema.fields)
}

/** What belongs at each place, in the words of the documented example, for a value of the wrong type. */
const EXPECTED: Readonly<Record<string, string>> = {
  "": "a map with `keys:` and a list of keys",
  "keys": "a list of keys, each `- name: ...` with its `key: ...`",
  "keys[]": "a key like { name: alice, key: \"sk-...\" }",
  "keys[].name": "a name like alice",
  "keys[].key": "the key as text (quote one that YAML reads otherwise: \"12345\")",
  "keys[].scopes": "a list like [inference, read]",
  "keys[].scopes[]": `a scope (${SCOPE_NAMES.join(", ")})`,
  "keys[].models": "a list like [\"llama3.2\", \"qwen3:*\"]",
  "keys[].models[]": "a model name like \"llama3.2\"",
  "keys[].expires_at": "an RFC 3339 date and time with a zone, like 2027-01-01T00:00:00Z",
  "keys[].disabled": "true or false",
  "keys[].metadata": "a map like { team: blue }",
  "keys[].metadata.*": "text, a number, true, false or null",
  "keys[].limits": "a map like { requests_per_minute: 60 }",
  "keys[].limits.*": "a positive integer",
  "keys[].request_policy": "a map like { keep_alive_max: 10m, num_predict_max: 2048 }",
  "keys[].request_policy.keep_alive_min": "a duration like 1s or 30m, or seconds",
  "keys[].request_policy.keep_alive_max": "a duration like 1s or 30m, or seconds",
  "keys[].request_policy.keep_alive_unbounded": "rewrite or refuse",
  "keys[].request_policy.num_ctx_max": "a positive integer",
  "keys[].request_policy.num_predict_max": "a positive integer"
}

/** What YAML made of a value, as a user would name it. */
const kindOf = (value: unknown) =>
  value === null || value === undefined
    ? "empty"
    : Array.isArray(value)
    ? "a list"
    : typeof value === "object"
    ? "a map"
    : typeof value === "boolean"
    ? `${value}`
    : `a ${typeof value}`

const valueAt = (value: unknown, path: ReadonlyArray<PropertyKey>) =>
  path.reduce<unknown>((v, p) => (v !== null && typeof v === "object" ? (v as Record<PropertyKey, unknown>)[p] : undefined), value)

/**
 * The first things wrong with a decoded file, as one line in the file's own terms
 * (`keys[0].scopes: a list like [inference, read], not a string`): never the schema's own
 * rendering of a type, which names TypeScript types the user never wrote.
 */
const describe = (error: ParseResult.ParseError, value: unknown) => {
  // One issue per place: an optional field that is wrong also fails as "not undefined".
  const all = ParseResult.ArrayFormatter.formatErrorSync(error)
  const seen = new Set<string>()
  const issues = all.filter((issue) => {
    const where = pathText(issue.path)
    const deeper = all.some((other) => other.path.length > issue.path.length && issue.path.every((p, i) => other.path[i] === p))
    if (seen.has(where) || deeper) return false
    seen.add(where)
    return true
  })
  const suggested = new Set<string>()
  const lines = issues.map((issue) => {
    const where = pathText(issue.path)
    const parent = issue.path.slice(0, -1)
    const name = String(issue.path.at(-1))
    let message = issue.message
    if (issue._tag === "Unexpected") {
      const near = nearMiss(name, FIELDS[shapeOf(parent)] ?? [])
      if (near !== undefined) suggested.add(pathText([...parent, near]))
      message = `unknown field${near === undefined ? "" : `; did you mean ${JSON.stringify(near)}?`}`
    } else if (issue._tag === "Type") {
      const expected = EXPECTED[shapeOf(issue.path)]
      if (expected !== undefined) message = `${expected}, not ${kindOf(valueAt(value, issue.path))}`
    }
    return { where, tag: issue._tag, text: where === "" ? message : `${where}: ${message}` }
  })
  // `scope:` for `scopes:` is one mistake, not an unknown field and a missing one.
  const shown = lines.filter((line) => !(line.tag === "Missing" && suggested.has(line.where)))
  return shown.slice(0, 3).map((line) => line.text).join("; ") + (shown.length > 3 ? `; and ${shown.length - 3} more` : "")
}

/** The entries of a key file's text; what is wrong with it otherwise. */
export const parseKeyFile = (text: string): Either.Either<ReadonlyArray<KeyEntry>, string> => {
  let value: unknown
  try {
    value = parseYaml(text, { uniqueKeys: true, prettyErrors: false })
  } catch (error) {
    const line = (error as { linePos?: ReadonlyArray<{ line: number }> }).linePos?.[0]?.line
    const message = (error instanceof Error ? error.message : String(error)).split("\n")[0]
    return Either.left(`not valid YAML${line === undefined ? "" : ` at line ${line}`}: ${message}`)
  }
  if (value === null || value === undefined) return Either.left("the file is empty: expected `keys:` with a list of keys")
  return Either.mapBoth(decode(value), { onLeft: (error) => describe(error, value), onRight: (file) => file.keys })
}
