/**
 * Two keys in one request, as on RunPod: the platform's key in `Authorization: Bearer`, the
 * proxy's key in `x-api-key`. Each real client library sends both; the proxy lets the request in
 * on the proxy key, names the caller by it, and Ollama sees neither.
 */
import Anthropic from "@anthropic-ai/sdk"
import { randomUUID } from "node:crypto"
import { Ollama } from "ollama"
import OpenAI from "openai"
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest"
import { raw, relayed } from "./support/http.js"
import { type Stack, startStack } from "./support/stack.js"

const PROXY_KEY = "proxy-key-7c1d9e0b"
const OTHER_PROXY_KEY = "proxy-key-of-bob-44aa"
const RUNPOD_KEY = "rpa_RUNPODKEY0123456789ABCDEF"

let stack: Stack
let fake: Stack["fake"]
let webhook: Stack["webhook"]
let proxy: Stack["proxy"]

beforeAll(async () => {
  stack = await startStack({ AUTHORIZATION_APIKEY_ALICE: PROXY_KEY, AUTHORIZATION_APIKEY_BOB: OTHER_PROXY_KEY })
  ;({ fake, proxy, webhook } = stack)
})

afterAll(() => stack?.close())

beforeEach(() => {
  fake.requests.length = 0
})

const recordOf = async (requestId: string) => {
  await webhook.until((received) => received.some((r) => r.record.request_id === requestId))
  return webhook.received.find((r) => r.record.request_id === requestId)!.record
}

/** What reached Ollama carries neither key, under any header name. */
const expectNoKeyReachedOllama = () => {
  expect(fake.requests.length).toBeGreaterThan(0)
  for (const seen of fake.requests) {
    expect(seen.headers.authorization).toBeUndefined()
    expect(seen.headers["x-api-key"]).toBeUndefined()
    const all = seen.rawHeaders.join("\n")
    expect(all).not.toContain(PROXY_KEY)
    expect(all).not.toContain(RUNPOD_KEY)
  }
}

describe("with RunPod's key in Authorization and the proxy key in x-api-key", () => {
  it("the openai client (apiKey = RunPod's key, defaultHeaders x-api-key) is served and billed to the proxy key", async () => {
    const id = randomUUID()
    const client = new OpenAI({
      baseURL: `${proxy.url}/v1`,
      apiKey: RUNPOD_KEY,
      defaultHeaders: { "x-api-key": PROXY_KEY, "x-request-id": id },
      maxRetries: 0
    })
    const stream = await client.chat.completions.create({
      model: "llama3.2",
      messages: [{ role: "user", content: "Hi" }],
      stream: true
    })
    let text = ""
    for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? ""
    expect(text).not.toBe("")
    expect(await recordOf(id)).toMatchObject({ endpoint: "/v1/chat/completions", api_key_name: "alice", eval_count: 5 })
    expectNoKeyReachedOllama()
  })

  it("the ollama client (headers) is served", async () => {
    const id = randomUUID()
    const client = new Ollama({
      host: proxy.url,
      headers: { Authorization: `Bearer ${RUNPOD_KEY}`, "x-api-key": PROXY_KEY, "x-request-id": id }
    })
    const parts = []
    for await (const part of await client.chat({ model: "llama3.2", messages: [{ role: "user", content: "Hi" }], stream: true })) {
      parts.push(part)
    }
    expect(parts.at(-1)?.done).toBe(true)
    expect(await recordOf(id)).toMatchObject({ endpoint: "/api/chat", api_key_name: "alice" })
    expectNoKeyReachedOllama()
  })

  it("the Anthropic SDK (apiKey = RunPod's key, defaultHeaders x-api-key) is served, streamed and whole", async () => {
    const id = randomUUID()
    const client = new Anthropic({
      baseURL: proxy.url,
      apiKey: RUNPOD_KEY,
      defaultHeaders: { "x-api-key": PROXY_KEY, "x-request-id": id },
      maxRetries: 0
    })
    const whole = await client.messages.create({ model: "llama3.2", max_tokens: 64, messages: [{ role: "user", content: "Hi" }] })
    expect(whole.content[0]).toMatchObject({ type: "text" })
    expect(await recordOf(id)).toMatchObject({ endpoint: "/v1/messages", api_key_name: "alice", stream: false })

    const events: Array<string> = []
    const stream = await client.messages.create({
      model: "llama3.2",
      max_tokens: 64,
      messages: [{ role: "user", content: "Hi" }],
      stream: true
    })
    for await (const event of stream) events.push(event.type)
    expect(events.at(-1)).toBe("message_stop")
    expectNoKeyReachedOllama()
  })

  it("a raw request (as curl sends it) is served, and so is the reverse: proxy key as bearer, RunPod's in x-api-key", async () => {
    const both = await raw(`${proxy.url}/api/tags`, { headers: { authorization: `Bearer ${RUNPOD_KEY}`, "x-api-key": PROXY_KEY } })
    expect(both.status).toBe(200)
    const reverse = await raw(`${proxy.url}/api/tags`, { headers: { authorization: `Bearer ${PROXY_KEY}`, "x-api-key": RUNPOD_KEY } })
    expect(reverse.status).toBe(200)
    expectNoKeyReachedOllama()
  })

  it("names the caller by the bearer's key when both headers carry a proxy key", async () => {
    const id = randomUUID()
    const res = await raw(`${proxy.url}/api/generate`, {
      method: "POST",
      headers: { authorization: `Bearer ${OTHER_PROXY_KEY}`, "x-api-key": PROXY_KEY, "x-request-id": id },
      body: JSON.stringify({ model: "llama3.2", prompt: "Hi", stream: false })
    })
    expect(res.status).toBe(200)
    expect(await recordOf(id)).toMatchObject({ api_key_name: "bob" })
  })
})

describe("refusals, with one reason for the request as a whole", () => {
  const tags = (headers: Record<string, string>) => raw(`${proxy.url}/api/tags`, { headers })

  it.each([
    ["RunPod's key and a wrong proxy key", { authorization: `Bearer ${RUNPOD_KEY}`, "x-api-key": "wrong" }],
    ["a wrong bearer and a wrong x-api-key", { authorization: "Bearer wrong", "x-api-key": "also-wrong" }],
    ["another scheme beside a wrong x-api-key", { authorization: `Basic ${PROXY_KEY}`, "x-api-key": "wrong" }],
    ["RunPod's key and an empty x-api-key", { authorization: `Bearer ${RUNPOD_KEY}`, "x-api-key": " " }],
    ["RunPod's key alone", { authorization: `Bearer ${RUNPOD_KEY}` }]
  ])("%s: 401 invalid API key, and Ollama sees nothing", async (_, headers) => {
    const res = await tags(headers)
    expect(res.status).toBe(401)
    expect(JSON.parse(res.text)).toEqual({ error: "unauthorized: invalid API key" })
    expect(res.text).not.toContain(RUNPOD_KEY)
    expect(relayed(fake.requests)).toEqual([])
  })

  it("a proxy key under another scheme than Bearer does not count", async () => {
    const res = await tags({ authorization: `Basic ${PROXY_KEY}` })
    expect(res.status).toBe(401)
    expect(JSON.parse(res.text)).toEqual({ error: "unauthorized: malformed Authorization header, expected Bearer <key>" })
  })

  it("a malformed Authorization does not keep a valid x-api-key out", async () => {
    expect((await tags({ authorization: "Basic dXNlcjpwYXNz", "x-api-key": PROXY_KEY })).status).toBe(200)
  })
})
