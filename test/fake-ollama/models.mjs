// @ts-check
/**
 * Model names, the built-in catalog, and the deterministic "inference": which tokens a
 * generation yields, how many prompt tokens a request counts, and the embedding vectors.
 */
import { createHash } from "node:crypto"

export const VERSION = "0.32.15"

const DEFAULT_HOST = "registry.ollama.ai"
const DEFAULT_NAMESPACE = "library"
const DEFAULT_TAG = "latest"

/**
 * @typedef {object} ModelName
 * @property {string} host
 * @property {string} namespace
 * @property {string} model
 * @property {string} tag
 * @property {string} key canonical lower-case `host/namespace/model:tag`, for lookups
 * @property {string} display the shortest form, as /api/tags lists it (`llama3.2:latest`)
 */

/**
 * Ollama's model.ParseName: `[host/][namespace/]model[:tag]`, defaults filled in. Undefined
 * when there is no model part.
 * @param {string} name
 * @returns {ModelName | undefined}
 */
export function parseModelName(name) {
  let rest = name.trim()
  const at = rest.indexOf("@")
  if (at >= 0) rest = rest.slice(0, at)
  let tag = DEFAULT_TAG
  const colon = rest.lastIndexOf(":")
  if (colon > rest.lastIndexOf("/")) {
    tag = rest.slice(colon + 1)
    rest = rest.slice(0, colon)
  }
  const parts = rest.split("/")
  const model = parts.pop() ?? ""
  const namespace = parts.pop() ?? DEFAULT_NAMESPACE
  const host = parts.length > 0 ? parts.join("/") : DEFAULT_HOST
  if (!/^[A-Za-z0-9_][A-Za-z0-9_.-]*$/.test(model) || tag === "" || namespace === "") return undefined
  let display = `${model}:${tag}`
  if (host !== DEFAULT_HOST) display = `${host}/${namespace}/${display}`
  else if (namespace !== DEFAULT_NAMESPACE) display = `${namespace}/${display}`
  const key = `${host}/${namespace}/${model}:${tag}`.toLowerCase()
  return { host, namespace, model, tag, key, display }
}

/**
 * @typedef {"completion" | "embedding" | "tools" | "thinking" | "insert" | "vision"} Capability
 *
 * @typedef {object} ModelSpec what a test may give for a model (or just its name)
 * @property {string} name
 * @property {number} [size] bytes on disk
 * @property {string} [family]
 * @property {string} [parameterSize] e.g. `3.2B`
 * @property {string} [quantization] e.g. `Q4_K_M`
 * @property {Capability[]} [capabilities] `["completion"]` (default) or `["embedding"]`, ...
 * @property {number} [contextLength]
 * @property {number} [embeddingLength] vector size of /api/embed answers
 * @property {string} [system] the Modelfile's SYSTEM prompt
 * @property {string} [remoteHost] set for a model created from a cloud model: its requests go there
 * @property {string} [remoteModel] the model's name there
 *
 * @typedef {object} Model a model on disk
 * @property {string} name display name (`llama3.2:latest`)
 * @property {string} key
 * @property {number} size
 * @property {string} family
 * @property {string} parameterSize
 * @property {string} quantization
 * @property {Capability[]} capabilities
 * @property {number} contextLength
 * @property {number} embeddingLength
 * @property {string} digest manifest digest, 64 hex digits
 * @property {bigint} modifiedNs
 * @property {string} system
 * @property {string} remoteHost "" for a local model
 * @property {string} remoteModel
 */

/** @type {Array<Omit<ModelSpec, "name"> & { name: string }>} */
const CATALOG = [
  {
    name: "llama3.2:latest",
    size: 2019393189,
    family: "llama",
    parameterSize: "3.2B",
    quantization: "Q4_K_M",
    capabilities: ["completion", "tools"],
    contextLength: 131072,
    embeddingLength: 3072
  },
  {
    name: "qwen3:0.6b",
    size: 522653767,
    family: "qwen3",
    parameterSize: "751.63M",
    quantization: "Q4_K_M",
    capabilities: ["completion", "tools", "thinking"],
    contextLength: 40960,
    embeddingLength: 1024
  },
  {
    name: "nomic-embed-text:latest",
    size: 274302450,
    family: "nomic-bert",
    parameterSize: "137M",
    quantization: "F16",
    capabilities: ["embedding"],
    contextLength: 2048,
    embeddingLength: 768
  },
  {
    name: "all-minilm:latest",
    size: 45960996,
    family: "bert",
    parameterSize: "23M",
    quantization: "F16",
    capabilities: ["embedding"],
    contextLength: 512,
    embeddingLength: 384
  }
]

