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
  const seen = await fake.waitFor((r) => r.path === "/api/tags")
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
