/**
 * The request policy end to end: for each way a request could make Ollama do what its key forbids
 * (issue: "read every request as Ollama reads it"), the bypass attempt through the real proxy, what
 * the client gets, and what Ollama received. Each of these went through before the policy.
 */
import Anthropic from "@anthropic-ai/sdk"
import { compress, init as initZstd } from "@bokuweb/zstd-wasm"
import { randomUUID } from "node:crypto"
import { mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { gzipSync } from "node:zlib"
import { Ollama } from "ollama"
import OpenAI from "openai"
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest"
import { raw, relayed } from "./support/http.js"
import { type Stack, startStack } from "./support/stack.js"

const ALICE = "sk-alice-policy-1"
const WEB = "sk-web-policy-2"
const ADMIN = "sk-admin-policy-3"
let stack: Stack

beforeAll(async () => {
  await initZstd()
  const dir = mkdtempSync(join(tmpdir(), "policy-"))
  const file = join(dir, "keys.yaml")
  writeFileSync(
    file,
    `keys:
  - { name: alice, key: ${ALICE}, scopes: [inference, read], models: ["llama3.2", "nomic-embed-text"] }
  - { name: web, key: ${WEB}, scopes: [inference, web] }
  - { name: admin, key: ${ADMIN}, scopes: [all] }
`
  )
  stack = await startStack(
    { AUTHORIZATION_KEYS_FILE: file, PRELOAD_MODEL: "llama3.2" },
    { models: ["llama3.2:latest", "qwen3:0.6b", "nomic-embed-text:latest", "gpt-oss:120b-cloud"] }
  )
})

afterAll(async () => {
  await stack?.close()
})

beforeEach(() => {
  stack.fake.requests.length = 0
})

/** What Ollama received for this request id, if anything. */
const seen = (id: string) => relayed(stack.fake.requests).find((r) => r.headers["x-request-id"] === id)
const post = (path: string, key: string, body: string | Buffer, headers: Record<string, string> = {}) => {
  const id = randomUUID()
  return raw(`${stack.proxy.url}${path}`, {
    method: "POST",
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json", "x-request-id": id, ...headers },
    body
  }).then((res) => ({ ...res, id, json: () => JSON.parse(res.text) as Record<string, any> }))
}
const recordOf = async (id: string) => {
  await stack.webhook.until((got) => got.some((g) => g.accepted && g.record.request_id === id))
  return stack.webhook.accepted().find((r) => r.request_id === id)!
}
const zstd = (value: unknown) => Buffer.from(compress(Buffer.from(JSON.stringify(value)), 3))

describe("compressed bodies (server/cloud_proxy.go, middleware/openai.go: Ollama decodes zstd on /v1)", () => {
  const chat = (model: string, stream = false) => ({ model, stream, messages: [{ role: "user", content: "Hi" }] })

  it("a zstd body naming a forbidden model is refused; Ollama never sees it", async () => {
    for (const model of ["qwen3:0.6b", "gpt-oss:120b-cloud"]) {
      const res = await post("/v1/chat/completions", ALICE, zstd(chat(model)), { "content-encoding": "zstd" })
      expect(res.status).toBe(403)
      expect(res.json().error.code).toBe("permission_denied")
      expect(seen(res.id)).toBeUndefined()
    }
  })

  it("an allowed zstd body reaches Ollama decoded, with usage asked for, and is billed", async () => {
    const res = await post("/v1/chat/completions", ALICE, zstd(chat("llama3.2", true)), { "content-encoding": "zstd" })
    expect(res.status).toBe(200)
    const got = seen(res.id)!
    expect(got.headers["content-encoding"]).toBeUndefined()
    const body = JSON.parse(got.body.toString())
    expect(body).toMatchObject({ model: "llama3.2", stream: true, stream_options: { include_usage: true } })
    // And as Ollama's structs read it.
    expect(got.decoded).toMatchObject({ model: "llama3.2", stream: true, stream_options: { include_usage: true } })
    // The client did not ask for usage: it gets none, the record has the prompt's tokens all the same.
    expect(res.text).not.toContain(`"usage"`)
    const expected = stack.fake.expected("/v1/chat/completions", chat("llama3.2", true))
    expect(await recordOf(res.id)).toMatchObject({ prompt_eval_count: expected.promptEvalCount, usage_estimated: false })
  })

  it("other encodings, and zstd where Ollama would not decode it, get 415 in the family's shape; bombs and big windows are refused", async () => {
    const gz = await post("/v1/chat/completions", ALICE, gzipSync(JSON.stringify(chat("qwen3:0.6b"))), { "content-encoding": "gzip" })
    expect(gz.status).toBe(415)
    expect(gz.json().error.message).toMatch(/unsupported Content-Encoding "gzip"/)
    const native = await post("/api/chat", ALICE, zstd(chat("llama3.2")), { "content-encoding": "zstd" })
    expect([native.status, native.json().error]).toEqual([415, expect.stringMatching(/Content-Encoding "zstd"/)])
    const twice = await post("/v1/chat/completions", ALICE, zstd(chat("llama3.2")), { "content-encoding": "zstd, zstd" })
    expect(twice.status).toBe(415)
    // 30 MB of one repeated member, under 1 KB compressed: past Ollama's 20 MiB cap on the decoded body.
    const bomb = Buffer.from(
      compress(Buffer.concat([Buffer.from(`{"model":"llama3.2","x":"`), Buffer.alloc(30 << 20, 0x61), Buffer.from(`"}`)]), 3)
    )
    const big = await post("/v1/chat/completions", ALICE, bomb, { "content-encoding": "zstd" })
    expect(big.status).toBe(413)
    // A frame header asking for a 16 MiB window (window descriptor 0x70: 2^(10+14)): over the 8 MiB decoder limit.
    const frame = Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x70, 0x01, 0x00, 0x00])
    const window = await post("/v1/chat/completions", ALICE, frame, { "content-encoding": "zstd" })
    expect([window.status, window.json().error.message]).toEqual([400, expect.stringMatching(/window size exceeded/)])
    for (const r of [gz, native, twice, big, window]) expect(seen(r.id)).toBeUndefined()
  })
})