export const DEFAULT_MODELS = ["llama3.2:latest", "nomic-embed-text:latest"]
export const DEFAULT_PULLABLE = ["llama3.2", "qwen3:0.6b", "nomic-embed-text", "all-minilm"]

export function sha256Hex(/** @type {string | Uint8Array} */ data) {
  return createHash("sha256").update(data).digest("hex")
}

/**
 * A model as it sits on disk, from a spec or a bare name (the catalog fills in what it knows;
 * a name mentioning `embed` or `minilm` is taken for an embedding model).
 * @param {ModelSpec | string} spec
 * @param {bigint} modifiedNs
 * @returns {Model}
 */
export function resolveModel(spec, modifiedNs) {
  const given = typeof spec === "string" ? { name: spec } : spec
  const parsed = parseModelName(given.name)
  if (!parsed) throw new Error(`fake-ollama: invalid model name ${JSON.stringify(given.name)}`)
  /** @type {Partial<ModelSpec>} */
  const known = CATALOG.find((m) => parseModelName(m.name)?.key === parsed.key) ?? {}
  const embedding = /embed|minilm/i.test(parsed.model)
  const capabilities = given.capabilities ?? known.capabilities ?? (embedding ? ["embedding"] : ["completion"])
  const isEmbedding = capabilities.includes("embedding")
  return {
    name: parsed.display,
    key: parsed.key,
    size: given.size ?? known.size ?? 1_000_000_000,
    family: given.family ?? known.family ?? (isEmbedding ? "bert" : "llama"),
    parameterSize: given.parameterSize ?? known.parameterSize ?? "1B",
    quantization: given.quantization ?? known.quantization ?? "Q4_K_M",
    capabilities,
    contextLength: given.contextLength ?? known.contextLength ?? 4096,
    embeddingLength: given.embeddingLength ?? known.embeddingLength ?? (isEmbedding ? 768 : 2048),
    digest: sha256Hex(`manifest:${parsed.key}`),
    modifiedNs,
    system: given.system ?? "",
    remoteHost: given.remoteHost ?? "",
    remoteModel: given.remoteModel ?? ""
  }
}

/** The layers a pull reports for a model: weights, then template/license/params blobs. */
export function modelLayers(/** @type {Model} */ model) {
  const small = model.capabilities.includes("completion") ? [1429, 7711, 96] : [11357, 16]
  const weights = Math.max(1, model.size - small.reduce((a, b) => a + b, 0))
  return [weights, ...small].map((total, i) => ({ digest: `sha256:${sha256Hex(`layer:${model.key}:${i}`)}`, total }))
}

// ---------------------------------------------------------------------------------------------
// Deterministic figures

/**
 * The tokens a generation yields, in order, cycling. Some are multi-byte in UTF-8 (split
 * writes cut through them) and some need escaping in JSON (`<`, `"`, newline).
 */
export const TOKEN_TEXTS = Object.freeze([
  "Hello",
  " from",
  " the",
  " fake",
  " Ollama",
  "!",
  " A",
  " naïve",
  " 🦙",
  " says",
  " \"hi\"",
  " <3",
  " &",
  "\n",
  "The",
  " end",
  "."
])

/** The text of the i-th generated token (0-based). */
export function tokenText(/** @type {number} */ i) {
  return TOKEN_TEXTS[i % TOKEN_TEXTS.length] ?? ""
}

/** The whole text of a generation of n tokens. */
export function generatedText(/** @type {number} */ n) {
  let s = ""
  for (let i = 0; i < n; i++) s += tokenText(i)
  return s
}

/** Prompt tokens counted for a text: one per 4 UTF-8 bytes, rounded up, at least 1. */
export function promptTokens(/** @type {string} */ text) {
  return Math.max(1, Math.ceil(Buffer.byteLength(text, "utf8") / 4))
}

/** Token ids of the `context` array: prompt tokens then generated ones. */
export function contextIds(/** @type {number} */ n) {
  return Array.from({ length: n }, (_, i) => ((i + 1) * 7919) % 128000)
}

