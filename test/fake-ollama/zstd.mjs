// @ts-check
/**
 * The zstd request bodies of /v1/chat/completions, /v1/completions, /v1/embeddings,
 * /v1/responses and /v1/messages, decoded as server/cloud_proxy.go `cloudPassthroughMiddleware`
 * does (it runs first on those routes, then deletes the header, so middleware/openai.go
 * `ResponsesMiddleware`'s own copy never sees one):
 *
 *     if c.GetHeader("Content-Encoding") == "zstd" {
 *         reader, _ := zstd.NewReader(c.Request.Body, zstd.WithDecoderMaxMemory(8<<20))
 *         c.Request.Body = http.MaxBytesReader(c.Writer, io.NopCloser(reader), 20<<20)
 *     }
 *     body, err := readRequestBody(c.Request)   // io.ReadAll
 *     if err != nil { c.JSON(400, gin.H{"error": err.Error()}) }
 *
 * klauspost/compress v1.18 (zstd/framedec.go `frameDec.reset`, decoder.go): WithDecoderMaxMemory
 * also caps the window (newFrameDec: maxWindowSize = min(1<<29, maxDecodedSize)), so a frame whose
 * Window_Descriptor says more than 8 MiB fails with "window size exceeded", and a single-segment
 * frame whose content size is over 8 MiB with "decompressed size exceeds configured limit". Frames
 * follow one another (skippable ones are skipped); an empty body is an empty body. Over 20 MiB
 * decompressed, MaxBytesReader fails the read: "http: request body too large". Every error is a 400
 * in Ollama's native shape, whatever the route's API family.
 */
import { decompress } from "fzstd"

export const MAX_WINDOW = 8 << 20
export const MAX_DECOMPRESSED = 20 << 20

const MAGIC = 0xfd2fb528

/** `GetHeader("Content-Encoding") == "zstd"`: the first value, exact. */
export function isZstd(/** @type {string[]} */ rawHeaders) {
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if (String(rawHeaders[i]).toLowerCase() === "content-encoding") return rawHeaders[i + 1] === "zstd"
  }
  return false
}

/**
 * The decompressed body, or Ollama's error message.
 * @param {Buffer} body
 * @returns {{ body: Buffer } | { error: string }}
 */
export function decodeZstd(body) {
  /** @type {Buffer[]} */
  const out = []
  let total = 0
  let at = 0
  while (at < body.length) {
    if (body.length - at < 4) return { error: "unexpected EOF" }
    const magic = body.readUInt32LE(at)
    if ((magic & 0xfffffff0) === 0x184d2a50) {
      if (body.length - at < 8) return { error: "unexpected EOF" }
      at += 8 + body.readUInt32LE(at + 4)
      continue
    }
    if (magic !== MAGIC) return { error: "invalid input: magic number mismatch" }
    const frame = frameExtent(body, at)
    if ("error" in frame) return frame
    let data
    try {
      data = decompress(body.subarray(at, frame.end))
    } catch (e) {
      return { error: /unexpected EOF/.test(String(e)) ? "unexpected EOF" : `zstd: ${e instanceof Error ? e.message : String(e)}` }
    }
    total += data.length
    if (total > MAX_DECOMPRESSED) return { error: "http: request body too large" }
    out.push(Buffer.from(data.buffer, data.byteOffset, data.length))
    at = frame.end
  }
  return { body: Buffer.concat(out) }
}

/**
 * Reads a frame's header as frameDec.reset does, with its checks in its order, and walks its
 * block headers to where the frame ends.
 * @returns {{ end: number } | { error: string }}
 */
function frameExtent(/** @type {Buffer} */ b, /** @type {number} */ start) {
  let p = start + 4
  if (p >= b.length) return { error: "unexpected EOF" }
  const fhd = b[p++] ?? 0
  const singleSegment = (fhd & 0x20) !== 0
  if (fhd & 0x08) return { error: "reserved bit set on frame header" }
  let window = 0
  if (!singleSegment) {
    if (p >= b.length) return { error: "unexpected EOF" }
    const wd = b[p++] ?? 0
    const base = 2 ** (10 + (wd >> 3))
    window = base + (base / 8) * (wd & 7)
  }
  const dictBytes = [0, 1, 2, 4][fhd & 3] ?? 0
  const fcsFlag = fhd >> 6
  const fcsBytes = fcsFlag === 0 ? (singleSegment ? 1 : 0) : 1 << fcsFlag
  if (p + dictBytes + fcsBytes > b.length) return { error: "unexpected EOF" }
  p += dictBytes
  let contentSize = 0
  for (let i = 0; i < fcsBytes; i++) contentSize += (b[p + i] ?? 0) * 2 ** (8 * i)
  if (fcsBytes === 2) contentSize += 256
  p += fcsBytes
  if (window > MAX_WINDOW) return { error: "window size exceeded" }
  if (singleSegment) {
    window = Math.max(contentSize, 1024)
    if (window > MAX_WINDOW) return { error: "decompressed size exceeds configured limit" }
  }
  if (window < 1024) return { error: "invalid input: window size was too small" }
  for (;;) {
    if (p + 3 > b.length) return { error: "unexpected EOF" }
    const header = (b[p] ?? 0) | ((b[p + 1] ?? 0) << 8) | ((b[p + 2] ?? 0) << 16)
    p += 3
    const type = (header >> 1) & 3
    const size = header >>> 3
    if (type === 3) return { error: "invalid input: reserved block type encountered" }
    p += type === 1 ? 1 : size
    if (p > b.length) return { error: "unexpected EOF" }
    if (header & 1) break
  }
  if (fhd & 0x04) p += 4
  if (p > b.length) return { error: "unexpected EOF" }
  return { end: p }
}
