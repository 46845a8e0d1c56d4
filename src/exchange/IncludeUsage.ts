/**
 * OpenAI streams report usage only when the request asks for it
 * (`stream_options.include_usage`). For a streamed /v1/chat/completions or /v1/completions request
 * that does not ask, the proxy asks on the client's behalf (src/policy/RequestPolicy.ts writes the
 * field where Go's decoder reads it last), meters the usage event, and removes it again here, so
 * the client receives exactly the bytes Ollama would have sent it.
 */
import type { IncomingHttpHeaders } from "node:http"
import type { Route } from "./Classify.js"
import type { ChunkFilter, ExchangeRewrite } from "./Exchange.js"
import type { Reading } from "./Reading.js"

const EVENT_END = Buffer.from("\n\n")
const EMPTY_CHOICES = Buffer.from(`"choices":[]`)
const USAGE = Buffer.from(`"usage":{`)
const DATA_OBJECT = Buffer.from("data: {")
const ZERO_USAGE = /^"usage":\{"[a-z_]+":0(?:,"[a-z_]+":0)*\}$/
/** An event longer than this is relayed as it comes: usage events are small. */
const MAX_HELD_EVENT = 1024 * 1024
const NOTHING = Buffer.alloc(0)

/**
 * Removes what include_usage added to an SSE stream: the usage event (`choices:[]` with `usage`)
 * and, on /v1/completions, the zero `usage` Ollama then puts in every other chunk.
 * Complete events are relayed at once; only an event split across chunks is held until its end.
 */
export class UsageEventFilter implements ChunkFilter {
  private held: Array<Buffer> = []
  private heldSize = 0
  /** Inside an event too long to hold, relayed untouched until its end. */
  private passing = false
  private endedWithNewline = false

  constructor(private readonly stripZeroUsage: boolean) {}

  push(chunk: Buffer): Buffer {
    const length = chunk.length
    if (length === 0) return chunk
    // The common chunk: whole events, none with usage. One search, no copy.
    if (this.heldSize === 0 && !this.passing && chunk[length - 1] === 10 && chunk[length - 2] === 10 && chunk.indexOf(USAGE) < 0) {
      return chunk
    }
    const out: Array<Buffer> = []
    let start = 0
    let changed = false
    if (this.passing || this.heldSize > 0) {
      changed = true
      const end = this.endOfEventInProgress(chunk)
      if (end < 0) {
        if (this.passing) out.push(chunk)
        else this.hold(chunk, out)
        this.endedWithNewline = chunk[chunk.length - 1] === 10
        return join(out)
      }
      if (this.passing) {
        this.passing = false
        out.push(chunk.subarray(0, end))
      } else {
        const event = Buffer.concat([...this.held, chunk.subarray(0, end)], this.heldSize + end)
        this.held = []
        this.heldSize = 0
        const kept = this.filterEvent(event)
        if (kept.length > 0) out.push(kept)
      }
      start = end
    }
    let end: number
    while ((end = chunk.indexOf(EVENT_END, start)) >= 0) {
      const event = chunk.subarray(start, end + 2)
      const kept = this.filterEvent(event)
      if (kept !== event) changed = true
      if (kept.length > 0) out.push(kept)
      start = end + 2
    }
    if (start < chunk.length) {
      changed = true
      this.hold(chunk.subarray(start), out)
      this.endedWithNewline = chunk[chunk.length - 1] === 10
    }
    return changed ? join(out) : chunk
  }

  end(): Buffer {
    const rest = this.heldSize > 0 ? Buffer.concat(this.held, this.heldSize) : NOTHING
    this.held = []
    this.heldSize = 0
    return rest
  }

  /** Just past the blank line that ends the event begun in an earlier chunk, or -1. */
  private endOfEventInProgress(chunk: Buffer): number {
    if (this.endedWithNewline && chunk[0] === 10) return 1
    const at = chunk.indexOf(EVENT_END)
    return at < 0 ? -1 : at + 2
  }

  private hold(bytes: Buffer, out: Array<Buffer>) {
    this.held.push(bytes)
    this.heldSize += bytes.length
    if (this.heldSize > MAX_HELD_EVENT) {
      out.push(...this.held)
      this.held = []
      this.heldSize = 0
      this.passing = true
    }
  }

  private filterEvent(event: Buffer): Buffer {
    if (event.indexOf(DATA_OBJECT) !== 0) return event
    const usageAt = event.indexOf(USAGE)
    if (usageAt < 0) return event
    if (event.indexOf(EMPTY_CHOICES) >= 0) return NOTHING
    return this.stripZeroUsage ? withoutZeroUsage(event, usageAt) : event
  }
}

const join = (parts: ReadonlyArray<Buffer>): Buffer => parts.length === 0 ? NOTHING : parts.length === 1 ? parts[0]! : Buffer.concat(parts)

/** The event without its `"usage":{...zeros}` member, or the event itself if the usage is not all zero. */
const withoutZeroUsage = (event: Buffer, usageAt: number): Buffer => {
  const close = event.indexOf("}", usageAt)
  if (close < 0 || !ZERO_USAGE.test(event.toString("latin1", usageAt, close + 1))) return event
  // Remove the member with the comma that joined it to its neighbour.
  if (event[usageAt - 1] === 44) return Buffer.concat([event.subarray(0, usageAt - 1), event.subarray(close + 1)])
  if (event[close + 1] === 44) return Buffer.concat([event.subarray(0, usageAt), event.subarray(close + 2)])
  return event
}

/** The filter for a response to a request the proxy added include_usage to. */
const usageEventFilter = (route: Route, status: number, headers: IncomingHttpHeaders): ChunkFilter | undefined =>
  status === 200 && (headers["content-type"] ?? "").startsWith("text/event-stream")
    ? new UsageEventFilter(route.operation === "completions")
    : undefined

/** The rewrite for those endpoints: hide the usage event again when the proxy was the one asking. */
export const includeUsageRewrite = (route: Route, reading: Reading): ExchangeRewrite => ({
  response: (status, headers) => (reading.requestFields?.usageInjected === true ? usageEventFilter(route, status, headers) : undefined)
})
