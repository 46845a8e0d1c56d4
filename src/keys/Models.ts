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
 * Cloud models run on the operator's ollama.com account, not on this GPU: a key may use one only
 * when one of its own patterns names cloud models explicitly (`gpt-oss:120b-cloud`, `*-cloud`),
 * never through `*` or `gpt-oss:*`. Which names are cloud models is Ollama's call, made by
 * internal/modelref/modelref.go `ParseRef` and `parseSourceSuffix`: the name is trimmed, and the
 * text after its last colon, trimmed and in any letter case, is `cloud` (`gpt-oss:120b: CLOUD`), or
 * ends in `-cloud` (`gpt-oss:120b-Cloud`); `:local` forces the local model of the name before it.
 * A model created or copied from a cloud model keeps its `remote_host` and runs on ollama.com
 * under any name: those come from Ollama's own list (src/ollama/RemoteModels.ts), as `remote`.
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

export type ModelRef =
  | { readonly name: string; readonly cloud: boolean }
  | { readonly error: string }

/** modelref.go `parseSourceSuffix`: the base name, and where the suffix sends it. */
const sourceSuffix = (raw: string): { base: string; source: "cloud" | "local" | undefined } => {
  const idx = raw.lastIndexOf(":")
  if (idx >= 0) {
    const suffixRaw = raw.slice(idx + 1).trim()
    const suffix = suffixRaw.toLowerCase()
    if (suffix === "cloud") return { base: raw.slice(0, idx), source: "cloud" }
    if (suffix === "local") return { base: raw.slice(0, idx), source: "local" }
    if (!suffixRaw.includes("/") && suffix.endsWith("-cloud")) {
      return { base: raw.slice(0, idx + 1) + suffixRaw.slice(0, suffixRaw.length - "-cloud".length), source: "cloud" }
    }
  }
  return { base: raw, source: undefined }
}

/** modelref.go `HasExplicitTag`: a colon after the last slash (a registry's port is not a tag). */
const hasExplicitTag = (name: string) => name.lastIndexOf(":") > name.lastIndexOf("/")

/**
 * A model name as Ollama resolves it (modelref.go `ParseRef`): the name rules match (a cloud model
 * in its legacy spelling, `base-cloud` with a tag, `base:cloud` without, as `toLegacyCloudPullName`
 * writes it), and whether it runs on ollama.com. Two source suffixes are Ollama's error too.
 */
export const modelRef = (raw: string): ModelRef => {
  const trimmed = raw.trim()
  if (trimmed === "") return { error: "model is required" }
  const { base, source } = sourceSuffix(trimmed)
  if (source !== undefined && sourceSuffix(base).source !== undefined) return { error: "use either :local or :cloud, not both" }
  if (source === "cloud") return { name: hasExplicitTag(base) ? `${base}-cloud` : `${base}:cloud`, cloud: true }
  if (source === "local") return { name: base, cloud: false }
  // Without a colon Ollama sees no cloud suffix (`qwen3-coder-cloud`); such a name is still taken
  // for a cloud model here, the safe side: a cloud stub pulled under it runs on ollama.com.
  return { name: trimmed, cloud: CLOUD.test(normalizeModel(trimmed)) }
}

/** A model that runs on ollama.com, not here (by its name alone). */
export const isCloudModel = (name: string): boolean => {
  const ref = modelRef(name)
  return "name" in ref && ref.cloud
}

const escape = (text: string) => text.replace(/[.+?^${}()|[\]\\]/g, "\\$&")

interface Pattern {
  readonly text: string
  readonly matches: RegExp
  /** The pattern names cloud models explicitly. */
  readonly cloud: boolean
  /** The pattern names one model, with no `*`: enough for a local name Ollama runs on ollama.com. */
  readonly exact: boolean
}

const compile = (pattern: string): Pattern => {
  const ref = modelRef(pattern)
  const text = normalizeModel("name" in ref ? ref.name : pattern)
  return {
    text,
    matches: new RegExp(`^${text.split("*").map(escape).join(".*")}$`),
    cloud: CLOUD.test(text.replace(/\*+$/, "")),
    exact: !text.includes("*")
  }
}

export class ModelRule {
  private readonly patterns: ReadonlyArray<Pattern>

  constructor(patterns: ReadonlyArray<string>) {
    this.patterns = patterns.map(compile)
  }

  /** Every local model. */
  static readonly all = new ModelRule(["*"])

  /**
   * Whether a key with these patterns may use the model; `remote` says whether Ollama lists it with
   * a `remote_host` (a local name for a cloud model). A name Ollama cannot resolve is refused.
   */
  allows(model: string, remote: (name: string) => boolean = () => false): boolean {
    const ref = modelRef(model)
    if ("error" in ref) return false
    const name = normalizeModel(ref.name)
    if (ref.cloud) return this.patterns.some((p) => p.cloud && p.matches.test(name))
    if (remote(name)) return this.patterns.some((p) => (p.cloud || p.exact) && p.matches.test(name))
    return this.patterns.some((p) => p.matches.test(name))
  }

  toString(): string {
    return this.patterns.map((p) => p.text).join(",")
  }
}
