/**
 * Fair shares of a fixed number of slots among parties (API keys), by virtual time: a party's
 * virtual time is the slot time it has had, divided by its weight, counting its requests still
 * running. A free slot goes to the waiting party with the least virtual time, so over a busy
 * period each party gets slot time in proportion to its weight, whatever the number of requests
 * it keeps waiting. The schedule is work-conserving: a slot is never left free while anyone waits,
 * so a party alone gets every slot. Requests of one party start in their order of arrival.
 *
 * Slot time, not tokens: it is what a request costs the GPU (a long prompt, an embedding, a
 * stream cut short), and it is known when the request ends without reading its figures.
 *
 * Before virtual time, the share of the moment: a party running fewer requests than its share of
 * the slots (slots x its weight / the weights of the parties running or waiting) goes before the
 * parties at or above theirs. Virtual time alone lets a key that asks exactly its share (one
 * request of a second every second, of two slots) draw level with a key that keeps a backlog, and
 * then wait behind it half the time: its waits grow like a queue at full load (measured with
 * bench/fairness.mjs: p95 2.3-2.7 s for 1 s requests, against 1.1 s over shorter runs). With the
 * share of the moment first, it gets the next slot that frees; weights still decide the long run
 * by virtual time, among the parties under their share or among those at it.
 *
 * A party that was idle (nothing running, nothing waiting) rejoins at the virtual clock, the least
 * virtual time of the parties that were busy when a slot was last given: it gets no credit for
 * the time it was away, else a key silent for an hour would then hold every slot for an hour. So
 * a key that asks now and then starts ahead of a key that keeps many requests waiting, and its
 * wait is the time until the next slot frees.
 *
 * Plain objects and callbacks, no Effect: this runs on the request path (src/exchange/Boundary.ts).
 */

/** One request's place: waiting, then holding a slot, then done (released or cancelled). */
export class Ticket<T> {
  /** When it held a slot; NaN while it waits. */
  startedAt = Number.NaN
  /** 0 waiting, 1 holding a slot, 2 done. */
  state: 0 | 1 | 2 = 0

  constructor(readonly party: Party<T>, readonly item: T, readonly arrivedAt: number) {}

  get running(): boolean {
    return this.state === 1
  }
}

/** One party (key): its queue and the service it had. */
export class Party<T> {
  /** Weighted slot time of its finished requests, plus what it was lifted by on rejoining. */
  done = 0
  running = 0
  /** The sum of its running requests' start times: their slot time so far is running * now - this. */
  startedSum = 0
  waiting = 0
  queue: Array<Ticket<T>> = []
  head = 0

  constructor(readonly name: string, public weight: number) {}

  virtualTime(now: number): number {
    return this.done + (this.running * now - this.startedSum) / this.weight
  }

  get idle(): boolean {
    return this.running === 0 && this.waiting === 0
  }

  /** The oldest waiting ticket. */
  first(): Ticket<T> | undefined {
    while (this.head < this.queue.length) {
      const ticket = this.queue[this.head]!
      if (ticket.state === 0) return ticket
      this.head++
    }
    return undefined
  }

  /** Drops the tickets that left, once they are most of the array. */
  compact(): void {
    if (this.head > 32 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head)
      this.head = 0
    }
  }
}

export class Fair<T> {
  busy = 0
  waiting = 0
  private readonly parties = new Map<string, Party<T>>()
  /** The parties with requests waiting. */
  private readonly backlogged = new Set<Party<T>>()
  /** The parties with requests running or waiting: their weights divide the slots. */
  private readonly active = new Set<Party<T>>()
  /** The virtual clock: where an idle party rejoins. */
  private clock = 0

  constructor(
    readonly slots: number,
    /** A waiting request got a slot: it is `running` now, and must be released when it ends. */
    private readonly started: (ticket: Ticket<T>) => void,
    private readonly now: () => number = () => performance.now()
  ) {}

  partyOf(name: string, weight: number): Party<T> {
    let party = this.parties.get(name)
    if (party === undefined) this.parties.set(name, party = new Party(name, weight))
    else party.weight = weight
    return party
  }

  /** The requests of a party waiting now. */
  waitingOf(name: string): number {
    return this.parties.get(name)?.waiting ?? 0
  }

  /** The requests of a party holding slots now. */
  runningOf(name: string): number {
    return this.parties.get(name)?.running ?? 0
  }

  /**
   * A request asks for a slot: it holds one at once when one is free (`ticket.running`), else it
   * waits, and `started` is called when it gets one.
   */
  enter(name: string, weight: number, item: T): Ticket<T> {
    const now = this.now()
    const party = this.partyOf(name, weight)
    if (party.idle && party.done < this.clock) party.done = this.clock
    this.active.add(party)
    const ticket = new Ticket(party, item, now)
    // A slot is free only while nobody waits: each release gives it to the next at once.
    if (this.busy < this.slots) {
      this.hold(ticket, now)
      return ticket
    }
    party.queue.push(ticket)
    party.waiting++
    this.waiting++
    this.backlogged.add(party)
    return ticket
  }

  /** A waiting request leaves the queue (its client hung up, it waited too long); false if it was not waiting. */
  cancel(ticket: Ticket<T>): boolean {
    if (ticket.state !== 0) return false
    ticket.state = 2
    const party = ticket.party
    party.waiting--
    this.waiting--
    if (party.waiting === 0) {
      this.backlogged.delete(party)
      party.queue = []
      party.head = 0
    }
    if (party.idle) this.active.delete(party)
    return true
  }

  /** A running request ended: its slot time is charged to its party, and the slot goes to the next. */
  release(ticket: Ticket<T>): void {
    if (ticket.state !== 1) return
    ticket.state = 2
    const now = this.now()
    const party = ticket.party
    party.running--
    party.startedSum -= ticket.startedAt
    party.done += (now - ticket.startedAt) / party.weight
    if (party.running === 0) party.startedSum = 0
    if (party.idle) this.active.delete(party)
    this.busy--
    this.fill(now)
  }

  /** The place of a waiting ticket in its party's queue: 1 = next of its party. */
  positionOf(ticket: Ticket<T>): number {
    const { head, queue } = ticket.party
    let position = 1
    for (let i = head; i < queue.length && queue[i] !== ticket; i++) if (queue[i]!.state === 0) position++
    return position
  }

  private hold(ticket: Ticket<T>, now: number) {
    ticket.state = 1
    ticket.startedAt = now
    const party = ticket.party
    party.running++
    party.startedSum += now
    this.busy++
  }

  /** Gives free slots to the waiting parties with the least virtual time. */
  private fill(now: number) {
    while (this.busy < this.slots && this.waiting > 0) {
      let weights = 0
      for (const party of this.active) weights += party.weight
      let best: Party<T> | undefined
      let bestUnder = false
      let bestTime = Infinity
      let bestArrival = Infinity
      let least = Infinity
      for (const party of this.backlogged) {
        const under = party.running * weights < this.slots * party.weight
        const time = party.virtualTime(now)
        const arrival = party.first()!.arrivedAt
        if (time < least) least = time
        const better = under !== bestUnder ? under : time < bestTime || (time === bestTime && arrival < bestArrival)
        if (best === undefined || better) {
          best = party
          bestUnder = under
          bestTime = time
          bestArrival = arrival
        }
      }
      if (least > this.clock) this.clock = least
      const party = best!
      const ticket = party.first()!
      party.head++
      party.waiting--
      this.waiting--
      if (party.waiting === 0) this.backlogged.delete(party)
      party.compact()
      this.hold(ticket, now)
      this.started(ticket)
    }
  }
}
