/**
 * The configuration a given environment makes, as start-up reads it: every slice (src/Config.ts),
 * or the one-line error a bad variable stops start-up with.
 */
import { Context, Effect, Either, Layer } from "effect"
import { configFromEnv } from "../../src/Config.js"

export const loadConfig = (env: Record<string, string | undefined>) =>
  Layer.build(configFromEnv(env)).pipe(Effect.scoped, Effect.either, Effect.runSync)

/** One slice, as `env` makes it (the slice's layer is what a service asks for). */
export const sliceOf = <I, S>(tag: Context.Tag<I, S>, env: Record<string, string | undefined> = {}): S =>
  Context.unsafeGet(Either.getOrThrow(loadConfig(env)), tag)

/** The message start-up stops with for `env`. */
export const configFailure = (env: Record<string, string | undefined>): string => {
  const result = loadConfig(env)
  if (Either.isRight(result)) throw new Error("expected a configuration error")
  return result.left.message
}
