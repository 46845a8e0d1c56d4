/**
 * What a request may ask Ollama to do, decided on the body as Ollama's Go code reads it
 * (src/exchange/GoJson.ts), before a byte of it reaches Ollama: the model (a key's model rules,
 * cloud models), web search, how long the model stays in memory, the runner's settings, the debug
 * fields, and the usage a stream must report. Where a rule changes the request, the field is
 * rewritten in one canonical member at the end of the object, where Go reads it last.
 *
 * The rules for tenants (keys without the `manage` scope) come from the operator's settings
 * (REQUEST_POLICY_*, src/policy/PolicyConfig.ts) and a key's own `request_policy`. Why each:
 * - `keep_alive` (api/types.go `Duration.UnmarshalJSON`): `0` unloads the model for everyone, a
 *   negative value pins it for ever, and any request sets the model's expiry (server/sched.go): so
 *   a preloaded model always gets the preload's own keep_alive, and others one within a range.
 * - runner options (`api.Runner`: num_ctx, num_batch, num_gpu, main_gpu, use_mmap, num_thread,
 *   draft_num_predict) and `shift`: server/sched.go `needsReload` reloads the model for everyone
 *   when any of them differs from the loaded runner's (num_gpu 0 reloads it on the CPU): dropped,
 *   and num_ctx kept only under an operator's maximum.
 * - `num_predict` (and the /v1 `max_tokens`, `max_output_tokens` that Ollama turns into it):
 *   capped where a maximum is set, so one request cannot hold a slot for a whole context.
 * - `_debug_render_only` (server/routes.go): answers with the rendered prompt, the Modelfile's
 *   SYSTEM prompt included, instead of generating: refused.
 * - web search (server/cloud_proxy.go `hasWebSearchTool`, middleware/web_search.go): Ollama runs up
 *   to 3 searches on ollama.com, signed with the operator's key, per request: a key needs `web`.
 * - `stream_options.include_usage` (middleware/openai.go): without it a stream reports no usage,
 *   so the proxy sets it on every streamed /v1/chat/completions and /v1/completions request.
 */
import { asksForUsage, type Route } from "../exchange/Classify.js"
import { forbidden, type Refusal } from "../exchange/Errors.js"
import {
  editObject,
  foldKey,
  JsonSyntaxError,
  type Member,
  membersNamed,
  type ObjectReading,
  readBodyObject,
  readObject,
  valueOf
} from "../exchange/GoJson.js"
import type { KeyPolicy } from "../keys/ApiKeys.js"
import { modelRef, normalizeModel } from "../keys/Models.js"
import { keepAliveJson, readKeepAlive } from "./GoDuration.js"

/** The settings a key's `request_policy` may override. */
export interface RequestPolicySettings {
  /** The shortest and longest keep_alive a tenant may set, in nanoseconds (Infinity: for ever). */
  readonly keepAliveMin: number
  readonly keepAliveMax: number
  /** What `keep_alive: 0` (unload now) or a negative one (for ever) from a tenant gets. */
  readonly keepAliveUnbounded: "rewrite" | "refuse"
  /** The largest num_ctx a tenant may ask for; undefined: num_ctx is dropped like the other runner options. */
  readonly numCtxMax: number | undefined
  /** The most tokens a tenant's request may generate; undefined: no cap. */
  readonly numPredictMax: number | undefined
}

export interface OperatorPolicy extends RequestPolicySettings {
  /** MAX_REQUEST_BODY: the largest body read whole to be checked; a larger one is refused (413). */
  readonly maxRequestBody: number
  /** The preloaded models (normalized names) and their keep_alive in nanoseconds. */
  readonly preloaded: ReadonlyMap<string, number>
}

export type KeyRequestPolicy = Partial<RequestPolicySettings>

export interface PolicyInput {
  readonly route: Route
  /** The body as Ollama will read it (decoded). */
  readonly body: Buffer
  /** null for an open proxy (no keys): only the metering rules apply. */
  readonly key: KeyPolicy | null
  readonly operator: OperatorPolicy
  readonly isRemote: (normalizedName: string) => boolean
}

export interface PolicyOutcome {
  /** The body to send: the same Buffer when nothing changed. */
  readonly body: Buffer
  readonly model: string | undefined
  readonly stream: boolean | undefined
  /** The proxy asked for the usage event; the client did not (hide it again). */
  readonly usageInjected: boolean
  readonly webSearch: boolean
  /** The fields the policy rewrote or dropped, for the log and the span. */
  readonly rewritten: ReadonlyArray<string>
  /** /api/embeddings: the prompt, whose tokens the proxy estimates (Ollama reports none). */
  readonly prompt: string | undefined
}

export type PolicyResult = { readonly refusal: Refusal } | PolicyOutcome

