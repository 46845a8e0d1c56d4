/**
 * The built service as a RunPod load-balanced worker runs it: RunPod's variables in the
 * environment, its key beside ours on every request, a custom health-check path, the fake
 * `ollama` executable as Ollama. What the operator sees: the health check, the log lines, the
 * usage records, what Ollama was started with.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { freePort, raw } from "./support/http.js"
import { type SpawnedProxy, spawnManaged } from "./support/proxy.js"
import { startWebhook, type WebhookReceiver } from "./support/webhook.js"

const PROXY_KEY = "proxy-key-for-runpod-3f9a"
const RUNPOD_KEY = "rpa_RUNPODSECRET0123456789"
const WORKER = { RUNPOD_POD_ID: "pod7x2kq9", RUNPOD_ENDPOINT_ID: "ep91abc", RUNPOD_DC_ID: "EU-RO-1" }

let webhook: WebhookReceiver
beforeAll(async () => {
  webhook = await startWebhook()
})
afterAll(() => webhook.close())

const running: Array<SpawnedProxy> = []
afterEach(async () => {
  await Promise.all(running.splice(0).map((proxy) => proxy.kill("SIGTERM")))
})

const start = async (env: Record<string, string>) => {
  const proxy = await spawnManaged({
    AUTHORIZATION_APIKEY: PROXY_KEY,
    ...env
  })
  running.push(proxy)
  return proxy
}

/** The health check answers from state a background probe keeps: poll until it says `status`. */
const pollUntil = async (url: string, status: number, timeoutMs = 15_000) => {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const res = await raw(url)
    if (res.status === status) return res
    if (Date.now() > deadline) throw new Error(`${url} stayed ${res.status}, wanted ${status}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

describe("a RunPod worker", () => {
  it("answers the health check on HEALTH_CHECK_PATH as on /ping, keyless, on both listeners", async () => {
    const healthPort = await freePort()
    const proxy = await start({ HEALTH_CHECK_PATH: "/health", PORT_HEALTH: String(healthPort), FAKE_OLLAMA_STARTUP_DELAY_MS: "300" })
    const health = `http://127.0.0.1:${healthPort}`
    expect((await raw(`${proxy.url}/health`)).status).toBe(204)

    for (const base of [proxy.url, health]) {
      const ready = await pollUntil(`${base}/health`, 200)
      expect(JSON.parse(ready.text)).toEqual({ status: "ready", state: "up" })
      expect((await raw(`${base}/health/`)).status).toBe(200)
      expect((await raw(`${base}/health`, { method: "HEAD" })).status).toBe(200)
      expect((await raw(`${base}/ping`)).status).toBe(200)
    }
    // Only that path: its neighbours are Ollama's, behind the key.
    expect((await raw(`${proxy.url}/healthz`)).status).toBe(401)
    expect((await raw(`${health}/healthz`)).status).toBe(404)
  })

  it("names itself in every log line and every usage record, and never logs either key", async () => {
    const proxy = await start({
      ...WORKER,
      USER_MODEL_METRICS_WEBHOOK_URL: webhook.url,
      AUTHORIZATION_LOG_LEVEL: "debug",
      PRELOAD_MODEL: "llama3.2"
    })
    await pollUntil(`${proxy.url}/ping`, 200)
    const res = await raw(`${proxy.url}/api/generate`, {
      method: "POST",
      headers: { authorization: `Bearer ${RUNPOD_KEY}`, "x-api-key": PROXY_KEY, "x-request-id": "runpod-req-1" },
      body: JSON.stringify({ model: "llama3.2", prompt: "Hi", stream: false })
    })
    expect(res.status).toBe(200)
    await webhook.until((received) => received.some((r) => r.record.request_id === "runpod-req-1"))
    const record = webhook.received.find((r) => r.record.request_id === "runpod-req-1")!.record
    expect(record).toMatchObject({
      api_key_name: "default",
      runpod_pod_id: WORKER.RUNPOD_POD_ID,
      runpod_endpoint_id: WORKER.RUNPOD_ENDPOINT_ID,
      runpod_dc_id: WORKER.RUNPOD_DC_ID
    })

    const access = await proxy.waitForLine((l) => l.msg === "access" && l.request_id === "runpod-req-1")
    expect(access).toMatchObject({ status: 200, api_key_name: "default" })
    const ollamaLines = proxy.lines.filter((l) => l.source === "ollama")
    expect(ollamaLines.length).toBeGreaterThan(3)
    for (const line of proxy.lines) {
      expect(line).toMatchObject({
        runpod_pod_id: WORKER.RUNPOD_POD_ID,
        runpod_endpoint_id: WORKER.RUNPOD_ENDPOINT_ID,
        runpod_dc_id: WORKER.RUNPOD_DC_ID
      })
    }
    const everything = JSON.stringify(proxy.lines) + proxy.stderr()
    expect(everything).not.toContain(PROXY_KEY)
    expect(everything).not.toContain(RUNPOD_KEY)
  })

  it("starts Ollama with an hour for a stalled model load, unless OLLAMA_LOAD_TIMEOUT is set", async () => {
    const serverConfig = (proxy: SpawnedProxy) => proxy.waitForLine((l) => l.source === "ollama" && l.msg === "server config")
    const byDefault = await start({})
    expect(String((await serverConfig(byDefault)).env)).toContain("OLLAMA_LOAD_TIMEOUT:1h0m0s")
    const given = await start({ OLLAMA_LOAD_TIMEOUT: "10m" })
    expect(String((await serverConfig(given)).env)).toContain("OLLAMA_LOAD_TIMEOUT:10m0s")
  })

  it("starts Ollama with as many parallel slots as it dispatches (QUEUE_SLOTS), unless OLLAMA_NUM_PARALLEL is set", async () => {
    const serverConfig = (proxy: SpawnedProxy) => proxy.waitForLine((l) => l.source === "ollama" && l.msg === "server config")
    const slots = await start({ QUEUE_SLOTS: "3" })
    expect(String((await serverConfig(slots)).env)).toContain("OLLAMA_NUM_PARALLEL:3")
    const given = await start({ OLLAMA_NUM_PARALLEL: "4", QUEUE_SLOTS: "2" })
    expect(String((await serverConfig(given)).env)).toContain("OLLAMA_NUM_PARALLEL:4")
  })
})
