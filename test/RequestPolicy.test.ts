/**
 * The request policy on bodies, without HTTP: each rule against the Go behaviour it mirrors, the
 * bypass it prevents, and the body Ollama gets.
 */
import { describe, expect, it } from "vitest"
import { classify } from "../src/exchange/Classify.js"
import { foldKey, readBodyObject } from "../src/exchange/GoJson.js"
import type { KeyPolicy } from "../src/keys/ApiKeys.js"
import { ModelRule } from "../src/keys/Models.js"
import { parseGoDuration, readKeepAlive } from "../src/policy/GoDuration.js"
import { evaluateRequest, type OperatorPolicy, type PolicyResult } from "../src/policy/RequestPolicy.js"
import type { Scope } from "../src/Scopes.js"

const operator: OperatorPolicy = {
  maxRequestBody: 32 << 20,
  keepAliveMin: 1e9,
  keepAliveMax: 1800e9,
  keepAliveUnbounded: "rewrite",
  numCtxMax: undefined,
  numPredictMax: undefined,
  preloaded: new Map([["llama3.2:latest", Infinity]])
}

const key = (scopes: ReadonlyArray<Scope>, models = ["*"], requestPolicy?: KeyPolicy["requestPolicy"]): KeyPolicy => ({
  name: "alice",
  scopes: new Set(scopes),
  models: new ModelRule(models),
  expiresAt: undefined,
  disabled: false,
  metadata: undefined,
  source: "file",
  limits: undefined,
  weight: 1,
  requestPolicy
})

const TENANT = key(["inference", "read"])
const ADMIN = key(["inference", "read", "manage"])

const run = (path: string, body: string, k: KeyPolicy | null = TENANT, remote: ReadonlyArray<string> = []): PolicyResult =>
  evaluateRequest({ route: classify("POST", path), body: Buffer.from(body), key: k, operator, isRemote: (n) => remote.includes(n) })

const sent = (result: PolicyResult) => {
  if ("refusal" in result) throw new Error(`refused: ${result.refusal.message}`)
  return JSON.parse(result.body.toString()) as Record<string, unknown>
}
const refusal = (result: PolicyResult) => ("refusal" in result ? result.refusal : undefined)

describe("reading a body as Go's encoding/json does", () => {
  it("folds keys as foldName: any ASCII case, ſ as s, K (Kelvin) as k, escapes decoded", () => {
    expect(foldKey("Stream_Options")).toBe("stream_options")
    expect(foldKey("\u017ftream")).toBe("stream")
    expect(foldKey("\u212aeep_alive")).toBe("keep_alive")
    const object = readBodyObject(Buffer.from(`{"mod\\u0065l":"a", "\u017fTREAM" : true}`))
    expect(object.members.map((m) => m.key)).toEqual(["model", "stream"])
  })

  it("refuses what Go would read otherwise: trailing data after the object, a field named twice in any spelling", () => {
    expect(refusal(run("/api/chat", `{"model":"llama3.2"} {"model":"qwen3"}`))?.status).toBe(400)
    expect(refusal(run("/api/chat", `{"model":"llama3.2","Model":"qwen3"}`))?.message).toBe("the request names its model more than once")
    expect(refusal(run("/api/chat", `{"model":"llama3.2","keep_alive":5,"\u212aeep_alive":0}`))?.message)
      .toBe(`the request names "keep_alive" more than once`)
    expect(refusal(run("/api/chat", `{"model":"llama3.2","options":{},"OPTIONS":{"num_gpu":0}}`))?.status).toBe(400)
  })

  it("parses Go durations as time.ParseDuration and keep_alive as Duration.UnmarshalJSON", () => {
    expect(parseGoDuration("1h30m")).toBe(5400e9)
    expect(parseGoDuration("300ms")).toBe(300e6)
    expect(parseGoDuration("0")).toBe(0)
    expect(parseGoDuration("1.5s")).toBe(1.5e9)
    expect(parseGoDuration("5")).toBeUndefined()
    expect(parseGoDuration("")).toBeUndefined()
    expect(readKeepAlive(-1)).toEqual({ ns: Infinity })
    expect(readKeepAlive("-5m")).toEqual({ ns: Infinity })
    expect(readKeepAlive(1e-10)).toEqual({ ns: 0 })
    expect(readKeepAlive(null)).toEqual({ unset: true })
    expect(readKeepAlive(true)).toHaveProperty("error")
  })
})

