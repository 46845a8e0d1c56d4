/**
 * A request body's `Content-Encoding`, read as Ollama reads it, so the proxy checks the bytes
 * Ollama will act on.
 *
 * Ollama decompresses `zstd` on five routes only: `/v1/chat/completions`, `/v1/completions`,
 * `/v1/embeddings`, `/v1/messages` (server/cloud_proxy.go `cloudPassthroughMiddleware`) and
 * `/v1/responses` (middleware/openai.go `ResponsesMiddleware`), when `c.GetHeader("Content-Encoding")`
 * is exactly `zstd`: the first header value, in that case. It reads through
 * `zstd.NewReader(body, zstd.WithDecoderMaxMemory(8<<20))`, which refuses a frame whose window is
 * over 8 MiB, and `http.MaxBytesReader(..., 20<<20)`, which fails past 20 MiB decompressed.
 * Everywhere else the bytes are taken as they are, so a compressed body is bad JSON to Ollama.
 *
 * The proxy decodes zstd with the same two bounds and sends Ollama the decoded body, without the
 * header: what it checked is what Ollama reads. Any other encoding, or zstd where Ollama would not
 * decode it, is refused (415): the proxy cannot check it, and Ollama could not read it either.
 */
import { Decompress } from "fzstd"
import type { IncomingHttpHeaders } from "node:http"
import type { Route } from "./Classify.js"
import type { Refusal } from "./Errors.js"

const ZSTD_ROUTES = new Set(["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/messages", "/v1/responses"])

/** klauspost/compress `WithDecoderMaxMemory(8<<20)`: the largest window a frame may ask for. */
export const MAX_ZSTD_WINDOW = 8 << 20
/** `maxDecompressedBodySize` in both Go files. */
export const MAX_DECOMPRESSED = 20 << 20

const unsupported = (encoding: string): Refusal => ({
  status: 415,
  message: `unsupported Content-Encoding ${JSON.stringify(encoding)}: send the body uncompressed${""}`
})

const badZstd = (reason: string): Refusal => ({ status: 400, message: `failed to decompress zstd body: ${reason}` })

export type Decoded = { readonly body: Buffer; readonly decoded: boolean } | { readonly refusal: Refusal }

/** Skippable frames (magic 0x184D2A50 to 0x184D2A5F) carry no content; decoders pass over them. */
const isSkippable = (magic: number) => (magic & 0xfffffff0) === 0x184d2a50

/**
 * The window each zstd frame asks for (RFC 8878 3.1.1.1), checked before a byte is decoded:
 * klauspost's decoder refuses a frame over its limit, fzstd (what decodes here) has none.
 */
const windowRefusal = (data: Buffer): Refusal | undefined => {
  let at = 0
  while (at + 4 <= data.length) {
    const magic = data.readUInt32LE(at)
    if (isSkippable(magic)) {
      if (at + 8 > data.length) return badZstd("a skippable frame is cut short")
      at += 8 + data.readUInt32LE(at + 4)
      continue
    }
    if (magic !== 0xfd2fb528) return badZstd("not a zstd frame")
    const descriptor = data[at + 4]
    if (descriptor === undefined) return badZstd("a frame header is cut short")
    const fcsFlag = descriptor >> 6
    const singleSegment = (descriptor & 0x20) !== 0
    const dictionaryBytes = [0, 1, 2, 4][descriptor & 3]!
    if (dictionaryBytes > 0) return badZstd("a frame needs a dictionary")
    let window: number
    let p = at + 5
    if (singleSegment) {
      const size = [1, 2, 4, 8][fcsFlag]!
      if (p + size > data.length) return badZstd("a frame header is cut short")
      // Single segment: the window is the content size.
      window = size === 1
        ? data[p]!
        : size === 2
        ? data.readUInt16LE(p) + 256
        : size === 4
        ? data.readUInt32LE(p)
        : Number(data.readBigUInt64LE(p))
    } else {
      const wd = data[p]
      if (wd === undefined) return badZstd("a frame header is cut short")
      const base = 2 ** (10 + (wd >> 3))
      window = base + (base / 8) * (wd & 7)
      p++
    }
    if (window > MAX_ZSTD_WINDOW) return badZstd(`window size exceeded (a frame asks for ${window} bytes, at most ${MAX_ZSTD_WINDOW})`)
    // The rest of the frame is found by decoding it; the first frame's header is what a bomb sets.
    return undefined
  }
  return at === data.length ? undefined : badZstd("a frame is cut short")
}

class TooLarge extends Error {}

/** The body Ollama would read, or why the proxy refuses it. */
export const decodeBody = (route: Route, headers: IncomingHttpHeaders, body: Buffer): Decoded => {
  const encoding = headers["content-encoding"]
  if (encoding === undefined || encoding === "" || encoding === "identity") return { body, decoded: false }
  // Node joins repeated headers with ", ": "zstd, zstd" is not what Go's GetHeader would compare.
  if (encoding !== "zstd" || !ZSTD_ROUTES.has(route.route)) return { refusal: unsupported(encoding) }
  const refusal = windowRefusal(body)
  if (refusal !== undefined) return { refusal }
  const chunks: Array<Uint8Array> = []
  let size = 0
  const decoder = new Decompress((chunk) => {
    size += chunk.length
    if (size > MAX_DECOMPRESSED) throw new TooLarge()
    chunks.push(chunk)
  })
  try {
    decoder.push(body, true)
  } catch (error) {
    if (error instanceof TooLarge) {
      return { refusal: { status: 413, message: `the decompressed request body is larger than ${MAX_DECOMPRESSED} bytes` } }
    }
    return { refusal: badZstd(error instanceof Error ? error.message : String(error)) }
  }
  return { body: Buffer.concat(chunks, size), decoded: true }
}
