// @ts-check
/**
 * Byte-level helpers that make the fake's output match what Go's encoding/json, time and
 * log/slog produce in `ollama serve`.
 */

/** A value already encoded as JSON text, inserted as is (float32 arrays, mostly). */
export class RawJSON {
  /** @param {string} text */
  constructor(text) {
    this.text = text
  }
}

/** @type {Record<string, string>} */
const GO_HTML_ESCAPES = { "<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029" }

/** A JSON string literal as Go writes it: like JSON.stringify, but `<`, `>`, `&`, U+2028/9 escaped. */
export function goString(/** @type {string} */ s) {
  return JSON.stringify(s).replace(/[<>&\u2028\u2029]/g, (c) => GO_HTML_ESCAPES[c] ?? c)
}

/**
 * Go's json.Marshal of a value built in Go field order: object keys keep insertion order,
 * `undefined` members are left out (omitempty), numbers print as Go prints float64.
 * @param {unknown} value
 * @returns {string}
 */
export function goJSON(value) {
  if (value === null || value === undefined) return "null"
  if (value instanceof RawJSON) return value.text
  switch (typeof value) {
    case "string":
      return goString(value)
    case "number":
      // JS and Go pick the same shortest digits and the same 1e-6 / 1e21 switch to exponents.
      return Number.isFinite(value) ? String(value) : "null"
    case "boolean":
      return value ? "true" : "false"
    case "bigint":
      return value.toString()
  }
  if (Array.isArray(value)) return `[${value.map((v) => goJSON(v)).join(",")}]`
  const parts = []
  for (const [key, member] of Object.entries(/** @type {object} */ (value))) {
    if (member !== undefined) parts.push(`${goString(key)}:${goJSON(member)}`)
  }
  return `{${parts.join(",")}}`
}

/**
 * A float32 as Go's encoding/json prints it: the shortest decimal that reads back as the same
 * float32 (JS only knows the float64 shortest form, so search the precision).
 */
export function float32Text(/** @type {number} */ x) {
  const f = Math.fround(x)
  if (f === 0) return Object.is(f, -0) ? "-0" : "0"
  for (let p = 1; p < 9; p++) {
    const s = f.toPrecision(p)
    if (Math.fround(Number(s)) === f) return String(Number(s))
  }
  return String(Number(f.toPrecision(9)))
}

/** `[f1,f2,...]` with float32 formatting. */
export function float32Array(/** @type {ArrayLike<number>} */ values) {
  return new RawJSON(`[${Array.from(values, float32Text).join(",")}]`)
}

/**
 * Nanoseconds since the epoch, now. The last digit is never 0 so that Go's RFC 3339 form, which
 * trims trailing zeros, always shows nine fractional digits like the doc's examples.
 */
export function nowNs() {
  let ns = BigInt(Date.now()) * 1_000_000n + (process.hrtime.bigint() % 1_000_000n)
  if (ns % 10n === 0n) ns += 1n
  return ns
}

/** Go's time.Time JSON form (RFC3339Nano) for a UTC instant given in nanoseconds. */
export function rfc3339Nano(/** @type {bigint} */ ns) {
  const ms = ns / 1_000_000n
  const iso = new Date(Number(ms)).toISOString() // YYYY-MM-DDTHH:MM:SS.mmmZ, or ±YYYYYY for far years
  const base = iso.slice(0, iso.indexOf("."))
  const frac = (((ns % 1_000_000_000n) + 1_000_000_000n) % 1_000_000_000n).toString().padStart(9, "0").replace(/0+$/, "")
  return frac ? `${base}.${frac}Z` : `${base}Z`
}

/** slog's time attribute: RFC 3339 with milliseconds in local time. */
export function slogTime(date = new Date()) {
  const offsetMin = -date.getTimezoneOffset()
  const local = new Date(date.getTime() + offsetMin * 60_000).toISOString().slice(0, 23)
  if (offsetMin === 0) return `${local}Z`
  const abs = Math.abs(offsetMin)
  const zone = `${offsetMin < 0 ? "-" : "+"}${String(Math.floor(abs / 60)).padStart(2, "0")}:${String(abs % 60).padStart(2, "0")}`
  return `${local}${zone}`
}

