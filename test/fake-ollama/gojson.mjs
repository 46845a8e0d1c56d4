// @ts-check
/**
 * Go's encoding/json (v1) decoding into a struct, as `ollama serve` binds request bodies
 * (gin's ShouldBindJSON = json.NewDecoder(body).Decode(&req); the /v1 middlewares decode the same
 * way). JSON.parse reads the same bytes differently, and a proxy tested against a double that uses
 * it proves nothing. What Go does, from encoding/json's decode.go (`object`, `array`,
 * `literalStore`, `indirect`) and fold.go (`foldName`):
 *
 * - An object key matches a struct field by its exact name first, else by `foldName`: ASCII case
 *   folded, and a non-ASCII rune folded to the smallest rune of its case orbit, so `ſ` (U+017F)
 *   is `s` and `K` (U+212A) is `k` (the same as bytes.EqualFold). Unknown keys are ignored.
 * - Keys are applied in order, so the last of `"stream"` and `"Stream"` wins.
 * - An object decoded into a struct, into a non-nil pointer to a struct, or into a non-nil map
 *   merges into what is there (Go reuses the value). A map's own keys are exact, and each of its
 *   values is decoded fresh.
 * - An array decoded into a slice decodes element i into the existing element i (a struct
 *   element merges), then cuts the slice to the array's length; the backing array keeps the
 *   elements cut off, and a later longer array decodes into them again.
 * - `null` sets a pointer, map, slice or interface to nil and leaves anything else as it is.
 * - A type mismatch is remembered and decoding goes on; the first one is the error. A custom
 *   UnmarshalJSON's error stops decoding at once.
 *
 * Values come out as plain JS: a struct as an object holding only the fields that were set, a
 * nil pointer / map / slice / interface as `undefined`, maps and `any` objects without prototype.
 */

/**
 * @typedef {{ t: "obj", entries: Array<[string, Node]> } | { t: "arr", items: Node[] } | { t: "str", v: string }
 *   | { t: "num", v: number, raw: string } | { t: "bool", v: boolean } | { t: "null" }} Node
 *
 * @typedef {{ k: "string" | "bool" | "int" | "float" | "any" } | { k: "ptr", e: Shape } | { k: "slice", e: Shape, go: string }
 *   | { k: "map", e: Shape, go: string } | { k: "struct", name: string, fields: Record<string, Shape> }
 *   | { k: "custom", go: string, decode: (node: Node) => { value: unknown } | { error: string } }} Shape
 */

/** Field shapes. `go` names the Go type in type errors. */
export const T = {
  string: /** @type {Shape} */ ({ k: "string" }),
  bool: /** @type {Shape} */ ({ k: "bool" }),
  int: /** @type {Shape} */ ({ k: "int" }),
  float: /** @type {Shape} */ ({ k: "float" }),
  /** interface{} and json.RawMessage: replaced whole; an object in it is a map (exact keys, last wins). */
  any: /** @type {Shape} */ ({ k: "any" }),
  ptr: (/** @type {Shape} */ e) => /** @type {Shape} */ ({ k: "ptr", e }),
  slice: (/** @type {Shape} */ e, go = "[]interface {}") => /** @type {Shape} */ ({ k: "slice", e, go }),
  map: (/** @type {Shape} */ e, go = "map[string]interface {}") => /** @type {Shape} */ ({ k: "map", e, go }),
  struct: (/** @type {string} */ name, /** @type {Record<string, Shape>} */ fields) => /** @type {Shape} */ ({ k: "struct", name, fields }),
  /** A type with its own UnmarshalJSON: it gets the value (`null` too, unless behind a pointer) and replaces. */
  custom: (
    /** @type {string} */ go,
    /** @type {(node: Node) => { value: unknown } | { error: string }} */ decode
  ) => /** @type {Shape} */ ({ k: "custom", go, decode })
}

/**
 * Go's foldName for matching keys to field names (which are ASCII): ASCII letters upper-cased,
 * ſ and K folded to S and K; any other rune stays itself, and so can never match.
 */
export function foldName(/** @type {string} */ s) {
  let out = ""
  for (const c of s) {
    if (c >= "a" && c <= "z") out += c.toUpperCase()
    else if (c === "\u017f") out += "S"
    else if (c === "\u212a") out += "K"
    else out += c
  }
  return out
}

// ---------------------------------------------------------------------------------------------
// An order-keeping parser (JSON.parse drops duplicate keys). The text is valid JSON: decodeBody
// has checked it with JSON.parse first, for Go's syntax error messages.

/** @returns {Node} */
export function parseNodes(/** @type {string} */ text) {
  let i = 0
  const ws = () => {
    while (i < text.length && " \t\n\r".includes(text[i] ?? "")) i++
  }
  const str = () => {
    const start = i
    i++
    while (text[i] !== "\"") i += text[i] === "\\" ? 2 : 1
    i++
    return /** @type {string} */ (JSON.parse(text.slice(start, i)))
  }
  /** @returns {Node} */
  const value = () => {
    ws()
    const c = text[i]
    if (c === "{") {
      i++
      /** @type {Array<[string, Node]>} */
      const entries = []
      ws()
      if (text[i] === "}") return i++, { t: "obj", entries }
      for (;;) {
        ws()
        const key = str()
        ws()
        i++ // :
        entries.push([key, value()])
        ws()
        if (text[i++] === "}") return { t: "obj", entries }
      }
    }
    if (c === "[") {
      i++
      /** @type {Node[]} */
      const items = []
      ws()
      if (text[i] === "]") return i++, { t: "arr", items }
      for (;;) {
        items.push(value())
        ws()
        if (text[i++] === "]") return { t: "arr", items }
      }
    }
    if (c === "\"") return { t: "str", v: str() }
    if (text.startsWith("true", i)) return i += 4, { t: "bool", v: true }
    if (text.startsWith("false", i)) return i += 5, { t: "bool", v: false }
    if (text.startsWith("null", i)) return i += 4, { t: "null" }
    const m = /^-?\d+(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i, i + 400))
    const raw = m?.[0] ?? ""
    i += raw.length
    return { t: "num", v: Number(raw), raw }
  }
  return value()
}

