/**
 * What an exchange means in GenAI terms (OpenTelemetry's conventions): the model, finish reason
 * and token counts of its one reading.
 */
import type { GenAiOperation } from "../exchange/Classify.js"
import type { Reading } from "../exchange/Reading.js"

export interface ResponseUsage {
  model?: string
  finishReasons?: Array<string>
  inputTokens?: number
  outputTokens?: number
  /** An `{"error": ...}` object, mid-stream or as the whole body. */
  error?: string
  /** The token counts are the proxy's estimate of a stream cut short (see UsageReader.ts). */
  estimated?: boolean
}

/**
 * The GenAI view of an exchange's reading, once it has ended; undefined for an answer that was not
 * a 2xx (its error is the status). Embeddings have no output tokens.
 */
export const responseUsage = (reading: Reading, operation: GenAiOperation): ResponseUsage | undefined => {
  const answer = reading.answer
  if (answer === undefined || reading.status === null || reading.status < 200 || reading.status >= 300) return undefined
  const u = answer.usage
  const usage: ResponseUsage = {}
  const model = u.model ?? answer.firstModel
  if (model !== null) usage.model = model
  if (u.doneReason !== null) usage.finishReasons = [u.doneReason]
  if (answer.measured) {
    usage.inputTokens = u.promptEvalCount ?? 0
    if (operation !== "embeddings") usage.outputTokens = u.evalCount ?? 0
  } else if (answer.estimated) {
    usage.estimated = true
    if (u.promptEvalCount !== null) usage.inputTokens = u.promptEvalCount
    if (operation !== "embeddings") usage.outputTokens = u.evalCount ?? 0
  }
  if (answer.error !== null) usage.error = answer.error
  return usage
}
