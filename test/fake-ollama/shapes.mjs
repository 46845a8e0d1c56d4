// @ts-check
/**
 * The Go structs Ollama binds request bodies into, as gojson.mjs shapes: every field the fake
 * reads, with Go's kinds (a pointer where Go has one: `null` then resets it; a map or struct
 * where Go merges). Sources: api/types.go, openai/openai.go, openai/responses.go,
 * anthropic/anthropic.go (ollama/ollama v0.32.x).
 */
import { decodeStruct, plain, T } from "./gojson.mjs"

export { T }
import { parseGoDuration } from "./wire.mjs"

/** api.Duration.UnmarshalJSON: a number of seconds or a Go duration string; kept as sent. */
const Duration = T.custom("api.Duration", (n) => {
  if (n.t === "num") return { value: n.v }
  if (n.t === "str") {
    try {
      parseGoDuration(n.v)
      return { value: n.v }
    } catch (e) {
      return { error: e instanceof Error ? e.message : String(e) }
    }
  }
  const goType = n.t === "bool" ? "bool" : n.t === "arr" ? "[]interface {}" : n.t === "obj" ? "map[string]interface {}" : "<nil>"
  return { error: `Unsupported type: '${goType}'` }
})

/** api.ThinkValue.UnmarshalJSON: a bool, or "high" / "medium" / "low" / "max". */
const Think = T.custom("api.ThinkValue", (n) => {
  if (n.t === "bool") return { value: n.v }
  if (n.t === "str") {
    if (["high", "medium", "low", "max"].includes(n.v)) return { value: n.v }
    return { error: `invalid think value: ${JSON.stringify(n.v)} (must be "high", "medium", "low", "max", true, or false)` }
  }
  return { error: "think must be a boolean or string (\"high\", \"medium\", \"low\", \"max\", true, or false)" }
})

const options = T.ptr(T.map(T.any))
const tools = T.slice(T.struct("api.Tool", { type: T.string, items: T.any, function: T.any }), "api.Tools")

const nativeMessageFields = T.struct("api.Message", {
  role: T.string,
  content: T.string,
  thinking: T.string,
  images: T.slice(T.any, "[]api.ImageData"),
  tool_calls: T.slice(T.any, "[]api.ToolCall"),
  tool_name: T.string,
  tool_call_id: T.string
})

/** api.Message.UnmarshalJSON: decoded fresh (no merge into the old element), role lower-cased. */
const NativeMessage = T.custom("api.Message", (n) => {
  const r = decodeFresh(nativeMessageFields, n)
  if ("value" in r) {
    const m = /** @type {Record<string, unknown>} */ (r.value)
    if (typeof m.role === "string") m.role = m.role.toLowerCase()
  }
  return r
})

/** Decodes into a zero value, as an UnmarshalJSON into a fresh variable does. */
function decodeFresh(/** @type {import("./gojson.mjs").Shape} */ shape, /** @type {import("./gojson.mjs").Node} */ n) {
  return n.t === "null" ? { value: {} } : decodeStruct(/** @type {any} */ (shape), n)
}

const common = {
  model: T.string,
  stream: T.ptr(T.bool),
  keep_alive: T.ptr(Duration),
  options,
  think: T.ptr(Think),
  truncate: T.ptr(T.bool),
  shift: T.ptr(T.bool),
  format: T.any,
  _debug_render_only: T.bool,
  logprobs: T.bool,
  top_logprobs: T.int
}

export const GenerateRequest = T.struct("api.GenerateRequest", {
  ...common,
  prompt: T.string,
  suffix: T.string,
  system: T.string,
  template: T.string,
  context: T.slice(T.int, "[]int"),
  raw: T.bool,
  images: T.slice(T.any, "[]api.ImageData")
})

export const ChatRequest = T.struct("api.ChatRequest", {
  ...common,
  messages: T.slice(NativeMessage, "[]api.Message"),
  tools
})

export const EmbedRequest = T.struct("api.EmbedRequest", {
  model: T.string,
  input: T.any,
  keep_alive: T.ptr(Duration),
  truncate: T.ptr(T.bool),
  dimensions: T.int,
  options
})

export const EmbeddingRequest = T.struct("api.EmbeddingRequest", {
  model: T.string,
  prompt: T.string,
  keep_alive: T.ptr(Duration),
  options
})

export const ShowRequest = T.struct("api.ShowRequest", { model: T.string, name: T.string, system: T.string, verbose: T.bool, options })
export const PullRequest = T.struct("api.PullRequest", { model: T.string, name: T.string, insecure: T.bool, stream: T.ptr(T.bool) })
export const PushRequest = PullRequest.k === "struct" ? T.struct("api.PushRequest", PullRequest.fields) : PullRequest
export const CreateRequest = T.struct("api.CreateRequest", {
  model: T.string,
  name: T.string,
  stream: T.ptr(T.bool),
  from: T.string,
  remote_host: T.string,
  files: T.ptr(T.map(T.string, "map[string]string")),
  system: T.string,
  template: T.string,
  parameters: T.ptr(T.map(T.any))
})
export const CopyRequest = T.struct("api.CopyRequest", { source: T.string, destination: T.string })
export const DeleteRequest = T.struct("api.DeleteRequest", { model: T.string, name: T.string })

