/**
 * Keys that can be handed to strangers: scopes, model rules, expiry and a key file reloaded live,
 * with the real `ollama` and `openai` clients against the real proxy and the fake Ollama, and what
 * Ollama saw (nothing, for a refused request).
 */
import Anthropic from "@anthropic-ai/sdk"
import { Either } from "effect"
import { randomUUID } from "node:crypto"
import { mkdtempSync, renameSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Ollama } from "ollama"
import OpenAI from "openai"
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest"
import { classify } from "../src/exchange/Classify.js"
import { refusalBody } from "../src/exchange/Errors.js"
import { formModel } from "../src/exchange/Multipart.js"
import { parseKeyFile } from "../src/keys/KeyFile.js"
import { isCloudModel, ModelRule, normalizeModel } from "../src/keys/Models.js"
import { startFakeOllama } from "./fake-ollama/server.mjs"
import { raw, relayed } from "./support/http.js"
import { scrape } from "./support/metrics.js"
import { type RunningProxy, spawnProxy, startProxy, untilReady } from "./support/proxy.js"
import { spanRecorder } from "./support/spans.js"

describe("model names and rules", () => {
  it("brings names to Ollama's short form", () => {
    expect(normalizeModel("llama3.2")).toBe("llama3.2:latest")
    expect(normalizeModel("Library/Llama3.2:latest")).toBe("llama3.2:latest")
    expect(normalizeModel("registry.ollama.ai/library/llama3.2")).toBe("llama3.2:latest")
    expect(normalizeModel("hf.co/user/repo:Q4_K_M")).toBe("hf.co/user/repo:q4_k_m")
    expect(normalizeModel("localhost:5000/ns/model")).toBe("localhost:5000/ns/model:latest")
  })

  it("a name without a tag means :latest; * is any run of characters", () => {
    const rule = new ModelRule(["llama3.2", "qwen3:*"])
    expect(rule.allows("llama3.2")).toBe(true)
    expect(rule.allows("llama3.2:latest")).toBe(true)
    expect(rule.allows("LLAMA3.2")).toBe(true)
    expect(rule.allows("llama3.2:1b")).toBe(false)
    expect(rule.allows("qwen3:0.6b")).toBe(true)
    expect(rule.allows("qwen3")).toBe(true)
    expect(rule.allows("qwen2.5:7b")).toBe(false)
    expect(rule.allows("llama3.2x")).toBe(false)
  })

  it("cloud models only where a pattern names them", () => {
    expect(isCloudModel("gpt-oss:120b-cloud")).toBe(true)
    expect(isCloudModel("kimi-k2:cloud")).toBe(true)
    expect(isCloudModel("qwen3-coder-cloud")).toBe(true)
    expect(isCloudModel("llama3.2")).toBe(false)
    expect(ModelRule.all.allows("gpt-oss:120b-cloud")).toBe(false)
    expect(new ModelRule(["gpt-oss:*"]).allows("gpt-oss:120b-cloud")).toBe(false)
    expect(new ModelRule(["gpt-oss:120b-cloud"]).allows("gpt-oss:120b-cloud")).toBe(true)
    expect(new ModelRule(["*-cloud"]).allows("gpt-oss:120b-cloud")).toBe(true)
    expect(new ModelRule(["*-cloud"]).allows("llama3.2")).toBe(false)
  })
})