/** Durations (ns) reported for a generation: derived from the counts, never measured. */
export function durations(
  /** @type {{ promptEvalCount: number, evalCount: number, loadDelayMs?: number }} */ f
) {
  const loadDuration = 1_000_000 + Math.round((f.loadDelayMs ?? 0) * 1_000_000)
  const promptEvalDuration = f.promptEvalCount * 1_000_000
  const evalDuration = f.evalCount * 10_000_000
  return { loadDuration, promptEvalDuration, evalDuration, totalDuration: loadDuration + promptEvalDuration + evalDuration + 500_000 }
}

function fnv1a(/** @type {string} */ text) {
  let h = 0x811c9dc5
  for (const byte of Buffer.from(text, "utf8")) {
    h ^= byte
    h = Math.imul(h, 0x01000193) >>> 0
  }
  return h
}

/**
 * The embedding of a text: a unit vector (float32) seeded by the text, so equal texts embed
 * equally whatever the endpoint. `dimensions` truncates and renormalizes, as Ollama does.
 * @returns {Float32Array}
 */
export function embeddingFor(/** @type {string} */ text, /** @type {number} */ length, /** @type {number | undefined} */ dimensions) {
  let seed = fnv1a(text) || 1
  const raw = new Float64Array(length)
  for (let i = 0; i < length; i++) {
    seed = (seed + 0x6d2b79f5) >>> 0
    let t = seed
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    raw[i] = ((t ^ (t >>> 14)) >>> 0) / 4294967296 - 0.5
  }
  const n = dimensions && dimensions > 0 && dimensions < length ? dimensions : length
  const v = raw.subarray(0, n)
  const norm = Math.sqrt(v.reduce((s, x) => s + x * x, 0)) || 1
  return Float32Array.from(v, (x) => x / norm)
}

/**
 * internal/modelref/modelref.go `ParseRef` / `parseSourceSuffix`: the name trimmed; the text after
 * its last colon, trimmed and lower-cased, `cloud` or `local` sets the source, and one ending in
 * `-cloud` (no `/` in it) is a cloud model too, the suffix cut off (`gpt-oss:120b-CLOUD` is
 * `gpt-oss:120b` on ollama.com). Both suffixes at once is an error.
 * @param {string} raw
 * @returns {{ base: string, source: "cloud" | "local" | "" } | { error: string }}
 */
export function parseModelRef(raw) {
  const trimmed = raw.trim()
  if (trimmed === "") return { error: "model is required" }
  const first = sourceSuffix(trimmed)
  if (first.explicit && sourceSuffix(first.base).explicit) {
    return { error: `use either :local or :cloud, not both: ${JSON.stringify(trimmed)}` }
  }
  return { base: first.base, source: first.source }
}

function sourceSuffix(/** @type {string} */ raw) {
  const idx = raw.lastIndexOf(":")
  if (idx >= 0) {
    const suffixRaw = raw.slice(idx + 1).trim()
    const suffix = suffixRaw.toLowerCase()
    if (suffix === "cloud") return { base: raw.slice(0, idx), source: /** @type {const} */ ("cloud"), explicit: true }
    if (suffix === "local") return { base: raw.slice(0, idx), source: /** @type {const} */ ("local"), explicit: true }
    if (!suffixRaw.includes("/") && suffix.endsWith("-cloud")) {
      return { base: raw.slice(0, idx + 1) + suffixRaw.slice(0, -"-cloud".length), source: /** @type {const} */ ("cloud"), explicit: true }
    }
  }
  return { base: raw, source: /** @type {const} */ (""), explicit: false }
}

/**
 * The llama 3 template the fake's chat models carry (showModel), applied as Ollama's chatPrompt
 * does: the Modelfile's SYSTEM first unless the messages bring their own system message.
 * @param {Array<{ role?: unknown, content?: unknown }>} messages
 * @param {string} system
 */
export function renderPrompt(messages, system) {
  const all = system !== "" && !messages.some((m) => m.role === "system") ? [{ role: "system", content: system }, ...messages] : messages
  const turns = all.map((m) => `<|start_header_id|>${String(m.role ?? "")}<|end_header_id|>\n\n${String(m.content ?? "")}<|eot_id|>`)
  return `${turns.join("")}<|start_header_id|>assistant<|end_header_id|>\n\n`
}
