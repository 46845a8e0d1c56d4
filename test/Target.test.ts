/**
 * No spelling of a request target reaches an inference endpoint unmetered: every spelling of
 * /api/chat and /v1/chat/completions an attacker might try is either refused (Ollama sees nothing)
 * or routed by Ollama as what the proxy classified, and then metered.
 */
import { randomUUID } from "node:crypto"
import { connect } from "node:net"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { classify } from "../src/exchange/Classify.js"
import { targetOf } from "../src/exchange/Target.js"
import { relayed } from "./support/http.js"
import { type Stack, startStack } from "./support/stack.js"

describe("targetOf", () => {
  it.each([
    ["/api/chat", "/api/chat", "/api/chat"],
    ["/api/chat?x=1&y=%20", "/api/chat", "/api/chat?x=1&y=%20"],
    ["/v1/models/llama3.2:latest", "/v1/models/llama3.2:latest", "/v1/models/llama3.2:latest"],
    ["/api/%63hat", "/api/chat", "/api/chat"],
    ["/api%2Fchat", "/api/chat", "/api/chat"],
    ["/api%2fchat?q", "/api/chat", "/api/chat?q"],
    ["http://127.0.0.1/api/chat", "/api/chat", "/api/chat"],
    ["HTTPS://evil.example:8443/v1/chat/completions?a=b", "/v1/chat/completions", "/v1/chat/completions?a=b"],
    ["http://host", "/", "/"],
    ["/api/blobs/sha256%3Aabc", "/api/blobs/sha256:abc", "/api/blobs/sha256:abc"],
    ["/v1/models/caf%C3%A9", "/v1/models/café", "/v1/models/caf%C3%A9"],
    ["/api/chat/", "/api/chat/", "/api/chat/"],
    ["/a%20b", "/a b", "/a%20b"]
  ])("%s is %s, sent on as %s", (url, path, forward) => {
    expect(targetOf(url)).toEqual({ ok: true, path, forward })
  })

  it.each([
    ["/api/./chat", "dot segments"],
    ["/api/../api/chat", "dot segments"],
    ["/api/%2e%2e/api/chat", "dot segments"],
    ["/api/chat/..", "dot segments"],
    ["//api/chat", "empty segment"],
    ["/api//chat", "empty segment"],
    ["/api%2F%2Fchat", "empty segment"],
    ["/api/chat%00", "control characters"],
    ["/api/chat%0d%0aX-Injected:%20yes", "control characters"],
    ["/api/%zzchat", "malformed percent-encoding"],
    ["/api/chat%", "malformed percent-encoding"],
    ["/api/chat#frag", "fragment"],
    ["/api/chat?x#frag", "fragment"],
    ["*", "must be a path"],
    ["api/chat", "must be a path"],
    ["ftp://host/api/chat", "must be a path"]
  ])("%s is refused (%s)", (url, reason) => {
    const target = targetOf(url)
    expect(target.ok).toBe(false)
    if (!target.ok) expect(target.reason).toContain(reason)
  })

  it("classifies the decoded path: an escaped spelling is the inference it routes to", () => {
    for (const url of ["/api/%63hat", "/api%2Fchat", "http://x/api/chat"]) {
      const target = targetOf(url)
      expect(target.ok && classify("POST", target.path).inference).toBe(true)
    }
  })
})

