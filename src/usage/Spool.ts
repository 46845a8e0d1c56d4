/**
 * The spool: usage records in append-only files under USAGE_SPOOL_DIR, for a worker without Redis.
 *
 * A record is one line, `r <length> <crc32> <json>`, written with one write(2) before it is
 * queued: once written it is in the kernel's page cache, so a killed process (`kill -9`, OOM)
 * loses nothing; fdatasync runs every FSYNC_MS in the background, so a lost host loses at most
 * that much. An acknowledgement is a line `a <id>`, written with the next sync (one lost in a
 * crash makes a duplicate, which receivers drop by `webhook-id`, never a loss). A torn line, the
 * only damage a crash can do, fails its length or checksum and is skipped.
 *
 * Files are segments of SEGMENT_RECORDS records, numbered in order. At start every segment is
 * read, the records not acknowledged are delivered again, and this run writes a new segment.
 * Segments are deleted oldest first once all their records are acknowledged; when more than
 * MAX_SEGMENTS pile up behind an old record the webhook has not taken, that record is copied
 * into the current segment so the old one can go.
 */
import { closeSync, fdatasync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, unlinkSync, writeSync } from "node:fs"
import { join } from "node:path"
import { crc32 } from "node:zlib"
import type { Outbox } from "./Outbox.js"
import type { Outgoing } from "./Queue.js"

const FSYNC_MS = 20
const SEGMENT_RECORDS = 2000
const MAX_SEGMENTS = 8
const NAME = /^(\d{12})\.spool$/

interface Segment {
  readonly seq: number
  readonly path: string
  /** Records in it not acknowledged. */
  live: number
}

const lineOf = (item: Outgoing) => {
  const length = Buffer.byteLength(item.json)
  return `r ${length} ${crc32(item.json).toString(16)} ${item.json}\n`
}

/** The records a segment's text holds, and the ids it acknowledges; torn lines are counted. */
export const parseSegment = (text: string) => {
  const records: Array<{ id: string; json: string }> = []
  const acks: Array<string> = []
  let torn = 0
  for (const line of text.split("\n")) {
    if (line === "") continue
    if (line.startsWith("a ")) {
      acks.push(line.slice(2))
      continue
    }
    const m = /^r (\d+) ([0-9a-f]+) /.exec(line)
    const json = m === null ? "" : line.slice(m[0].length)
    if (m === null || Buffer.byteLength(json) !== Number(m[1]) || crc32(json).toString(16) !== m[2]) {
      torn++
      continue
    }
    try {
      records.push({ id: String((JSON.parse(json) as { id: unknown }).id), json })
    } catch {
      torn++
    }
  }
  return { records, acks, torn }
}

export interface SpoolOutbox extends Outbox {
  /** Lines that failed their check when the spool was read at start. */
  readonly torn: number
}

/** Opens the spool in `dir` (made if need be), reading what earlier runs left. Synchronous: at start only. */
export const openSpool = (dir: string): SpoolOutbox => {
  mkdirSync(dir, { recursive: true })
  const segments: Array<Segment> = []
  const where = new Map<string, { segment: Segment; item: Outgoing }>()
  let torn = 0
  const now = Date.now()
  for (const name of readdirSync(dir).filter((n) => NAME.test(n)).sort()) {
    const segment: Segment = { seq: Number(NAME.exec(name)![1]), path: join(dir, name), live: 0 }
    segments.push(segment)
    const parsed = parseSegment(readFileSync(segment.path, "utf8"))
    torn += parsed.torn
    for (const { id, json } of parsed.records) where.set(id, { segment, item: { id, json, since: now } })
    for (const id of parsed.acks) where.delete(id)
  }
  for (const { segment } of where.values()) segment.live++
  let replayed: Array<Outgoing> | undefined = [...where.values()].map((w) => w.item)

  let current: Segment
  let fd: number
  let written = 0
  const roll = () => {
    const seq = (segments.at(-1)?.seq ?? 0) + 1
    current = { seq, path: join(dir, `${String(seq).padStart(12, "0")}.spool`), live: 0 }
    fd = openSync(current.path, "a")
    segments.push(current)
    written = 0
  }
  roll()

  let acks: Array<string> = []
  let dirty = false
  let syncing = false
  let timer: ReturnType<typeof setTimeout> | undefined

  const sync = () => {
    timer = undefined
    if (acks.length > 0) {
      writeSync(fd, acks.join(""))
      acks = []
    }
    if (!dirty || syncing) return
    dirty = false
    syncing = true
    fdatasync(fd, () => {
      syncing = false
      if (dirty) schedule()
    })
  }
  const schedule = () => {
    if (timer !== undefined) return
    timer = setTimeout(sync, FSYNC_MS)
    timer.unref()
  }

  const append = (item: Outgoing) => {
    writeSync(fd, lineOf(item))
    current.live++
    written++
    where.set(item.id, { segment: current, item })
    dirty = true
  }

  /** Deletes the oldest segments while nothing in them waits; copies forward what holds too many up. */
  const compact = () => {
    while (segments.length > 1 && segments[0] !== current && segments[0]!.live === 0) {
      unlinkSync(segments.shift()!.path)
    }
    if (segments.length > MAX_SEGMENTS) {
      const oldest = segments[0]!
      for (const { segment, item } of where.values()) {
        if (segment === oldest) append(item)
      }
      fsyncSync(fd)
      oldest.live = 0
      compact()
    }
  }

  return {
    mode: "spool",
    durable: true,
    torn,
    add: (item, ready) => {
      append(item)
      if (written >= SEGMENT_RECORDS) {
        sync()
        fsyncSync(fd)
        closeSync(fd)
        roll()
        compact()
      }
      schedule()
      ready()
    },
    ack: (items) => {
      for (const item of items) {
        const w = where.get(item.id)
        if (w === undefined) continue
        where.delete(item.id)
        w.segment.live--
        acks.push(`a ${item.id}\n`)
      }
      dirty = true
      schedule()
      compact()
    },
    claim: () => {
      const out = replayed ?? []
      replayed = undefined
      return Promise.resolve(out)
    },
    // Kept in the file: the next start replays it.
    release: () => {},
    ready: () => Promise.resolve(true),
    close: () => {
      if (timer !== undefined) clearTimeout(timer)
      sync()
      fsyncSync(fd)
      closeSync(fd)
      return Promise.resolve()
    }
  }
}