/** Go's time.Duration.String(), e.g. `1.234567ms`, `1m30s`. */
export function goDuration(/** @type {number} */ ns) {
  ns = Math.round(ns)
  if (ns === 0) return "0s"
  const sign = ns < 0 ? "-" : ""
  let n = Math.abs(ns)
  /** @param {number} v @param {number} unit @param {number} digits */
  const frac = (v, unit, digits) => {
    const whole = Math.floor(v / unit)
    const rest = (v % unit).toString().padStart(digits, "0").replace(/0+$/, "")
    return rest ? `${whole}.${rest}` : `${whole}`
  }
  if (n < 1_000) return `${sign}${n}ns`
  if (n < 1_000_000) return `${sign}${frac(n, 1_000, 3)}µs`
  if (n < 1_000_000_000) return `${sign}${frac(n, 1_000_000, 6)}ms`
  let out = ""
  const h = Math.floor(n / 3_600_000_000_000)
  n -= h * 3_600_000_000_000
  const m = Math.floor(n / 60_000_000_000)
  n -= m * 60_000_000_000
  if (h > 0) out += `${h}h`
  if (h > 0 || m > 0) out += `${m}m`
  return `${sign}${out}${frac(n, 1_000_000_000, 9)}s`
}

const DURATION_UNITS = /** @type {Record<string, number>} */ ({
  ns: 1,
  us: 1e3,
  "µs": 1e3,
  "μs": 1e3,
  ms: 1e6,
  s: 1e9,
  m: 60e9,
  h: 3600e9
})

/**
 * Go's time.ParseDuration: nanoseconds, or an Error with Go's message.
 * @param {string} text
 * @returns {number}
 */
export function parseGoDuration(text) {
  const quoted = JSON.stringify(text)
  let s = text
  let sign = 1
  if (s.startsWith("-") || s.startsWith("+")) {
    if (s[0] === "-") sign = -1
    s = s.slice(1)
  }
  if (s === "0") return 0
  if (s === "") throw new Error(`time: invalid duration ${quoted}`)
  let total = 0
  const part = /^(\d*)(?:\.(\d*))?([^\d.]*)/
  while (s !== "") {
    const m = part.exec(s)
    if (!m || (m[1] === "" && (m[2] === undefined || m[2] === ""))) throw new Error(`time: invalid duration ${quoted}`)
    const unit = m[3] ?? ""
    if (unit === "") throw new Error(`time: missing unit in duration ${quoted}`)
    const scale = DURATION_UNITS[unit]
    if (scale === undefined) throw new Error(`time: unknown unit ${JSON.stringify(unit)} in duration ${quoted}`)
    total += Number(`${m[1] || "0"}.${m[2] ?? ""}0`) * scale
    s = s.slice(m[0].length)
  }
  return sign * Math.round(total)
}

/**
 * Go's strconv.Quote-ish quoting as slog's text handler applies it: only when the value is
 * empty or has spaces, quotes, `=` or control characters.
 */
export function slogValue(/** @type {unknown} */ value) {
  const s = typeof value === "string" ? value : value instanceof Error ? value.message : String(value)
  return s === "" || /[\s"=\p{Cc}]/u.test(s) ? JSON.stringify(s) : s
}

/** One slog text line: `time=... level=INFO source=file.go:123 msg="..." key=value`. */
export function slogLine(
  /** @type {string} */ level,
  /** @type {string} */ source,
  /** @type {string} */ msg,
  /** @type {Record<string, unknown>} */ attrs = {},
  date = new Date()
) {
  let line = `time=${slogTime(date)} level=${level} source=${source} msg=${slogValue(msg)}`
  for (const [k, v] of Object.entries(attrs)) line += ` ${slogValue(k)}=${slogValue(v)}`
  return line
}
