/**
 * The members of a JSON object as Go's `encoding/json` decoder matches them to a struct's fields,
 * read once from a body held whole, without parsing the values the proxy has no rule for (a base64
 * image is skipped with one indexOf per string).
 *
 * What Go does, and this mirrors (encoding/json `decode.go` `(*decodeState).object`, `fold.go`
 * `foldName`):
 * - a key matches a field whatever its letter case, with Unicode's simple folding: `ſ` (U+017F) is
 *   an `s` and `K` (U+212A, the Kelvin sign) a `k`, so `"ſtream"` sets `stream`; escapes are decoded
 *   first (`"mod\u0065l"` is `model`);
 * - where a field's key comes twice, the last one wins, and an object decoded into a field already
 *   set is merged into it: rather than follow every merge, the proxy refuses a body that names a
 *   field it has a rule for more than once (`duplicated`), which no client does by accident;
 * - the decoder reads the first JSON value and ignores what follows (`json.Decoder.Decode`, which
 *   gin's ShouldBindJSON uses), but `json.Unmarshal` (Ollama's cloud passthrough) fails on it: a body
 *   with anything but white space after its object is refused here, so both read the same object.
 */

export interface Member {
  /** The key as Go folds it: ASCII lower case, `ſ` as `s`, `K` as `k`. */
  readonly key: string
  /** Where the member starts (its key's opening quote) and ends (just past its value). */
  readonly start: number
  readonly end: number
  /** Where its value starts and ends. */
  readonly valueStart: number
  readonly valueEnd: number
}

export interface ObjectReading {
  readonly members: ReadonlyArray<Member>
  /** Just past the closing brace. */
  readonly close: number
}

export class JsonSyntaxError extends Error {}

const QUOTE = 0x22
const BACKSLASH = 0x5c

const isSpace = (c: number | undefined) => c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d

/** A key as Go's fold compares it. Non-ASCII letters other than these two never equal an ASCII name. */
export const foldKey = (key: string): string => {
  let out = ""
  for (const ch of key) out += ch === "\u017f" ? "s" : ch === "\u212a" ? "k" : ch.length === 1 && ch < "\x80" ? ch.toLowerCase() : ch
  return out
}

/** Just past the string that starts at `at` (an opening quote). */
const skipString = (buf: Uint8Array, at: number, end: number): number => {
  let i = at + 1
  for (;;) {
    const q = buf.indexOf(QUOTE, i)
    if (q < 0 || q >= end) throw new JsonSyntaxError("a string is not closed")
    let backslashes = 0
    for (let j = q - 1; j >= i && buf[j] === BACKSLASH; j--) backslashes++
    if (backslashes % 2 === 0) return q + 1
    i = q + 1
  }
}

const skipSpace = (buf: Uint8Array, at: number, end: number): number => {
  let i = at
  while (i < end && isSpace(buf[i])) i++
  return i
}

/** Just past the value that starts at `at`: strings, objects and arrays by their brackets, literals by their letters. */
const skipValue = (buf: Uint8Array, at: number, end: number): number => {
  const c = buf[at]
  if (c === QUOTE) return skipString(buf, at, end)
  if (c === 0x7b || c === 0x5b) {
    let depth = 0
    let i = at
    while (i < end) {
      const b = buf[i]!
      if (b === QUOTE) {
        i = skipString(buf, i, end)
        continue
      }
      if (b === 0x7b || b === 0x5b) depth++
      else if (b === 0x7d || b === 0x5d) {
        if (--depth === 0) return i + 1
      }
      i++
    }
    throw new JsonSyntaxError("an object or array is not closed")
  }
  let i = at
  // numbers and true/false/null: up to the next delimiter
  while (i < end) {
    const b = buf[i]!
    if (b === 0x2c || b === 0x7d || b === 0x5d || isSpace(b)) break
    i++
  }
  if (i === at) throw new JsonSyntaxError("a value is missing")
  return i
}

