/**
 * Reading JSON out of the few lines that carry usage: whole lines are parsed; a line too long to
 * keep (a `LongLine`: an embedding, a `context` array, a long answer) is salvaged from its head and
 * tail with patterns that cannot match inside a JSON string (a quote inside a string is escaped).
 */
import { isLong, type Line, type LongLine } from "./Lines.js"

export type Json = Record<string, unknown>

export const isObject = (value: unknown): value is Json => typeof value === "object" && value !== null && !Array.isArray(value)

const parseObject = (text: string): Json | undefined => {
  try {
    const value: unknown = JSON.parse(text)
    return isObject(value) ? value : undefined
  } catch {
    return undefined
  }
}

export const NUMBER_FIELDS = [
  "total_duration",
  "load_duration",
  "prompt_eval_count",
  "prompt_eval_duration",
  "eval_count",
  "eval_duration"
] as const

const lastMatch = (text: string, pattern: RegExp): RegExpExecArray | undefined => {
  let found: RegExpExecArray | undefined
  for (const match of text.matchAll(pattern)) found = match
  return found
}

/** A JSON string literal's bytes (read as latin1) back to the string. */
export const jsonString = (latin1: string): string | undefined => {
  try {
    const value: unknown = JSON.parse(`"${Buffer.from(latin1, "latin1").toString("utf8")}"`)
    return typeof value === "string" ? value : undefined
  } catch {
    return undefined
  }
}

const stringField = (name: string, head: string, tail: string): string | undefined => {
  const pattern = new RegExp(`"${name}":"((?:[^"\\\\]|\\\\.){0,512})"`, "g")
  const match = lastMatch(tail, pattern) ?? pattern.exec(head) ?? undefined
  return match === undefined ? undefined : jsonString(match[1]!)
}

/** The object that starts at `start` (a `{`), when it is complete in `text`. */
const balancedObject = (text: string, start: number): Json | undefined => {
  let depth = 0
  let inString = false
  for (let i = start; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (inString) {
      if (c === 92) i++
      else if (c === 34) inString = false
    } else if (c === 34) inString = true
    else if (c === 123) depth++
    else if (c === 125 && --depth === 0) return parseObject(Buffer.from(text.slice(start, i + 1), "latin1").toString("utf8"))
  }
  return undefined
}

/**
 * What can be read from a line too long to keep: Ollama writes its figures last (after the
 * embeddings, `context` or a long answer), OpenAI and Anthropic their `usage` object last, and
 * the model and `done` come first.
 */
const salvage = ({ head, tail }: LongLine): Json => {
  const h = head.toString("latin1")
  const t = tail.toString("latin1")
  const out: Json = {}
  for (const name of NUMBER_FIELDS) {
    const match = lastMatch(t, new RegExp(`"${name}":(\\d+)`, "g"))
    if (match !== undefined) out[name] = Number(match[1])
  }
  if (h.includes(`"done":true`) || t.includes(`"done":true`)) out.done = true
  for (const name of ["model", "created_at", "done_reason", "stop_reason", "status"]) {
    const value = stringField(name, h, t)
    if (value !== undefined) out[name] = value
  }
  const finish = stringField("finish_reason", h, t)
  if (finish !== undefined) out.choices = [{ finish_reason: finish }]
  const usageAt = t.lastIndexOf(`"usage":{`)
  if (usageAt >= 0) {
    const usage = balancedObject(t, usageAt + 8)
    if (usage !== undefined) out.usage = usage
  }
  return out
}

export const parseLine = (line: Line): Json | undefined => (isLong(line) ? salvage(line) : parseObject(line.toString("utf8")))

export const count = (value: unknown): number | null =>
  typeof value === "number" && Number.isSafeInteger(value) && value >= 0 ? value : null
export const text = (value: unknown): string | null => (typeof value === "string" ? value : null)
