/**
 * Reading the environment: the value parsers and the Effect Config helpers every part's slice of
 * the configuration uses (src/Config.ts composes the slices). A bad value fails start-up with an
 * AppConfigError naming the variable, as one line.
 */
import { Config, ConfigError, ConfigProvider, Context, Data, Duration, Effect, Either, Layer, Option } from "effect"

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
// Reading variables through Effect Config, so the provider decides where values come from.

const invalid = (variable: string, reason: string) => ConfigError.InvalidData([variable], reason)

/** An optional variable; empty counts as unset (templates often set empty values). */
export const optional = <A>(name: string, parse: Parse<A>): Config.Config<Option.Option<A>> =>
  Config.option(Config.string(name)).pipe(
    Config.mapOrFail((raw) => {
      if (Option.isNone(raw) || raw.value.trim() === "") return Either.right(Option.none())
      return Either.match(parse(raw.value), {
        onLeft: (reason) => Either.left(invalid(name, reason)),
        onRight: (a) => Either.right(Option.some(a))
      })
    })
  )

export const withDefault = <A>(name: string, parse: Parse<A>, fallback: A) =>
  optional(name, parse).pipe(Config.map(Option.getOrElse(() => fallback)))

/** The first of several names that is set (`PORT`, then the older `AUTHORIZATION_PORT`). */
export const firstOf = <A>(names: ReadonlyArray<string>, parse: Parse<A>) =>
  Config.all(names.map((name) => optional(name, parse))).pipe(Config.map((values) => Option.firstSomeOf(values)))

export const text: Parse<string> = (raw) => Either.right(raw.trim())

/** The first invalid variable named in a ConfigError, as one line. */
export const toAppConfigError = (error: ConfigError.ConfigError): AppConfigError => {
  const find = (e: ConfigError.ConfigError): AppConfigError | undefined => {
    switch (e._op) {
      case "And":
      case "Or":
        return find(e.left) ?? find(e.right)
      case "InvalidData":
      case "MissingData":
      case "SourceUnavailable":
      case "Unsupported":
        return new AppConfigError({ variable: e.path.join("_") || "environment", reason: e.message })
    }
  }
  return find(error) ?? new AppConfigError({ variable: "environment", reason: String(error) })
}

/** A part's own slice of the environment, read as AppConfig reads its own: a bad value fails with the variable's name. */
export const readConfigSlice = <A>(config: Config.Config<A>) =>
  Effect.gen(function*() {
    const env = yield* Environment
    const provider = ConfigProvider.fromMap(new Map(Object.entries(env).filter((e): e is [string, string] => e[1] !== undefined)))
    return yield* Effect.withConfigProvider(config, provider).pipe(Effect.mapError(toAppConfigError))
  })
