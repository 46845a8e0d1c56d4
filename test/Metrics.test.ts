import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Logger, Metric } from "effect"
import OpenAI from "openai"
import { labelCache, modelLabel, ollamaRestarts, setPreloadState } from "../src/telemetry/Metrics.js"
import { PROMETHEUS_CONTENT_TYPE } from "../src/telemetry/MetricsExport.js"
import { makeTelemetryConsumer } from "../src/telemetry/Telemetry.js"
import { Tracing } from "../src/telemetry/Tracing.js"
import { webhookQueueDepth, webhookRecordLabels, webhookRecords } from "../src/usage/Webhook.js"
import { startFakeOllama } from "./fake-ollama/server.mjs"
import { chatStream, play } from "./support/exchange.js"
import { freePort } from "./support/http.js"
import { scrape } from "./support/metrics.js"
import { startProxy, untilReady } from "./support/proxy.js"

const KEY = "metrics-test-key"
const auth = { authorization: `Bearer ${KEY}` }

describe("instruments", () => {
  it("label sets are built once per distinct values, empty values left out", () => {
    const labels = labelCache(["endpoint", "api_key_name"])
    const a = labels("/api/chat", "bob")
    expect(labels("/api/chat", "bob")).toBe(a)
    expect(a.map((l) => [l.key, l.value])).toEqual([["endpoint", "/api/chat"], ["api_key_name", "bob"]])
    expect(labels("/api/chat", "").map((l) => l.key)).toEqual(["endpoint"])
  })
})

