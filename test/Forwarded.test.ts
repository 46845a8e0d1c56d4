/**
 * Forwarding headers as Ollama receives them: what a client claims about where a request came
 * from is replaced by what the proxy saw, unless the peer is one of TRUSTED_PROXIES.
 */
import { type IncomingMessage, request } from "node:http"
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest"
import { trustedPeers } from "../src/exchange/Headers.js"
import { startFakeOllama } from "./fake-ollama/server.mjs"
import { readToEnd } from "./support/http.js"
import { type RunningProxy, startProxy } from "./support/proxy.js"

const KEY = "forwarded-key-0123456789"

type Fake = Awaited<ReturnType<typeof startFakeOllama>>
let fake: Fake
let proxy: RunningProxy
let proxy6: RunningProxy

const TRUSTED = "127.0.0.2, 10.0.0.0/8 ::1/128,fd00::/8"

beforeAll(async () => {
  fake = await startFakeOllama()
  proxy = await startProxy({ OLLAMA_HOST: fake.url, AUTHORIZATION_APIKEY: KEY, TRUSTED_PROXIES: TRUSTED })
  proxy6 = await startProxy({ OLLAMA_HOST: fake.url, AUTHORIZATION_APIKEY: KEY, TRUSTED_PROXIES: TRUSTED, HOST: "::1" })
})
afterAll(async () => {
  await proxy?.close()
  await proxy6?.close()
  await fake?.close()
})
beforeEach(() => {
  fake.requests.length = 0
})

/** GET /api/tags through the proxy from `localAddress`; resolves with the headers Ollama received. */
const seenByOllama = async (target: { host: string; port: number }, localAddress: string, headers: Record<string, string>) => {
  const req = request({ ...target, localAddress, path: "/api/tags", headers: { authorization: `Bearer ${KEY}`, ...headers } })
  req.end()
  const res = await new Promise<IncomingMessage>((resolve, reject) => req.on("response", resolve).on("error", reject))
  await readToEnd(res)
  expect(res.statusCode).toBe(200)
  // A request the proxy relayed (it always sets X-Forwarded-For), not the proxy's own read of the model list.
  const seen = await fake.waitFor((r) => r.path === "/api/tags" && r.headers["x-forwarded-for"] !== undefined)
  fake.requests.length = 0
  const pick = (name: string) => seen.headers[name]
  return {
    for: pick("x-forwarded-for"),
    proto: pick("x-forwarded-proto"),
    host: pick("x-forwarded-host"),
    forwarded: pick("forwarded"),
    realIp: pick("x-real-ip")
  }
}

const claims = {
  host: "api.example.com",
  "x-forwarded-for": "203.0.113.7",
  "x-forwarded-proto": "https",
  "x-forwarded-host": "public.example.com",
  forwarded: "for=203.0.113.7;proto=https",
  "x-real-ip": "203.0.113.7"
}

describe("forwarding headers", () => {
  const v4 = () => ({ host: "127.0.0.1", port: proxy.port })

  it("from an untrusted peer: the client's claims are replaced by what the proxy saw", async () => {
    expect(await seenByOllama(v4(), "127.0.0.3", claims)).toEqual({
      for: "127.0.0.3",
      proto: "http",
      host: "api.example.com",
      forwarded: undefined,
      realIp: undefined
    })
  })

  it("from a trusted proxy: its chain is kept and extended, its scheme and host believed", async () => {
    expect(await seenByOllama(v4(), "127.0.0.2", { ...claims, "x-forwarded-for": "203.0.113.7, 198.51.100.1" })).toEqual({
      for: "203.0.113.7, 198.51.100.1, 127.0.0.2",
      proto: "https",
      host: "public.example.com",
      forwarded: "for=203.0.113.7;proto=https",
      realIp: "203.0.113.7"
    })
  })

  it("from a trusted proxy that sends none: the proxy's own view", async () => {
    expect(await seenByOllama(v4(), "127.0.0.2", { host: "api.example.com" })).toEqual({
      for: "127.0.0.2",
      proto: "http",
      host: "api.example.com",
      forwarded: undefined,
      realIp: undefined
    })
  })

  it("from a trusted IPv6 peer, on an IPv6 listener", async () => {
    const seen = await seenByOllama({ host: "::1", port: proxy6.port }, "::1", claims)
    expect(seen).toMatchObject({ for: "203.0.113.7, ::1", proto: "https", host: "public.example.com" })
  })

  it("matches addresses and blocks of both families, and IPv4 peers seen on a dual-stack listener", () => {
    const trusted = trustedPeers([
      { address: "10.0.0.0", prefix: 8, family: "ipv4" },
      { address: "127.0.0.2", prefix: 32, family: "ipv4" },
      { address: "fd00::", prefix: 8, family: "ipv6" }
    ])
    expect(["10.1.2.3", "::ffff:10.1.2.3", "127.0.0.2", "::ffff:127.0.0.2", "fd12:3456::1"].map(trusted)).toEqual([
      true,
      true,
      true,
      true,
      true
    ])
    expect(["11.0.0.1", "127.0.0.1", "::1", "fe80::1", undefined].map(trusted)).toEqual([false, false, false, false, false])
    expect(trustedPeers([])("127.0.0.1")).toBe(false)
  })
})

describe("MAX_CONNECTIONS_PER_ADDRESS behind a trusted proxy", () => {
  it("counts each client by its X-Forwarded-For address, not the balancer's connections", async () => {
    const slow = await startFakeOllama({ tokens: 50, tokenDelayMs: 20 })
    const behind = await startProxy({
      OLLAMA_HOST: slow.url,
      AUTHORIZATION_APIKEY: KEY,
      TRUSTED_PROXIES: "127.0.0.1",
      MAX_CONNECTIONS_PER_ADDRESS: "2",
      // Every stream in flight at Ollama at once, none waiting for a slot (src/schedule/).
      QUEUE_SLOTS: "0"
    })
    const port = Number(new URL(behind.url).port)
    const chat = (client: string) => {
      const req = request({
        host: "127.0.0.1",
        port,
        method: "POST",
        path: "/api/chat",
        agent: false,
        headers: { authorization: `Bearer ${KEY}`, "x-forwarded-for": `${client}, 127.0.0.1` }
      })
      req.end(JSON.stringify({ model: "llama3.2", messages: [{ role: "user", content: "Hi" }] }))
      return new Promise<IncomingMessage>((resolve, reject) => req.on("response", resolve).on("error", reject))
    }
    try {
      // Five connections from the balancer's one address, for five clients: all in.
      const clients = ["198.51.100.1", "198.51.100.2", "198.51.100.3", "198.51.100.4", "198.51.100.5"]
      const streams = await Promise.all(clients.map(chat))
      expect(streams.map((r) => r.statusCode)).toEqual([200, 200, 200, 200, 200])
      // One client with two streams in flight already: its third request is refused, with Retry-After.
      const second = await chat("198.51.100.1")
      const third = await chat("198.51.100.1")
      expect([second.statusCode, third.statusCode]).toEqual([200, 429])
      expect(third.headers["retry-after"]).toBe("1")
      expect(JSON.parse((await readToEnd(third)).body)).toEqual({ error: "too many requests from this address, please try again" })
      await Promise.all([...streams, second].map(readToEnd))
      // Once its streams ended, the client is let in again.
      const again = await chat("198.51.100.1")
      expect(again.statusCode).toBe(200)
      await readToEnd(again)
    } finally {
      await behind.close()
      await slow.close()
    }
  })
})
