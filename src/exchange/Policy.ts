/**
 * What a key may do with this request, decided from the exchange's classification and reading:
 * its scope (before a byte is read), the model it names (once the body has been read, before a
 * byte reaches Ollama), and which models the lists it reads may show.
 */
import type { IncomingHttpHeaders } from "node:http"
import type { KeyPolicy } from "../keys/ApiKeys.js"
import { isCloudModel, type ModelRule } from "../keys/Models.js"
import type { Route } from "./Classify.js"
import { forbidden, type Refusal } from "./Errors.js"
import type { ExchangeRewrite } from "./Exchange.js"
import { isObject } from "./Json.js"
import { multipartField } from "./Multipart.js"
import type { Reading } from "./Reading.js"

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
export const pathModelRefusal = (rule: ModelRule, route: Route, path: string): Refusal | undefined => {
  if (route.route !== "/v1/models/:model") return undefined
  const model = path.slice(V1_MODEL.length)
  return rule.allows(model) ? undefined : modelRefused(model)
}

/** Whether the request names its model in its body, where the key's models are checked. */
export const namesModelInBody = (route: Route) => route.inference || route.operation === "show"

/**
 * For a model named in the body, read whole: the refusal, or undefined. A body that names no
 * model is Ollama's to refuse; one that names it twice, or too long to check, is refused here.
 */
export const bodyModelRefusal = (
  rule: ModelRule,
  route: Route,
  reading: Reading,
  body: Buffer,
  headers: IncomingHttpHeaders
): Refusal | undefined => {
  let model: string | undefined
  if (route.jsonBody) {
    const scan = reading.request
    if (scan === undefined) return undefined
    if (scan.modelKeys > 1) return { status: 400, message: "the request names its model more than once" }
    if (scan.overlong) return { status: 400, message: "the request's model name is too long" }
    model = scan.model ?? (route.operation === "show" ? scan.name : undefined)
  } else {
    const field = multipartField(body, headers["content-type"], "model")
    if (field === "many") return { status: 400, message: "the request names its model more than once" }
    model = field
  }
  return model === undefined || rule.allows(model) ? undefined : modelRefused(model)
}

/** The lists of models a key reads, and where each entry's name is. */
const LISTS: Record<string, { readonly array: string; readonly names: ReadonlyArray<string> }> = {
  "/api/tags": { array: "models", names: ["name", "model"] },
  "/api/ps": { array: "models", names: ["name", "model"] },
  "/v1/models": { array: "data", names: ["id"] }
}

/** Whether the answer lists models, which a key sees only in part. */
export const listsModels = (route: Route) => route.scope === "read" && LISTS[route.route] !== undefined

/** Keeps only the entries of a model list the key may use. */
export const modelListFilter = (rule: ModelRule, route: Route): ExchangeRewrite => {
  const list = LISTS[route.route]!
  const allowed = (entry: unknown) => {
    if (!isObject(entry)) return false
    const name = list.names.map((n) => entry[n]).find((v): v is string => typeof v === "string")
    return name !== undefined && rule.allows(name)
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
