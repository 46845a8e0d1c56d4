/**
 * The order the consumers of an exchange see it in, derived from what each declares, not from
 * where it stands in a list: a consumer that provides something others read (the span telemetry
 * traces an exchange under, the charge the limits make of its tokens) is opened and ended before
 * the consumers that read it. Built once, when the service starts; a consumer that needs what none
 * provides, or consumers that wait on each other, are an error then, not a silent misorder.
 */
import type { ExchangeConsumer } from "./Exchange.js"

export class ConsumerOrderError extends Error {}

/**
 * The consumers in an order where every provider comes before those that read from it; among the
 * others, the order given. Throws ConsumerOrderError for a missing provider or a cycle.
 */
export const orderConsumers = (consumers: ReadonlyArray<ExchangeConsumer>): ReadonlyArray<ExchangeConsumer> => {
  const providers = new Map<string, ExchangeConsumer>()
  for (const c of consumers) for (const p of c.provides ?? []) providers.set(p, c)
  for (const c of consumers) {
    for (const need of c.needs ?? []) {
      if (!providers.has(need)) throw new ConsumerOrderError(`the ${c.name} consumer needs "${need}", which no consumer provides`)
    }
  }
  const ordered: Array<ExchangeConsumer> = []
  const state = new Map<ExchangeConsumer, "visiting" | "done">()
  const visit = (c: ExchangeConsumer, path: ReadonlyArray<string>) => {
    const seen = state.get(c)
    if (seen === "done") return
    if (seen === "visiting") throw new ConsumerOrderError(`consumers wait on each other: ${[...path, c.name].join(" -> ")}`)
    state.set(c, "visiting")
    for (const need of [...(c.needs ?? []), ...(c.after ?? [])]) {
      const provider = providers.get(need)
      if (provider !== undefined && provider !== c) visit(provider, [...path, c.name])
    }
    state.set(c, "done")
    ordered.push(c)
  }
  for (const c of consumers) visit(c, [])
  return ordered
}
