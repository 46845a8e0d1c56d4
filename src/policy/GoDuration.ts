/**
 * Ollama's `keep_alive` as its Go code reads it (api/types.go `(*Duration).UnmarshalJSON`): a JSON
 * number is seconds (a negative one means for ever), a string is a Go duration
 * (`time.ParseDuration`: `5m`, `1h30m`, `-1s`, `300ms`, `0`; a negative one means for ever), and
 * anything else is an error Ollama answers with 400. `null` leaves the field unset (Go sets a nil
 * pointer without calling UnmarshalJSON), so Ollama's default applies.
 */
import { Either } from "effect"

/** Nanoseconds; `Infinity` for "for ever". */
export type KeepAlive = { readonly ns: number } | { readonly error: string } | { readonly unset: true }

const UNITS: Record<string, number> = { ns: 1, us: 1e3, "µs": 1e3, "μs": 1e3, ms: 1e6, s: 1e9, m: 60e9, h: 3600e9 }
const MAX_INT64 = 2 ** 63

/** `time.ParseDuration`: an optional sign, then one or more decimal numbers each with a unit; "0" alone needs none. */
export const parseGoDuration = (text: string): number | undefined => {
  let s = text
  let sign = 1
  if (s.startsWith("-") || s.startsWith("+")) {
    if (s[0] === "-") sign = -1
    s = s.slice(1)
  }
  if (s === "0") return 0
  if (s === "") return undefined
  let total = 0
  const part = /^(\d*)(?:\.(\d*))?(ns|us|µs|μs|ms|s|m|h)/
  while (s !== "") {
    const m = part.exec(s)
    if (m === null || (m[1] === "" && (m[2] === undefined || m[2] === ""))) return undefined
    total += Number(`${m[1] || "0"}.${m[2] || "0"}`) * UNITS[m[3]!]!
    s = s.slice(m[0].length)
  }
  if (total > MAX_INT64) return undefined // Go: "invalid duration" (overflow)
  return sign * total
}

/** A keep_alive value as Ollama would take it. */
export const readKeepAlive = (value: unknown): KeepAlive => {
  if (value === null) return { unset: true }
  if (typeof value === "number") {
    if (!Number.isFinite(value)) return { error: "keep_alive is not a number Go can read" }
    // time.Duration(t * float64(time.Second)): truncated toward zero; 1e-10 s is 0, an unload.
    return { ns: value < 0 ? Infinity : Math.trunc(value * 1e9) }
  }
  if (typeof value === "string") {
    const ns = parseGoDuration(value)
    if (ns === undefined) return { error: `time: invalid duration ${JSON.stringify(value)}` }
    return { ns: ns < 0 ? Infinity : Math.trunc(ns) }
  }
  return { error: "keep_alive must be a number of seconds or a duration string" }
}

/** A keep_alive value in the form the proxy writes: seconds, -1 for ever. */
export const keepAliveJson = (ns: number): string => (ns === Infinity ? "-1" : String(ns / 1e9))

/** A keep_alive bound as an operator or a key file writes it: a Go duration (`30m`) or seconds; negative = for ever. */
export const parseKeepAliveBound = (raw: string): Either.Either<number, string> => {
  const v = raw.trim()
  const ns = /^-?\d+(\.\d+)?$/.test(v) ? Number(v) * 1e9 : parseGoDuration(v)
  if (ns === undefined || Number.isNaN(ns)) return Either.left(`${JSON.stringify(raw)} is not a duration (like 1s, 30m, or seconds)`)
  return Either.right(ns < 0 ? Infinity : ns)
}
