/**
 * What most end-to-end tests stand on: a fake Ollama, a webhook receiver, and the proxy in front of
 * the one posting its usage records to the other, ready (its /ping says 200).
 */
import { type FakeOllama, startFakeOllama } from "../fake-ollama/server.mjs"
import { type RunningProxy, startProxy, untilReady } from "./proxy.js"
import { startWebhook, type WebhookReceiver } from "./webhook.js"

export interface Stack {
  readonly fake: FakeOllama
  readonly webhook: WebhookReceiver
  readonly proxy: RunningProxy
  /** Stops the proxy, then the receiver and the fake. */
  readonly close: () => Promise<void>
}

/** `env` is the proxy's, besides OLLAMA_HOST and USER_MODEL_METRICS_WEBHOOK_URL (which it may override). */
export const startStack = async (env: Record<string, string>, fakeOptions?: Parameters<typeof startFakeOllama>[0]): Promise<Stack> => {
  const fake = await startFakeOllama(fakeOptions)
  const webhook = await startWebhook()
  const proxy = await startProxy({ OLLAMA_HOST: fake.url, USER_MODEL_METRICS_WEBHOOK_URL: webhook.url, ...env })
  await untilReady(proxy.url)
  return {
    fake,
    webhook,
    proxy,
    close: async () => {
      await proxy.close()
      await webhook.close()
      await fake.close()
    }
  }
}