/** The key whose string runs from `start` (its opening quote) to `end` (just past its closing one). */
const decodeKey = (buf: Uint8Array, start: number, end: number): string => {
  const raw = Buffer.from(buf.buffer, buf.byteOffset + start, end - start).toString("utf8")
  if (!raw.includes("\\")) return raw.slice(1, -1)
  try {
    return JSON.parse(raw) as string
  } catch {
    throw new JsonSyntaxError("a key has a bad escape")
  }
}

/** The members of the object that starts at `at` (white space before it allowed). */
export const readObject = (buf: Uint8Array, at = 0, end = buf.length): ObjectReading => {
  let i = skipSpace(buf, at, end)
  if (buf[i] !== 0x7b) throw new JsonSyntaxError("the body is not a JSON object")
  i = skipSpace(buf, i + 1, end)
  const members: Array<Member> = []
  if (buf[i] === 0x7d) return { members, close: i + 1 }
  for (;;) {
    if (buf[i] !== QUOTE) throw new JsonSyntaxError("a key is not a string")
    const start = i
    const keyEnd = skipString(buf, i, end)
    const key = foldKey(decodeKey(buf, start, keyEnd))
    i = skipSpace(buf, keyEnd, end)
    if (buf[i] !== 0x3a) throw new JsonSyntaxError("a key has no value")
    const valueStart = skipSpace(buf, i + 1, end)
    const valueEnd = skipValue(buf, valueStart, end)
    members.push({ key, start, end: valueEnd, valueStart, valueEnd })
    i = skipSpace(buf, valueEnd, end)
    if (buf[i] === 0x2c) {
      i = skipSpace(buf, i + 1, end)
      continue
    }
    if (buf[i] === 0x7d) return { members, close: i + 1 }
    throw new JsonSyntaxError("members are not separated by commas")
  }
}

/** The body's object, with nothing but white space after it. */
export const readBodyObject = (body: Uint8Array): ObjectReading => {
  const object = readObject(body)
  if (skipSpace(body, object.close, body.length) !== body.length) throw new JsonSyntaxError("the body has more after its JSON object")
  return object
}

/** The members with this (folded) key, in order. */
export const membersNamed = (object: ObjectReading, key: string): ReadonlyArray<Member> => object.members.filter((m) => m.key === key)

/** A member's value, parsed (values the proxy has rules for are small). */
export const valueOf = (body: Uint8Array, member: Member): unknown => {
  try {
    return JSON.parse(Buffer.from(body.buffer, body.byteOffset + member.valueStart, member.valueEnd - member.valueStart).toString("utf8"))
  } catch {
    throw new JsonSyntaxError(`the value of "${member.key}" is not valid JSON`)
  }
}

/** The value's bytes as a Buffer view (no copy). */
export const valueBytes = (body: Buffer, member: Member): Buffer => body.subarray(member.valueStart, member.valueEnd)

/**
 * The body with some top-level members removed and others appended at the end (where Go reads
 * them last). Every other byte is the client's, in its order.
 */
export const editObject = (
  body: Buffer,
  object: ObjectReading,
  remove: ReadonlyArray<Member>,
  append: ReadonlyArray<readonly [key: string, json: string]>
): Buffer => {
  const dropped = new Set(remove)
  const kept = object.members.filter((m) => !dropped.has(m))
  const parts: Array<string | Buffer> = []
  const open = body.indexOf(0x7b)
  parts.push(body.subarray(0, open + 1))
  let first = true
  for (const m of kept) {
    if (!first) parts.push(",")
    parts.push(body.subarray(m.start, m.end))
    first = false
  }
  for (const [key, json] of append) {
    if (!first) parts.push(",")
    parts.push(`${JSON.stringify(key)}:${json}`)
    first = false
  }
  parts.push("}")
  return Buffer.concat(parts.map((p) => (typeof p === "string" ? Buffer.from(p) : p)))
}
