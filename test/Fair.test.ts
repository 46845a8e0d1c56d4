/**
 * The fair share of slots (src/schedule/Fair.ts) on its own, on a simulated clock: no HTTP, no
 * timers. Requests hold a slot for a given time; the simulation ends the earliest one, and so on.
 */
import { describe, expect, it } from "vitest"
import { Fair, type Ticket } from "../src/schedule/Fair.js"

interface Job {
  readonly key: string
  readonly duration: number
  readonly id: number
}

/** A Fair on a simulated clock, with the slot time each key had and the order requests started in. */
const simulation = (slots: number) => {
  let now = 0
  let nextId = 0
  const running: Array<{ ticket: Ticket<Job>; endsAt: number }> = []
  const slotTime = new Map<string, number>()
  const startOrder: Array<Job> = []
  const onStart = (ticket: Ticket<Job>) => {
    startOrder.push(ticket.item)
    running.push({ ticket, endsAt: now + ticket.item.duration })
  }
  const fair = new Fair<Job>(slots, onStart, () => now)
  /** What to do when a request ends (a saturating key sends another). */
  let onEnd: (job: Job) => void = () => {}
  const enter = (key: string, weight = 1, duration = 100) => {
    const ticket = fair.enter(key, weight, { key, duration, id: nextId++ })
    if (ticket.running) onStart(ticket)
    return ticket
  }
  /** Ends the request that ends first; the clock moves to that time. */
  const step = () => {
    running.sort((a, b) => a.endsAt - b.endsAt)
    const { endsAt, ticket } = running.shift()!
    slotTime.set(ticket.item.key, (slotTime.get(ticket.item.key) ?? 0) + endsAt - ticket.startedAt)
    now = endsAt
    fair.release(ticket)
    onEnd(ticket.item)
  }
  const runUntil = (time: number) => {
    while (running.length > 0 && running[0] !== undefined && Math.min(...running.map((r) => r.endsAt)) <= time) step()
    now = Math.max(now, time)
  }
  return {
    fair,
    enter,
    step,
    runUntil,
    slotTime,
    startOrder,
    running,
    get now() {
      return now
    },
    set onEnd(f: (job: Job) => void) {
      onEnd = f
    }
  }
}

