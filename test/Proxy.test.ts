/**
 * The authenticating proxy end to end: real proxy on a real port, the fake Ollama as upstream,
 * the official `ollama` and `openai` clients, and raw node:http for the edges.
 */
import { createHash } from "node:crypto"
import { once } from "node:events"
import { createServer, type IncomingMessage, type Server } from "node:http"
import { type AddressInfo, createServer as createNetServer, type Server as NetServer } from "node:net"
import { Ollama } from "ollama"
import OpenAI from "openai"
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest"
import { startFakeOllama } from "./fake-ollama/server.mjs"
import { ndjson, open, raw, readToEnd, relayed } from "./support/http.js"
import { type RunningProxy, startProxy } from "./support/proxy.js"

const KEY = "test-key-0123456789"
const BOB_KEY = "bob-key-abcdef"
const bearer = { authorization: `Bearer ${KEY}` }

type Fake = Awaited<ReturnType<typeof startFakeOllama>>
let fake: Fake
let proxy: RunningProxy

const defaults = { tokens: 5, tokenDelayMs: 0, splitWrites: false, errorAfterChunks: undefined, crashAfterChunks: undefined, busy: false }

beforeAll(async () => {
  fake = await startFakeOllama()
  proxy = await startProxy({
    OLLAMA_HOST: fake.url,
    AUTHORIZATION_APIKEY: KEY,
    // These tests are about relaying every kind of request, management ones included.
    AUTHORIZATION_DEFAULT_SCOPES: "all",
    AUTHORIZATION_APIKEY_BOB: `sha256:${createHash("sha256").update(BOB_KEY).digest("hex")}`
  })
  await waitForPing(proxy, 200)
})

afterAll(async () => {
  await proxy?.close()
  await fake?.close()
})

beforeEach(() => {
  fake.set(defaults)
  fake.requests.length = 0
})

