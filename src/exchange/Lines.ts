/**
 * Line framing for the response readers: NDJSON lines and SSE lines found in a body as it streams
 * past, split across chunks or coalesced, in bounded memory.
 *
 * These run synchronously inside the relay's data callback, so the rules are: find newlines with
 * indexOf on the Buffers, keep lines by reference, and never hold more than a bounded piece of one
 * line. A line longer than LINE_LIMIT is relayed untouched but not kept whole: its first and last
 * SALVAGE_WINDOW bytes are (a `LongLine`), and Json.ts reads what it can from those.
 */

export const LINE_LIMIT = 1024 * 1024
const SALVAGE_WINDOW = 64 * 1024

const NEWLINE = 10

/** A line too long to keep: its first and last bytes, where the figures are. */
export interface LongLine {
  readonly head: Buffer
  readonly tail: Buffer
}
export type Line = Buffer | LongLine

export const isLong = (line: Line): line is LongLine => !Buffer.isBuffer(line)

const isBlank = (bytes: Buffer, start = 0, end = bytes.length) => {
  for (let i = start; i < end; i++) {
    const b = bytes[i]
    if (b !== 32 && b !== 9 && b !== 13) return false
  }
  return true
}

/** The bytes of a line not ended yet; bounded: past the limit only its head and tail are kept. */
class PendingLine {
  /** A field, not a getter: it is read for every chunk. */
  empty = true
  private parts: Array<Buffer> = []
  private size = 0
  private head: Buffer | undefined
  private tail: Array<Buffer> = []
  private tailSize = 0

  add(bytes: Buffer) {
    if (bytes.length === 0) return
    this.empty = false
    if (this.head === undefined) {
      this.parts.push(bytes)
      this.size += bytes.length
      if (this.size > LINE_LIMIT) {
        const all = Buffer.concat(this.parts, this.size)
        // Copies, so the megabyte just joined can be freed.
        this.head = Buffer.from(all.subarray(0, SALVAGE_WINDOW))
        this.tail = [Buffer.from(all.subarray(all.length - SALVAGE_WINDOW))]
        this.tailSize = SALVAGE_WINDOW
        this.parts = []
        this.size = 0
      }
      return
    }
    this.tail.push(bytes)
    this.tailSize += bytes.length
    while (this.tailSize - this.tail[0]!.length >= SALVAGE_WINDOW) this.tailSize -= this.tail.shift()!.length
  }

  /** The line so far (undefined when there is none), and a fresh start. */
  take(): Line | undefined {
    let line: Line | undefined
    if (this.head !== undefined) {
      const tail = Buffer.concat(this.tail, this.tailSize)
      line = { head: this.head, tail: tail.subarray(Math.max(0, tail.length - SALVAGE_WINDOW)) }
    } else if (this.size > 0) {
      line = this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts, this.size)
    }
    this.parts = []
    this.size = 0
    this.head = undefined
    this.tail = []
    this.tailSize = 0
    this.empty = true
    return line
  }
}

/**
 * Keeps the last `keep` pieces of the body that end in a newline, by reference, and splits them
 * into lines only at the end. Ollama writes and flushes one line (or event) at a time, so nearly
 * every chunk starts and ends at a line boundary: for such a chunk the whole cost is a byte
 * comparison and an array push. Only a chunk that cuts a line is searched for newlines.
 */
export class TailLines {
  /** The last `keep` pieces, oldest first from `next`. */
  private readonly ring: Array<Line | undefined>
  private next = 0
  private readonly pending = new PendingLine()

  constructor(private readonly keep: number) {
    this.ring = new Array<Line | undefined>(keep)
  }

  push(chunk: Buffer): void {
    const length = chunk.length
    if (length === 0) return
    if (chunk[length - 1] === NEWLINE && this.pending.empty) {
      // A chunk that starts with a non-blank byte is not blank: no need to look further.
      const b = chunk[0]
      if ((b === 32 || b === 9 || b === 13 || b === NEWLINE) && isBlank(chunk)) return
      this.ring[this.next] = chunk
      if (++this.next === this.keep) this.next = 0
      return
    }
    const first = chunk.indexOf(NEWLINE)
    if (first < 0) {
      this.pending.add(chunk)
      return
    }
    this.pending.add(chunk.subarray(0, first + 1))
    this.remember(this.pending.take()!)
    const last = chunk.lastIndexOf(NEWLINE)
    if (last > first) this.remember(chunk.subarray(first + 1, last + 1))
    this.pending.add(chunk.subarray(last + 1))
  }

  /** The complete lines kept, in order, then the line the body ended without a newline. */
  end(): Array<Line> {
    const lines: Array<Line> = []
    for (let i = 0; i < this.keep; i++) {
      const piece = this.ring[(this.next + i) % this.keep]
      if (piece === undefined) continue
      if (isLong(piece)) {
        lines.push(piece)
        continue
      }
      let start = 0
      let nl: number
      while ((nl = piece.indexOf(NEWLINE, start)) >= 0) {
        if (!isBlank(piece, start, nl)) lines.push(piece.subarray(start, nl))
        start = nl + 1
      }
      if (start < piece.length && !isBlank(piece, start)) lines.push(piece.subarray(start))
    }
    const rest = this.pending.take()
    if (rest !== undefined && !(Buffer.isBuffer(rest) && isBlank(rest))) lines.push(rest)
    return lines
  }

  private remember(piece: Line) {
    // A piece of blank lines must not push out the line before it.
    if (Buffer.isBuffer(piece) && isBlank(piece)) return
    this.ring[this.next] = piece
    if (++this.next === this.keep) this.next = 0
  }
}

/** Hands every line of the body to `onLine`, split across chunks or not. */
export class LineReader {
  private readonly pending = new PendingLine()

  constructor(private readonly onLine: (line: Line) => void) {}

  push(chunk: Buffer): void {
    let nl = chunk.indexOf(NEWLINE)
    if (nl < 0) {
      this.pending.add(chunk)
      return
    }
    if (this.pending.empty) {
      this.onLine(chunk.subarray(0, nl))
    } else {
      this.pending.add(chunk.subarray(0, nl))
      this.onLine(this.pending.take()!)
    }
    let start = nl + 1
    while ((nl = chunk.indexOf(NEWLINE, start)) >= 0) {
      this.onLine(chunk.subarray(start, nl))
      start = nl + 1
    }
    this.pending.add(chunk.subarray(start))
  }

  end(): void {
    const line = this.pending.take()
    if (line !== undefined) this.onLine(line)
  }
}

/**
 * Counts the complete lines of a body (ended by a newline, not blank), optionally only those that
 * begin with one byte (`d` for SSE `data:` lines). One indexOf per line: about 10 us for a
 * 1000-line response, the only per-line work on the relay's path.
 */
export class LineCounter {
  count = 0
  /** The first byte of the line in progress; -1 before it has one. */
  private first = -1

  constructor(private readonly want: number = -1) {}

  push(chunk: Buffer): void {
    let at = 0
    for (;;) {
      if (this.first < 0 && at < chunk.length) this.first = chunk[at]!
      const nl = chunk.indexOf(NEWLINE, at)
      if (nl < 0) return
      const first = this.first
      if (first !== NEWLINE && first !== 13 && (this.want < 0 || first === this.want)) this.count++
      this.first = -1
      at = nl + 1
    }
  }
}
