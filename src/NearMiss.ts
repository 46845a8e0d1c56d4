/**
 * "Did you mean": the known name a mistyped one was most likely meant to be, for the one-line
 * errors of the configuration and the key file. A near miss differs only in case or separators
 * (`Scopes`, `expiresAt`), by a plural's s (`scope`, `model`), or by at most two edits (a swap of
 * neighbours is one; one edit for a name under five letters), so a suggestion is rarely a guess.
 */

const normal = (name: string) => name.toLowerCase().replace(/[-_\s]/g, "")

/** Edits from one to the other (insert, delete, replace, swap two neighbours); limit + 1 when surely more. */
const distance = (a: string, b: string, limit: number): number => {
  if (Math.abs(a.length - b.length) > limit) return limit + 1
  let before: Array<number> = []
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    const row = [i]
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min(previous[j]! + 1, row[j - 1]! + 1, previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1))
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) row[j] = Math.min(row[j]!, before[j - 2]! + 1)
    }
    before = previous
    previous = row
  }
  return previous[b.length]!
}

/** The known name `word` nearly is, if any (the nearest; the first of equals). */
export const nearMiss = (word: string, known: ReadonlyArray<string>): string | undefined => {
  const w = normal(word)
  const unplural = (s: string) => s.replace(/s$/, "")
  let best: { name: string; cost: number } | undefined
  for (const name of known) {
    if (name === word) continue
    const n = normal(name)
    const cost = n === w ? 0 : unplural(n) === unplural(w) ? 0.5 : distance(w, n, w.length < 5 ? 1 : 2)
    if (cost <= (w.length < 5 ? 1 : 2) && (best === undefined || cost < best.cost)) best = { name, cost }
  }
  return best?.name
}

/** `; did you mean "scopes"?` when `word` nearly is a known name, else nothing. */
export const didYouMean = (word: string, known: ReadonlyArray<string>): string => {
  const near = nearMiss(word, known)
  return near === undefined ? "" : `; did you mean ${JSON.stringify(near)}?`
}