describe("cloud models under another spelling (internal/modelref/modelref.go parseSourceSuffix)", () => {
  it.each(["gpt-oss:120b: cloud", "gpt-oss:120b:CLOUD", "gpt-oss:120b:\tcloud", "gpt-oss:120b-Cloud"])(
    "%j is refused to a key without cloud models",
    async (model) => {
      const client = new OpenAI({ baseURL: `${stack.proxy.url}/v1`, apiKey: WEB, maxRetries: 0 })
      const error = await client.chat.completions.create({ model, messages: [{ role: "user", content: "Hi" }] }).catch((e: unknown) => e)
      expect(error).toBeInstanceOf(OpenAI.PermissionDeniedError)
      expect((error as Error).message).toContain("may not use the cloud model")
      expect(relayed(stack.fake.requests)).toEqual([])
    }
  )
})

describe("a body that names its model twice (cloud_proxy.go reads the exact key, the handler any case)", () => {
  it("is refused: Ollama would send it to ollama.com while its handler reads the local model", async () => {
    const res = await post("/v1/chat/completions", WEB, `{"model":"gpt-oss:120b-cloud","Model":"llama3.2","messages":[]}`)
    expect([res.status, res.json().error.message]).toEqual([400, "the request names its model more than once"])
    expect(seen(res.id)).toBeUndefined()
    expect(stack.fake.cloudRequests).toEqual([])
  })
})

describe("web search on the operator's account (hasWebSearchTool, middleware/web_search.go)", () => {
  const ask = (key: string) =>
    new Anthropic({ baseURL: stack.proxy.url, apiKey: key, maxRetries: 0 }).messages.create({
      model: "llama3.2",
      max_tokens: 16,
      messages: [{ role: "user", content: "news?" }],
      tools: [{ type: "web_search_20250305", name: "web_search", max_uses: 3 }]
    })

  it("is refused to a key without the web scope, in Anthropic's shape, and goes on for one with it", async () => {
    const error = await ask(ALICE).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(Anthropic.PermissionDeniedError)
    expect((error as Error).message).toContain("lacks the web scope")
    expect(stack.fake.requests.some((r) => r.path === "/v1/messages")).toBe(false)
    await ask(WEB).catch(() => undefined)
    expect(stack.fake.requests.some((r) => r.path === "/v1/messages")).toBe(true)
  })
})