describe("GET /metrics", () => {
  it("needs a valid API key when keys are configured, and serves Prometheus text", async () => {
    const proxy = await startProxy({ AUTHORIZATION_APIKEY: KEY, AUTHORIZATION_DEFAULT_SCOPES: "all", OLLAMA_HOST: "127.0.0.1:9" })
    try {
      expect((await scrape(proxy.url)).status).toBe(401)
      expect((await scrape(proxy.url, { authorization: "Bearer wrong" })).status).toBe(401)
      const ok = await scrape(proxy.url, { "x-api-key": KEY })
      expect(ok.status).toBe(200)
      expect(ok.contentType).toBe(PROMETHEUS_CONTENT_TYPE)
      expect(ok.families.find((f) => f.name === "ollama_up")?.type).toBe("GAUGE")
      expect(ok.value("ollama_up")).toBe(0)
      expect(ok.value("ollama_restarts_total")).toBe(0)
      expect(ok.value("http_server_active_requests")).toBe(0)
      expect(ok.value("target_info", { service_name: "ollama-authentication-proxy" })).toBe(1)
      expect(ok.text).not.toContain("effect_fiber")
      expect(ok.text).not.toContain(KEY)
    } finally {
      await proxy.close()
    }
  })

  it("is open with METRICS_PUBLIC=true, and on an open proxy", async () => {
    const publicMetrics = await startProxy({ AUTHORIZATION_APIKEY: KEY, METRICS_PUBLIC: "true" })
    const open = await startProxy({})
    try {
      expect((await scrape(publicMetrics.url)).status).toBe(200)
      expect((await scrape(open.url)).status).toBe(200)
    } finally {
      await publicMetrics.close()
      await open.close()
    }
  })

  it("is served by the health listener when PORT_HEALTH differs from PORT", async () => {
    const healthPort = await freePort()
    const proxy = await startProxy({ PORT_HEALTH: String(healthPort), AUTHORIZATION_APIKEY: KEY, AUTHORIZATION_DEFAULT_SCOPES: "all" })
    try {
      expect(proxy.healthUrl).toBe(`http://127.0.0.1:${healthPort}`)
      expect((await scrape(proxy.healthUrl, auth)).status).toBe(200)
      expect((await scrape(proxy.healthUrl)).status).toBe(401)
    } finally {
      await proxy.close()
    }
  })

  it("counts real requests by endpoint, status and outcome, and their durations", async () => {
    const proxy = await startProxy({ AUTHORIZATION_APIKEY_ALICE: KEY, AUTHORIZATION_DEFAULT_SCOPES: "all", OLLAMA_HOST: "127.0.0.1:9" })
    try {
      const before = await scrape(proxy.url, auth)
      const send = (path: string, headers: Record<string, string>) =>
        fetch(`${proxy.url}${path}`, { method: "POST", body: `{"model":"m"}`, headers }).then((r) => r.arrayBuffer())
      await Promise.all([send("/api/chat", auth), send("/api/chat", auth), send("/api/embed", {}), send("/nowhere", auth)])
      const after = await scrape(proxy.url, auth)
      const delta = (name: string, labels: Record<string, string>) => after.total(name, labels) - before.total(name, labels)
      expect(delta("ollama_proxy_requests_total", { endpoint: "/api/chat", status: "503", outcome: "unavailable", api_key_name: "alice" }))
        .toBe(2)
      expect(delta("ollama_proxy_requests_total", { endpoint: "/api/embed", status: "401", outcome: "rejected" })).toBe(1)
      expect(delta("ollama_proxy_requests_total", { endpoint: "other", status: "503" })).toBe(1)
      expect(delta("http_server_request_duration_count", { http_route: "/api/chat", http_response_status_code: "503" })).toBe(2)
      expect(after.families.find((f) => f.name === "http_server_request_duration")?.type).toBe("HISTOGRAM")
      // Ollama never saw these: the body, and with it the model, was not read
      expect(delta("gen_ai_client_operation_duration_count", { gen_ai_operation_name: "chat", error_type: "unavailable" })).toBe(2)
      expect(after.value("http_server_active_requests")).toBe(0)
    } finally {
      await proxy.close()
    }
  })

  it("exports GenAI token usage, and the instruments other parts update", async () => {
    const proxy = await startProxy({ METRICS_PUBLIC: "true" })
    try {
      // Exchanges played through a tap in this process land in the same registry the app exports.
      await Effect.runPromise(
        Effect.gen(function*() {
          const tap = yield* makeTelemetryConsumer
          for (const [input, output] of [[26, 259], [4, 6]] as const) {
            play(tap, {
              url: "/api/chat",
              keyName: "bob",
              body: `{"model":"tokens-test"}`,
              response: {
                status: 200,
                headers: { "content-type": "application/x-ndjson" },
                chunks: chatStream("tokens-test", input, output)
              }
            })
          }
          yield* Metric.increment(ollamaRestarts)
          yield* setPreloadState("llama3.2", "warming")
          yield* Metric.set(webhookQueueDepth, 3)
          webhookRecords.unsafeUpdate(1, webhookRecordLabels("delivered"))
        }).pipe(Effect.provide(Layer.merge(Layer.succeed(Tracing, Tracing.off), Logger.remove(Logger.defaultLogger))))
      )
      const m = await scrape(proxy.url)
      const tokens = {
        gen_ai_request_model: "tokens-test",
        gen_ai_operation_name: "chat",
        gen_ai_provider_name: "ollama",
        api_key_name: "bob"
      }
      expect(m.value("gen_ai_client_token_usage_sum", { ...tokens, gen_ai_token_type: "input" })).toBe(30)
      expect(m.value("gen_ai_client_token_usage_sum", { ...tokens, gen_ai_token_type: "output" })).toBe(265)
      expect(m.value("gen_ai_client_token_usage_count", { ...tokens, gen_ai_token_type: "output" })).toBe(2)
      expect(m.value("gen_ai_client_operation_time_to_first_chunk_count", { gen_ai_request_model: "tokens-test" })).toBe(2)
      expect(m.value("ollama_restarts_total")).toBe(1)
      expect(m.value("ollama_preload_state", { model: "llama3.2", state: "warming" })).toBe(1)
      expect(m.value("ollama_preload_state", { model: "llama3.2", state: "ready" })).toBe(0)
      expect(m.value("usage_webhook_queue_depth")).toBe(3)
      expect(m.value("usage_webhook_records_total", { outcome: "delivered" })).toBe(1)
    } finally {
      await proxy.close()
    }
  })
})

describe("who sees the series per API key", () => {
  it("METRICS_PUBLIC=true shows every counter summed over keys, without a key's name; a metrics key sees them per key", async () => {
    const fake = await startFakeOllama({ tokens: 4 })
    const proxy = await startProxy({
      OLLAMA_HOST: fake.url,
      METRICS_PUBLIC: "true",
      AUTHORIZATION_APIKEY_ANN: "key-ann-1",
      AUTHORIZATION_APIKEY_BEN: "key-ben-2",
      AUTHORIZATION_DEFAULT_SCOPES: "inference,metrics"
    })
    try {
      await untilReady(proxy.url)
      const chat = JSON.stringify({ model: "llama3.2", messages: [{ role: "user", content: "Hi" }], stream: false })
      const before = await scrape(proxy.url)
      for (const key of ["key-ann-1", "key-ben-2", "key-ben-2"]) {
        await fetch(`${proxy.url}/api/chat`, { method: "POST", headers: { authorization: `Bearer ${key}` }, body: chat }).then((r) =>
          r.text()
        )
      }
      const anyone = await scrape(proxy.url)
      expect(anyone.text).not.toContain("api_key_name")
      expect(anyone.text).not.toMatch(/\bann\b|\bben\b/)
      const labels = { endpoint: "/api/chat", outcome: "completed" }
      expect(anyone.total("ollama_proxy_requests_total", labels) - before.total("ollama_proxy_requests_total", labels)).toBe(3)
      const output = { gen_ai_token_type: "output" }
      expect(anyone.total("gen_ai_client_token_usage_sum", output) - before.total("gen_ai_client_token_usage_sum", output)).toBe(12)
      const operator = await scrape(proxy.url, { authorization: "Bearer key-ann-1" })
      expect(operator.total("ollama_proxy_requests_total", { ...labels, api_key_name: "ben" })).toBe(2)
      expect(operator.total("ollama_proxy_requests_total", { ...labels, api_key_name: "ann" })).toBe(1)
    } finally {
      await proxy.close()
      await fake.close()
    }
  })
})

