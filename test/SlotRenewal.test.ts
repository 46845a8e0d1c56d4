/**
 * A worker's slots of requests in flight (concurrent_requests, counters in Redis) are renewed
 * every 10 s. When Redis is gone the renewals fail: each is counted, and the log says so once,
 * not at every renewal, then once again when renewals work.
 */
import { mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type FakeOllama, startFakeOllama } from "./fake-ollama/server.mjs"
import { open } from "./support/http.js"
import { scrape } from "./support/metrics.js"
import { type SpawnedProxy, spawnProxy, untilReady } from "./support/proxy.js"
import { startRedis, type TestRedis } from "./support/redis.js"

const KEYS = { held: "sk-held-2b9e61", ops: "sk-ops-d05c3a" }
const NOT_RENEWED = "limits store (Redis): slots of requests in flight not renewed; they free themselves when their lease ends"

let redis: TestRedis
let fake: FakeOllama
let proxy: SpawnedProxy

beforeAll(async () => {
  redis = await startRedis()
  fake = await startFakeOllama()
  const dir = mkdtempSync(join(tmpdir(), "slot-renewal-"))
  writeFileSync(
    join(dir, "keys.yaml"),
    `keys:
  - { name: held, key: ${KEYS.held}, limits: { concurrent_requests: 4 } }
  - { name: ops, key: ${KEYS.ops}, scopes: [all], limits: {} }
`
  )
  proxy = await spawnProxy({
    OLLAMA_MANAGED: "false",
    OLLAMA_HOST: fake.url,
    AUTHORIZATION_KEYS_FILE: join(dir, "keys.yaml"),
    REDIS_URL: redis.url
  })
  await untilReady(proxy.url)
}, 30_000)

afterAll(async () => {
  await proxy?.kill()
  await fake?.close()
  await redis?.close()
})

const renewFailures = async () =>
  (await scrape(proxy.url, { authorization: `Bearer ${KEYS.ops}` })).value("ollama_proxy_limits_store_failures_total", {
    operation: "renew",
    decision: "lease"
  })

describe("slot renewals", () => {
  it("that fail are counted each time and logged once, and once more when they work again", async () => {
    expect(await renewFailures()).toBe(0)
    // A stream that outlasts two renewals holds its slot meanwhile.
    fake.set({ tokens: 300, tokenDelayMs: 100 })
    const stream = await open(`${proxy.url}/api/generate`, {
      method: "POST",
      headers: { authorization: `Bearer ${KEYS.held}` },
      body: JSON.stringify({ model: "llama3.2", prompt: "Hi" })
    })
    expect(stream.res.statusCode).toBe(200)
    await redis.kill()
    await proxy.waitForLine((l) => l.msg === NOT_RENEWED, 15_000)
    // The next renewal fails too: counted, not logged again.
    const deadline = Date.now() + 15_000
    while ((await renewFailures() ?? 0) < 2) {
      if (Date.now() > deadline) throw new Error("the second renewal never failed")
      await new Promise((r) => setTimeout(r, 200))
    }
    expect(proxy.lines.filter((l) => l.msg === NOT_RENEWED)).toHaveLength(1)
    expect(proxy.lines.find((l) => l.msg === NOT_RENEWED)).toMatchObject({ level: "warn", operation: "renew", lease_ms: 30000 })

    await redis.start()
    await proxy.waitForLine((l) => l.msg === "limits store (Redis): slots renewed again", 15_000)
    stream.req.destroy()
  }, 45_000)
})
