/**
 * Start-up as an operator meets it: the built bundle, real environment variables.
 */
import { once } from "node:events"
import { connect, createServer } from "node:net"
import type { AddressInfo } from "node:net"
import { describe, expect, it } from "vitest"
import { startFakeOllama } from "./fake-ollama/server.mjs"
import { freePort, raw } from "./support/http.js"
import { spawnProxy } from "./support/proxy.js"

describe("bad configuration", () => {
  it.each([
    [{ PORT: "abc" }, "PORT"],
    [{ AUTHORIZATION_APIKEY_TEAM: "  " }, "AUTHORIZATION_APIKEY_TEAM"],
    [{ USER_MODEL_METRICS_WEBHOOK_URL: "not a url" }, "USER_MODEL_METRICS_WEBHOOK_URL"],
    [{ OLLAMA_MANAGED: "perhaps" }, "OLLAMA_MANAGED"]
  ])("%o stops start-up with one line naming %s", async (env, variable) => {
    const proxy = await spawnProxy({ OLLAMA_MANAGED: "false", ...env }, { waitForListening: false })
    const { code } = await proxy.exited
    expect(code).toBe(1)
    const lines = proxy.stderr().trim().split("\n")
    expect(lines).toHaveLength(1)
    expect(lines[0]).toMatch(new RegExp(`^ollama-authentication-proxy: invalid configuration: ${variable}: `))
  })

  it("names the address when the port is taken", async () => {
    const blocker = createServer().listen(0, "127.0.0.1")
    await once(blocker, "listening")
    const port = (blocker.address() as AddressInfo).port
    try {
      const proxy = await spawnProxy({ OLLAMA_MANAGED: "false", PORT: String(port) }, { waitForListening: false })
      expect((await proxy.exited).code).toBe(1)
      expect(proxy.stderr().trim()).toBe(
        `ollama-authentication-proxy: cannot listen on 127.0.0.1:${port}: listen EADDRINUSE: address already in use 127.0.0.1:${port}`
      )
    } finally {
      blocker.close()
    }
  })
})

describe("an open proxy", () => {
  it("warns at start that every caller gets in, and /ping says 204 until Ollama first answers", async () => {
    const proxy = await spawnProxy({ OLLAMA_MANAGED: "false", OLLAMA_HOST: "127.0.0.1:9" })
    try {
      const warning = await proxy.waitForLine((l) => l.level === "warn")
      expect(warning.msg).toContain("lets every caller in")
      expect((await raw(`${proxy.url}/ping`)).status).toBe(204)
      const res = await raw(`${proxy.url}/api/tags`)
      expect(res.status).toBe(503)
      expect(res.headers["retry-after"]).toBe("5")
      expect(JSON.parse(res.text)).toEqual({ error: "ollama is not available" })
    } finally {
      await proxy.kill()
    }
  })
})

describe("a client that starts with the proxy (docker compose)", () => {
  const KEY = "compose-key-0123456789"

  /**
   * Tries the port every millisecond until it opens, and sends `GET /api/tags` on the first
   * connection that succeeds; resolves with the status and body, and calls `sent` once it is sent.
   */
  const firstRequest = (port: number, sent: () => void = () => {}) =>
    new Promise<{ status: number; body: string }>((resolve, reject) => {
      const attempt = () => {
        const socket = connect(port, "127.0.0.1")
        socket.once("error", (error: NodeJS.ErrnoException) => {
          socket.destroy()
          if (error.code === "ECONNREFUSED") setTimeout(attempt, 1)
          else reject(error)
        })
        socket.once("connect", () => {
          socket.write(`GET /api/tags HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${KEY}\r\nConnection: close\r\n\r\n`)
          sent()
          let text = ""
          socket.setEncoding("utf8").on("data", (chunk: string) => (text += chunk))
          socket.on("end", () => resolve({ status: Number(text.slice(9, 12)), body: text.slice(text.indexOf("\r\n\r\n") + 4) }))
        })
      }
      attempt()
    })

  it.each([
    ["answering already", false],
    ["listening, still starting up (it answers 300 ms after the first request)", true]
  ])("is served on its first request the moment the port opens, with Ollama %s", async (_, initializing) => {
    let ready = () => {}
    const ollama = await startFakeOllama(initializing ? { ready: new Promise<void>((resolve) => (ready = resolve)) } : {})
    const port = await freePort()
    const proxy = await spawnProxy(
      { PORT: String(port), OLLAMA_MANAGED: "false", OLLAMA_HOST: ollama.url, AUTHORIZATION_APIKEY: KEY },
      { waitForListening: false }
    )
    try {
      const answer = await firstRequest(port, () => setTimeout(ready, 300))
      expect(answer.status).toBe(200)
      expect(JSON.parse(answer.body).models.map((m: { name: string }) => m.name)).toContain("llama3.2:latest")
    } finally {
      await proxy.kill()
      await ollama.close()
    }
  })
})