/** The Go kind named in UnmarshalTypeError's Value. */
function kindOf(/** @type {Node} */ n) {
  return n.t === "obj" ? "object" : n.t === "arr" ? "array" : n.t === "str" ? "string" : n.t === "num" ? "number" : n.t
}

/**
 * A node as an interface{} value: objects become maps (exact keys, the last one wins).
 * @returns {unknown}
 */
export function plain(/** @type {Node} */ n) {
  switch (n.t) {
    case "obj": {
      /** @type {Record<string, unknown>} */
      const o = Object.create(null)
      for (const [k, v] of n.entries) o[k] = plain(v)
      return o
    }
    case "arr":
      return n.items.map(plain)
    case "null":
      return null
    default:
      return n.v
  }
}

const BACKING = Symbol("backing array")

class Decoder {
  constructor() {
    /** @type {string | undefined} the first type mismatch (Go's saveError) */
    this.saved = undefined
    /** @type {string[]} JSON names of the fields being decoded, for error messages */
    this.path = []
    /** @type {string} the innermost struct */
    this.struct = ""
  }

  mismatch(/** @type {Node} */ n, /** @type {string} */ goType) {
    const value = n.t === "num" ? `number ${n.raw}` : kindOf(n)
    this.saved ??= this.path.length > 0
      ? `json: cannot unmarshal ${value} into Go struct field ${this.struct}.${this.path.join(".")} of type ${goType}`
      : `json: cannot unmarshal ${value} into Go value of type ${goType}`
  }

  /**
   * @param {Shape} s
   * @param {Node} n
   * @param {unknown} cur the value already there (Go decodes into it)
   * @returns {unknown}
   */
  value(s, n, cur) {
    switch (s.k) {
      case "ptr":
        return n.t === "null" ? undefined : this.value(s.e, n, cur)
      case "custom": {
        const r = s.decode(n)
        if ("error" in r) throw new GoDecodeError(r.error)
        return r.value
      }
      case "any":
        return n.t === "null" ? undefined : plain(n)
      case "string":
        if (n.t === "str") return n.v
        if (n.t !== "null") this.mismatch(n, "string")
        return cur
      case "bool":
        if (n.t === "bool") return n.v
        if (n.t !== "null") this.mismatch(n, "bool")
        return cur
      case "int":
        if (n.t === "num" && /^-?\d+$/.test(n.raw)) return n.v
        if (n.t !== "null") this.mismatch(n, "int")
        return cur
      case "float":
        if (n.t === "num") return n.v
        if (n.t !== "null") this.mismatch(n, "float64")
        return cur
      case "map": {
        if (n.t === "null") return undefined
        if (n.t !== "obj") return this.mismatch(n, s.go), cur
        /** @type {Record<string, unknown>} */
        const m = /** @type {Record<string, unknown>} */ (cur) ?? Object.create(null)
        for (const [k, v] of n.entries) m[k] = this.value(s.e, v, undefined)
        return m
      }
      case "slice": {
        if (n.t === "null") return undefined
        if (n.t !== "arr") return this.mismatch(n, s.go), cur
        const old = /** @type {unknown[] & { [BACKING]?: unknown[] }} */ (cur)
        /** @type {unknown[]} */
        const backing = old?.[BACKING] ?? (old ? [...old] : [])
        const out =
          /** @type {unknown[] & { [BACKING]?: unknown[] }} */ (n.items.map((item, i) => (backing[i] = this.value(s.e, item, backing[i]))))
        Object.defineProperty(out, BACKING, { value: backing, enumerable: false })
        return out
      }
      case "struct": {
        if (n.t === "null") return cur
        if (n.t !== "obj") return this.mismatch(n, s.name), cur
        /** @type {Record<string, unknown>} */
        const o = /** @type {Record<string, unknown>} */ (cur) ?? {}
        const names = Object.keys(s.fields)
        for (const [key, v] of n.entries) {
          const name = key in s.fields ? key : names.find((f) => foldName(f) === foldName(key))
          if (name === undefined) continue
          const outer = this.struct
          this.struct = s.name.replace(/^.*\./, "")
          this.path.push(name)
          o[name] = this.value(/** @type {Shape} */ (s.fields[name]), v, o[name])
          this.path.pop()
          this.struct = outer
        }
        return o
      }
    }
  }
}

export class GoDecodeError extends Error {}

/**
 * Decodes a parsed body into a struct shape as Go does (the top-level value must be an object,
 * or null: nothing is set).
 * @param {Shape & { k: "struct" }} shape
 * @param {Node} node
 * @returns {{ value: Record<string, unknown> } | { error: string }}
 */
export function decodeStruct(shape, node) {
  const d = new Decoder()
  try {
    if (node.t !== "obj" && node.t !== "null") {
      return { error: `json: cannot unmarshal ${kindOf(node)} into Go value of type ${shape.name}` }
    }
    const value = /** @type {Record<string, unknown>} */ (d.value(shape, node, undefined) ?? {})
    return d.saved ? { error: d.saved } : { value }
  } catch (e) {
    if (e instanceof GoDecodeError) return { error: e.message }
    throw e
  }
}
