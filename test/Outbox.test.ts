/**
 * The outbox under real faults: the built proxy in its own process, `kill -9`ed at random moments
 * under load while the webhook fails 30% of deliveries, restarted on the same spool directory (or
 * with another worker on the same Redis); and a Redis that dies mid-run. Whatever the faults,
 * every exchange whose response reached the client has exactly one record at the receiver once
 * deliveries are deduplicated by `webhook-id`, and every delivery verifies.
 */
import { Redis } from "ioredis"
import { randomBytes, randomUUID } from "node:crypto"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Webhook } from "standardwebhooks"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type FakeOllama, startFakeOllama } from "./fake-ollama/server.mjs"
import { type SpawnedProxy, spawnProxy } from "./support/proxy.js"
import { startRedis } from "./support/redis.js"
import { startWebhook, type WebhookReceiver } from "./support/webhook.js"

const KEY = "sk-outbox-5d2e91"
const SECRET = `whsec_${randomBytes(32).toString("base64")}`

let fake: FakeOllama
let receiver: WebhookReceiver

beforeAll(async () => {
  fake = await startFakeOllama()
  // 30% of deliveries fail, at random.
  receiver = await startWebhook(() => ({ status: Math.random() < 0.3 ? 503 : 204 }))
})

afterAll(async () => {
  await receiver?.close()
  await fake?.close()
})

const baseEnv = () => ({
  OLLAMA_MANAGED: "false",
  OLLAMA_HOST: fake.url,
  AUTHORIZATION_APIKEY: KEY,
  USER_MODEL_METRICS_WEBHOOK_URL: receiver.url,
  USER_MODEL_METRICS_WEBHOOK_SECRET: SECRET,
  WEBHOOK_RETRY_DELAY: "20ms",
  USAGE_OUTBOX_CLAIM_IDLE: "1s",
  AUTHORIZATION_LOG_LEVEL: "info"
})

/**
 * Clients sending chats as fast as the proxy answers, to whichever worker `target` names now;
 * returns the request ids whose whole response arrived.
 */
const load = (target: () => string | undefined, clients = 4) => {
  const completed: Array<string> = []
  let running = true
  const loop = async () => {
    while (running) {
      const url = target()
      if (url === undefined) {
        await new Promise((r) => setTimeout(r, 10))
        continue
      }
      const id = randomUUID()
      try {
        const res = await fetch(`${url}/api/generate`, {
          method: "POST",
          headers: { authorization: `Bearer ${KEY}`, "x-request-id": id, "content-type": "application/json" },
          body: JSON.stringify({ model: "llama3.2", prompt: "Hi", stream: true })
        })
        const text = await res.text()
        if (res.status === 200 && text.includes(`"done":true`)) completed.push(id)
      } catch {
        // the worker was killed under this request: its response never completed
      }
    }
  }
  const loops = Array.from({ length: clients }, loop)
  return {
    completed,
    stop: async () => {
      running = false
      await Promise.all(loops)
    }
  }
}

/** Every completed exchange has exactly one record id at the receiver, once deduplicated by webhook-id. */
const expectExactlyOnce = async (completed: ReadonlyArray<string>) => {
  expect(completed.length).toBeGreaterThan(5)
  const byRequest = () => {
    const ids = new Map<string, Set<string>>()
    for (const got of receiver.received.filter((g) => g.accepted)) {
      for (const r of got.records) {
        const set = ids.get(String(r.request_id)) ?? new Set()
        set.add(String(r.id))
        ids.set(String(r.request_id), set)
      }
    }
    return ids
  }
  // Long enough for a record's retries to come round: a delivery in backoff keeps its sender (up
  // to a minute between attempts), so with 30% of POSTs failing a few unlucky records can hold
  // all four senders and delay the rest (measured: one record's first POST 21 s after its
  // exchange). What this asserts is that none is lost, not how soon it arrives.
  await receiver.until(() => completed.every((id) => byRequest().has(id)), 150_000).catch(() => {})
  const ids = byRequest()
  const missing = completed.filter((id) => !ids.has(id))
  expect(missing).toEqual([])
  for (const id of completed) expect(ids.get(id)!.size, id).toBe(1)
  // Every delivery (failed or not) verifies, and its webhook-id is its record's id.
  const verifier = new Webhook(SECRET)
  for (const got of receiver.received) {
    expect(verifier.verify(got.body, got.headers as Record<string, string>)).toEqual(got.record)
    expect(got.headers["webhook-id"]).toBe(got.record.id)
  }
}

const randomMs = (min: number, max: number) => min + Math.floor(Math.random() * (max - min))
const pause = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** The worker the traffic goes to; undefined while it is being restarted. */
interface Slot {
  worker: SpawnedProxy | undefined
}

