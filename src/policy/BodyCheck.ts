/**
 * The check of a request body read whole, before it goes to Ollama: decoded as Ollama decodes it
 * (src/exchange/Decode.ts), read as Ollama reads it (JSON: RequestPolicy.ts; a transcription's
 * form: src/exchange/Multipart.ts), and judged by the key's rules and the operator's policy. What
 * it returns is the body Ollama gets: the same bytes, or the decoded and rewritten ones.
 */
import type { IncomingHttpHeaders } from "node:http"
import { decodeBody } from "../exchange/Decode.js"
import { forbidden, type Refusal } from "../exchange/Errors.js"
import type { Exchange } from "../exchange/Exchange.js"
import { formModel } from "../exchange/Multipart.js"
import { modelRef, normalizeModel } from "../keys/Models.js"
import { evaluateRequest, type OperatorPolicy } from "./RequestPolicy.js"

export interface BodyChecks {
  readonly operator: OperatorPolicy
  readonly isRemote: (normalizedName: string) => boolean
}

export type Checked = { readonly refusal: Refusal } | { readonly body: Buffer }

const queryOf = (target: string) => {
  const q = target.indexOf("?")
  return q < 0 ? "" : target.slice(q + 1)
}

const formRefusal = (exchange: Exchange, body: Buffer, headers: IncomingHttpHeaders, checks: BodyChecks): Refusal | undefined => {
  const key = exchange.caller.key
  let model: string | "many" | undefined
  try {
    model = formModel(queryOf(exchange.target), body, headers["content-type"])
  } catch (error) {
    return { status: 400, message: `failed to parse multipart form: ${(error as Error).message}` }
  }
  if (model === "many") return { status: 400, message: "the request names its model more than once" }
  exchange.reading.requestFields = { model, stream: undefined }
  if (key === null || model === undefined || key.models.allows(model, checks.isRemote)) return undefined
  const ref = modelRef(model)
  const cloud = "name" in ref && (ref.cloud || checks.isRemote(normalizeModel(ref.name)))
  return forbidden(`this API key may not use the ${cloud ? "cloud " : ""}model "${model}"`)
}

export const checkBody = (exchange: Exchange, whole: Buffer, headers: IncomingHttpHeaders, checks: BodyChecks): Checked => {
  const { route } = exchange
  const decoded = decodeBody(route, headers, whole)
  if ("refusal" in decoded) return decoded
  if (!route.jsonBody) {
    const refusal = formRefusal(exchange, decoded.body, headers, checks)
    return refusal === undefined ? { body: decoded.body } : { refusal }
  }
  const result = evaluateRequest({
    route,
    body: decoded.body,
    key: exchange.caller.key,
    operator: checks.operator,
    isRemote: checks.isRemote
  })
  if ("refusal" in result) return result
  exchange.reading.requestFields = {
    model: result.model,
    stream: result.stream,
    usageInjected: result.usageInjected,
    webSearch: result.webSearch,
    rewritten: result.rewritten,
    promptTokensEstimate: result.prompt === undefined ? undefined : estimateTokens(result.prompt)
  }
  return { body: result.body }
}

/**
 * Tokens of a text Ollama did not count: a quarter of its UTF-8 bytes, at least one, the rule of
 * thumb for the BPE vocabularies of the models Ollama serves (English text, 3.5 to 4.5 bytes per token).
 */
export const estimateTokens = (text: string): number => Math.max(1, Math.ceil(Buffer.byteLength(text, "utf8") / 4))