/** api.Runner's fields, each of which reloads the model when it changes (server/sched.go `needsReload`). */
const RUNNER_OPTIONS = ["num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread", "draft_num_predict"] as const

/** Fields read once each: a body that names one twice is refused rather than merged the way Go merges. */
const GOVERNED = new Set([
  "model",
  "name",
  "stream",
  "stream_options",
  "keep_alive",
  "options",
  "tools",
  "think",
  "_debug_render_only",
  "shift",
  "max_tokens",
  "max_output_tokens",
  "prompt"
])

const bad = (message: string): Refusal => ({ status: 400, message })

class Refused extends Error {
  constructor(readonly refusal: Refusal) {
    super(refusal.message)
  }
}

const modelRefused = (model: string, cloud: boolean): Refusal =>
  forbidden(
    cloud
      ? `this API key may not use the cloud model "${model}" (cloud models must be named in the key's models)`
      : `this API key may not use the model "${model}"`
  )

/** Whether a tools array declares a web search: any `type` (in any case) that Ollama would take for one. */
const declaresWebSearch = (tools: unknown): boolean =>
  Array.isArray(tools) &&
  tools.some((tool) =>
    typeof tool === "object" && tool !== null &&
    Object.entries(tool).some(([k, v]) => foldKey(k) === "type" && typeof v === "string" && v.trim().startsWith("web_search"))
  )

const settingsOf = (operator: OperatorPolicy, key: KeyPolicy): RequestPolicySettings => ({ ...operator, ...key.requestPolicy })

export const evaluateRequest = (input: PolicyInput): PolicyResult => {
  try {
    return evaluate(input)
  } catch (error) {
    if (error instanceof Refused) return { refusal: error.refusal }
    if (error instanceof JsonSyntaxError) return { refusal: bad(`the request body is not valid JSON: ${error.message}`) }
    throw error
  }
}

const evaluate = ({ body, isRemote, key, operator, route }: PolicyInput): PolicyResult => {
  const object = readBodyObject(body)
  // One pass over the members: each governed field's members, in order.
  const governed = new Map<string, Array<Member>>()
  for (const m of object.members) {
    if (!GOVERNED.has(m.key)) continue
    const seen = governed.get(m.key)
    if (seen === undefined) governed.set(m.key, [m])
    else {
      seen.push(m)
      throw new Refused(
        bad(m.key === "model" ? "the request names its model more than once" : `the request names "${m.key}" more than once`)
      )
    }
  }
  const one = (field: string): Member | undefined => governed.get(field)?.[0]
  const value = (field: string): unknown => {
    const member = one(field)
    return member === undefined ? undefined : valueOf(body, member)
  }
  const remove: Array<Member> = []
  const append: Array<readonly [string, string]> = []
  const rewritten: Array<string> = []
  const replace = (field: string, json: string) => {
    const member = one(field)
    if (member !== undefined) remove.push(member)
    append.push([field, json])
    rewritten.push(field)
  }

  // The model: a string, or null (Go leaves the string empty), or Ollama's 400.
  const stringField = (field: string): string | undefined => {
    const v = value(field)
    if (v === undefined || v === null) return undefined
    if (typeof v !== "string") throw new Refused(bad(`"${field}" must be a string`))
    return v
  }
  const model = stringField("model") ?? (route.operation === "show" ? stringField("name") : undefined)
  const ref = model === undefined ? undefined : modelRef(model)
  if (ref !== undefined && "error" in ref) throw new Refused(bad(`model "${model}": ${ref.error}`))
  const canonical = ref === undefined ? undefined : normalizeModel(ref.name)

  const tenant = key !== null && !key.scopes.has("manage")
  if (key !== null && model !== undefined && !key.models.allows(model, isRemote)) {
    throw new Refused(modelRefused(model, ref !== undefined && "name" in ref && (ref.cloud || isRemote(canonical!))))
  }

  let webSearch = false
  if (route.operation === "messages" || route.operation === "responses") {
    webSearch = declaresWebSearch(value("tools"))
    if (webSearch && key !== null && !key.scopes.has("web")) {
      throw new Refused(forbidden("this API key lacks the web scope (web search runs on the operator's ollama.com account)"))
    }
  }

  const debug = value("_debug_render_only")
  if (debug !== undefined && debug !== null && debug !== false && tenant) {
    throw new Refused(forbidden("_debug_render_only needs the manage scope (it shows the model's system prompt)"))
  }

  if (tenant && route.inference) {
    const settings = settingsOf(operator, key)
    if (route.runnerFields) {
      keepAlive(value("keep_alive"), canonical, settings, operator, replace)
      runnerOptions(value("options"), settings, replace)
      if (one("shift") !== undefined) {
        remove.push(one("shift")!)
        rewritten.push("shift")
      }
    }
    const maxField = route.maxTokensField
    if (maxField !== undefined && settings.numPredictMax !== undefined) {
      const asked = value(maxField)
      if (typeof asked !== "number" || asked > settings.numPredictMax || asked < 0) replace(maxField, String(settings.numPredictMax))
    }
  }

  // The stream flag, as Go reads it: a *bool on native routes (null: unset), a bool on /v1 (null: no change).
  const streamValue = value("stream")
  if (streamValue !== undefined && streamValue !== null && typeof streamValue !== "boolean") {
    throw new Refused(bad(`"stream" must be true or false`))
  }
  const stream = typeof streamValue === "boolean" ? streamValue : undefined

  let usageInjected = false
  if (asksForUsage(route) && stream === true && !clientAsksForUsage(body, one("stream_options"))) {
    replace("stream_options", `{"include_usage":true}`)
    usageInjected = true
  }

  const prompt = route.uncounted ? stringField("prompt") : undefined
  if (remove.length === 0 && append.length === 0) {
    return { body, model, stream, usageInjected, webSearch, rewritten, prompt }
  }
  const edited = editObject(body, object, remove, append)
  try {
    // Rewriting a body Go would refuse could turn it into one it accepts: check it is JSON first.
    JSON.parse(edited.toString("utf8"))
  } catch {
    throw new Refused(bad("the request body is not valid JSON"))
  }
  return { body: edited, model, stream, usageInjected, webSearch, rewritten, prompt }
}

