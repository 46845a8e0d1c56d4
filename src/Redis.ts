/**
 * What the parts that keep state in Redis (the limits' counters, the usage outbox) share about
 * their connections.
 */
import type { Redis } from "ioredis"

/**
 * Resolves true once the connection is ready, false when `waitMs` passes first (it goes on
 * connecting). Start-up waits on it so that the first requests do not meet a Redis still
 * connecting.
 */
export const untilReady = (redis: Redis, waitMs: number): Promise<boolean> =>
  redis.status === "ready" ? Promise.resolve(true) : new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => {
      redis.off("ready", onReady)
      resolve(false)
    }, waitMs)
    const onReady = () => {
      clearTimeout(timer)
      resolve(true)
    }
    redis.once("ready", onReady)
  })
