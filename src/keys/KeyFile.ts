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
 *         requests_per_minute: 60          # every field optional (src/limits/Limits.ts)
 *         tokens_per_day: 200000
 *       weight: 3                          # its share of Ollama's slots against other waiting keys (src/schedule/); default 1
 */
import { Data, Either, ParseResult, Schema } from "effect"
import { parse as parseYaml } from "yaml"
import { KeyLimitsSchema } from "../Limits.js"
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
    message: (issue) => `${JSON.stringify(issue.actual)} is not a scope (${SCOPE_NAMES.join(", ")})`
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

export const KeyEntry = Schema.Struct({
  name: Schema.Trim.pipe(Schema.nonEmptyString({ message: () => "a non-empty name" })),
  key: KeyText,
  scopes: Schema.optional(Schema.Array(ScopeNameSchema)),
  models: Schema.optional(Schema.Array(Schema.String.pipe(Schema.nonEmptyString()))),
  expires_at: Schema.optional(Rfc3339),
  disabled: Schema.optional(Schema.Boolean),
  metadata: Schema.optional(Schema.Record({ key: Schema.String, value: MetadataValue })),
  limits: Schema.optional(KeyLimitsSchema),
  weight: Schema.optional(
    Schema.Number.pipe(Schema.filter((n) => Number.isFinite(n) && n > 0 && n <= 1000, { message: () => "a number above 0, at most 1000" }))
  )
})
export type KeyEntry = typeof KeyEntry.Type

export const KeyFileSchema = Schema.Struct({ keys: Schema.Array(KeyEntry) })

const decode = Schema.decodeUnknownEither(KeyFileSchema, { onExcessProperty: "error", errors: "all" })

const pathText = (path: ReadonlyArray<PropertyKey>) =>
  path.map((p, i) => (typeof p === "number" ? `[${p}]` : i === 0 ? String(p) : `.${String(p)}`)).join("")

/** The first things wrong with a decoded file, as one line: `keys[2].scopes[0]: ...`. */
const describe = (error: ParseResult.ParseError) => {
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
  const shown = issues.slice(0, 3).map((issue) => {
    const where = pathText(issue.path)
    const message = issue._tag === "Unexpected" ? "unknown field" : issue.message
    return where === "" ? message : `${where}: ${message}`
  })
  return shown.join("; ") + (issues.length > 3 ? `; and ${issues.length - 3} more` : "")
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
  return Either.mapBoth(decode(value), { onLeft: describe, onRight: (file) => file.keys })
}
