/**
 * The rate-limit headers of an answer: OpenAI's reset format, and the same headers object handed
 * out again while a key's figures do not change (the relay's head takes it as it is).
 */
import { describe, expect, it } from "vitest"
import { limitHeaders, resetText } from "../src/limits/Headers.js"
import type { Usage } from "../src/limits/Store.js"
import { type KeyLimits, LIMITS, planner } from "../src/limits/Table.js"

const usage = (requests: number): Usage => ({ used: [requests, 0, 0, 0, 0], tokensDay: 0, tokensMonth: 0 })
const planOf = planner(LIMITS)
const NOW = Date.UTC(2026, 10, 30, 12)

describe("rate-limit headers", () => {
  it("write resets as OpenAI does", () => {
    expect([resetText(120), resetText(1000), resetText(1500), resetText(360_000), resetText(3_723_000)])
      .toEqual(["120ms", "1s", "1.5s", "6m0s", "1h2m3s"])
  })

  it("are the same object again for a key whose figures did not change, even between other keys sharing its limits", () => {
    // AUTHORIZATION_DEFAULT_LIMITS: one limits object for every key without its own.
    const shared: KeyLimits = { requests_per_minute: 60 }
    const first = limitHeaders("alice", planOf(shared), usage(1), NOW, false)
    const bob = limitHeaders("bob", planOf(shared), usage(30), NOW, false)
    expect(bob["x-ratelimit-remaining-requests"]).toBe("30")
    expect(limitHeaders("alice", planOf(shared), usage(1), NOW, false)).toBe(first)
    expect(first).toEqual({
      "x-ratelimit-limit-requests": "60",
      "x-ratelimit-remaining-requests": "59",
      "x-ratelimit-reset-requests": "1s"
    })
    // New figures, or new limits after a reload, make new headers.
    expect(limitHeaders("alice", planOf(shared), usage(2), NOW, false)["x-ratelimit-remaining-requests"]).toBe("58")
    expect(limitHeaders("alice", planOf({ requests_per_minute: 100 }), usage(2), NOW, false)["x-ratelimit-limit-requests"]).toBe("100")
  })
})