describe("the scope of every request", () => {
  it.each([
    ["POST", "/api/chat", "inference"],
    ["POST", "/api/generate", "inference"],
    ["POST", "/api/embed", "inference"],
    ["POST", "/api/embeddings", "inference"],
    ["POST", "/v1/chat/completions", "inference"],
    ["POST", "/v1/completions", "inference"],
    ["POST", "/v1/embeddings", "inference"],
    ["POST", "/v1/responses", "inference"],
    ["POST", "/v1/messages", "inference"],
    ["POST", "/v1/audio/transcriptions", "inference"],
    ["GET", "/api/tags", "read"],
    ["HEAD", "/api/tags", "read"],
    ["POST", "/api/show", "read"],
    ["GET", "/api/ps", "read"],
    ["GET", "/api/version", "read"],
    ["GET", "/v1/models", "read"],
    ["GET", "/v1/models/llama3.2", "read"],
    ["GET", "/", "read"],
    ["HEAD", "/", "read"],
    ["POST", "/api/pull", "manage"],
    ["POST", "/api/push", "manage"],
    ["POST", "/api/create", "manage"],
    ["POST", "/api/copy", "manage"],
    ["DELETE", "/api/delete", "manage"],
    ["POST", "/api/blobs/sha256:abc", "manage"],
    ["HEAD", "/api/blobs/sha256:abc", "manage"],
    ["POST", "/api/experimental/web_search", "manage"],
    ["POST", "/api/me", "manage"],
    ["POST", "/api/signout", "manage"],
    ["GET", "/api/status", "manage"],
    ["POST", "/api/something-ollama-adds-later", "manage"],
    ["GET", "/api/chat", "manage"],
    ["POST", "/api/tags", "manage"],
    ["DELETE", "/v1/models/llama3.2", "manage"]
  ])("%s %s: %s", (method, path, scope) => {
    expect(classify(method, path).scope).toBe(scope)
  })
})

describe("the key file", () => {
  it("reads the documented shape, YAML or JSON", () => {
    const yaml = `keys:
  - name: alice
    key: "sk-alice-1"
    scopes: [inference, read]
    models: ["llama3.2", "qwen3:*"]
    expires_at: "2027-01-01T00:00:00Z"
    disabled: false
    metadata: { team: blue }
`
    expect(Either.getOrThrow(parseKeyFile(yaml))).toEqual([{
      name: "alice",
      key: "sk-alice-1",
      scopes: ["inference", "read"],
      models: ["llama3.2", "qwen3:*"],
      expires_at: "2027-01-01T00:00:00Z",
      disabled: false,
      metadata: { team: "blue" }
    }])
    expect(Either.getOrThrow(parseKeyFile(`{"keys":[{"name":"bob","key":"sha256:${"a".repeat(64)}"}]}`))).toHaveLength(1)
  })

  it.each([
    ["keys:\n  - name: a\n    key: k\n    model: [llama3.2]\n", "keys[0].model: unknown field"],
    ["keys:\n  - name: a\n    key: k\n    scopes: [inferense]\n", `keys[0].scopes[0]: "inferense" is not a scope`],
    ["keys:\n  - name: a\n    key: k\n    expires_at: 2027-01-01\n", "keys[0].expires_at: an RFC 3339"],
    ["keys:\n  - key: k\n", "keys[0].name: is missing"],
    ["keys:\n  - name: a\n    key: sha256:abc\n", "keys[0].key: sha256: followed by 64 hex digits"],
    ["keys: [\n", "not valid YAML"],
    ["", "the file is empty"],
    ["keys:\n  - name: a\n    name: b\n    key: k\n", "not valid YAML"],
    ["users: []\n", "keys: is missing"],
    ["keys:\n  - name: a\n    key: k\n    weight: 0\n", "keys[0].weight: a number above 0, at most 1000"],
    ["keys:\n  - name: a\n    key: k\n    weight: heavy\n", "keys[0].weight:"]
  ])("refuses %j: %s", (text, reason) => {
    const parsed = parseKeyFile(text)
    expect(Either.isLeft(parsed) && parsed.left).toContain(reason)
  })

  const entry = (field: string) => `keys:\n  - name: a\n    key: k\n    ${field}\n`
  it.each([
    // A near miss of every known field: case, plural, separators, a typo.
    [entry("scope: [inference]"), `keys[0].scope: unknown field; did you mean "scopes"?`],
    [entry("model: [llama3.2]"), `keys[0].model: unknown field; did you mean "models"?`],
    [entry("Disabled: true"), `keys[0].Disabled: unknown field; did you mean "disabled"?`],
    [entry("expiresAt: 2027-01-01T00:00:00Z"), `keys[0].expiresAt: unknown field; did you mean "expires_at"?`],
    [entry("metdata: {}"), `keys[0].metdata: unknown field; did you mean "metadata"?`],
    [entry("limit: {}"), `keys[0].limit: unknown field; did you mean "limits"?`],
    ["keys:\n  - Name: a\n    key: k\n", `keys[0].Name: unknown field; did you mean "name"?`],
    ["keys:\n  - name: a\n    kye: k\n", `keys[0].kye: unknown field; did you mean "key"?`],
    ["key:\n  - name: a\n    key: k\n", `key: unknown field; did you mean "keys"?`],
    [entry("limits: { request_per_minute: 1 }"), `keys[0].limits.request_per_minute: unknown field; did you mean "requests_per_minute"?`],
    [entry("limits: { tokens_per_days: 1 }"), `keys[0].limits.tokens_per_days: unknown field; did you mean "tokens_per_day"?`],
    [entry("colour: blue"), "keys[0].colour: unknown field"],
    [
      entry("scopes: [inferense]"),
      `keys[0].scopes[0]: "inferense" is not a scope (inference, read, manage, metrics, web, all); did you mean "inference"?`
    ],
    // Every field given a value of the wrong type: what belongs there, and what YAML read.
    [entry("scopes: inference"), "keys[0].scopes: a list like [inference, read], not a string"],
    [entry("scopes:"), "keys[0].scopes: a list like [inference, read], not empty"],
    [entry("scopes: [1]"), "keys[0].scopes[0]: a scope (inference, read, manage, metrics, web, all), not a number"],
    [entry("models: llama3.2"), `keys[0].models: a list like ["llama3.2", "qwen3:*"], not a string`],
    [entry("models: [1]"), `keys[0].models[0]: a model name like "llama3.2", not a number`],
    [entry(`models: [""]`), "keys[0].models[0]: a model name, not empty"],
    ["keys:\n  - name: [a]\n    key: k\n", "keys[0].name: a name like alice, not a list"],
    ["keys:\n  - name: a\n    key: 12345\n", `keys[0].key: the key as text (quote one that YAML reads otherwise: "12345"), not a number`],
    [entry("expires_at: 5"), "keys[0].expires_at: an RFC 3339 date and time with a zone, like 2027-01-01T00:00:00Z, not a number"],
    [entry("disabled: nope"), "keys[0].disabled: true or false, not a string"],
    [entry("metadata: blue"), "keys[0].metadata: a map like { team: blue }, not a string"],
    [entry("metadata: { team: [a] }"), "keys[0].metadata.team: text, a number, true, false or null, not a list"],
    [entry("limits: 60"), "keys[0].limits: a map like { requests_per_minute: 60 }, not a number"],
    [entry(`limits: { requests_per_minute: "60" }`), "keys[0].limits.requests_per_minute: a positive integer, not a string"],
    ["keys: alice\n", "keys: a list of keys, each `- name: ...` with its `key: ...`, not a string"],
    ["keys:\n  - alice\n", `keys[0]: a key like { name: alice, key: "sk-..." }, not a string`],
    ["- name: a\n", "a map with `keys:` and a list of keys, not a list"]
  ])("says %j in the file's own words: %s", (text, reason) => {
    expect(parseKeyFile(text)).toEqual(Either.left(reason))
  })
})