describe("model references as modelref.ParseRef reads them", () => {
  it.each(["gpt-oss:120b: cloud", "gpt-oss:120b:CLOUD", "gpt-oss:120b:\tcloud", "gpt-oss:120b-Cloud", "kimi-k2:cloud"])(
    "%j is a cloud model: refused to a * key",
    (model) => {
      expect(refusal(run("/api/chat", JSON.stringify({ model })))?.message).toMatch(/may not use the cloud model/)
      expect("refusal" in run("/api/chat", JSON.stringify({ model }), key(["inference"], ["*-cloud", "*:cloud"]))).toBe(false)
    }
  )

  it("`:local` is the local model; two suffixes are Ollama's error too", () => {
    expect(sent(run("/api/chat", `{"model":"qwen3:0.6b:local"}`, key(["inference"], ["qwen3:*"])))).toBeDefined()
    expect(refusal(run("/api/chat", `{"model":"x:cloud:local"}`))?.status).toBe(400)
  })

  it("a model Ollama lists with a remote_host is a cloud model whatever its name", () => {
    expect(refusal(run("/api/chat", `{"model":"my-copy"}`, TENANT, ["my-copy:latest"]))?.message).toMatch(/cloud model "my-copy"/)
    expect("refusal" in run("/api/chat", `{"model":"my-copy"}`, key(["inference"], ["my-copy"]), ["my-copy:latest"])).toBe(false)
  })
})

describe("web search", () => {
  const tools = (type: string) =>
    JSON.stringify({ model: "qwen3", max_tokens: 10, messages: [], tools: [{ Type: type, name: "web_search" }] })

  it("needs the web scope on /v1/messages and /v1/responses, in any spelling Go's decoder and hasWebSearchTool take", () => {
    expect(refusal(run("/v1/messages", tools("web_search_20250305")))?.message).toMatch(/lacks the web scope/)
    expect(refusal(run("/v1/messages", tools(" web_search_20260209")))?.status).toBe(403)
    expect(refusal(run("/v1/responses", tools("web_search")))?.status).toBe(403)
    const allowed = run("/v1/messages", tools("web_search_20250305"), key(["inference", "web"]))
    expect("refusal" in allowed ? undefined : allowed.webSearch).toBe(true)
    expect("refusal" in run("/v1/messages", tools("function"))).toBe(false)
  })
})