/** /ping is answered from state that a background probe keeps: wait for the state wanted. */
async function waitForPing(target: RunningProxy, status: number, timeoutMs = 5000) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const res = await raw(`${target.url}/ping`)
    if (res.status === status) return res
    if (Date.now() > deadline) throw new Error(`/ping stayed ${res.status}, wanted ${status}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

describe("with the ollama client", () => {
  const client = () => new Ollama({ host: proxy.url, headers: bearer })

  it("streams a chat token by token, ending with the usage figures", async () => {
    const parts = await client().chat({ model: "llama3.2", messages: [{ role: "user", content: "Hi" }], stream: true })
    const chunks = []
    for await (const part of parts) chunks.push(part)
    expect(chunks.length).toBe(6)
    const last = chunks.at(-1)!
    expect(last.done).toBe(true)
    expect(last.eval_count).toBe(5)
    expect(chunks.slice(0, -1).map((c) => c.message.content).join("")).not.toBe("")
  })

  it("answers a chat with stream:false as one object", async () => {
    const answer = await client().chat({ model: "llama3.2", messages: [{ role: "user", content: "Hi" }], stream: false })
    expect(answer.done).toBe(true)
    expect(answer.message.role).toBe("assistant")
  })

  it("generates, streamed and not", async () => {
    const streamed = []
    for await (const part of await client().generate({ model: "llama3.2", prompt: "Why?", stream: true })) {
      streamed.push(part)
    }
    expect(streamed.at(-1)!.done).toBe(true)
    const whole = await client().generate({ model: "llama3.2", prompt: "Why?", stream: false })
    expect(whole.response).toBe(streamed.map((p) => p.response).join(""))
  })

  it("shows pull progress", async () => {
    const statuses = []
    for await (const progress of await client().pull({ model: "qwen3:0.6b", stream: true })) statuses.push(progress.status)
    expect(statuses[0]).toBe("pulling manifest")
    expect(statuses.at(-1)).toBe("success")
  })

  it("passes Ollama's own errors through", async () => {
    await expect(client().chat({ model: "no-such-model", messages: [] })).rejects.toThrow("model 'no-such-model' not found")
  })
})

describe("with the openai client", () => {
  const client = (apiKey = KEY) => new OpenAI({ baseURL: `${proxy.url}/v1`, apiKey, maxRetries: 0 })

  it("completes a chat, streamed and not", async () => {
    const whole = await client().chat.completions.create({ model: "llama3.2", messages: [{ role: "user", content: "Hi" }] })
    expect(whole.usage?.completion_tokens).toBe(5)
    const stream = await client().chat.completions.create({
      model: "llama3.2",
      messages: [{ role: "user", content: "Hi" }],
      stream: true
    })
    let text = ""
    for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? ""
    expect(text).toBe(whole.choices[0]!.message.content)
  })

  it("embeds and lists models", async () => {
    const embedding = await client().embeddings.create({ model: "nomic-embed-text", input: "hello" })
    expect(embedding.data[0]!.embedding.length).toBeGreaterThan(0)
    const models = []
    for await (const model of client().models.list()) models.push(model.id)
    expect(models).toContain("llama3.2:latest")
  })

  it("is refused with a wrong key", async () => {
    await expect(client("wrong").models.list()).rejects.toMatchObject({ status: 401 })
  })
})

describe("authentication", () => {
  const tags = (headers: Record<string, string> = {}, method = "GET") => raw(`${proxy.url}/api/tags`, { method, headers })

  it.each([
    ["no key", {}, "missing API key"],
    ["a wrong key", { authorization: "Bearer nope" }, "invalid API key"],
    ["another scheme", { authorization: `Basic ${KEY}` }, "malformed Authorization header, expected Bearer <key>"],
    ["an empty bearer", { authorization: "Bearer " }, "malformed Authorization header, expected Bearer <key>"],
    ["a wrong x-api-key", { "x-api-key": "nope" }, "invalid API key"]
  ])("answers %s with 401 in Ollama's error shape, and Ollama sees nothing", async (_, headers, reason) => {
    const res = await tags(headers)
    expect(res.status).toBe(401)
    expect(res.headers["www-authenticate"]).toBe("Bearer")
    expect(res.headers["content-type"]).toBe("application/json; charset=utf-8")
    expect(JSON.parse(res.text)).toEqual({ error: `unauthorized: ${reason}` })
    expect(relayed(fake.requests)).toEqual([])
  })

  it("takes the Bearer scheme in any case, and x-api-key", async () => {
    expect((await tags({ authorization: `bEaReR ${KEY}` })).status).toBe(200)
    expect((await tags({ "x-api-key": KEY })).status).toBe(200)
  })

  it("accepts a key configured as its sha256", async () => {
    expect((await tags({ authorization: `Bearer ${BOB_KEY}` })).status).toBe(200)
    expect((await tags({ authorization: `Bearer sha256:${createHash("sha256").update(BOB_KEY).digest("hex")}` })).status).toBe(401)
  })

  it("lets a CORS preflight through without a key", async () => {
    const res = await tags({ origin: "http://localhost:3000", "access-control-request-method": "POST" }, "OPTIONS")
    expect(res.status).toBe(204)
    expect((await tags({}, "OPTIONS")).status).toBe(401)
  })

  it("never passes the client's key on to Ollama", async () => {
    await tags({ authorization: `Bearer ${KEY}` })
    await tags({ "x-api-key": KEY })
    expect(relayed(fake.requests)).toHaveLength(2)
    for (const seen of fake.requests) {
      expect(seen.headers.authorization).toBeUndefined()
      expect(seen.headers["x-api-key"]).toBeUndefined()
      expect(JSON.stringify(seen.headers)).not.toContain(KEY)
    }
  })
})

describe("forwarding", () => {
  it("keeps path and query, sends Ollama its own Host and the forwarding headers", async () => {
    const res = await raw(`${proxy.url}/api/tags?verbose=1&x=%20y`, {
      headers: { ...bearer, host: "api.example.com", "x-request-id": "req-42", connection: "keep-alive, x-drop-me", "x-drop-me": "1" }
    })
    expect(res.status).toBe(200)
    expect(res.headers["x-request-id"]).toBe("req-42")
    const seen = fake.requests[0]!
    expect(seen.path).toBe("/api/tags?verbose=1&x=%20y")
    expect(seen.headers.host).toBe(new URL(fake.url).host)
    expect(seen.headers["x-forwarded-host"]).toBe("api.example.com")
    expect(seen.headers["x-forwarded-proto"]).toBe("http")
    expect(seen.headers["x-forwarded-for"]).toBe("127.0.0.1")
    expect(seen.headers["x-request-id"]).toBe("req-42")
    expect(seen.headers["x-drop-me"]).toBeUndefined()
  })

  it("makes a request id when the client's is missing or unreasonable", async () => {
    const res = await raw(`${proxy.url}/api/tags`, { headers: { ...bearer, "x-request-id": "bad id with spaces" } })
    expect(res.headers["x-request-id"]).toMatch(/^[0-9a-f-]{36}$/)
    expect(fake.requests[0]!.headers["x-request-id"]).toBe(res.headers["x-request-id"])
  })

  it("relays Ollama's exact bytes, content type and status", async () => {
    for (const path of ["/", "/api/version", "/nope"]) {
      const direct = await raw(`${fake.url}${path}`)
      const proxied = await raw(`${proxy.url}${path}`, { headers: bearer })
      expect([proxied.status, proxied.headers["content-type"], proxied.text]).toEqual([
        direct.status,
        direct.headers["content-type"],
        direct.text
      ])
    }
    const copied = await raw(`${proxy.url}/api/copy`, {
      method: "POST",
      headers: bearer,
      body: JSON.stringify({ source: "llama3.2", destination: "mine" })
    })
    expect([copied.status, copied.body.length]).toEqual([200, 0])
  })

  it("marks streams unbuffered and keeps lines intact when Ollama splits its writes", async () => {
    fake.set({ splitWrites: true, tokens: 40 })
    const body = JSON.stringify({ model: "llama3.2", prompt: "split me" })
    const direct = await raw(`${fake.url}/api/generate`, { method: "POST", body })
    const proxied = await raw(`${proxy.url}/api/generate`, { method: "POST", headers: bearer, body })
    expect(proxied.headers["content-type"]).toBe("application/x-ndjson")
    expect(proxied.headers["x-accel-buffering"]).toBe("no")
    const strip = (text: string) => ndjson(text).map(({ created_at: _, ...rest }) => rest)
    expect(strip(proxied.text)).toEqual(strip(direct.text))
    expect(ndjson(proxied.text)).toHaveLength(41)
  })

  it("hands each chunk to the client before Ollama has finished", async () => {
    fake.set({ tokens: 3, tokenDelayMs: 100 })
    const { res } = await open(`${proxy.url}/api/chat`, {
      method: "POST",
      headers: bearer,
      body: JSON.stringify({ model: "llama3.2", messages: [{ role: "user", content: "Hi" }] })
    })
    const [first] = (await once(res, "data")) as [Buffer]
    expect(JSON.parse(first.toString().split("\n")[0]!).done).toBe(false)
    expect(fake.requests[0]!.completed).toBe(false)
    const rest = await readToEnd(res)
    expect(rest.complete).toBe(true)
  })

  it("aborts the Ollama request when the client goes away", async () => {
    fake.set({ tokens: 100, tokenDelayMs: 50 })
    const { req, res } = await open(`${proxy.url}/api/generate`, {
      method: "POST",
      headers: bearer,
      body: JSON.stringify({ model: "llama3.2", prompt: "long story" })
    })
    await once(res, "data")
    req.destroy()
    const aborted = await fake.waitForAbort((r) => r.path === "/api/generate")
    expect(aborted.completed).toBe(false)
  })

  it("cuts the client's connection when Ollama dies mid-stream, never a clean end", async () => {
    fake.set({ tokens: 20, tokenDelayMs: 5, crashAfterChunks: 3 })
    const { res } = await open(`${proxy.url}/api/chat`, {
      method: "POST",
      headers: bearer,
      body: JSON.stringify({ model: "llama3.2", messages: [{ role: "user", content: "Hi" }] })
    })
    expect(res.statusCode).toBe(200)
    const result = await readToEnd(res)
    expect(result.complete).toBe(false)
    expect(ndjson(result.body.slice(0, result.body.lastIndexOf("\n") + 1)).every((l) => l.done === false)).toBe(true)
  })

  it("relays Ollama's mid-stream error line with status 200", async () => {
    fake.set({ tokens: 10, errorAfterChunks: 2 })
    const res = await raw(`${proxy.url}/api/chat`, {
      method: "POST",
      headers: bearer,
      body: JSON.stringify({ model: "llama3.2", messages: [{ role: "user", content: "Hi" }] })
    })
    expect(res.status).toBe(200)
    expect(ndjson(res.text).at(-1)).toHaveProperty("error")
  })

  it("passes Ollama's 503 busy answer through", async () => {
    fake.set({ busy: true })
    const res = await raw(`${proxy.url}/api/chat`, {
      method: "POST",
      headers: bearer,
      body: JSON.stringify({ model: "llama3.2", messages: [] })
    })
    expect(res.status).toBe(503)
    expect(JSON.parse(res.text).error).toContain("server busy")
  })

  it("streams a 50 MB upload to Ollama intact", async () => {
    const blob = Buffer.alloc(50 * 1024 * 1024)
    for (let i = 0; i < blob.length; i += 4096) blob.writeUInt32LE(i, i)
    const digest = `sha256:${createHash("sha256").update(blob).digest("hex")}`
    const res = await raw(`${proxy.url}/api/blobs/${digest}`, {
      method: "POST",
      headers: { ...bearer, "content-length": blob.length },
      body: blob
    })
    expect(res.status).toBe(201)
    expect((await raw(`${proxy.url}/api/blobs/${digest}`, { method: "HEAD", headers: bearer })).status).toBe(200)
  })
})

describe("request bodies are streamed, not buffered", () => {
  let upstream: Server
  let streamingProxy: RunningProxy
  const received: Array<number> = []
  let onBytes: (() => void) | undefined

  beforeAll(async () => {
    upstream = createServer((req: IncomingMessage, res) => {
      if (req.url === "/") return res.end("Ollama is running")
      let n = 0
      req.on("data", (c: Buffer) => {
        n += c.length
        received.push(n)
        onBytes?.()
      })
      req.on("end", () => res.end(JSON.stringify({ bytes: n })))
    }).listen(0, "127.0.0.1")
    await once(upstream, "listening")
    streamingProxy = await startProxy({ OLLAMA_HOST: `127.0.0.1:${(upstream.address() as AddressInfo).port}` })
    await waitForPing(streamingProxy, 200)
  })

  afterAll(async () => {
    await streamingProxy?.close()
    upstream?.close()
  })

  it("delivers the first half of an upload before the client sends the second", async () => {
    const half = Buffer.alloc(4 * 1024 * 1024, 7)
    const { request } = await import("node:http")
    const req = request(`${streamingProxy.url}/api/blobs/sha256:x`, {
      method: "POST",
      headers: { "content-length": half.length * 2 }
    })
    const arrived = new Promise<void>((resolve) => {
      onBytes = () => received.at(-1)! >= half.length && resolve()
    })
    req.write(half)
    await arrived
    req.end(half)
    const [res] = (await once(req, "response")) as [IncomingMessage]
    expect(JSON.parse((await readToEnd(res)).body)).toEqual({ bytes: half.length * 2 })
  })
})

describe("lines that arrive in one read", () => {
  // A raw upstream, to control what lands in a single read: three NDJSON lines as three HTTP chunks,
  // then (for the broken case) a chunk header that is not hex, all in one write.
  const lines = [0, 1, 2].map((i) => JSON.stringify({ model: "llama3.2", response: `t${i}`, done: false }) + "\n")
  const chunked = lines.map((l) => `${Buffer.byteLength(l).toString(16)}\r\n${l}\r\n`).join("")
  let upstream: NetServer
  let rawProxy: RunningProxy
  let tail = "0\r\n\r\n"

  beforeAll(async () => {
    upstream = createNetServer((socket) => {
      let head = ""
      socket.on("data", (d: Buffer) => {
        head += d.toString("latin1")
        const end = head.indexOf("\r\n\r\n")
        if (end < 0) return
        const length = Number(/content-length: *(\d+)/i.exec(head.slice(0, end))?.[1] ?? 0)
        if (head.length < end + 4 + length) return
        const isHealth = head.startsWith("GET / ") || head.startsWith("HEAD / ")
        head = ""
        if (isHealth) return void socket.write("HTTP/1.1 200 OK\r\ncontent-length: 17\r\n\r\nOllama is running")
        socket.write(`HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n${chunked}${tail}`)
      })
      socket.on("error", () => {})
    }).listen(0, "127.0.0.1")
    await once(upstream, "listening")
    rawProxy = await startProxy({ OLLAMA_HOST: `127.0.0.1:${(upstream.address() as AddressInfo).port}` })
    await waitForPing(rawProxy, 200)
  })

  afterAll(async () => {
    await rawProxy?.close()
    upstream?.close()
  })

  const generate = () => open(`${rawProxy.url}/api/generate`, { method: "POST", body: JSON.stringify({ model: "llama3.2", prompt: "Hi" }) })

  it("relays them whole and in order", async () => {
    tail = "0\r\n\r\n"
    const { res } = await generate()
    const result = await readToEnd(res)
    expect(result.complete).toBe(true)
    expect(result.body).toBe(lines.join(""))
  })

  it("relays the lines read before a broken chunk, then cuts the connection", async () => {
    tail = "zz\r\n"
    const { res } = await generate()
    const result = await readToEnd(res)
    expect(result.complete).toBe(false)
    expect(result.body).toBe(lines.join(""))
  })
})

describe("when Ollama is not there", () => {
  it("answers 503 in Ollama's shape with Retry-After at once, and /ping says 503", async () => {
    const gone = await startFakeOllama()
    const lonely = await startProxy({ OLLAMA_HOST: gone.url })
    try {
      await waitForPing(lonely, 200)
      await gone.close()
      const started = Date.now()
      const res = await raw(`${lonely.url}/api/tags`)
      expect(Date.now() - started).toBeLessThan(1000)
      expect(res.status).toBe(503)
      expect(res.headers["retry-after"]).toBeDefined()
      expect(JSON.parse(res.text)).toEqual({ error: "ollama is not available" })
      const ping = await waitForPing(lonely, 503)
      expect(JSON.parse(ping.text).ollama.state).toBe("down")
    } finally {
      await lonely.close()
    }
  })
})