describe("the model of a transcription: a multipart form field", () => {
  const form = (fields: ReadonlyArray<readonly [string, string]>, boundary = "----b0undary") =>
    Buffer.from(
      fields.map(([name, value]) => `--${boundary}\r\nContent-Disposition: form-data; name="${name}"\r\n\r\n${value}\r\n`).join("") +
        `--${boundary}--\r\n`
    )
  const type = "multipart/form-data; boundary=----b0undary"

  it("reads the field, and says when the form repeats it", () => {
    expect(formModel("", form([["file", "RIFF...."], ["model", "whisper"]]), type)).toBe("whisper")
    expect(formModel("", form([["model", "a"], ["model", "b"]]), type)).toBe("many")
    expect(formModel("", form([["file", "x"]]), type)).toBeUndefined()
    expect(formModel("", form([["model", "a"]]), "application/json")).toBeUndefined()
    expect(formModel("", form([["model", "a"]], "q"), `multipart/form-data; boundary="q"`)).toBe("a")
  })

  it("takes the query's model first, as Go's Request.FormValue does", () => {
    const body = form([["model", "whisper"]])
    expect(formModel("model=llama3.2", body, type)).toBe("llama3.2")
    expect(formModel("x=1&model=qwen3%3A0.6b&model=b", body, type)).toBe("qwen3:0.6b")
    expect(formModel("mode=x", body, type)).toBe("whisper")
    expect(() => formModel("model=a;b", body, type)).toThrow(/semicolon/)
    expect(() => formModel("model=%zz", body, type)).toThrow(/escape/)
  })

  it("decodes a quoted-printable part, and leaves file parts out, as Go's multipart reader does", () => {
    const qp = Buffer.from(
      `--b\r\nContent-Disposition: form-data; name="model"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nqwen3=3A0.=\r\n6b\r\n--b--\r\n`
    )
    expect(formModel("", qp, "multipart/form-data; boundary=b")).toBe("qwen3:0.6b")
    const file = Buffer.from(
      `--b\r\nContent-Disposition: form-data; name="model"; filename="m.txt"\r\n\r\nllama3.2\r\n--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper\r\n--b--\r\n`
    )
    expect(formModel("", file, "multipart/form-data; boundary=b")).toBe("whisper")
  })
})

