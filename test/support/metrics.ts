/**
 * Scraping /metrics as Prometheus would. An independent parser of the text format checks every
 * line and gives the families with their types; samples are looked up by exact name and labels
 * (that parser folds labelled histograms into one, so _sum and _count are read per line here).
 */
import parsePrometheus, { type Family } from "parse-prometheus-text-format"

export interface Scrape {
  readonly status: number
  readonly contentType: string | null
  readonly text: string
  readonly families: ReadonlyArray<Family>
  /** The value of the sample with this exact name whose labels include `labels`; undefined if none. */
  readonly value: (name: string, labels?: Record<string, string>) => number | undefined
  /** The sum over all samples with this name whose labels include `labels`. */
  readonly total: (name: string, labels?: Record<string, string>) => number
}

const SAMPLE = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/
const LABEL = /([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"/g

const samplesOf = (text: string) =>
  text.split("\n").flatMap((line) => {
    const m = SAMPLE.exec(line)
    if (m === null || line.startsWith("#")) return []
    const labels = Object.fromEntries([...(m[2] ?? "").matchAll(LABEL)].map((l) => [l[1]!, l[2]!]))
    return [{ name: m[1]!, labels, value: Number(m[3]) }]
  })

export const scrape = async (url: string, headers: Record<string, string> = {}): Promise<Scrape> => {
  const res = await fetch(`${url}/metrics`, { headers })
  const text = await res.text()
  const ok = res.status === 200
  const samples = ok ? samplesOf(text) : []
  const matching = (name: string, labels: Record<string, string>) =>
    samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
  return {
    status: res.status,
    contentType: res.headers.get("content-type"),
    text,
    families: ok ? parsePrometheus(text) : [],
    value: (name, labels = {}) => matching(name, labels)[0]?.value,
    total: (name, labels = {}) => matching(name, labels).reduce((sum, s) => sum + s.value, 0)
  }
}
