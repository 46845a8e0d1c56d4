/**
 * How limits are written: AUTHORIZATION_DEFAULT_LIMITS, the key file's `limits`, the Redis
 * variables; every mistake stops start-up (or a reload) with one line that names it.
 */
import { Duration, Either, Option, Redacted } from "effect"
import { mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect, it } from "vitest"
import { RedisConfig } from "../src/config/Shared.js"
import { parseKeyFile } from "../src/keys/KeyFile.js"
import { KeysConfig } from "../src/keys/KeysConfig.js"
import { LimitsConfig } from "../src/limits/LimitsConfig.js"
import { configFailure as failure, sliceOf } from "./support/config.js"
import { spawnProxy } from "./support/proxy.js"

const LIMIT_LIST = "requests_per_minute, tokens_per_minute, concurrent_requests, tokens_per_day, tokens_per_month"

describe("AUTHORIZATION_DEFAULT_LIMITS and the Redis variables", () => {
  it("no limits and the counters in memory by default", () => {
    expect(sliceOf(KeysConfig).defaultLimits).toBeUndefined()
    expect(Option.isNone(sliceOf(RedisConfig).redisUrl)).toBe(true)
    const store = sliceOf(LimitsConfig)
    expect(Duration.toMillis(store.timeout)).toBe(200)
    expect(store.onFailure).toBe("open")
  })

  it("reads name=value pairs", () => {
    const env = {
      AUTHORIZATION_DEFAULT_LIMITS: " requests_per_minute=60, tokens_per_day=200000,concurrent_requests=4 ",
      REDIS_URL: "rediss://:s3cret@redis.example.com:6380/2",
      LIMITS_STORE_TIMEOUT: "50ms",
      LIMITS_ON_STORE_FAILURE: "closed"
    }
    expect(sliceOf(KeysConfig, env).defaultLimits).toEqual({ requests_per_minute: 60, tokens_per_day: 200000, concurrent_requests: 4 })
    expect(Redacted.value(Option.getOrThrow(sliceOf(RedisConfig, env).redisUrl))).toBe("rediss://:s3cret@redis.example.com:6380/2")
    const store = sliceOf(LimitsConfig, env)
    expect(Duration.toMillis(store.timeout)).toBe(50)
    expect(store.onFailure).toBe("closed")
  })

  it.each([
    ["requests_per_hour=5", `"requests_per_hour" is not a limit`],
    ["request_per_minute=5", `"request_per_minute" is not a limit (${LIMIT_LIST}); did you mean "requests_per_minute"?`],
    ["requests_per_minute=0", "requests_per_minute=\"0\": not a positive integer"],
    ["tokens_per_day=1.5", "not a positive integer"],
    ["tokens_per_day", "not a positive integer"],
    ["tokens_per_day=5,tokens_per_day=6", "tokens_per_day is given twice"]
  ])("refuses %j", (value, reason) => {
    const message = failure({ AUTHORIZATION_DEFAULT_LIMITS: value })
    expect(message).toContain("invalid configuration: AUTHORIZATION_DEFAULT_LIMITS: ")
    expect(message).toContain(reason)
  })

  it("refuses a REDIS_URL that is not redis:// without echoing it", () => {
    const message = failure({ REDIS_URL: "http://user:hunter2@redis:6379" })
    expect(message).toBe("invalid configuration: REDIS_URL: not a redis:// or rediss:// URL (like redis://:password@redis:6379/0)")
    expect(failure({ LIMITS_ON_STORE_FAILURE: "maybe" })).toContain("LIMITS_ON_STORE_FAILURE")
    expect(failure({ LIMITS_STORE_TIMEOUT: "0" })).toContain("LIMITS_STORE_TIMEOUT")
  })
})

describe("the key file's limits", () => {
  it("are read with every field optional", () => {
    const entries = Either.getOrThrow(
      parseKeyFile("keys:\n  - name: a\n    key: k\n    limits: { requests_per_minute: 60, tokens_per_month: 3000000 }\n")
    )
    expect(entries[0]!.limits).toEqual({ requests_per_minute: 60, tokens_per_month: 3000000 })
  })

  it.each([
    ["limits: { requests_per_hour: 5 }", "keys[0].limits.requests_per_hour: unknown field"],
    ["limits: { tokens_per_day: 0 }", "keys[0].limits.tokens_per_day: a positive integer"],
    ["limits: { tokens_per_day: 2.5 }", "keys[0].limits.tokens_per_day: a positive integer"],
    ["limits: { tokens_per_day: \"100\" }", "keys[0].limits.tokens_per_day"]
  ])("refuses %j", (line, reason) => {
    const parsed = parseKeyFile(`keys:\n  - name: a\n    key: k\n    ${line}\n`)
    expect(Either.isLeft(parsed) && parsed.left).toContain(reason)
  })

  it("two entries of one name with different limits stop start-up; with the same limits they are a rotation", async () => {
    const dir = mkdtempSync(join(tmpdir(), "limits-"))
    const file = join(dir, "keys.yaml")
    writeFileSync(
      file,
      "keys:\n  - { name: a, key: k1, limits: { requests_per_minute: 5 } }\n  - { name: a, key: k2, limits: { requests_per_minute: 6 } }\n"
    )
    const proxy = await spawnProxy({ OLLAMA_MANAGED: "false", AUTHORIZATION_KEYS_FILE: file }, { waitForListening: false })
    expect((await proxy.exited).code).toBe(1)
    expect(proxy.stderr().trim()).toBe(
      `ollama-authentication-proxy: key file ${file}: the keys named "a" carry different limits: keys that share a name share their limits, give them the same`
    )
  })
})
