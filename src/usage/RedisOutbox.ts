/**
 * The outbox in Redis, for workers that share REDIS_URL: a Stream with one consumer group.
 *
 * A record is added with XADD and, in the same script, read into this worker's pending list
 * (XREADGROUP), so that from its first moment in Redis it belongs to a consumer: if this worker
 * dies, another finds it pending, idle, and claims it (XAUTOCLAIM, after USAGE_OUTBOX_CLAIM_IDLE)
 * to deliver it. Acknowledged, it goes (XACK and XDEL). Each worker also reads entries nobody
 * read yet, which only a script that failed half-way could leave.
 *
 * Redis failing does not stop records: one that XADD cannot take (down, or no answer within
 * COMMAND_TIMEOUT_MS) goes on to the fallback (the spool, or memory) and is delivered from there.
 * A record in Redis is as durable as Redis's own persistence makes it.
 */
import { Redis } from "ioredis"
import { hostname } from "node:os"
import { untilReady } from "../Redis.js"
import type { Outbox } from "./Outbox.js"
import type { Outgoing } from "./Queue.js"

// Long enough for a loaded host: an XADD that times out may still have been done, and its
// record then goes to the fallback too (a duplicate, never a loss).
const COMMAND_TIMEOUT_MS = 3000
const CLAIM_COUNT = 100
const GROUP = "webhook"

/** KEYS: the stream. ARGV: group, consumer, record json. Returns the entry id. */
const ADD = `
local id = redis.call("XADD", KEYS[1], "*", "r", ARGV[3])
redis.call("XREADGROUP", "GROUP", ARGV[1], ARGV[2], "COUNT", 1, "STREAMS", KEYS[1], ">")
return id
`

interface OutboxRedis extends Redis {
  outboxAdd(stream: string, group: string, consumer: string, json: string): Promise<string>
}

export interface RedisOutboxOptions {
  readonly url: string
  readonly fallback: Outbox
  readonly claimIdleMs: number
  readonly prefix?: string
  /** Redis failed (once per outage): records go on to the fallback. */
  readonly onFailure: (error: Error) => void
  readonly onRecovered: () => void
}

type Entry = [id: string, fields: Array<string>]

export const redisOutbox = (options: RedisOutboxOptions): Outbox => {
  const stream = `${options.prefix ?? "ollama-proxy:"}usage-outbox`
  const consumer = `${hostname()}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`
  const redis = new Redis(options.url, {
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    commandTimeout: COMMAND_TIMEOUT_MS,
    retryStrategy: (attempt) => Math.min(100 * attempt, 2000)
  }) as OutboxRedis
  redis.defineCommand("outboxAdd", { numberOfKeys: 1, lua: ADD })
  let failing = false
  const failed = (error: Error) => {
    if (failing) return
    failing = true
    options.onFailure(error)
  }
  const succeeded = () => {
    if (!failing) return
    failing = false
    options.onRecovered()
  }
  redis.on("error", failed)
  // Made when Redis first answers; the group reads the stream from its start.
  let group: Promise<void> | undefined
  let grouped = false
  const ensureGroup = () =>
    group ??= redis.xgroup("CREATE", stream, GROUP, "0", "MKSTREAM").then(() => {
      grouped = true
    }, (error: Error) => {
      if (String(error.message).startsWith("BUSYGROUP")) return void (grouped = true)
      group = undefined
      throw error
    })
  const forget = (error: Error) => {
    if (!String(error.message).includes("NOGROUP")) return
    group = undefined
    grouped = false
  }

  /** Entry ids of the records this worker has in Redis, by record id. */
  const entries = new Map<string, string>()

  const itemsOf = (list: ReadonlyArray<Entry>): Array<Outgoing> => {
    const out: Array<Outgoing> = []
    const now = Date.now()
    for (const [entry, fields] of list) {
      const json = fields[fields.indexOf("r") + 1]
      if (json === undefined) continue
      let id: string
      try {
        id = String((JSON.parse(json) as { id: unknown }).id)
      } catch {
        continue
      }
      if (entries.has(id)) continue // already on its way from this worker
      entries.set(id, entry)
      out.push({ id, json, since: now })
    }
    return out
  }

  return {
    mode: "redis",
    durable: true,
    add: (item, ready) => {
      const toFallback = (error: Error) => {
        // A Redis that came back empty has lost the group with the stream: it is made again.
        forget(error)
        failed(error)
        options.fallback.add(item, ready)
      }
      if (redis.status !== "ready") return toFallback(new Error(`Redis is ${redis.status}`))
      // Sent now, within the exchange's end: the command is in the socket before the client's
      // last bytes are (Node writes a response's end on the next tick), so a worker killed once
      // the client has its answer has already handed the record to Redis.
      const added = grouped
        ? redis.outboxAdd(stream, GROUP, consumer, item.json)
        : ensureGroup().then(() => redis.outboxAdd(stream, GROUP, consumer, item.json))
      added.then((entry) => {
        succeeded()
        entries.set(item.id, entry)
        ready()
      }, toFallback)
    },
    ack: (items) => {
      const ids: Array<string> = []
      const rest: Array<Outgoing> = []
      for (const item of items) {
        const entry = entries.get(item.id)
        if (entry === undefined) rest.push(item)
        else {
          entries.delete(item.id)
          ids.push(entry)
        }
      }
      if (rest.length > 0) options.fallback.ack(rest)
      if (ids.length === 0) return
      // An acknowledgement Redis misses leaves the entry pending: another worker delivers it
      // again, and the receiver drops the duplicate by webhook-id.
      redis.multi().xack(stream, GROUP, ...ids).xdel(stream, ...ids).exec().then(succeeded, failed)
    },
    release: (items) => {
      const rest: Array<Outgoing> = []
      // Forgotten here, the entry stays pending: once idle for the claim time, the next claim
      // (this worker's too) delivers it again. Held, this worker would re-claim it for ever
      // without sending it, and with one worker it would never go.
      for (const item of items) if (!entries.delete(item.id)) rest.push(item)
      if (rest.length > 0) options.fallback.release(rest)
    },
    claim: async () => {
      const fromFallback = await options.fallback.claim()
      if (redis.status !== "ready") return fromFallback
      try {
        await ensureGroup()
        const [, claimed] = await redis.xautoclaim(stream, GROUP, consumer, options.claimIdleMs, "0-0", "COUNT", CLAIM_COUNT) as [
          string,
          Array<Entry>
        ]
        const unread = await redis.xreadgroup("GROUP", GROUP, consumer, "COUNT", CLAIM_COUNT, "STREAMS", stream, ">") as
          | Array<[string, Array<Entry>]>
          | null
        succeeded()
        return [...fromFallback, ...itemsOf(claimed), ...itemsOf(unread?.[0]?.[1] ?? [])]
      } catch (error) {
        forget(error as Error)
        failed(error as Error)
        return fromFallback
      }
    },
    ready: async (waitMs) => {
      if (!(await untilReady(redis, waitMs))) return false
      // The group exists before the first record: else that record's XADD would wait a round
      // trip for it and reach Redis after the client's last bytes.
      return ensureGroup().then(() => true, () => false)
    },
    close: async () => {
      await options.fallback.close()
      redis.disconnect()
    }
  }
}