describe("every spelling, against the real proxy and a fake Ollama that routes as gin does", () => {
  const KEY = "target-test-key-31c9"
  let stack: Stack
  let fake: Stack["fake"]
  let webhook: Stack["webhook"]
  let proxy: Stack["proxy"]

  beforeAll(async () => {
    stack = await startStack({
      AUTHORIZATION_APIKEY: KEY,
      // Paths Ollama routes nowhere are `manage` by default: this key may send them, to see Ollama's answer.
      AUTHORIZATION_DEFAULT_SCOPES: "all"
    })
    ;({ fake, proxy, webhook } = stack)
  })

  afterAll(() => stack?.close())

  /** One request with the target written as given, on its own connection; the status line's code. */
  const send = (target: string, body: string, requestId: string) =>
    new Promise<number>((resolve, reject) => {
      const socket = connect(proxy.port, "127.0.0.1")
      let answer = ""
      socket.setEncoding("latin1")
      socket.on("data", (chunk: string) => (answer += chunk))
      socket.on("error", reject)
      socket.on("close", () => resolve(Number(/^HTTP\/1\.1 (\d{3})/.exec(answer)?.[1] ?? 0)))
      socket.write(
        `POST ${target} HTTP/1.1\r\nHost: proxy.test\r\nAuthorization: Bearer ${KEY}\r\nX-Request-Id: ${requestId}\r\n` +
          `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`
      )
    })

  const chat = JSON.stringify({ model: "llama3.2", messages: [{ role: "user", content: "Hi" }], stream: false })

  const cases: ReadonlyArray<readonly [target: string, endpoint: string, verdict: "metered" | "refused"]> = [
    ["/api/chat", "/api/chat", "metered"],
    ["/api/%63hat", "/api/chat", "metered"],
    ["/%61pi/c%68at", "/api/chat", "metered"],
    ["/api%2Fchat", "/api/chat", "metered"],
    ["/api%2fchat?stream=true", "/api/chat", "metered"],
    ["http://127.0.0.1/api/chat", "/api/chat", "metered"],
    ["http://evil.example:1234/api/chat", "/api/chat", "metered"],
    ["/api/./chat", "/api/chat", "refused"],
    ["/api/../api/chat", "/api/chat", "refused"],
    ["/api/%2e%2E/api/chat", "/api/chat", "refused"],
    ["//api/chat", "/api/chat", "refused"],
    ["/api//chat", "/api/chat", "refused"],
    ["/api/chat%00", "/api/chat", "refused"],
    ["/api/%zzchat", "/api/chat", "refused"],
    ["/api/chat#x", "/api/chat", "refused"],
    ["/v1/chat/completions", "/v1/chat/completions", "metered"],
    ["/v1/chat%2Fcompletions", "/v1/chat/completions", "metered"],
    ["/v1%2fchat%2fcompletions", "/v1/chat/completions", "metered"],
    ["/v1/chat/%63ompletions", "/v1/chat/completions", "metered"],
    ["http://x/v1/chat/completions?a=1", "/v1/chat/completions", "metered"],
    ["/v1/chat/./completions", "/v1/chat/completions", "refused"],
    ["/v1/./chat/completions", "/v1/chat/completions", "refused"],
    ["/v1/chat//completions", "/v1/chat/completions", "refused"]
  ]

  /** What Ollama got from clients since `from`: not the proxy's own health probes and model list reads. */
  const byClients = (from: number) => relayed(fake.requests.slice(from))

  it.each(cases)("POST %s: as %s, %s", async (target, endpoint, verdict) => {
    const id = randomUUID()
    const seenBefore = fake.requests.length
    const status = await send(target, chat, id)
    if (verdict === "refused") {
      // Refused by the proxy: Ollama never saw it, and nothing was generated.
      expect(status).toBe(400)
      expect(byClients(seenBefore)).toEqual([])
      return
    }
    expect(status).toBe(200)
    // Ollama routed it as the proxy classified it.
    expect(byClients(seenBefore).map((r) => r.status)).toEqual([200])
    await webhook.until((got) => got.some((g) => g.record.request_id === id))
    const record = webhook.accepted().find((r) => r.request_id === id)!
    expect(record).toMatchObject({ endpoint, outcome: "completed", model: "llama3.2" })
    expect(record.eval_count).toBeGreaterThan(0)
  })

  it.each([
    // Ollama answers these without a model: a redirect (trailing slash), 404 (another case, a param).
    ["/api/chat/", 307],
    ["/API/chat", 404],
    ["/api/chat;x", 404]
  ])("POST %s: Ollama answers %s and generates nothing; no record", async (target, expected) => {
    const id = randomUUID()
    expect(await send(target, chat, id)).toBe(expected)
    const seen = byClients(0).at(-1)!
    expect(seen.status).toBe(expected)
    // The record of a later inference arrives; this one never does.
    const later = randomUUID()
    expect(await send("/api/chat", chat, later)).toBe(200)
    await webhook.until((got) => got.some((g) => g.record.request_id === later))
    expect(webhook.accepted().some((r) => r.request_id === id)).toBe(false)
  })
})