describe("/metrics after real traffic through the fake Ollama", () => {
  it("token counters equal the fake's figures, per model, operation and key", async () => {
    const fake = await startFakeOllama({ tokens: 9 })
    const proxy = await startProxy({ OLLAMA_HOST: fake.url, AUTHORIZATION_APIKEY_DAVE: KEY, AUTHORIZATION_DEFAULT_SCOPES: "all" })
    try {
      await untilReady(proxy.url)
      const post = (path: string, body: object) =>
        fetch(`${proxy.url}${path}`, { method: "POST", headers: auth, body: JSON.stringify(body) }).then((r) => r.text())
      const chat = { model: "llama3.2", messages: [{ role: "user", content: "Tell me about metrics" }] }
      const generate = { model: "llama3.2", prompt: "Once upon a time", stream: false }
      const embed = { model: "nomic-embed-text", input: ["one", "two three"] }
      const before = await scrape(proxy.url, auth)
      await post("/api/chat", chat)
      await post("/api/generate", generate)
      await post("/api/embed", embed)
      const openai = new OpenAI({ baseURL: `${proxy.url}/v1`, apiKey: KEY })
      const v1 = { model: "llama3.2", messages: [{ role: "user" as const, content: "And OpenAI?" }] }
      await openai.chat.completions.create(v1)
      const after = await scrape(proxy.url, auth)

      const figures = [
        ["chat", fake.expected("/api/chat", chat)],
        ["text_completion", fake.expected("/api/generate", generate)],
        ["chat", fake.expected("/v1/chat/completions", v1)]
      ] as const
      const sum = (operation: string, type: "input" | "output") =>
        figures.filter(([op]) => op === operation).reduce((n, [, f]) => n + (type === "input" ? f.promptEvalCount : f.evalCount), 0)
      const tokens = (operation: string, model: string, type: string) => {
        const labels = { gen_ai_operation_name: operation, gen_ai_request_model: model, gen_ai_token_type: type, api_key_name: "dave" }
        return after.total("gen_ai_client_token_usage_sum", labels) - before.total("gen_ai_client_token_usage_sum", labels)
      }
      expect(tokens("chat", "llama3.2", "input")).toBe(sum("chat", "input"))
      expect(tokens("chat", "llama3.2", "output")).toBe(sum("chat", "output"))
      expect(sum("chat", "output")).toBe(18)
      expect(tokens("text_completion", "llama3.2", "input")).toBe(sum("text_completion", "input"))
      expect(tokens("text_completion", "llama3.2", "output")).toBe(9)
      expect(tokens("embeddings", "nomic-embed-text", "input")).toBe(fake.expected("/api/embed", embed).promptEvalCount)
      expect(after.value("ollama_up")).toBe(1)
      expect(
        after.value("gen_ai_client_operation_duration_count", {
          gen_ai_operation_name: "embeddings",
          gen_ai_request_model: "nomic-embed-text"
        })
      )
        .toBeGreaterThanOrEqual(1)
      expect(
        after.total("ollama_proxy_requests_total", {
          endpoint: "/v1/chat/completions",
          status: "200",
          outcome: "completed",
          api_key_name: "dave"
        })
      )
        .toBeGreaterThanOrEqual(1)
    } finally {
      await proxy.close()
      await fake.close()
    }
  })
})

describe("model label cardinality (last: it fills the process-wide model set)", () => {
  it("caps the number of model names a label can take", () => {
    const names = Array.from({ length: 150 }, (_, i) => `cap-test-${i}`)
    const labels = names.map(modelLabel)
    expect(labels.filter((l) => l === "_other").length).toBeGreaterThanOrEqual(50)
    expect(modelLabel(labels[0])).toBe(labels[0])
    expect(modelLabel(undefined)).toBe("")
  })
})
