/**
 * A service made of only the members a test needs, without casts: any other member is an Effect
 * that dies naming the service and the member, so a test that reaches past its fake fails loudly.
 */
import { type Context, Effect, Layer } from "effect"
import { ExchangeAdmission } from "../../src/exchange/Exchange.js"

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

/**
 * The admission of a service under test whose keys carry no limits, given explicitly: the app
 * requires one. A key with limits (or GET /v1/usage) that reaches it anyway is answered 500,
 * naming the test's mistake, rather than let through unlimited.
 */
export const noLimitsAdmission: Layer.Layer<ExchangeAdmission> = Layer.succeed(ExchangeAdmission, {
  admit: (exchange) => exchange.refuse({ status: 500, message: "test: a key with limits, and no admission was provided" }, "rejected"),
  ownUsage: (exchange) => exchange.refuse({ status: 500, message: "test: GET /v1/usage, and no admission was provided" }, "rejected")
})
