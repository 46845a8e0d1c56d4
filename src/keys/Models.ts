/**
 * Which models a key may use: patterns over model names, as Ollama resolves the names.
 *
 * Ollama names a model `[host/][namespace/]model[:tag]`, with `registry.ollama.ai`, `library` and
 * `latest` where a part is left out: `llama3.2`, `library/llama3.2:latest` and
 * `registry.ollama.ai/library/llama3.2:latest` are one model, and names are matched without regard
 * to case. Names and patterns are brought to one short form (`llama3.2:latest`,
 * `hf.co/user/repo:q4`) before they are compared. A pattern is a name where `*` stands for any run
 * of characters: `qwen3:*` is every tag of qwen3, `*` every model.
 *
 * Cloud models (a name ending in `:cloud` or `-cloud`) run on the operator's ollama.com account,
 * not on this GPU: a key may use one only when one of its own patterns names cloud models
 * explicitly (`gpt-oss:120b-cloud`, `*-cloud`), never through `*` or `gpt-oss:*`.
 */

const DEFAULT_HOST = "registry.ollama.ai/"
const DEFAULT_NAMESPACE = "library/"

/** The short form of a model name: lower case, default host and namespace left out, a tag always. */
export const normalizeModel = (name: string): string => {
  let n = name.trim().toLowerCase()
  if (n.startsWith(DEFAULT_HOST)) n = n.slice(DEFAULT_HOST.length)
  if (n.startsWith(DEFAULT_NAMESPACE)) n = n.slice(DEFAULT_NAMESPACE.length)
  const lastSegment = n.slice(n.lastIndexOf("/") + 1)
  return lastSegment.includes(":") || lastSegment.includes("@") || n.includes("*") ? n : `${n}:latest`
}

const CLOUD = /(?::cloud|-cloud)(?::latest)?$/

/** A model that runs on ollama.com, not here. */
export const isCloudModel = (name: string): boolean => CLOUD.test(normalizeModel(name))

const escape = (text: string) => text.replace(/[.+?^${}()|[\]\\]/g, "\\$&")

interface Pattern {
  readonly text: string
  readonly matches: RegExp
  /** The pattern names cloud models explicitly. */
  readonly cloud: boolean
}

const compile = (pattern: string): Pattern => {
  const text = normalizeModel(pattern)
  return {
    text,
    matches: new RegExp(`^${text.split("*").map(escape).join(".*")}$`),
    cloud: CLOUD.test(text.replace(/\*+$/, ""))
  }
}

export class ModelRule {
  private readonly patterns: ReadonlyArray<Pattern>

  constructor(patterns: ReadonlyArray<string>) {
    this.patterns = patterns.map(compile)
  }

  /** Every local model. */
  static readonly all = new ModelRule(["*"])

  /** Whether a key with these patterns may use the model. */
  allows(model: string): boolean {
    const name = normalizeModel(model)
    const cloud = CLOUD.test(name)
    return this.patterns.some((p) => p.matches.test(name) && (!cloud || p.cloud))
  }

  toString(): string {
    return this.patterns.map((p) => p.text).join(",")
  }
}
