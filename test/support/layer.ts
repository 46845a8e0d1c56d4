/**
 * A service made of only the members a test needs, without casts: any other member is an Effect
 * that dies naming the service and the member, so a test that reaches past its fake fails loudly.
 */
import { type Context, Effect, Layer } from "effect"

const missing = (service: string, member: PropertyKey) => {
  const dead = Effect.die(`${service}: the test did not provide "${String(member)}"`)
  // Usable both as an Effect value and as a function returning one.
  const call = () => dead
  Object.setPrototypeOf(call, Object.getPrototypeOf(dead))
  return Object.assign(call, dead)
}

export const partial = <I, S extends object>(tag: Context.Tag<I, S>, members: Partial<S>): S =>
  new Proxy({ ...members } as S, {
    get: (target, member) => member in target ? target[member as keyof S] : missing(tag.key, member)
  })

export const partialLayer = <I, S extends object>(tag: Context.Tag<I, S>, members: Partial<S>): Layer.Layer<I> =>
  Layer.succeed(tag, partial(tag, members))