/** `kill -9`s the worker in the slot at 5 random moments, restarting it on the same env each time. */
const killFiveTimes = async (slot: Slot, env: Record<string, string>) => {
  for (let kill = 0; kill < 5; kill++) {
    await pause(randomMs(150, 600))
    const dying = slot.worker!
    slot.worker = undefined
    await dying.kill("SIGKILL")
    slot.worker = await spawnProxy(env)
  }
  await pause(300)
}

describe("kill -9 under load, the webhook failing 30%", () => {
  it("with USAGE_SPOOL_DIR: a restart on the same directory delivers what the killed worker left", async () => {
    receiver.received.length = 0
    const env = { ...baseEnv(), USAGE_SPOOL_DIR: mkdtempSync(join(tmpdir(), "outbox-spool-")) }
    const slot: Slot = { worker: await spawnProxy(env) }
    const traffic = load(() => slot.worker?.url)
    await killFiveTimes(slot, env)
    await traffic.stop()
    try {
      await expectExactlyOnce(traffic.completed)
    } finally {
      await slot.worker?.kill()
    }
  }, 240_000)

  it("with Redis: another worker, and the restarted one, deliver what the killed worker left", async () => {
    receiver.received.length = 0
    const redis = await startRedis()
    const env = { ...baseEnv(), REDIS_URL: redis.url }
    const other = await spawnProxy(env)
    const slot: Slot = { worker: await spawnProxy(env) }
    let turn = 0
    // Half the requests go to the worker that is killed, half to the one that lives.
    const traffic = load(() => (turn++ % 2 === 0 ? slot.worker?.url : other.url))
    try {
      await killFiveTimes(slot, env)
      await traffic.stop()
      await expectExactlyOnce(traffic.completed)
    } finally {
      await slot.worker?.kill()
      await other.kill()
      await redis.close()
    }
  }, 240_000)
})

describe("Redis stopped mid-run", () => {
  it("records go on to the spool, none is lost, and the log says so once", async () => {
    receiver.received.length = 0
    const redis = await startRedis()
    const env = { ...baseEnv(), REDIS_URL: redis.url, USAGE_SPOOL_DIR: mkdtempSync(join(tmpdir(), "outbox-fallback-")) }
    const worker = await spawnProxy({ ...env, AUTHORIZATION_LOG_LEVEL: "info" })
    const traffic = load(() => worker.url)
    try {
      await pause(400)
      await redis.kill()
      await pause(600)
      await redis.start()
      await pause(400)
      await traffic.stop()
      await expectExactlyOnce(traffic.completed)
      expect(worker.lines.filter((l) => String(l.msg).startsWith("usage outbox: Redis failed"))).toHaveLength(1)
    } finally {
      await worker.kill()
      await redis.close()
    }
  }, 240_000)
})

describe("the Redis outbox of one worker", () => {
  it("listens only once its Redis answers and the consumer group is made, so a first record's XADD is sent at once", async () => {
    const redis = await startRedis()
    const worker = await spawnProxy({ ...baseEnv(), REDIS_URL: redis.url })
    const client = new Redis(redis.url)
    try {
      // Without the wait, the group was made by the first record (one round trip after the
      // client's last bytes) or by the claim loop half a second later.
      const groups = await client.xinfo("GROUPS", "ollama-proxy:usage-outbox") as Array<Array<unknown>>
      expect(groups.map((g) => g[g.indexOf("name") + 1])).toEqual(["webhook"])
      expect(worker.lines.some((l) => String(l.msg).startsWith("usage outbox: Redis"))).toBe(false)
    } finally {
      client.disconnect()
      await worker.kill()
      await redis.close()
    }
  }, 30_000)

  it(
    "sends again a record it gave up on (WEBHOOK_MAX_RETRY_TIME), once idle for USAGE_OUTBOX_CLAIM_IDLE, with no other worker",
    async () => {
      const redis = await startRedis()
      let refusing = true
      const flaky = await startWebhook(() => ({ status: refusing ? 503 : 204 }))
      const worker = await spawnProxy({
        ...baseEnv(),
        REDIS_URL: redis.url,
        USER_MODEL_METRICS_WEBHOOK_URL: flaky.url,
        WEBHOOK_MAX_RETRY_TIME: "200ms"
      })
      try {
        const res = await fetch(`${worker.url}/api/generate`, {
          method: "POST",
          headers: { authorization: `Bearer ${KEY}`, "x-request-id": "kept-1", "content-type": "application/json" },
          body: JSON.stringify({ model: "llama3.2", prompt: "Hi", stream: false })
        })
        expect(res.status).toBe(200)
        await worker.waitForLine((l) => l.msg === "usage records left in the outbox")
        refusing = false
        // Before, the worker held the entry as its own, re-claimed it on every pass and never sent it.
        await flaky.until(() => flaky.accepted().some((r) => r.request_id === "kept-1"), 15_000)
        expect(flaky.accepted().filter((r) => r.request_id === "kept-1")).toHaveLength(1)
      } finally {
        await worker.kill()
        await flaky.close()
        await redis.close()
      }
    },
    30_000
  )
})