describe("errors in each client's own shape", () => {
  it("native, OpenAI and Anthropic bodies", () => {
    const refusal = { status: 403, message: "forbidden: this API key lacks the manage scope" }
    expect(JSON.parse(refusalBody("native", refusal))).toEqual({ error: refusal.message })
    expect(JSON.parse(refusalBody("openai", refusal))).toEqual({
      error: { message: refusal.message, type: "invalid_request_error", param: null, code: "permission_denied" }
    })
    expect(JSON.parse(refusalBody("anthropic", refusal))).toEqual({
      type: "error",
      error: { type: "permission_error", message: refusal.message }
    })
  })
})

// ---------------------------------------------------------------------------------------------
// The proxy, with a key file

const ALICE = "sk-alice-6f2c1a"
const BOB = "sk-bob-91d7e3"
const OLD = "sk-old-2b4c8d"
const ADMIN = "sk-admin-a7e5"
const SCRAPER = "sk-scraper-5d1e"

const keyFile = (extra = "") =>
  `keys:
  - name: alice
    key: "${ALICE}"
    scopes: [inference, read]
    models: ["llama3.2", "nomic-embed-text"]
    metadata: { team: blue, tier: 2 }
  - name: bob
    key: "${BOB}"
    scopes: [inference]
  - name: old
    key: "${OLD}"
    expires_at: "2020-01-01T00:00:00Z"
  - name: admin
    key: "${ADMIN}"
    scopes: [all]
    models: ["*", "gpt-oss:120b-cloud"]
  - name: scraper
    key: "${SCRAPER}"
    scopes: [metrics]
${extra}`

/** Writes the key file as a Secret mount or an editor does: a new file moved into place. */
const writeKeys = (file: string, text: string) => {
  const next = `${file}.${randomUUID()}`
  writeFileSync(next, text)
  renameSync(next, file)
}