describe("Fair", () => {
  it("gives a key alone every slot, and starts its requests in their order", () => {
    const sim = simulation(2)
    const tickets = [0, 1, 2, 3, 4].map(() => sim.enter("a"))
    expect(tickets.map((t) => t.running)).toEqual([true, true, false, false, false])
    expect(sim.fair.busy).toBe(2)
    expect(sim.fair.waiting).toBe(3)
    sim.step()
    expect(sim.fair.busy).toBe(2)
    expect(sim.startOrder.map((j) => j.id)).toEqual([0, 1, 2])
    while (sim.running.length > 0) sim.step()
    expect(sim.startOrder.map((j) => j.id)).toEqual([0, 1, 2, 3, 4])
    expect(sim.fair.busy).toBe(0)
  })

  it("starts a light key's request at the next free slot, ahead of a heavy key's backlog", () => {
    const sim = simulation(2)
    for (let i = 0; i < 18; i++) sim.enter("heavy")
    sim.runUntil(250)
    const light = sim.enter("light")
    expect(light.running).toBe(false)
    expect(sim.fair.positionOf(light)).toBe(1)
    sim.step()
    expect(light.running).toBe(true)
    expect(light.startedAt - light.arrivedAt).toBeLessThanOrEqual(100)
  })

  it("keeps the light key's wait under one request's time when it asks once per request time", () => {
    const sim = simulation(2)
    sim.onEnd = (job) => {
      if (job.key === "heavy") sim.enter("heavy")
    }
    for (let i = 0; i < 16; i++) sim.enter("heavy")
    const waits: Array<number> = []
    for (let t = 50; t < 20_000; t += 100) {
      sim.runUntil(t)
      const ticket = sim.enter("light")
      while (!ticket.running) sim.step()
      waits.push(ticket.startedAt - ticket.arrivedAt)
    }
    expect(Math.max(...waits)).toBeLessThanOrEqual(100)
  })

  it("gives a slot to a key under its share of the moment before a key at its share, whatever their virtual times", () => {
    const sim = simulation(2)
    sim.enter("light", 1, 1000)
    sim.enter("light", 1, 1000)
    for (let i = 0; i < 3; i++) sim.enter("heavy", 1, 100)
    sim.step()
    sim.step()
    // Light has had 2000 of slot time, heavy none; heavy now holds both slots and one more waits.
    const late = sim.enter("light", 1, 100)
    sim.step()
    expect(late.running).toBe(true)
    expect(sim.fair.waitingOf("heavy")).toBe(1)
  })

  it("keeps a key that asks exactly its share (open loop) at the next free slot, however long it runs", () => {
    const sim = simulation(2)
    // Requests of 50 to 150 (a fixed pseudo-random sequence), 100 on average: as real ones vary.
    let seed = 42
    const duration = () => 50 + ((seed = (seed * 1103515245 + 12345) % 2147483648) % 101)
    sim.onEnd = (job) => {
      if (job.key === "heavy") sim.enter("heavy", 1, duration())
    }
    for (let i = 0; i < 16; i++) sim.enter("heavy", 1, duration())
    const light: Array<Ticket<Job>> = []
    for (let t = 30; t < 100_000; t += 100) {
      sim.runUntil(t)
      light.push(sim.enter("light", 1, 90))
    }
    sim.runUntil(101_000)
    const waits = light.map((ticket) => ticket.startedAt - ticket.arrivedAt)
    expect(waits.every((wait) => wait >= 0)).toBe(true)
    expect(Math.max(...waits)).toBeLessThanOrEqual(150)
  })

  it.each([[2], [4], [5]])("shares %i slots 3:1 between two saturating keys of weights 3 and 1", (slots) => {
    const sim = simulation(slots)
    sim.onEnd = (job) => sim.enter(job.key, job.key === "a" ? 3 : 1, job.duration)
    for (let i = 0; i < 10; i++) {
      sim.enter("a", 3, 100 + i)
      sim.enter("b", 1, 100 + i)
    }
    sim.runUntil(100_000)
    const ratio = sim.slotTime.get("a")! / sim.slotTime.get("b")!
    expect(ratio).toBeGreaterThan(3 * 0.9)
    expect(ratio).toBeLessThan(3 * 1.1)
    expect(sim.fair.busy).toBe(slots)
  })

  it("gives no credit for idle time: a key that comes back shares equally from then on", () => {
    const sim = simulation(2)
    sim.onEnd = (job) => sim.enter(job.key)
    for (let i = 0; i < 4; i++) sim.enter("early")
    sim.runUntil(50_000)
    sim.slotTime.clear()
    for (let i = 0; i < 4; i++) sim.enter("late")
    sim.runUntil(60_000)
    const ratio = sim.slotTime.get("late")! / sim.slotTime.get("early")!
    expect(ratio).toBeGreaterThan(0.8)
    expect(ratio).toBeLessThan(1.25)
  })

  it("lets a waiting request leave: it never starts, and the queue's counts and positions follow", () => {
    const sim = simulation(1)
    sim.enter("a")
    const [first, second, third] = [sim.enter("a"), sim.enter("a"), sim.enter("a")]
    expect(sim.fair.positionOf(third!)).toBe(3)
    expect(sim.fair.cancel(second!)).toBe(true)
    expect(sim.fair.cancel(second!)).toBe(false)
    expect(sim.fair.waitingOf("a")).toBe(2)
    expect(sim.fair.positionOf(third!)).toBe(2)
    while (sim.running.length > 0) sim.step()
    expect(sim.startOrder.map((j) => j.id)).toEqual([0, first!.item.id, third!.item.id])
    expect(second!.running).toBe(false)
    expect(sim.fair.waiting).toBe(0)
  })
})
