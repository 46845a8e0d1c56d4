/**
 * The delivery queue's states without HTTP: a fake sender takes each batch the queue starts, and
 * the test says when it is done.
 */
import { describe, expect, it } from "vitest"
import { type Batch, DeliveryQueue, type Outgoing, type QueueOptions } from "../src/usage/Queue.js"

const item = (n: number): Outgoing => ({ id: `r-${n}`, json: JSON.stringify({ id: `r-${n}` }), since: 1000 + n })

const make = (options: Partial<QueueOptions> = {}) => {
  const started: Array<Batch> = []
  const warnings: Array<number> = []
  let keys = 0
  const queue = new DeliveryQueue({
    batchSize: 1,
    capacity: 10,
    senders: 2,
    batchWaitMs: 60_000,
    start: (batch) => started.push(batch),
    newKey: () => `batch-${++keys}`,
    nearFull: (queued) => warnings.push(queued),
    ...options
  })
  const outstanding: Array<number> = []
  queue.onChange = (n) => outstanding.push(n)
  /** The sender of `batch` is done with it. */
  const done = (batch: Batch) => {
    expect(queue.settle(batch)).toBe(true)
    queue.finished()
  }
  return { queue, started, warnings, outstanding, done }
}

describe("DeliveryQueue", () => {
  it("starts a lone record at once while a sender is free; the others wait, in order", () => {
    const { queue, started, done } = make()
    for (let n = 0; n < 4; n++) expect(queue.offer(item(n))).toBe("taken")
    expect(started.map((b) => [b.key, b.state, b.body])).toEqual([["r-0", "sending", item(0).json], ["r-1", "sending", item(1).json]])
    const waiting = [...queue.undone].filter((b) => b.state === "waiting").map((b) => b.key)
    expect(waiting).toEqual(["r-2", "r-3"])
    done(started[0]!)
    expect(started.map((b) => b.key)).toEqual(["r-0", "r-1", "r-2"])
    expect(started[0]!.state).toBe("done")
    expect(queue.outstanding).toBe(3)
  })

  it("refuses past its capacity (records waiting, not those a sender has) and warns once at 90%", () => {
    const { queue, warnings } = make({ capacity: 10, senders: 1 })
    const answers = Array.from({ length: 13 }, (_, n) => queue.offer(item(n)))
    expect(answers.filter((a) => a === "taken")).toHaveLength(11)
    expect(answers.slice(11)).toEqual(["full", "full"])
    expect(warnings).toEqual([9])
  })

  it("gathers records into a batch until it is full, keyed apart from its records", () => {
    const { queue, started } = make({ batchSize: 3 })
    for (let n = 0; n < 7; n++) queue.offer(item(n))
    expect(started.map((b) => b.key)).toEqual(["batch-1", "batch-2"])
    expect(JSON.parse(started[0]!.body)).toEqual([0, 1, 2].map((n) => ({ id: `r-${n}` })))
    const gathering = [...queue.undone].find((b) => b.state === "gathering")!
    expect(gathering.records.map((r) => r.id)).toEqual(["r-6"])
  })

  it("sends the gathering batch after batchWait", async () => {
    const { queue, started } = make({ batchSize: 5, batchWaitMs: 20 })
    queue.offer(item(0))
    expect(started).toEqual([])
    await new Promise<void>((resolve) => {
      const poll = setInterval(() => {
        if (started.length === 0) return
        clearInterval(poll)
        resolve()
      }, 5)
    })
    expect(started[0]!.records.map((r) => r.id)).toEqual(["r-0"])
  })

  it("on close sends the gathering batch, takes nothing more, and counts down to idle", () => {
    const { queue, started, outstanding, done } = make({ batchSize: 5, senders: 1 })
    queue.offer(item(0))
    queue.offer(item(1))
    queue.close()
    expect(queue.offer(item(2))).toBe("closed")
    expect(started.map((b) => b.records.length)).toEqual([2])
    done(started[0]!)
    expect(outstanding.at(-1)).toBe(0)
    expect(queue.settle(started[0]!)).toBe(false)
  })

  it("settles a waiting batch (the shutdown deadline) without a sender ever taking it", () => {
    const { queue, started } = make({ senders: 1 })
    queue.offer(item(0))
    queue.offer(item(1))
    const waiting = [...queue.undone].find((b) => b.state === "waiting")!
    expect(queue.oldest()).toBe(1000)
    expect(queue.settle(waiting)).toBe(true)
    queue.finished()
    expect(started.map((b) => b.key)).toEqual(["r-0"])
    expect(queue.outstanding).toBe(1)
  })
})
