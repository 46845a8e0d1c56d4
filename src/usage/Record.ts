/**
 * The usage record: what one inference cost and who asked for it, as POSTed to the webhook.
 * Field names and meanings follow the Go proxy this service replaces (durations in nanoseconds,
 * as Ollama reports them), so existing consumers keep working; the rest are additions.
 */
import { Schema } from "effect"
import { Outcome as ExchangeOutcome } from "../exchange/Reading.js"

const Count = Schema.NullOr(Schema.NonNegativeInt)
const Text = Schema.NullOr(Schema.String)

/** An exchange that reached Ollama ended in one of these; the others make no record. */
export const Outcome = ExchangeOutcome.pipe(Schema.pickLiteral("completed", "client_aborted", "upstream_error"))
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
  /** The `metadata` of the key in the key file (a team, a customer id); null for other keys. */
  key_metadata: Schema.NullOr(
    Schema.Record({ key: Schema.String, value: Schema.Union(Schema.String, Schema.Number, Schema.Boolean, Schema.Null) })
  ),
  /**
   * The key's token totals for the UTC day and month after this exchange was charged, counted
   * across every worker that shares the limits' store; null for a key without limits.
   */
  key_period_totals: Schema.NullOr(Schema.Struct({
    day: Schema.String,
    tokens_day: Schema.NonNegativeInt,
    month: Schema.String,
    tokens_month: Schema.NonNegativeInt
  })),
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
  /**
   * false: the counts are Ollama's own. true: Ollama never sent its final figures (the client hung
   * up, the stream was cut): `eval_count` is the token chunks the client received, one token each,
   * and `prompt_eval_count` is what Ollama said before the cut, if anything (Anthropic's
   * `message_start` estimate), else null. Durations are then null.
   */
  usage_estimated: Schema.Boolean,
  /**
   * Web searches Ollama ran on the operator's ollama.com account for this request (a permitted web
   * search tool on /v1/messages or /v1/responses); null when the request declared none.
   */
  web_searches: Schema.NullOr(Schema.Number),
  /** How the counts were had: `ollama` (its final figures), `received_chunks` (counted), null (no counts). */
  usage_counted_by: Schema.NullOr(Schema.Literal("ollama", "received_chunks", "request_estimate", "response_estimate")),
  /**
   * null when the figures were read as they should be; otherwise what broke the reading of this
   * exchange: the figures above are then incomplete (also logged, with the request id).
   */
  metering_error: Text,
  /** From the request's arrival to the first response byte from Ollama. */
  time_to_first_chunk_ms: Schema.NullOr(Schema.NonNegative),
  /** From the request's arrival to the end of the exchange. */
  duration_ms: Schema.NonNegative,
  /**
   * How long the request waited for a slot of Ollama's (src/schedule/), within duration_ms and
   * time_to_first_chunk_ms; null when it did not wait for one (dispatch off).
   */
  queue_wait_ms: Schema.NullOr(Schema.NonNegative),
  /** The RunPod worker (pod) that served the request: RUNPOD_POD_ID; absent off RunPod. */
  runpod_pod_id: Schema.optional(Schema.String),
  /** The RunPod endpoint the worker belongs to: RUNPOD_ENDPOINT_ID. */
  runpod_endpoint_id: Schema.optional(Schema.String),
  /** The data center the worker runs in: RUNPOD_DC_ID. */
  runpod_dc_id: Schema.optional(Schema.String)
})
export type UsageRecord = typeof UsageRecord.Type
