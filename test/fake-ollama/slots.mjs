// @ts-check
/**
 * Ollama's parallel limit and queue: a loaded model runs `OLLAMA_NUM_PARALLEL` requests at once
 * (the runner's slots); the others wait in one FIFO line with no notion of who sent them, and past
 * `OLLAMA_MAX_QUEUE` waiting (default 512) a request is answered 503 "server busy" at once
 * (server/sched.go: `pendingReqCh` is a channel of MaxQueue, a full one gives ErrMaxQueue). One
 * pool for the server here, as with one loaded model. A request that goes away while it waits
 * leaves the line. The busy time is kept, so a benchmark can tell how well the slots were used.
 */

/**
 * @typedef {object} SlotStats
 * @property {number | undefined} limit requests run at once; undefined: no limit
 * @property {number} busy requests running now
 * @property {number} waiting requests waiting now
 * @property {number} peak the most running at once so far
 * @property {number} busyMs the sum over time of running requests (ms): busyMs / (limit * elapsed) is the slots' busy share
 * @property {number} refused requests answered 503 because the line was full
 */

/**
 * @param {() => number | undefined} limitOf the parallel limit in force (0 or undefined: none)
 * @param {() => number} maxQueueOf the longest line
 */
export function makeSlots(limitOf, maxQueueOf) {
  let busy = 0
  let peak = 0
  let refused = 0
  let busyMs = 0
  let since = performance.now()
  /** @type {Array<{ go: () => void, gone: boolean }>} */
  const line = []

  const account = () => {
    const now = performance.now()
    busyMs += busy * (now - since)
    since = now
  }
  const take = () => {
    account()
    busy++
    peak = Math.max(peak, busy)
  }
  const free = () => {
    account()
    busy--
    const limit = limitOf() || Infinity
    while (busy < limit && line.length > 0) {
      const next = line.shift()
      if (next && !next.gone) {
        take()
        next.go()
      }
    }
  }

  return {
    /**
     * Waits for a slot: "ok" (held until the connection closes: `onClose` frees it), "busy" (the
     * line is full) or "closed" (the client went away first).
     * @param {{ closed: boolean, onClose: Set<() => void> }} ctx
     * @returns {Promise<"ok" | "busy" | "closed">}
     */
    acquire(ctx) {
      if (ctx.closed) return Promise.resolve("closed")
      const hold = () => ctx.onClose.add(free)
      const limit = limitOf() || Infinity
      if (busy < limit) {
        take()
        hold()
        return Promise.resolve("ok")
      }
      if (line.filter((w) => !w.gone).length >= maxQueueOf()) {
        refused++
        return Promise.resolve("busy")
      }
      return new Promise((resolve) => {
        const waiter = {
          gone: false,
          go: () => {
            ctx.onClose.delete(leave)
            hold()
            resolve("ok")
          }
        }
        const leave = () => {
          waiter.gone = true
          resolve("closed")
        }
        ctx.onClose.add(leave)
        line.push(waiter)
      })
    },
    /** @returns {SlotStats} */
    stats() {
      account()
      return { limit: limitOf() || undefined, busy, waiting: line.filter((w) => !w.gone).length, peak, busyMs, refused }
    },
    /** Starts the counts again (busy time, peak, refusals) from now. */
    reset() {
      account()
      busyMs = 0
      peak = busy
      refused = 0
    }
  }
}