describe("keys from the file, with the real clients", () => {
  let fake: Awaited<ReturnType<typeof startFakeOllama>>
  let proxy: RunningProxy
  let dir: string
  let file: string
  // Each read of the file is an ApiKeys.reload span: the test counts polls by them.
  const spans = spanRecorder()

  beforeAll(async () => {
    fake = await startFakeOllama({
      models: ["llama3.2:latest", "qwen3:0.6b", "nomic-embed-text:latest", "gpt-oss:120b-cloud"]
    })
    dir = mkdtempSync(join(tmpdir(), "keys-"))
    file = join(dir, "keys.yaml")
    writeKeys(file, keyFile())
    proxy = await startProxy({
      OLLAMA_HOST: fake.url,
      AUTHORIZATION_KEYS_FILE: file,
      AUTHORIZATION_KEYS_FILE_POLL: "100ms",
      METRICS_PUBLIC: "false"
    }, spans.layer)
    await untilReady(proxy.url)
  })

  afterAll(async () => {
    await proxy?.close()
    await fake?.close()
  })

  beforeEach(() => {
    fake.requests.length = 0
  })

  const ollama = (key: string) => new Ollama({ host: proxy.url, headers: { authorization: `Bearer ${key}` } })
  const openai = (key: string) => new OpenAI({ baseURL: `${proxy.url}/v1`, apiKey: key, maxRetries: 0 })

  /** What a refused call raised, with the status it carried. */
  const refused = async (call: () => Promise<unknown>) => {
    try {
      await call()
    } catch (error) {
      return error as Error & { status?: number; status_code?: number }
    }
    throw new Error("the call was let through")
  }

  it("an inference-only key cannot pull, delete, create, copy or upload: 403, and Ollama sees none of it", async () => {
    const client = ollama(BOB)
    for (
      const call of [
        () => client.pull({ model: "qwen3:0.6b" }),
        () => client.delete({ model: "llama3.2" }),
        () => client.create({ model: "mine", from: "llama3.2" }),
        () => client.copy({ source: "llama3.2", destination: "mine" }),
        () => client.list(),
        () => client.ps()
      ]
    ) {
      const error = await refused(call)
      expect(error.status_code).toBe(403)
      expect(error.message).toMatch(/^forbidden: this API key lacks the (manage|read) scope$/)
    }
    const upload = await raw(`${proxy.url}/api/blobs/sha256:${"0".repeat(64)}`, {
      method: "POST",
      headers: { authorization: `Bearer ${BOB}` },
      body: "x"
    })
    expect(upload.status).toBe(403)
    expect(JSON.parse(upload.text)).toEqual({ error: "forbidden: this API key lacks the manage scope" })
    expect(relayed(fake.requests)).toEqual([])
    // It still chats.
    const answer = await client.chat({ model: "llama3.2", messages: [{ role: "user", content: "Hi" }] })
    expect(answer.done).toBe(true)
  })

  it("a key limited to llama3.2 is refused any other model on every inference endpoint, in each client's shape", async () => {
    const native = ollama(ALICE)
    const messages = [{ role: "user" as const, content: "Hi" }]
    for (
      const call of [
        () => native.chat({ model: "qwen3:0.6b", messages }),
        () => native.generate({ model: "qwen3:0.6b", prompt: "Hi" }),
        () => native.embed({ model: "all-minilm", input: "Hi" }),
        () => native.embeddings({ model: "all-minilm", prompt: "Hi" }),
        () => native.show({ model: "qwen3:0.6b" })
      ]
    ) {
      const error = await refused(call)
      expect(error.status_code).toBe(403)
      expect(error.message).toMatch(/^forbidden: this API key may not use the model "(qwen3:0\.6b|all-minilm)"$/)
    }
    const client = openai(ALICE)
    for (
      const call of [
        () => client.chat.completions.create({ model: "qwen3:0.6b", messages }),
        () => client.chat.completions.create({ model: "qwen3:0.6b", messages, stream: true }),
        () => client.completions.create({ model: "qwen3:0.6b", prompt: "Hi" }),
        () => client.embeddings.create({ model: "all-minilm", input: "Hi" }),
        () => client.responses.create({ model: "qwen3:0.6b", input: "Hi" }),
        () => client.models.retrieve("qwen3:0.6b")
      ]
    ) {
      const error = await refused(call)
      expect(error).toBeInstanceOf(OpenAI.PermissionDeniedError)
      expect(error.message).toMatch(/this API key may not use the model "(qwen3:0\.6b|all-minilm)"/)
    }
    const anthropic = new Anthropic({ baseURL: proxy.url, apiKey: ALICE, maxRetries: 0 })
    const denied = await refused(() => anthropic.messages.create({ model: "qwen3:0.6b", max_tokens: 10, messages }))
    expect(denied).toBeInstanceOf(Anthropic.PermissionDeniedError)
    expect((denied as InstanceType<typeof Anthropic.APIError>).error).toEqual({
      type: "error",
      error: { type: "permission_error", message: `forbidden: this API key may not use the model "qwen3:0.6b"` }
    })
    const unknown = await refused(() =>
      new Anthropic({ baseURL: proxy.url, apiKey: "sk-nobody", maxRetries: 0 }).messages.create({
        model: "llama3.2",
        max_tokens: 10,
        messages
      })
    )
    expect(unknown).toBeInstanceOf(Anthropic.AuthenticationError)
    const messagesApi = await raw(`${proxy.url}/v1/messages`, {
      method: "POST",
      headers: { "x-api-key": ALICE, "content-type": "application/json" },
      body: JSON.stringify({ model: "qwen3:0.6b", max_tokens: 10, messages })
    })
    expect(messagesApi.status).toBe(403)
    expect(JSON.parse(messagesApi.text)).toEqual({
      type: "error",
      error: { type: "permission_error", message: `forbidden: this API key may not use the model "qwen3:0.6b"` }
    })
    expect(relayed(fake.requests)).toEqual([])
    // Its own models work, named any way Ollama names them.
    expect((await native.chat({ model: "library/llama3.2:latest", messages })).done).toBe(true)
    expect((await client.embeddings.create({ model: "nomic-embed-text", input: "Hi" })).data).toHaveLength(1)
  })

  it("a transcription names its model in a form: the rule reads it there", async () => {
    const boundary = "----x1"
    const body = (model: string) =>
      `--${boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n${model}\r\n` +
      `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\nRIFF0000\r\n` +
      `--${boundary}--\r\n`
    const send = (model: string) =>
      raw(`${proxy.url}/v1/audio/transcriptions`, {
        method: "POST",
        headers: { authorization: `Bearer ${ALICE}`, "content-type": `multipart/form-data; boundary=${boundary}` },
        body: body(model)
      })
    const refused = await send("whisper")
    expect(refused.status).toBe(403)
    expect(JSON.parse(refused.text).error.message).toBe(`forbidden: this API key may not use the model "whisper"`)
    expect(relayed(fake.requests)).toEqual([])
    // An allowed model goes on, the form unchanged.
    await send("llama3.2")
    expect(relayed(fake.requests).map((r) => [r.path, r.body.toString()])).toEqual([["/v1/audio/transcriptions", body("llama3.2")]])
  })

  it("the lists show only the models a key may use", async () => {
    const names = (await ollama(ALICE).list()).models.map((m) => m.name).sort()
    expect(names).toEqual(["llama3.2:latest", "nomic-embed-text:latest"])
    // HEAD has no body to filter: Ollama's answer as it is.
    const head = await raw(`${proxy.url}/api/tags`, { method: "HEAD", headers: { authorization: `Bearer ${ALICE}` } })
    const direct = await raw(`${fake.url}/api/tags`, { method: "HEAD" })
    expect([head.status, head.text, head.headers["content-length"]]).toEqual([200, "", direct.headers["content-length"]])
    await ollama(ALICE).chat({ model: "llama3.2", messages: [{ role: "user", content: "Hi" }] })
    const running = (await ollama(ALICE).ps()).models.map((m) => m.name)
    expect(running.every((n) => n === "llama3.2:latest" || n === "nomic-embed-text:latest")).toBe(true)
    const ids = []
    for await (const model of openai(ALICE).models.list()) ids.push(model.id)
    expect(ids.sort()).toEqual(["llama3.2:latest", "nomic-embed-text:latest"])
    // The admin's "*" shows every local model, and its cloud model by name.
    expect((await ollama(ADMIN).list()).models.map((m) => m.name).sort()).toEqual([
      "gpt-oss:120b-cloud",
      "llama3.2:latest",
      "nomic-embed-text:latest",
      "qwen3:0.6b"
    ])
  })

  it("a cloud model is refused unless the key names it", async () => {
    const error = await refused(() => ollama(BOB).chat({ model: "gpt-oss:120b-cloud", messages: [{ role: "user", content: "Hi" }] }))
    expect(error.status_code).toBe(403)
    expect(error.message).toContain(`may not use the cloud model "gpt-oss:120b-cloud"`)
    expect(relayed(fake.requests)).toEqual([])
    expect((await ollama(ADMIN).chat({ model: "gpt-oss:120b-cloud", messages: [{ role: "user", content: "Hi" }] })).done).toBe(true)
  })

  it("a body that names its model twice, or in another case, cannot slip a model past the rule", async () => {
    for (
      const body of [
        `{"model":"llama3.2","model":"qwen3:0.6b","messages":[]}`,
        `{"model":"llama3.2","Model":"qwen3:0.6b","messages":[]}`,
        `{"model":"llama3.2","mod\\u0065l":"qwen3:0.6b","messages":[]}`
      ]
    ) {
      const res = await raw(`${proxy.url}/api/chat`, { method: "POST", headers: { authorization: `Bearer ${ALICE}` }, body })
      expect(res.status).toBe(400)
      expect(JSON.parse(res.text).error).toBe("the request names its model more than once")
    }
    const upper = await raw(`${proxy.url}/api/chat`, {
      method: "POST",
      headers: { authorization: `Bearer ${ALICE}` },
      body: `{"MODEL":"qwen3:0.6b","messages":[]}`
    })
    expect(upper.status).toBe(403)
    expect(relayed(fake.requests)).toEqual([])
  })

  it("an expired key gets 401 saying it expired; a wrong key is just invalid", async () => {
    const error = await refused(() => openai(OLD).models.list())
    expect(error).toBeInstanceOf(OpenAI.AuthenticationError)
    expect(error.message).toContain("this API key expired at 2020-01-01T00:00:00.000Z")
    const wrong = await refused(() => ollama("sk-nobody").list())
    expect(wrong.status_code).toBe(401)
    expect(wrong.message).toBe("unauthorized: invalid API key")
  })

  it("/metrics needs the metrics scope; per-key series only for it", async () => {
    const denied = await fetch(`${proxy.url}/metrics`, { headers: { authorization: `Bearer ${ALICE}` } })
    expect(denied.status).toBe(403)
    expect(await denied.json()).toEqual({ error: "forbidden: this API key lacks the metrics scope" })
    expect((await fetch(`${proxy.url}/metrics`)).status).toBe(401)
    const scraped = await scrape(proxy.url, { authorization: `Bearer ${SCRAPER}` })
    expect(scraped.status).toBe(200)
    expect(scraped.total("ollama_proxy_requests_total", { api_key_name: "bob", outcome: "forbidden" })).toBeGreaterThan(0)
    expect(scraped.value("ollama_proxy_keys_loaded")).toBe(5)
  })

  it("editing the file revokes a key within seconds, without a restart, while its stream in flight finishes", async () => {
    fake.set({ tokens: 40, tokenDelayMs: 25 })
    try {
      const stream = await ollama(BOB).chat({ model: "llama3.2", messages: [{ role: "user", content: "Tell me" }], stream: true })
      const parts: Array<string> = []
      const iterator = stream[Symbol.asyncIterator]()
      const first = await iterator.next()
      if (first.done === true) throw new Error("the stream ended at once")
      parts.push(first.value.message.content)
      // bob goes; the file is swapped in place.
      writeKeys(file, keyFile().replace(/ {2}- name: bob\n {4}key: "[^"]+"\n {4}scopes: \[inference\]\n/, ""))
      const deadline = Date.now() + 5000
      while ((await raw(`${proxy.url}/api/version`, { headers: { authorization: `Bearer ${BOB}` } })).status !== 401) {
        if (Date.now() > deadline) throw new Error("the key was not revoked within 5 s")
        await new Promise((r) => setTimeout(r, 50))
      }
      let done = false
      for (let next = await iterator.next(); !next.done; next = await iterator.next()) {
        parts.push(next.value.message.content)
        done ||= next.value.done
      }
      expect(done).toBe(true)
      expect(parts.join("")).toBe(
        fake.expected("/api/chat", { model: "llama3.2", messages: [{ role: "user", content: "Tell me" }] }).content
      )
    } finally {
      fake.set({ tokens: undefined, tokenDelayMs: undefined })
      writeKeys(file, keyFile())
    }
  })

  it("a file that does not parse keeps the keys in force, and says so once, not at every poll", async () => {
    const failed = async () =>
      (await scrape(proxy.url, { authorization: `Bearer ${SCRAPER}` })).value("ollama_proxy_keys_reloads_total", { outcome: "failed" }) ?? 0
    const before = await failed()
    writeKeys(file, keyFile("  - name: eve\n    key: sk-eve\n    scope: [all]\n"))
    const deadline = Date.now() + 5000
    while ((await failed()) === before) {
      if (Date.now() > deadline) throw new Error("the broken file was not noticed")
      await new Promise((r) => setTimeout(r, 50))
    }
    expect((await raw(`${proxy.url}/api/tags`, { headers: { authorization: `Bearer ${ALICE}` } })).status).toBe(200)
    expect((await raw(`${proxy.url}/api/tags`, { headers: { authorization: "Bearer sk-eve" } })).status).toBe(401)
    // Five more reads of the unchanged broken file: none is counted or logged again.
    const reads = spans.named("ApiKeys.reload").length
    while (spans.named("ApiKeys.reload").length < reads + 5) {
      if (Date.now() > deadline) throw new Error("the file was not read again")
      await new Promise((r) => setTimeout(r, 50))
    }
    expect(await failed()).toBe(before + 1)
    writeKeys(file, keyFile())
  })
})

describe("the built service", () => {
  it("a bad key file stops start-up with one line naming it", async () => {
    const dir = mkdtempSync(join(tmpdir(), "keys-"))
    const file = join(dir, "keys.yaml")
    writeFileSync(file, "keys:\n  - name: a\n    key: k\n    modles: [x]\n")
    const proxy = await spawnProxy({ OLLAMA_MANAGED: "false", AUTHORIZATION_KEYS_FILE: file }, { waitForListening: false })
    const { code } = await proxy.exited
    expect(code).toBe(1)
    expect(proxy.stderr().trim()).toBe(
      `ollama-authentication-proxy: key file ${file}: keys[0].modles: unknown field; did you mean "models"?`
    )
  })

  it("a name in both the environment and the file stops start-up", async () => {
    const dir = mkdtempSync(join(tmpdir(), "keys-"))
    const file = join(dir, "keys.yaml")
    writeFileSync(file, "keys:\n  - name: alice\n    key: k1\n")
    const proxy = await spawnProxy({ OLLAMA_MANAGED: "false", AUTHORIZATION_KEYS_FILE: file, AUTHORIZATION_APIKEY_ALICE: "k2" }, {
      waitForListening: false
    })
    expect((await proxy.exited).code).toBe(1)
    expect(proxy.stderr()).toContain(`the key name "alice" is also an AUTHORIZATION_APIKEY* name`)
  })

  it("SIGHUP reloads the file; env keys stay beside it", async () => {
    const fake = await startFakeOllama()
    const dir = mkdtempSync(join(tmpdir(), "keys-"))
    const file = join(dir, "keys.yaml")
    writeFileSync(file, `keys:\n  - name: carol\n    key: "sk-carol"\n`)
    // A long poll: only the signal can be what reloads it.
    const proxy = await spawnProxy({
      OLLAMA_MANAGED: "false",
      OLLAMA_HOST: fake.url,
      AUTHORIZATION_KEYS_FILE: file,
      AUTHORIZATION_KEYS_FILE_POLL: "1h",
      AUTHORIZATION_APIKEY_OPS: "sk-ops"
    })
    try {
      await proxy.waitForLine((l) => l.msg === "ollama is up")
      const status = async (key: string) => (await raw(`${proxy.url}/api/version`, { headers: { authorization: `Bearer ${key}` } })).status
      expect(await status("sk-carol")).toBe(200)
      expect(await status("sk-ops")).toBe(200)
      // A refusal in the access line: who, which scope, why.
      const pull = await raw(`${proxy.url}/api/pull`, {
        method: "POST",
        headers: { authorization: "Bearer sk-carol", "x-request-id": "pull-1" },
        body: `{"model":"llama3.2"}`
      })
      expect(pull.status).toBe(403)
      expect(await proxy.waitForLine((l) => l.msg === "access" && l.request_id === "pull-1")).toMatchObject({
        status: 403,
        outcome: "forbidden",
        api_key_name: "carol",
        scope: "manage",
        refusal: "forbidden: this API key lacks the manage scope"
      })
      // Unchanged: a file event or a poll would not reload it; the signal does, and says so.
      proxy.child.kill("SIGHUP")
      await proxy.waitForLine((l) => l.msg === "key file reloaded" && l.names === "carol,ops")
      writeFileSync(file, `keys:\n  - name: dave\n    key: "sk-dave"\n`)
      proxy.child.kill("SIGHUP")
      await proxy.waitForLine((l) => l.msg === "key file reloaded" && l.names === "dave,ops")
      expect(await status("sk-carol")).toBe(401)
      expect(await status("sk-dave")).toBe(200)
      expect(await status("sk-ops")).toBe(200)
      expect(proxy.child.exitCode).toBeNull()
    } finally {
      await proxy.kill()
      await fake.close()
    }
  })
})