/** `stream_options.include_usage` as Go reads it into `*openai.StreamOptions`: any case, the last key. */
const clientAsksForUsage = (body: Buffer, member: Member | undefined): boolean => {
  if (member === undefined) return false
  if (body[member.valueStart] === 0x6e) return false // null: the pointer is nil
  let options: ObjectReading
  try {
    options = readObject(body, member.valueStart, member.valueEnd)
  } catch {
    throw new Refused(bad(`"stream_options" must be an object`))
  }
  const asked = membersNamed(options, "include_usage").map((m) => valueOf(body, m))
  for (const v of asked) {
    if (v !== null && typeof v !== "boolean") throw new Refused(bad(`"stream_options.include_usage" must be true or false`))
  }
  // null into a bool changes nothing: the last true or false counts.
  const last = asked.filter((v): v is boolean => typeof v === "boolean").at(-1)
  return last === true
}

const keepAlive = (
  asked: unknown,
  model: string | undefined,
  settings: RequestPolicySettings,
  operator: OperatorPolicy,
  replace: (field: string, json: string) => void
) => {
  const preloaded = model === undefined ? undefined : operator.preloaded.get(model)
  const read = asked === undefined ? { unset: true as const } : readKeepAlive(asked)
  if ("error" in read) throw new Refused(bad(read.error))
  if (preloaded !== undefined) {
    // A preloaded model stays as the operator loaded it: a request without keep_alive would set
    // Ollama's default (5 minutes) as its new expiry.
    if ("unset" in read || read.ns !== preloaded) replace("keep_alive", keepAliveJson(preloaded))
    return
  }
  if ("unset" in read) return
  let ns = read.ns
  if (ns === 0 || ns === Infinity) {
    if (settings.keepAliveUnbounded === "refuse") {
      throw new Refused(forbidden(`keep_alive ${JSON.stringify(asked)} needs the manage scope (it unloads or pins the model for everyone)`))
    }
    ns = ns === 0 ? settings.keepAliveMin : settings.keepAliveMax
  } else {
    ns = Math.min(Math.max(ns, settings.keepAliveMin), settings.keepAliveMax)
  }
  if (ns !== read.ns) replace("keep_alive", keepAliveJson(ns))
}

const runnerOptions = (asked: unknown, settings: RequestPolicySettings, replace: (field: string, json: string) => void) => {
  if (asked === null) return
  if (asked !== undefined && (typeof asked !== "object" || Array.isArray(asked))) throw new Refused(bad(`"options" must be an object`))
  // A map in Go: keys are exact, the last of two wins, as in JSON.parse.
  const options: Record<string, unknown> = { ...(asked as Record<string, unknown> | undefined) }
  let changed = false
  for (const name of RUNNER_OPTIONS) {
    if (!(name in options)) continue
    if (name === "num_ctx" && settings.numCtxMax !== undefined) {
      const n = options[name]
      if (typeof n === "number" && n <= settings.numCtxMax) continue
      options[name] = settings.numCtxMax
    } else {
      delete options[name]
    }
    changed = true
  }
  if (settings.numPredictMax !== undefined) {
    const n = options.num_predict
    // Negative is Ollama's "until the context is full".
    if (typeof n !== "number" || n < 0 || n > settings.numPredictMax) {
      options.num_predict = settings.numPredictMax
      changed = true
    }
  }
  if (changed) replace("options", JSON.stringify(options))
}
