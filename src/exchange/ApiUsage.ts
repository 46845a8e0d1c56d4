/**
 * Where each API family puts its usage, one small reader per family. Each takes one parsed JSON
 * object of an answer (a whole body, the `done` line, an SSE event) and adds what it says to the
 * exchange's figures.
 */
import { count, isObject, type Json, NUMBER_FIELDS, text } from "./Json.js"

/** The figures of one exchange; null where the answer did not say. */
export interface Usage {
  model: string | null
  createdAt: string | null
  doneReason: string | null
  totalDuration: number | null
  loadDuration: number | null
  promptEvalCount: number | null
  promptEvalDuration: number | null
  evalCount: number | null
  evalDuration: number | null
}

export const emptyUsage = (): Usage => ({
  model: null,
  createdAt: null,
  doneReason: null,
  totalDuration: null,
  loadDuration: null,
  promptEvalCount: null,
  promptEvalDuration: null,
  evalCount: null,
  evalDuration: null
})

/** What the readers fill in. */
export interface Figures {
  readonly usage: Usage
  /** Ollama's final figures were found (a done object, a `usage`...). */
  measured: boolean
  /** Ollama reported an error in a 2xx body (a mid-stream failure), or a stream stopped short. */
  failed: boolean
  /** The message of an error object in the body (`{"error":...}`, an SSE error event). */
  error: string | null
}

const fail = (figures: Figures, value: Json): void => {
  figures.failed = true
  const error = value.error
  figures.error = text(error) ?? (isObject(error) ? text(error.message) : null) ?? text(value.message) ?? "error"
}

/** `/api/*`: the final `done` object, or the single object of a non-streamed answer. */
export const readNative = (figures: Figures, value: Json): void => {
  const hasFigures = NUMBER_FIELDS.some((name) => name in value)
  if (value.done !== true && !hasFigures) {
    if ("error" in value) fail(figures, value)
    return
  }
  figures.measured = true
  const u = figures.usage
  u.model = text(value.model) ?? u.model
  u.createdAt = text(value.created_at)
  u.doneReason = text(value.done_reason)
  // Ollama leaves a figure out when it is zero.
  u.totalDuration = count(value.total_duration) ?? 0
  u.loadDuration = count(value.load_duration) ?? 0
  u.promptEvalCount = count(value.prompt_eval_count) ?? 0
  u.promptEvalDuration = count(value.prompt_eval_duration) ?? 0
  u.evalCount = count(value.eval_count) ?? 0
  u.evalDuration = count(value.eval_duration) ?? 0
}

/** `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`: `usage` with prompt and completion tokens. */
export const readOpenAi = (figures: Figures, value: Json): void => {
  if (value.error !== undefined && value.error !== null) {
    fail(figures, value)
    return
  }
  const u = figures.usage
  u.model = text(value.model) ?? u.model
  const choices = value.choices
  if (Array.isArray(choices) && isObject(choices[0])) u.doneReason = text(choices[0].finish_reason) ?? u.doneReason
  if (isObject(value.usage)) {
    figures.measured = true
    u.promptEvalCount = count(value.usage.prompt_tokens) ?? 0
    u.evalCount = count(value.usage.completion_tokens) ?? 0
  }
}

/**
 * `/v1/messages`: the final figures in `message_delta` (or the whole message). `message_start`
 * carries input tokens too, but Ollama fills them with its own rough estimate of the request
 * (length / 4) when it has no count yet: they are kept only as the estimate of a stream cut
 * before its end, never as its final figures.
 */
export const readAnthropic = (figures: Figures, value: Json): void => {
  const u = figures.usage
  switch (value.type) {
    case "error":
      fail(figures, value)
      return
    case "message_start": {
      const message = value.message
      if (!isObject(message)) return
      u.model = text(message.model) ?? u.model
      if (isObject(message.usage)) u.promptEvalCount = count(message.usage.input_tokens)
      return
    }
    case "message_delta":
      if (isObject(value.delta)) u.doneReason = text(value.delta.stop_reason) ?? u.doneReason
      break
    default:
      u.model = text(value.model) ?? u.model
      u.doneReason = text(value.stop_reason) ?? u.doneReason
  }
  if (isObject(value.usage)) {
    figures.measured = true
    u.promptEvalCount = count(value.usage.input_tokens) ?? u.promptEvalCount ?? 0
    u.evalCount = count(value.usage.output_tokens) ?? u.evalCount ?? 0
  }
}

/** `/v1/responses`: the response object, whole or in a `response.*` event, with input and output tokens. */
export const readResponses = (figures: Figures, value: Json): void => {
  if (value.type === "error") {
    fail(figures, value)
    return
  }
  const response = typeof value.type === "string" && isObject(value.response) ? value.response : value
  const u = figures.usage
  u.model = text(response.model) ?? u.model
  u.doneReason = text(response.status) ?? u.doneReason
  if (response.status === "failed") figures.failed = true
  if (isObject(response.usage)) {
    figures.measured = true
    u.promptEvalCount = count(response.usage.input_tokens) ?? 0
    u.evalCount = count(response.usage.output_tokens) ?? 0
  }
}

/**
 * `/v1/audio/transcriptions`: `{"text":"..."}` and nothing else (middleware/openai.go). Ollama's
 * count is not sent: the text is kept, for the reader to estimate its tokens.
 */
export const readTranscription = (figures: Figures, value: Json): void => {
  if (value.error !== undefined && value.error !== null) return fail(figures, value)
  const said = text(value.text)
  if (said !== null) figures.usage.evalCount = Math.max(1, Math.ceil(Buffer.byteLength(said, "utf8") / 4))
}