const StreamOptions = T.ptr(T.struct("openai.StreamOptions", { include_usage: T.bool }))

export const ChatCompletionRequest = T.struct("openai.ChatCompletionRequest", {
  model: T.string,
  messages: T.slice(
    T.struct("openai.Message", {
      role: T.string,
      content: T.any,
      reasoning: T.string,
      tool_calls: T.slice(T.any, "[]openai.ToolCall"),
      name: T.string,
      tool_call_id: T.string
    }),
    "[]openai.Message"
  ),
  stream: T.bool,
  stream_options: StreamOptions,
  max_tokens: T.ptr(T.int),
  seed: T.ptr(T.int),
  stop: T.any,
  temperature: T.ptr(T.float),
  frequency_penalty: T.ptr(T.float),
  presence_penalty: T.ptr(T.float),
  top_p: T.ptr(T.float),
  response_format: T.ptr(T.any),
  tools: T.slice(T.struct("api.Tool", { type: T.string, items: T.any, function: T.any }), "[]api.Tool"),
  reasoning: T.ptr(T.struct("openai.Reasoning", { effort: T.string })),
  reasoning_effort: T.ptr(T.string),
  logprobs: T.ptr(T.bool),
  top_logprobs: T.int,
  _debug_render_only: T.bool
})

export const CompletionRequest = T.struct("openai.CompletionRequest", {
  model: T.string,
  prompt: T.string,
  frequency_penalty: T.float,
  max_tokens: T.ptr(T.int),
  presence_penalty: T.float,
  seed: T.ptr(T.int),
  stop: T.any,
  stream: T.bool,
  stream_options: StreamOptions,
  temperature: T.ptr(T.float),
  top_p: T.float,
  suffix: T.string,
  logprobs: T.ptr(T.int),
  _debug_render_only: T.bool
})

export const OpenAIEmbedRequest = T.struct("openai.EmbedRequest", {
  input: T.any,
  model: T.string,
  dimensions: T.int,
  encoding_format: T.string
})

const ContentBlocks = T.slice(T.struct("anthropic.ContentBlock", { type: T.string, text: T.ptr(T.string) }), "[]anthropic.ContentBlock")

/** anthropic.MessageParam.UnmarshalJSON: role and raw content first; a string content becomes one text block. */
const MessageParam = T.custom("anthropic.MessageParam", (n) => {
  const raw = decodeFresh(T.struct("struct", { role: T.string, content: T.custom("json.RawMessage", (c) => ({ value: c })) }), n)
  if (!("value" in raw)) return raw
  const { role, content } = /** @type {{ role?: string, content?: import("./gojson.mjs").Node }} */ (raw.value)
  if (content?.t === "str") return { value: { role, content: [{ type: "text", text: content.v }] } }
  if (!content || content.t === "null") return { value: { role } }
  const blocks = decodeStruct(/** @type {any} */ (T.struct("anthropic.MessageParam", { content: ContentBlocks })), {
    t: "obj",
    entries: [["content", content]]
  })
  return "value" in blocks ? { value: { role, content: blocks.value.content } } : blocks
})

export const MessagesRequest = T.struct("anthropic.MessagesRequest", {
  model: T.string,
  max_tokens: T.int,
  messages: T.slice(MessageParam, "[]anthropic.MessageParam"),
  system: T.any,
  stream: T.bool,
  temperature: T.ptr(T.float),
  top_p: T.ptr(T.float),
  top_k: T.ptr(T.int),
  stop_sequences: T.slice(T.string, "[]string"),
  tools: T.slice(
    T.struct("anthropic.Tool", { type: T.string, name: T.string, description: T.string, input_schema: T.any, max_uses: T.int }),
    "[]anthropic.Tool"
  ),
  tool_choice: T.ptr(T.any),
  thinking: T.ptr(T.any),
  metadata: T.ptr(T.any),
  output_config: T.ptr(T.any)
})

export const ResponsesRequest = T.struct("openai.ResponsesRequest", {
  model: T.string,
  background: T.bool,
  conversation: T.any,
  include: T.slice(T.string, "[]string"),
  // ResponsesInput.UnmarshalJSON: a string or a list of items, replaced whole.
  input: T.custom("openai.ResponsesInput", (n) => ({ value: n.t === "null" ? undefined : plain(n) })),
  instructions: T.string,
  max_output_tokens: T.ptr(T.int),
  reasoning: T.struct("openai.ResponsesReasoning", { effort: T.string, summary: T.string }),
  temperature: T.ptr(T.float),
  text: T.ptr(T.any),
  top_p: T.ptr(T.float),
  truncation: T.ptr(T.string),
  tools: T.slice(
    T.struct("openai.ResponsesTool", {
      type: T.string,
      name: T.string,
      description: T.ptr(T.string),
      strict: T.ptr(T.bool),
      parameters: T.ptr(T.map(T.any)),
      tools: T.any
    }),
    "[]openai.ResponsesTool"
  ),
  stream: T.ptr(T.bool)
})
