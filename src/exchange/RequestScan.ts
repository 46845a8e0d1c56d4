/**
 * The request body's top-level `model` and `stream`, found as the body streams past to Ollama,
 * without buffering it.
 *
 * Keys are read as Ollama's Go decoder reads them: case-insensitively (`"Model"` sets the model
 * too) and with escapes decoded (`"mod\u0065l"`); where a key appears twice the last one wins. So
 * a rule that checks the model (a key's allowed models) must see the whole body: in `exhaustive`
 * mode the scanner reads to the end and counts every `model` key, and a body that names its model
 * twice, or with a name too long to keep, is one the rule refuses rather than guesses at.
 */

const QUOTE = 0x22
const BACKSLASH = 0x5c
const MAX_KEY = 32
const MAX_MODEL = 256

/**
 * A streaming scanner for the top level of a JSON object. Strings are skipped with indexOf, so
 * a body of base64 images costs a few native searches, not a loop over its bytes.
 */
export class RequestScanner {
  model: string | undefined
  /** The deprecated `name` that /api/show still takes for the model. */
  name: string | undefined
  stream: boolean | undefined
  /** How many top-level keys are `model` (in any case). */
  modelKeys = 0
  /** A model or name longer than this scanner keeps was seen. */
  overlong = false
  private depth = 0
  private inString = false
  /** Backslashes just before the chunk boundary, inside a string. */
  private escaped = false
  private expectingKey = false
  private key: string | undefined
  private capture: Array<number> | undefined
  private captureIsKey = false
  private literal = ""
  private done = false

  constructor(private readonly exhaustive = false) {}

  write(chunk: Uint8Array): void {
    if (this.done) return
    let i = 0
    const n = chunk.length
    while (i < n) {
      if (this.inString) {
        i = this.scanString(chunk, i)
        continue
      }
      const c = chunk[i]!
      if (this.literal !== "") {
        if (c >= 0x61 && c <= 0x7a) {
          this.literal += String.fromCharCode(c)
          i++
          continue
        }
        if (this.literal === "true" || this.literal === "false") this.stream = this.literal === "true"
        this.literal = ""
      } else if (this.depth === 1 && !this.expectingKey && this.key === "stream" && (c === 0x74 || c === 0x66)) {
        this.literal = String.fromCharCode(c) // the start of true or false
        i++
        continue
      }
      switch (c) {
        case QUOTE:
          this.inString = true
          if (this.depth === 1 && (this.expectingKey || this.key === "model" || this.key === "name")) {
            this.capture = []
            this.captureIsKey = this.expectingKey
          }
          break
        case 0x7b: // {
        case 0x5b: // [
          this.depth++
          if (this.depth === 1) this.expectingKey = c === 0x7b
          break
        case 0x7d: // }
        case 0x5d: // ]
          this.depth--
          if (this.depth <= 0) this.done = true
          break
        case 0x3a: // :
          if (this.depth === 1) this.expectingKey = false
          break
        case 0x2c: // ,
          if (this.depth === 1) {
            this.expectingKey = true
            this.key = undefined
          }
          break
      }
      i++
      if (this.done || (!this.exhaustive && this.model !== undefined && this.stream !== undefined)) {
        this.done = true
        return
      }
    }
  }

  private scanString(chunk: Uint8Array, start: number): number {
    let i = start
    if (this.escaped) {
      // the character after a backslash that ended the previous chunk
      this.escaped = false
      this.captureByte(chunk[i]!)
      i++
    }
    for (;;) {
      const q = chunk.indexOf(QUOTE, i)
      const end = q < 0 ? chunk.length : q
      let backslashes = 0
      for (let j = end - 1; j >= i && chunk[j] === BACKSLASH; j--) backslashes++
      if (this.capture !== undefined) { for (let j = i; j < end; j++) this.captureByte(chunk[j]!) }
      if (q < 0) {
        this.escaped = backslashes % 2 === 1
        return chunk.length
      }
      if (backslashes % 2 === 1) {
        this.captureByte(QUOTE)
        i = q + 1
        continue
      }
      this.inString = false
      this.endCapture()
      return q + 1
    }
  }

  private captureByte(b: number) {
    if (this.capture === undefined) return
    if (this.capture.length < (this.captureIsKey ? MAX_KEY : MAX_MODEL)) this.capture.push(b)
    else if (!this.captureIsKey) this.overlong = true
  }

  private endCapture() {
    if (this.capture === undefined) return
    const raw = Buffer.from(this.capture).toString("utf8")
    this.capture = undefined
    let text = raw
    try {
      // the bytes still hold JSON escapes
      if (raw.includes("\\")) text = JSON.parse(`"${raw}"`)
    } catch {
      // a cut escape at the length cap: keep the raw text
    }
    if (this.captureIsKey) {
      this.key = text.toLowerCase()
      if (this.key === "model") this.modelKeys++
    } else if (this.key === "model") this.model = text
    else if (this.key === "name") this.name = text
  }
}
