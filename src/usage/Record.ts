/**
 * The usage record: what one inference cost and who asked for it, as POSTed to the webhook.
 * Field names and meanings follow the Go proxy this service replaces (durations in nanoseconds,
 * as Ollama reports them), so existing consumers keep working; the rest are additions.
 */
import { Schema } from "effect"

const Count = Schema.NullOr(Schema.NonNegativeInt)
const Text = Schema.NullOr(Schema.String)

export const Outcome = Schema.Literal("completed", "client_aborted", "upstream_error")
export type Outcome = typeof Outcome.Type

export const UsageRecord = Schema.Struct({
  /** Unique per record; also the webhook's Idempotency-Key, so a retried POST can be recognised. */
  id: Schema.String,
  /** The X-Request-Id the client sent or the proxy made; also on the response and in the logs. */
  request_id: Schema.String,
  /** Ollama's `created_at` of the final object; otherwise when the proxy saw the exchange end. */
  created_at: Schema.String,
  /** Request path without the query, e.g. `/api/chat`, `/v1/chat/completions`. */
  endpoint: Schema.String,
  model: Text,
  /** The API key's name (`default`, or the suffix of AUTHORIZATION_APIKEY_<NAME>); null on an open proxy. */
  api_key_name: Text,
  user_id: Text,
  user_name: Text,
  user_email: Text,
  user_role: Text,
  chat_id: Text,
  /** Ollama's HTTP status; null when no answer arrived. */
  status: Schema.NullOr(Schema.Int),
  outcome: Outcome,
  /** Whether the answer was streamed (NDJSON or SSE); null when no answer arrived to tell. */
  stream: Schema.NullOr(Schema.Boolean),
  /** `stop`, `length`, ... (OpenAI finish_reason, Anthropic stop_reason). */
  done_reason: Text,
  total_duration: Count,
  load_duration: Count,
  prompt_eval_count: Count,
  prompt_eval_duration: Count,
  eval_count: Count,
  eval_duration: Count,
  /** From the request's arrival to the first response byte from Ollama. */
  time_to_first_chunk_ms: Schema.NullOr(Schema.NonNegative),
  /** From the request's arrival to the end of the exchange. */
  duration_ms: Schema.NonNegative,
  /** The RunPod worker (pod) that served the request: RUNPOD_POD_ID; absent off RunPod. */
  runpod_pod_id: Schema.optional(Schema.String),
  /** The RunPod endpoint the worker belongs to: RUNPOD_ENDPOINT_ID. */
  runpod_endpoint_id: Schema.optional(Schema.String),
  /** The data center the worker runs in: RUNPOD_DC_ID. */
  runpod_dc_id: Schema.optional(Schema.String)
})
export type UsageRecord = typeof UsageRecord.Type
