/**
 * zstd frames built byte by byte (RFC 8878 section 3.1.1), for bodies a compressor would not
 * make: a window over what Ollama's decoder accepts, a content size it refuses up front, or a
 * small frame of RLE blocks that decompresses to tens of MiB (a bomb).
 */

export type Block = { readonly raw: Uint8Array } | { readonly rle: number; readonly size: number }

/** Block_Maximum_Size: no block may hold more than 128 KiB. */
export const MAX_BLOCK = 128 * 1024

export interface FrameOptions {
  /** Window_Descriptor's exponent: the window is 2^windowLog (plus mantissa eighths). Default 20 (1 MiB). */
  readonly windowLog?: number
  readonly windowMantissa?: number
  /** A single-segment frame with this Frame_Content_Size (4 bytes) instead of a window. */
  readonly contentSize?: number
}

export function zstdFrame(blocks: ReadonlyArray<Block>, options: FrameOptions = {}): Buffer {
  const parts: Array<Uint8Array> = [Buffer.from([0x28, 0xb5, 0x2f, 0xfd])]
  if (options.contentSize !== undefined) {
    // Frame_Header_Descriptor: FCS flag 2 (4 bytes), Single_Segment set.
    const fcs = Buffer.alloc(4)
    fcs.writeUInt32LE(options.contentSize)
    parts.push(Buffer.from([0x80 | 0x20]), fcs)
  } else {
    const log = options.windowLog ?? 20
    parts.push(Buffer.from([0x00, ((log - 10) << 3) | (options.windowMantissa ?? 0)]))
  }
  blocks.forEach((block, i) => {
    const last = i === blocks.length - 1 ? 1 : 0
    const [type, size, data] = "raw" in block ? [0, block.raw.length, block.raw] : [1, block.size, Uint8Array.of(block.rle)]
    const header = last | (type << 1) | (size << 3)
    parts.push(Buffer.from([header & 0xff, (header >> 8) & 0xff, (header >> 16) & 0xff]), data)
  })
  return Buffer.concat(parts)
}

/** A frame of RLE blocks of one byte value, `total` bytes once decompressed. */
export function zstdRepeat(byte: number, total: number, options: FrameOptions = {}): Buffer {
  const blocks: Array<Block> = []
  for (let left = total; left > 0; left -= MAX_BLOCK) blocks.push({ rle: byte, size: Math.min(MAX_BLOCK, left) })
  return zstdFrame(blocks, options)
}
