/**
 * The spool on a real directory: what one run wrote and did not see acknowledged, the next run
 * delivers; what a crash tore is skipped; acknowledged segments go.
 */
import { appendFileSync, mkdtempSync, readdirSync, readFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect, it } from "vitest"
import type { Outgoing } from "../src/usage/Queue.js"
import { openSpool, parseSegment } from "../src/usage/Spool.js"

const item = (n: number): Outgoing => ({ id: `r-${n}`, json: JSON.stringify({ id: `r-${n}`, user_name: "Zoë", n }), since: Date.now() })
const fresh = () => mkdtempSync(join(tmpdir(), "spool-test-"))
const add = (spool: ReturnType<typeof openSpool>, items: ReadonlyArray<Outgoing>) => {
  let ready = 0
  for (const i of items) spool.add(i, () => ready++)
  expect(ready).toBe(items.length)
}

describe("the spool", () => {
  it("a later run gets back every record not acknowledged, even if the first never closed (a crash)", async () => {
    const dir = fresh()
    const first = openSpool(dir)
    expect(await first.claim()).toEqual([])
    const items = Array.from({ length: 10 }, (_, n) => item(n))
    add(first, items)
    first.ack([items[1]!, items[4]!])
    // No close: the acknowledgements may not be written yet; the records were, at once.
    const second = openSpool(dir)
    const back = (await second.claim()).map((i) => i.id)
    expect(back).toEqual(expect.arrayContaining(items.filter((_, n) => n !== 1 && n !== 4).map((i) => i.id)))
    expect(await second.claim()).toEqual([])
    await first.close()
    // Closed, the first run's acknowledgements are on disk: a third run skips them.
    const third = openSpool(dir)
    const again = (await third.claim()).map((i) => i.id).sort()
    expect(again).toEqual(items.filter((_, n) => n !== 1 && n !== 4).map((i) => i.id).sort())
    expect((await third.claim()).map((i) => i.json)).toEqual([])
    await second.close()
    await third.close()
  })

  it("skips a torn line and counts it, keeping the records around it", async () => {
    const dir = fresh()
    const spool = openSpool(dir)
    add(spool, [item(0), item(1)])
    await spool.close()
    const [segment] = readdirSync(dir)
    const whole = readFileSync(join(dir, segment!), "utf8")
    // What a lost host leaves: the start of a line, and a line whose bytes changed.
    appendFileSync(join(dir, segment!), whole.split("\n")[0]!.replace("Zoë", "Zoe") + "\n" + whole.slice(0, 40))
    const next = openSpool(dir)
    expect(next.torn).toBe(2)
    expect((await next.claim()).map((i) => i.id).sort()).toEqual(["r-0", "r-1"])
    await next.close()
  })

  it("deletes segments once all their records are acknowledged, and carries old stragglers forward", async () => {
    const dir = fresh()
    const spool = openSpool(dir)
    const items = Array.from({ length: 5000 }, (_, n) => item(n))
    add(spool, items)
    expect(readdirSync(dir)).toHaveLength(3)
    spool.ack(items.slice(0, 3000))
    expect(readdirSync(dir)).toHaveLength(2)
    spool.ack(items.slice(3000))
    expect(readdirSync(dir)).toHaveLength(1)
    // One record never acknowledged does not keep every later segment alive.
    const straggler = item(99_999)
    add(spool, [straggler])
    for (let round = 0; round < 10; round++) {
      const batch = Array.from({ length: 2000 }, (_, n) => item(100_000 + round * 2000 + n))
      add(spool, batch)
      spool.ack(batch)
    }
    expect(readdirSync(dir).length).toBeLessThanOrEqual(9)
    await spool.close()
    const next = openSpool(dir)
    expect((await next.claim()).map((i) => i.id)).toEqual([straggler.id])
    await next.close()
    const lines = readdirSync(dir).flatMap((n) => parseSegment(readFileSync(join(dir, n), "utf8")).records)
    expect(lines.some((r) => r.id === straggler.id)).toBe(true)
  })
})