describe("what a tenant asks of the runner (api/types.go Duration, server/sched.go needsReload)", () => {
  const ollama = (key: string, id: string) =>
    new Ollama({ host: stack.proxy.url, headers: { authorization: `Bearer ${key}`, "x-request-id": id } })

  it("keep_alive 0 cannot unload the preloaded model, nor -1 pin another; the load is recorded", async () => {
    const id = randomUUID()
    await ollama(ALICE, id).generate({ model: "llama3.2", prompt: "", keep_alive: 0 })
    expect(JSON.parse(seen(id)!.body.toString()).keep_alive).toBe(-1)
    // Still loaded, for ever, for every tenant.
    expect(stack.fake.runner("llama3.2")?.forever).toBe(true)
    expect(await recordOf(id)).toMatchObject({ done_reason: "load", eval_count: 0 })
    const pin = randomUUID()
    await ollama(WEB, pin).generate({ model: "qwen3:0.6b", prompt: "Hi", keep_alive: -1 })
    expect(JSON.parse(seen(pin)!.body.toString()).keep_alive).toBe(1800)
    const admin = randomUUID()
    await ollama(ADMIN, admin).generate({ model: "qwen3:0.6b", prompt: "", keep_alive: 0 })
    expect(JSON.parse(seen(admin)!.body.toString()).keep_alive).toBe(0)
  })

  it("runner options are dropped for keys without manage, kept for those with it", async () => {
    const id = randomUUID()
    const options = { num_gpu: 0, num_ctx: 65536, num_batch: 1, main_gpu: 1, num_thread: 1, use_mmap: false, temperature: 0.1 }
    const reloads = stack.fake.reloads.get("llama3.2:latest") ?? 0
    await ollama(ALICE, id).chat({ model: "llama3.2", messages: [{ role: "user", content: "Hi" }], options, stream: false })
    expect(JSON.parse(seen(id)!.body.toString()).options).toEqual({ temperature: 0.1 })
    // The runner was not reloaded for everyone, nor moved to the CPU.
    expect(stack.fake.reloads.get("llama3.2:latest") ?? 0).toBe(reloads)
    expect(stack.fake.runner("llama3.2")?.sizeVram).toBeGreaterThan(0)
    const admin = randomUUID()
    await ollama(ADMIN, admin).chat({ model: "llama3.2", messages: [{ role: "user", content: "Hi" }], options, stream: false })
    expect(JSON.parse(seen(admin)!.body.toString()).options).toMatchObject({ num_gpu: 0, num_ctx: 65536 })
  })

  it("_debug_render_only needs manage", async () => {
    const res = await post("/api/chat", ALICE, JSON.stringify({ model: "llama3.2", messages: [], _Debug_Render_Only: true }))
    expect([res.status, res.json().error]).toEqual([403, expect.stringContaining("_debug_render_only needs the manage scope")])
    expect(seen(res.id)).toBeUndefined()
  })
})

describe("metering a client cannot switch off", () => {
  it("Stream_Options with include_usage false, later in the body, does not turn usage off", async () => {
    const body = `{"model":"llama3.2","stream":true,"messages":[{"role":"user","content":"Hi"}],"Stream_Options":{"include_usage":false}}`
    const res = await post("/v1/chat/completions", ALICE, body)
    expect(res.status).toBe(200)
    const sent = seen(res.id)!.body.toString()
    expect(sent.endsWith(`"stream_options":{"include_usage":true}}`)).toBe(true)
    expect(sent).not.toContain("Stream_Options")
    expect(seen(res.id)!.decoded).toMatchObject({ stream_options: { include_usage: true } })
    expect(res.text).not.toContain(`"usage"`)
    const record = await recordOf(res.id)
    expect(record.prompt_eval_count).toBeGreaterThan(0)
    expect(record.usage_counted_by).toBe("ollama")
  })

  it("a transcription's model is the query's first (Go's FormValue): ?model= cannot slip past the rule", async () => {
    const form =
      `--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nllama3.2\r\n--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nRIFF\r\n--b--\r\n`
    const res = await post("/v1/audio/transcriptions?model=qwen3:0.6b", ALICE, form, { "content-type": "multipart/form-data; boundary=b" })
    expect(res.status).toBe(403)
    expect(res.json().error.message).toContain(`may not use the model "qwen3:0.6b"`)
    const qp =
      `--b\r\nContent-Disposition: form-data; name="model"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nqwen3=3A0.6b\r\n--b--\r\n`
    const encoded = await post("/v1/audio/transcriptions", ALICE, qp, { "content-type": "multipart/form-data; boundary=b" })
    expect(encoded.status).toBe(403)
    expect(seen(res.id) ?? seen(encoded.id)).toBeUndefined()
  })
})
