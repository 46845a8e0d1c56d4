/**
 * Reading the environment: the value parsers and the readers every part's slice of the
 * configuration is made of (src/Config.ts composes the slices). A bad value fails start-up with an
 * AppConfigError naming the variable, as one line.
 */
import { Context, Data, Duration, Effect, Either, Layer, Option } from "effect"

export class AppConfigError extends Data.TaggedError("AppConfigError")<{
  readonly variable: string
  readonly reason: string
}> {
  override get message() {
    return `invalid configuration: ${this.variable}: ${this.reason}`
  }
}

/** The raw environment the config is read from; tests supply their own. */
export class Environment extends Context.Tag("app/Environment")<
  Environment,
  Readonly<Record<string, string | undefined>>
>() {
  static readonly process = Layer.sync(Environment, () => ({ ...process.env }))
  static readonly layer = (env: Record<string, string | undefined>) => Layer.succeed(Environment, env)
}

// ---------------------------------------------------------------------------------------------
// Value parsers: each returns the value or the reason it is wrong.

export type Parse<A> = (raw: string) => Either.Either<A, string>

export const quoted = (raw: string) => JSON.stringify(raw.length > 60 ? `${raw.slice(0, 60)}...` : raw)

export const parsePort: Parse<number> = (raw) => {
  const n = /^\d+$/.test(raw.trim()) ? Number(raw.trim()) : NaN
  return Number.isInteger(n) && n >= 0 && n <= 65535
    ? Either.right(n)
    : Either.left(`${quoted(raw)} is not a port number (0-65535)`)
}

export const parseBoolean: Parse<boolean> = (raw) => {
  const v = raw.trim().toLowerCase()
  if (["true", "1", "yes", "on"].includes(v)) return Either.right(true)
  if (["false", "0", "no", "off"].includes(v)) return Either.right(false)
  return Either.left(`${quoted(raw)} is not a boolean (true or false)`)
}

const durationUnits: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }

/** `500ms`, `10s`, `2m`, `1h`, or a plain number of seconds. */
export const parseDuration: Parse<Duration.Duration> = (raw) => {
  const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/i.exec(raw)
  if (!match) return Either.left(`${quoted(raw)} is not a duration (like 500ms, 10s, 2m, or seconds)`)
  const unit = (match[2] ?? "s").toLowerCase()
  return Either.right(Duration.millis(Number(match[1]) * durationUnits[unit]!))
}

export const parsePositiveDuration: Parse<Duration.Duration> = (raw) =>
  Either.flatMap(
    parseDuration(raw),
    (d) => Duration.toMillis(d) > 0 ? Either.right(d) : Either.left(`${quoted(raw)} must be longer than 0`)
  )

export const parsePositiveInt: Parse<number> = (raw) => {
  const n = /^\d+$/.test(raw.trim()) ? Number(raw.trim()) : NaN
  return Number.isSafeInteger(n) && n > 0 ? Either.right(n) : Either.left(`${quoted(raw)} is not a positive integer`)
}

export const parseHttpUrl: Parse<URL> = (raw) => {
  try {
    const url = new URL(raw.trim())
    if (url.protocol === "http:" || url.protocol === "https:") return Either.right(url)
  } catch {
    // reported below
  }
  return Either.left(`${quoted(raw)} is not an http(s) URL`)
}

// ---------------------------------------------------------------------------------------------
// Readers: each looks its variables up in the environment, and names them. A slice is made of
// readers, so the list of variables it reads is made from its reads and cannot drift from them
// (the README's table is checked against these lists, test/Readme.test.ts).

type Env = Readonly<Record<string, string | undefined>>

/** Values read from the environment, and the variables looked up for them: a family read by prefix as `PREFIX*`. */
export interface Read<A> {
  readonly variables: ReadonlyArray<string>
  readonly read: (env: Env) => Either.Either<A, AppConfigError>
}

export declare namespace Read {
  /** What a reader reads: `Read.Success<typeof table>`. */
  export type Success<R> = R extends Read<infer A> ? A : never
}

/** An optional variable; empty counts as unset (templates often set empty values). */
export const optional = <A>(name: string, parse: Parse<A>): Read<Option.Option<A>> => ({
  variables: [name],
  read: (env) => {
    const raw = env[name]
    if (raw === undefined || raw.trim() === "") return Either.right(Option.none())
    return Either.match(parse(raw), {
      onLeft: (reason) => Either.left(new AppConfigError({ variable: name, reason })),
      onRight: (a) => Either.right(Option.some(a))
    })
  }
})

export const withDefault = <A>(name: string, parse: Parse<A>, fallback: A): Read<A> => {
  const { read, variables } = optional(name, parse)
  return { variables, read: (env) => Either.map(read(env), Option.getOrElse(() => fallback)) }
}

/** The first of several names that is set (`PORT`, then the older `AUTHORIZATION_PORT`); each is checked. */
export const firstOf = <A>(names: ReadonlyArray<string>, parse: Parse<A>): Read<Option.Option<A>> => {
  const reads = names.map((name) => optional(name, parse))
  return {
    variables: names,
    read: (env) => Either.map(Either.all(reads.map((r) => r.read(env))), Option.firstSomeOf)
  }
}

/** Natural order for suffixes, so PRELOAD_MODEL_2 comes before PRELOAD_MODEL_10. */
const byName = (a: string, b: string) => a.localeCompare(b, "en", { numeric: true })

/**
 * Every variable whose name starts with `prefix` (AUTHORIZATION_APIKEY, AUTHORIZATION_APIKEY_BOB...),
 * in natural order, read together.
 */
export const family = <A>(
  prefix: string,
  read: (variables: ReadonlyArray<readonly [name: string, value: string | undefined]>) => Either.Either<A, AppConfigError>
): Read<A> => ({
  variables: [`${prefix}*`],
  read: (env) => read(Object.keys(env).filter((name) => name.startsWith(prefix)).sort(byName).map((name) => [name, env[name]] as const))
})

type Values<T extends Record<string, Read<any>>> = { readonly [K in keyof T]: T[K] extends Read<infer A> ? A : never }

/** A table of readers read as one: the first error in the table's order, else every value. */
export const all = <T extends Record<string, Read<any>>>(table: T): Read<Values<T>> => ({
  variables: Object.values(table).flatMap((r) => r.variables),
  read: (env) => {
    const values: Record<string, unknown> = {}
    for (const [key, r] of Object.entries(table)) {
      const value = r.read(env)
      if (Either.isLeft(value)) return value
      values[key] = value.right
    }
    return Either.right(values as Values<T>)
  }
})

/** A part's own slice of the environment, from the Environment in context. */
export const readSlice = <A>(slice: Read<A>): Effect.Effect<A, AppConfigError, Environment> =>
  Effect.flatMap(Environment, (env) => slice.read(env))

export const text: Parse<string> = (raw) => Either.right(raw.trim())
