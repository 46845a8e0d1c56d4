/**
 * What a key may do with this request, decided from the exchange's classification and reading:
 * its scope (before a byte is read), the model it names (once the body has been read, before a
 * byte reaches Ollama), and which models the lists it reads may show.
 */
import type { KeyPolicy } from "../keys/ApiKeys.js"
import { isCloudModel, type ModelRule } from "../keys/Models.js"
import type { Route } from "./Classify.js"
import { forbidden, type Refusal } from "./Errors.js"
import type { ExchangeRewrite } from "./Exchange.js"
import { isObject } from "./Json.js"

/** The refusal of a key that lacks the request's scope, or undefined. */
export const scopeRefusal = (key: KeyPolicy, route: Route): Refusal | undefined =>
  key.scopes.has(route.scope) ? undefined : forbidden(`this API key lacks the ${route.scope} scope`)

const modelRefused = (model: string): Refusal =>
  forbidden(
    isCloudModel(model)
      ? `this API key may not use the cloud model "${model}" (cloud models must be named in the key's models)`
      : `this API key may not use the model "${model}"`
  )

const V1_MODEL = "/v1/models/"

/** For a model named in the path (`GET /v1/models/{model}`): the refusal, or undefined. */
export const pathModelRefusal = (rule: ModelRule, route: Route, path: string, isRemote: (name: string) => boolean): Refusal | undefined => {
  if (route.route !== "/v1/models/:model") return undefined
  const model = path.slice(V1_MODEL.length)
  return rule.allows(model, isRemote) ? undefined : modelRefused(model)
}

/** Whether the request names its model in its body (JSON, or a transcription's form): read whole before it goes on. */
export const readsModelInBody = (route: Route) => route.inference || route.operation === "show"

/** The lists of models a key reads, and where each entry's name is. */
const LISTS: Record<string, { readonly array: string; readonly names: ReadonlyArray<string> }> = {
  "/api/tags": { array: "models", names: ["name", "model"] },
  "/api/ps": { array: "models", names: ["name", "model"] },
  "/v1/models": { array: "data", names: ["id"] }
}

/** Whether the answer lists models, which a key sees only in part. */
export const listsModels = (route: Route) => route.scope === "read" && LISTS[route.route] !== undefined

/** Keeps only the entries of a model list the key may use. */
export const modelListFilter = (rule: ModelRule, route: Route, isRemote: (name: string) => boolean): ExchangeRewrite => {
  const list = LISTS[route.route]!
  const allowed = (entry: unknown) => {
    if (!isObject(entry)) return false
    const name = list.names.map((n) => entry[n]).find((v): v is string => typeof v === "string")
    // An entry with a remote_host runs on ollama.com: the list says so itself.
    const remote = typeof entry.remote_host === "string" && entry.remote_host !== ""
    return name !== undefined && rule.allows(name, remote ? () => true : isRemote)
  }
  return {
    replaceBody: (status) =>
      status !== 200 ? undefined : (body) => {
        let value: unknown
        try {
          value = JSON.parse(body.toString("utf8"))
        } catch {
          // Not the list this should be: show none of it rather than all of it.
          return Buffer.from(JSON.stringify({ [list.array]: [] }))
        }
        if (!isObject(value) || !Array.isArray(value[list.array])) return Buffer.from(JSON.stringify({ [list.array]: [] }))
        return Buffer.from(JSON.stringify({ ...value, [list.array]: (value[list.array] as Array<unknown>).filter(allowed) }))
      }
  }
}
