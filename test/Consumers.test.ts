/**
 * The order consumers see an exchange in comes from what they declare, not from their place in a
 * list: the same order from every arrangement, and a wrong declaration fails at start.
 */
import { describe, expect, it } from "vitest"
import { ConsumerOrderError, orderConsumers } from "../src/exchange/Consumers.js"
import {
  type Exchange,
  type ExchangeConsumer,
  type ExchangeRewrite,
  filterOf,
  type Provision,
  replacementOf,
  writerOf,
  type Written
} from "../src/exchange/Exchange.js"

const consumer = (
  name: string,
  declared: { provides?: Array<Provision>; needs?: Array<Provision>; after?: Array<Provision> } = {}
): ExchangeConsumer => ({
  name,
  ...declared,
  open: () => undefined
})

const permutations = <A>(items: ReadonlyArray<A>): Array<Array<A>> =>
  items.length <= 1
    ? [[...items]]
    : items.flatMap((item, i) => permutations([...items.slice(0, i), ...items.slice(i + 1)]).map((rest) => [item, ...rest]))

describe("the consumers' order", () => {
  it("puts what provides the span and the charge before what reads them, whatever the list's order", () => {
    const telemetry = consumer("telemetry", { provides: ["span"] })
    const limits = consumer("limits", { provides: ["charge"] })
    const usage = consumer("usage", { after: ["charge", "span"] })
    for (const arrangement of permutations([telemetry, limits, usage])) {
      const names = orderConsumers(arrangement).map((c) => c.name)
      expect(names.indexOf("usage")).toBe(2)
      expect(names).toHaveLength(3)
    }
  })

  it("`after` orders only when a provider is there; `needs` must have one", () => {
    expect(orderConsumers([consumer("usage", { after: ["charge"] })]).map((c) => c.name)).toEqual(["usage"])
    expect(() => orderConsumers([consumer("usage", { needs: ["charge"] })])).toThrow(ConsumerOrderError)
    expect(() => orderConsumers([consumer("usage", { needs: ["charge"] })])).toThrow(
      `the usage consumer needs "charge", which no consumer provides`
    )
  })

  it("refuses consumers that wait on each other", () => {
    const a = consumer("a", { provides: ["span"], needs: ["charge"] })
    const b = consumer("b", { provides: ["charge"], needs: ["span"] })
    expect(() => orderConsumers([a, b])).toThrow(/wait on each other: a -> b -> a/)
  })
})

describe("rewrites of one answer", () => {
  const upper: ExchangeRewrite = { replaceBody: () => (b) => Buffer.from(b.toString().toUpperCase()) }
  const exclaim: ExchangeRewrite = { replaceBody: (status) => (status === 200 ? (b) => Buffer.concat([b, Buffer.from("!")]) : undefined) }
  /** Holds everything back until the end, then lets it out: the next filter must still see it. */
  const holding: ExchangeRewrite = {
    response: () => {
      const held: Array<Buffer> = []
      return { push: (c) => (held.push(c), Buffer.alloc(0)), end: () => Buffer.concat(held) }
    }
  }
  const dropX: ExchangeRewrite = {
    response: () => ({ push: (c) => Buffer.from(c.toString().replace(/x/g, "")), end: () => Buffer.alloc(0) })
  }

  it("compose in the order they were added: a second never replaces the first", () => {
    expect(replacementOf([upper, exclaim], 200, {})!(Buffer.from("hi")).toString()).toBe("HI!")
    expect(replacementOf([upper, exclaim], 404, {})!(Buffer.from("hi")).toString()).toBe("HI")
    expect(replacementOf([], 200, {})).toBeUndefined()
    const chained = filterOf([holding, dropX], 200, {})!
    expect(chained.push(Buffer.from("axb")).length).toBe(0)
    expect(chained.push(Buffer.from("xc")).length).toBe(0)
    expect(chained.end().toString()).toBe("abc")
    const plain = filterOf([dropX, holding], 200, {})!
    expect(plain.push(Buffer.from("axb")).length).toBe(0)
    expect(plain.end().toString()).toBe("ab")
  })
})

describe("the fields written as an exchange runs", () => {
  it("have one writer each: the part that owns a field took it at load, and a second part cannot", async () => {
    // Loading the parts takes their writers, as the service's start does.
    await import("../src/exchange/Boundary.js")
    await import("../src/limits/Limits.js")
    await import("../src/schedule/Scheduler.js")
    await import("../src/telemetry/Telemetry.js")
    const fields: ReadonlyArray<[keyof Written, string]> = [
      ["span", "telemetry"],
      ["limits", "the limits"],
      ["limitHeaders", "the limits"],
      ["queueWaitMs", "the schedule"],
      ["checked", "the boundary"]
    ]
    for (const [field, owner] of fields) {
      expect(() => writerOf(field, "a usage consumer")).toThrow(
        `Exchange.${field} is written by ${owner} only; a usage consumer cannot write it too`
      )
    }
  })

  it("are read-only on the exchange: writing one is a type error", () => {
    const writeAround = (exchange: Exchange) => {
      // @ts-expect-error only telemetry writes the span
      exchange.span = undefined
      // @ts-expect-error only the schedule writes the wait
      exchange.queueWaitMs = 0
      // @ts-expect-error only the limits write what they did
      exchange.limits = undefined
    }
    expect(typeof writeAround).toBe("function")
  })
})
