/**
 * The usage webhook's slice of the environment: where records are POSTed and how (batches,
 * connections, retries, signatures), and where they wait meanwhile (the spool; Redis is
 * src/config/Shared.ts's, shared with the limits). A batch larger than the queue is refused here,
 * where both sizes are read.
 */
import { Context, Duration, Effect, Either, Layer, type Option, Redacted } from "effect"
import { Webhook } from "standardwebhooks"
import {
  all,
  AppConfigError,
  optional,
  type Parse,
  parseDuration,
  parseHttpUrl,
  parsePositiveDuration,
  parsePositiveInt,
  readSlice,
  text,
  withDefault
} from "../config/Read.js"

/** Standard Webhooks secrets, separated by spaces (two while one is rotated); never echoed. */
const parseWebhookSecrets: Parse<ReadonlyArray<Redacted.Redacted<string>>> = (raw) => {
  const secrets = raw.split(/\s+/).filter((s) => s !== "")
  for (const secret of secrets) {
    if (!secret.startsWith("whsec_")) return Either.left("each secret starts with whsec_ (Standard Webhooks)")
    try {
      new Webhook(secret)
    } catch {
      return Either.left("a secret is whsec_ followed by base64")
    }
  }
  return Either.right(secrets.map((s) => Redacted.make(s)))
}

export interface WebhookConfigShape {
  readonly webhookUrl: Option.Option<URL>
  readonly webhookApiKey: Option.Option<Redacted.Redacted<string>>
  readonly webhookQueueSize: number
  /** Records per POST: 1 posts each record alone (a JSON object); above 1, JSON arrays of up to that many. */
  readonly webhookBatchSize: number
  /** How long a batch waits for more records after its first one before it is sent anyway. */
  readonly webhookBatchWait: Duration.Duration
  /** POSTs under way at once (connections to the webhook). */
  readonly webhookConcurrency: number
  readonly webhookMaxRetryTime: Duration.Duration
  /** The first retry's delay; each later one doubles it, up to a minute. */
  readonly webhookRetryDelay: Duration.Duration
  /** How long one POST may go unanswered before it counts as failed (and is retried). */
  readonly webhookTimeout: Duration.Duration
  /** USER_MODEL_METRICS_WEBHOOK_SECRET: Standard Webhooks secrets (whsec_...), each signing every POST. */
  readonly webhookSecrets: ReadonlyArray<Redacted.Redacted<string>>
  /** USAGE_SPOOL_DIR: the usage outbox on disk, without Redis (or when Redis fails). */
  readonly usageSpoolDir: Option.Option<string>
  /** How long a record may wait in another worker's Redis pending list before this one delivers it. */
  readonly usageOutboxClaimIdle: Duration.Duration
}

const webhook = all({
  webhookUrl: optional("USER_MODEL_METRICS_WEBHOOK_URL", parseHttpUrl),
  webhookApiKey: optional("USER_MODEL_METRICS_WEBHOOK_API_KEY", (raw) => Either.right(Redacted.make(raw.trim()))),
  webhookQueueSize: withDefault("WEBHOOK_QUEUE_SIZE", parsePositiveInt, 10_000),
  webhookBatchSize: withDefault("USER_MODEL_METRICS_WEBHOOK_BATCH_SIZE", parsePositiveInt, 1),
  webhookBatchWait: withDefault("USER_MODEL_METRICS_WEBHOOK_BATCH_WAIT", parsePositiveDuration, Duration.seconds(1)),
  webhookConcurrency: withDefault("WEBHOOK_CONCURRENCY", parsePositiveInt, 4),
  webhookMaxRetryTime: withDefault("WEBHOOK_MAX_RETRY_TIME", parseDuration, Duration.minutes(10)),
  webhookRetryDelay: withDefault("WEBHOOK_RETRY_DELAY", parseDuration, Duration.seconds(1)),
  webhookTimeout: withDefault("WEBHOOK_TIMEOUT", parsePositiveDuration, Duration.seconds(10)),
  webhookSecrets: withDefault<ReadonlyArray<Redacted.Redacted<string>>>("USER_MODEL_METRICS_WEBHOOK_SECRET", parseWebhookSecrets, []),
  usageSpoolDir: optional("USAGE_SPOOL_DIR", text),
  usageOutboxClaimIdle: withDefault("USAGE_OUTBOX_CLAIM_IDLE", parsePositiveDuration, Duration.minutes(1))
})

export class WebhookConfig extends Context.Tag("app/WebhookConfig")<WebhookConfig, WebhookConfigShape>() {
  static readonly variables = webhook.variables
  static readonly layer = Layer.effect(
    WebhookConfig,
    readSlice(webhook).pipe(
      Effect.filterOrFail(
        (config) => config.webhookBatchSize <= config.webhookQueueSize,
        (config) =>
          new AppConfigError({
            variable: "USER_MODEL_METRICS_WEBHOOK_BATCH_SIZE",
            reason: `${config.webhookBatchSize} is more than WEBHOOK_QUEUE_SIZE (${config.webhookQueueSize}): a batch could never fill`
          })
      )
    )
  )
}