describe("runner policy for keys without manage", () => {
  it("keep_alive: a preloaded model keeps the preload's value, even when the request names none", () => {
    expect(sent(run("/api/generate", `{"model":"llama3.2","keep_alive":0}`)).keep_alive).toBe(-1)
    expect(sent(run("/api/chat", `{"model":"llama3.2","messages":[]}`)).keep_alive).toBe(-1)
    // The rewritten field is the last one, where Go reads it.
    const body = run("/api/generate", `{"keep_alive":"0s","model":"llama3.2","prompt":"x"}`)
    expect("refusal" in body ? "" : body.body.toString()).toBe(`{"model":"llama3.2","prompt":"x","keep_alive":-1}`)
  })

  it("keep_alive elsewhere: clamped to the range; 0 and negative rewritten, or refused when the operator says so", () => {
    expect(sent(run("/api/generate", `{"model":"qwen3","keep_alive":0}`)).keep_alive).toBe(1)
    expect(sent(run("/api/generate", `{"model":"qwen3","keep_alive":-1}`)).keep_alive).toBe(1800)
    expect(sent(run("/api/generate", `{"model":"qwen3","keep_alive":"10h"}`)).keep_alive).toBe(1800)
    expect(sent(run("/api/generate", `{"model":"qwen3","keep_alive":"5m"}`)).keep_alive).toBe("5m")
    expect(sent(run("/api/generate", `{"model":"qwen3"}`)).keep_alive).toBeUndefined()
    expect(refusal(run("/api/generate", `{"model":"qwen3","keep_alive":"soon"}`))?.status).toBe(400)
    const strict = key(["inference"], ["*"], { keepAliveUnbounded: "refuse" })
    expect(refusal(run("/api/generate", `{"model":"qwen3","keep_alive":0}`, strict))?.status).toBe(403)
    expect(sent(run("/api/generate", `{"model":"qwen3","keep_alive":0}`, ADMIN)).keep_alive).toBe(0)
  })

  it("runner options are dropped; num_ctx kept under a maximum; num_predict capped", () => {
    const body =
      `{"model":"qwen3","options":{"num_gpu":0,"main_gpu":1,"num_thread":2,"num_batch":8,"use_mmap":false,"num_ctx":99999,"temperature":0.5},"shift":false}`
    const out = sent(run("/api/chat", body))
    expect(out.options).toEqual({ temperature: 0.5 })
    expect(out.shift).toBeUndefined()
    const capped = sent(run("/api/chat", body, key(["inference"], ["*"], { numCtxMax: 8192, numPredictMax: 100 })))
    expect(capped.options).toEqual({ num_ctx: 8192, temperature: 0.5, num_predict: 100 })
    expect(sent(run("/api/chat", body, ADMIN)).options).toMatchObject({ num_gpu: 0, num_ctx: 99999 })
    const openai = run("/v1/chat/completions", `{"model":"qwen3","max_tokens":5000}`, key(["inference"], ["*"], { numPredictMax: 100 }))
    expect(sent(openai).max_tokens).toBe(100)
  })

  it("_debug_render_only needs manage", () => {
    expect(refusal(run("/api/chat", `{"model":"qwen3","_debug_render_only":true}`))?.status).toBe(403)
    expect(refusal(run("/v1/chat/completions", `{"model":"qwen3","_Debug_Render_Only":true}`))?.status).toBe(403)
    expect("refusal" in run("/api/chat", `{"model":"qwen3","_debug_render_only":true}`, ADMIN)).toBe(false)
  })
})

describe("metering that cannot be switched off", () => {
  const streamed = (extra: string) => run("/v1/chat/completions", `{"model":"qwen3","stream":true${extra}}`, null)

  it("sets include_usage on the key Go reads last, whatever the client sent", () => {
    for (
      const extra of [``, `,"Stream_Options":{"include_usage":false}`, `,"stream_options":null`, `,"STREAM_OPTIONS":{"Include_Usage":null}`]
    ) {
      const result = streamed(extra)
      expect(sent(result).stream_options).toEqual({ include_usage: true })
      expect("refusal" in result ? undefined : result.usageInjected).toBe(true)
    }
    const body = streamed(`,"Stream_Options":{"include_usage":false},"seed":12345678901234567890`)
    expect("refusal" in body ? "" : body.body.toString())
      .toBe(`{"model":"qwen3","stream":true,"seed":12345678901234567890,"stream_options":{"include_usage":true}}`)
  })

  it("leaves a stream that asks already, and one that does not stream; refuses what Go could not read", () => {
    const asked = streamed(`,"stream_options":{"INCLUDE_USAGE":true}`)
    expect("refusal" in asked ? undefined : asked.usageInjected).toBe(false)
    expect("refusal" in asked ? undefined : asked.body.toString()).toBe(
      `{"model":"qwen3","stream":true,"stream_options":{"INCLUDE_USAGE":true}}`
    )
    expect(sent(run("/v1/chat/completions", `{"model":"qwen3","stream":false}`, null)).stream_options).toBeUndefined()
    expect(refusal(streamed(`,"stream_options":"yes"`))?.status).toBe(400)
    expect(refusal(streamed(`,"stream_options":{"include_usage":"no"}`))?.status).toBe(400)
    expect(refusal(run("/v1/chat/completions", `{"model":"qwen3","stream":"yes"}`, null))?.status).toBe(400)
  })

  it("/api/embeddings: the prompt, for the proxy to estimate its tokens", () => {
    const result = run("/api/embeddings", `{"model":"nomic-embed-text","prompt":"one two"}`)
    expect("refusal" in result ? undefined : result.prompt).toBe("one two")
  })
})
